//! server-setup with a fake sshd: what it adds, that it is idempotent, that it backs
//! up and restores byte for byte, what it refuses, and the directories, group and
//! database it makes. It creates a group, so it runs as root (each test's own group,
//! removed afterwards).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use crate::support::{NOBODY, Rule, TestEnv, is_root};

const SSHD_CONFIG: &str = "# site config\nInclude SITE_INCLUDE\nPort 22\nUsePAM yes\nMatch User admin\n    PasswordAuthentication yes\n";

/// A tree with a fake sshd, an sshd_config of its own, and a group of its own.
struct Setup {
    env: TestEnv,
    group: String,
}

impl Setup {
    fn new() -> Option<Setup> {
        if !is_root() {
            crate::support::skip("server-setup test", "not root (it creates a group)");
            return None;
        }
        let env = TestEnv::new();
        env.fake_program("sshd");
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let group = format!(
            "pstg{}x{}",
            std::process::id(),
            COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        );
        fs::create_dir_all(env.path("ssh/conf.d")).unwrap();
        fs::write(env.path("ssh/conf.d/10-site.conf"), "PermitRootLogin no\n").unwrap();
        let include = env.path("ssh/conf.d/*.conf").display().to_string();
        fs::write(
            env.path("ssh/sshd_config"),
            SSHD_CONFIG.replace("SITE_INCLUDE", &include),
        )
        .unwrap();
        env.set_group(&group);
        Some(Setup { env, group })
    }

    fn sshd_config(&self) -> String {
        fs::read_to_string(self.env.path("ssh/sshd_config")).unwrap()
    }

    fn setup(&self, extra: &[&str]) -> crate::support::Run {
        let path = self.env.path("ssh/sshd_config").display().to_string();
        let mut args = vec!["server-setup", "--sshd-config", &path];
        args.extend(extra);
        self.env.podspawn(&args)
    }

    fn sshd_accepts(&self) -> Rule {
        Rule::program("sshd", &["-t", "-f", "*"])
    }

    /// `rules`, and the iptables of a host server-setup has not set up yet.
    fn scenario(&self, rules: Vec<Rule>) {
        let mut all = rules;
        all.extend(crate::support::iptables_to_be_set_up());
        self.env.scenario(&all);
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = Command::new("groupdel").arg(&self.group).status();
    }
}

fn mode_and_group(path: &std::path::Path) -> (u32, u32, u32) {
    let meta = fs::metadata(path).unwrap();
    (meta.mode() & 0o7777, meta.uid(), meta.gid())
}

fn docker_gid() -> u32 {
    let text = fs::read_to_string("/etc/group").unwrap();
    text.lines()
        .find_map(|line| {
            line.strip_prefix("docker:x:")
                .and_then(|rest| rest.split(':').next()?.parse().ok())
        })
        .expect("a docker group")
}

#[test]
fn a_first_run_adds_podspawns_lines_and_makes_the_directories() {
    let Some(setup) = Setup::new() else { return };
    let original = setup.sshd_config();
    setup.scenario(vec![setup.sshd_accepts()]);
    let run = setup.setup(&["--no-reload"]);
    run.assert_success();
    let stdout = run.stdout();
    let path = setup.env.path("ssh/sshd_config").display().to_string();
    assert!(
        stdout.starts_with(&format!(
            "backed up {path} to {path}.podspawn.bak\nappended AuthorizedKeysCommand to {path}\n"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("created group {}", setup.group)),
        "{stdout}"
    );
    assert!(stdout.ends_with("server-setup complete\n"), "{stdout}");
    // The rule that keeps podspawn's networks apart, where Docker never writes.
    assert!(
        stdout.contains("added the rule that keeps podspawn's networks apart (iptables -t mangle, chain PODSPAWN-"),
        "{stdout}"
    );
    let added_to = |egress: bool| -> Vec<Vec<String>> {
        setup
            .env
            .calls()
            .into_iter()
            .filter(|call| {
                call.program == "iptables"
                    && call.argv.get(3).is_some_and(|word| word == "-A")
                    && call.argv[4].ends_with("-OUT") == egress
            })
            .map(|call| call.argv[5..].to_vec())
            .collect()
    };
    let added = added_to(false);
    let pairs: Vec<(&str, &str)> = added
        .iter()
        .map(|rule| (rule[1].as_str(), rule[3].as_str()))
        .collect();
    assert_eq!(
        pairs,
        [
            ("10.214.0.0/16", "10.214.0.0/16"),
            ("10.214.0.0/16", "10.215.0.0/16"),
            ("10.215.0.0/16", "10.214.0.0/16"),
            ("10.215.0.0/16", "10.215.0.0/16")
        ]
    );
    for rule in &added {
        assert_eq!(rule[4..8], ["-m", "physdev", "!", "--physdev-is-bridged"]);
        assert_eq!(rule.last().unwrap(), "DROP");
    }
    // The egress policy: its own chain, hooked before Docker's DNAT.
    let egress: Vec<String> = added_to(true).iter().map(|rule| rule.join(" ")).collect();
    assert_eq!(
        egress.len(),
        crate::support::egress_rules_here(),
        "{egress:#?}"
    );
    assert!(egress.iter().any(|rule| {
        rule.starts_with("-s 10.214.0.0/16 -m addrtype --dst-type LOCAL")
            && rule.ends_with("-j DROP")
    }));
    assert!(
        setup
            .env
            .calls()
            .iter()
            .any(|call| call.program == "iptables"
                && call.argv[3..5] == ["-I".to_string(), "PREROUTING".to_string()])
    );
    assert_eq!(
        fs::read_to_string(format!("{path}.podspawn.bak")).unwrap(),
        original,
        "the backup is the original"
    );

    let edited = setup.sshd_config();
    let exe = fs::canonicalize(crate::support::PODSPAWN).unwrap();
    let command = format!(
        "AuthorizedKeysCommand {} --config {} auth-keys %u %t %k",
        exe.display(),
        setup.env.config_path().display()
    );
    let lines: Vec<&str> = edited.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|line| line.starts_with(needle))
            .unwrap_or_else(|| panic!("{needle} missing:\n{edited}"))
    };
    assert!(
        at(&command) < at("Include"),
        "before the Include:\n{edited}"
    );
    assert!(at("AuthorizedKeysCommandUser nobody") < at("Match User admin"));
    assert!(at("AcceptEnv PODSPAWN_PROJECT LANG LC_*") < at("Match User admin"));
    assert!(at(&format!("Match Group {}", setup.group)) > at("Match User admin"));
    assert_eq!(
        lines[at("Match User admin") + 1],
        "    PasswordAuthentication yes"
    );
    for line in [
        "    AuthenticationMethods publickey",
        "    AuthorizedKeysFile none",
        "    TrustedUserCAKeys none",
        "    PasswordAuthentication no",
        "    KbdInteractiveAuthentication no",
        "    AllowStreamLocalForwarding no",
        "    AllowTcpForwarding local",
        "    PermitTunnel no",
        "    PermitUserRC no",
        "Match all",
    ] {
        assert!(lines.contains(&line), "{line} missing:\n{edited}");
    }

    let docker = docker_gid();
    let env = &setup.env;
    assert_eq!(mode_and_group(&env.key_dir()), (0o755, 0, 0));
    for dir in ["state", "state/locks", "state/agents"] {
        assert_eq!(mode_and_group(&env.path(dir)), (0o2770, 0, docker), "{dir}");
    }
    assert_eq!(mode_and_group(&env.path("home-shared")), (0o755, 0, 0));
    assert_eq!(
        mode_and_group(&env.path("state/state.db")),
        (0o660, 0, docker)
    );
    assert!(
        fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .any(|line| line.starts_with(&format!("{}:", setup.group)))
    );
    // Nothing it made is writable by others.
    for dir in [
        "keys",
        "state",
        "state/locks",
        "state/agents",
        "home-shared",
        "state/state.db",
    ] {
        assert_eq!(
            mode_and_group(&env.path(dir)).0 & 0o002,
            0,
            "{dir} is world-writable"
        );
    }
}

#[test]
fn a_second_run_changes_nothing_and_says_so() {
    let Some(setup) = Setup::new() else { return };
    setup.scenario(vec![setup.sshd_accepts()]);
    setup.setup(&["--no-reload"]).assert_success();
    let once = setup.sshd_config();
    let backup = setup.env.path("ssh/sshd_config.podspawn.bak");
    let backup_time = fs::metadata(&backup).unwrap().modified().unwrap();
    let run = setup.setup(&["--no-reload"]);
    run.assert_success();
    let path = setup.env.path("ssh/sshd_config").display().to_string();
    assert_eq!(
        run.stdout(),
        format!("{path} already set up\nserver-setup complete: nothing to change\n")
    );
    assert_eq!(setup.sshd_config(), once);
    assert_eq!(
        fs::metadata(&backup).unwrap().modified().unwrap(),
        backup_time,
        "the backup was not rewritten"
    );
}

#[test]
fn dry_run_prints_the_change_and_changes_nothing() {
    let Some(setup) = Setup::new() else { return };
    let original = setup.sshd_config();
    setup.scenario(vec![setup.sshd_accepts()]);
    let run = setup.setup(&["--dry-run"]);
    run.assert_success();
    let stdout = run.stdout();
    assert!(
        stdout.contains("\n+AuthorizedKeysCommandUser nobody\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("would create group {}", setup.group)),
        "{stdout}"
    );
    assert!(
        stdout.contains("would created") || stdout.contains("would create"),
        "{stdout}"
    );
    assert!(stdout.contains("would add chain PODSPAWN-"), "{stdout}");
    assert_eq!(setup.sshd_config(), original);
    assert!(!setup.env.path("ssh/sshd_config.podspawn.bak").exists());
    assert!(!setup.env.path("state/state.db").exists());
}

#[test]
fn an_sshd_config_sshd_already_rejects_is_not_touched() {
    let Some(setup) = Setup::new() else { return };
    let original = setup.sshd_config();
    setup
        .env
        .scenario(&[Rule::program("sshd", &["-t", "-f", "*"])
            .stderr("/etc/ssh/sshd_config line 3: Bad configuration option: Prot\n")
            .exit(255)]);
    setup
        .setup(&["--no-reload"])
        .assert_one_line_error(1, "sshd rejects")
        .assert_stderr_contains("Bad configuration option: Prot; fix that first");
    assert_eq!(setup.sshd_config(), original);
    assert!(!setup.env.path("ssh/sshd_config.podspawn.bak").exists());
}

#[test]
fn a_home_inside_the_state_directory_is_refused_and_nothing_changes() {
    let Some(setup) = Setup::new() else { return };
    let original = setup.sshd_config();
    let config = fs::read_to_string(setup.env.config_path()).unwrap();
    let home = setup.env.path("state/home");
    setup.env.write_config_text(&config.replacen(
        &format!("home_dir: {}", setup.env.path("home-shared").display()),
        &format!("home_dir: {}", home.display()),
        1,
    ));
    setup.scenario(vec![setup.sshd_accepts()]);
    setup
        .setup(&["--no-reload"])
        .assert_one_line_error(1, &format!("auth.home_dir {} is inside", home.display()))
        .assert_stderr_contains("Could not chdir to home directory");
    assert_eq!(setup.sshd_config(), original);
    assert!(!home.exists() && !setup.env.path("state/state.db").exists());
}

#[test]
fn a_config_sshd_rejects_after_the_edit_is_restored_byte_for_byte() {
    let Some(setup) = Setup::new() else { return };
    // CRLF, no final newline: the restore must give back exactly these bytes.
    let original = "Port 22\r\nUsePAM yes\r\n# no final newline";
    fs::write(setup.env.path("ssh/sshd_config"), original).unwrap();
    setup.env.scenario(&[
        setup.sshd_accepts().times(1),
        Rule::program("sshd", &["-t", "-f", "*"])
            .stderr("line 2: Directive 'AllowStreamLocalForwarding' is not allowed\n")
            .exit(255),
    ]);
    let run = setup.setup(&["--no-reload"]);
    run.assert_code(1)
        .assert_stderr_contains("the original is restored");
    assert_eq!(run.stderr().lines().count(), 1, "{}", run.stderr());
    assert_eq!(
        fs::read(setup.env.path("ssh/sshd_config")).unwrap(),
        original.as_bytes()
    );
}

#[test]
fn a_foreign_authorized_keys_command_is_refused_even_in_an_included_file() {
    let Some(setup) = Setup::new() else { return };
    setup.scenario(vec![setup.sshd_accepts()]);
    fs::write(
        setup.env.path("ssh/conf.d/50-sss.conf"),
        "AuthorizedKeysCommand /usr/bin/sss_ssh_authorizedkeys\n",
    )
    .unwrap();
    let original = setup.sshd_config();
    setup
        .setup(&["--no-reload"])
        .assert_one_line_error(1, "50-sss.conf, line 1 (included by")
        .assert_stderr_contains("sshd takes only one");
    assert_eq!(setup.sshd_config(), original);

    fs::remove_file(setup.env.path("ssh/conf.d/50-sss.conf")).unwrap();
    fs::write(
        setup.env.path("ssh/sshd_config"),
        format!("{original}AuthorizedKeysCommand /opt/other %u\n"),
    )
    .unwrap();
    setup
        .setup(&["--no-reload"])
        .assert_one_line_error(1, "line 7 already sets AuthorizedKeysCommand /opt/other %u");
}

#[test]
fn sshd_is_reloaded_with_sighup_when_there_is_no_systemd() {
    let Some(setup) = Setup::new() else { return };
    if std::path::Path::new("/run/systemd/system").exists() {
        return crate::support::skip(
            "sshd's reload by SIGHUP",
            "systemd runs here, so that path is not the one taken",
        );
    }
    let mut fake_sshd = Command::new("sleep").arg("60").spawn().unwrap();
    let pid_file = setup.env.path("sshd.pid");
    fs::write(&pid_file, format!("{}\n", fake_sshd.id())).unwrap();
    setup.scenario(vec![
        setup.sshd_accepts(),
        Rule::program("sshd", &["-T", "-f", "*"])
            .stdout(&format!("port 22\npidfile {}\n", pid_file.display())),
    ]);
    let run = setup.setup(&[]);
    run.assert_success();
    assert!(
        run.stdout()
            .contains(&format!("reloaded sshd (SIGHUP to pid {})", fake_sshd.id())),
        "{}",
        run.stdout()
    );
    let status = fake_sshd.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGHUP)
    );
}

#[test]
fn only_root_may_set_up_the_server() {
    let Some(setup) = Setup::new() else { return };
    setup.scenario(vec![setup.sshd_accepts()]);
    let path = setup.env.path("ssh/sshd_config").display().to_string();
    setup
        .env
        .podspawn_as(NOBODY, NOBODY, &["server-setup", "--sshd-config", &path])
        .assert_one_line_error(1, "server-setup must run as root");
}

#[test]
fn an_audit_log_someone_else_made_is_not_taken_over() {
    let Some(setup) = Setup::new() else { return };
    setup.scenario(vec![setup.sshd_accepts()]);
    let audit = setup.env.audit_path();
    // Someone else's file where the audit log should be: they could still hold it
    // open, read and truncate it.
    std::os::unix::fs::chown(&audit, Some(crate::support::NOBODY), None).unwrap();
    setup
        .setup(&["--no-reload"])
        .assert_code(1)
        .assert_stderr(&format!(
            "podspawn: log.audit_log {} is there already and is not a plain file of root's \
             (uid 65534, 1 name(s)); move it away or name another file\n",
            audit.display()
        ));
    // Root's own: made the docker group's, as spawn needs it.
    std::os::unix::fs::chown(&audit, Some(0), None).unwrap();
    let run = setup.setup(&["--no-reload"]);
    run.assert_success();
    assert!(
        run.stdout().contains(&format!(
            "made the audit log {} (root:docker 660)",
            audit.display()
        )),
        "{}",
        run.stdout()
    );
    let (mode, uid, gid) = mode_and_group(&audit);
    assert_eq!((mode, uid, gid), (0o660, 0, docker_gid()));
}
