//! doctor and verify-image against the fake docker (and a fake sshd): what they
//! report, the fixes they name, and their exit codes.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::{Rule, TestEnv, is_root};

/// An engine that answers, and a host whose isolation rule is in place.
fn healthy_engine() -> Vec<Rule> {
    let mut rules = vec![
        Rule::docker(&["version", "--format", "{{.Server.Version}}"]).stdout("20.10.24\n"),
        Rule::docker(&["info", "--format", "*"]).stdout("runc \toverlay2\n"),
        Rule::docker(&["image", "inspect", "--format", "{{.Id}}", "test-image"])
            .stdout("sha256:abc\n"),
        Rule::program("sshd", &["-t", "-f", "*"]),
    ];
    rules.extend(crate::support::iptables_set_up());
    rules
}

#[test]
fn doctor_names_each_problem_with_its_fix_and_exits_1() {
    let env = TestEnv::new();
    env.fake_program("sshd");
    env.write_config("defaults:\n  image: test-image\n");
    let sshd_config = env.path("sshd_config");
    fs::write(&sshd_config, "Port 22\n").unwrap();
    env.scenario(&healthy_engine());
    let run = env.podspawn(&["doctor", "--sshd-config", sshd_config.to_str().unwrap()]);
    run.assert_code(1);
    let stdout = run.stdout();
    for expected in [
        &format!(
            "✗ {} does not ask podspawn for keys\n    fix: sudo podspawn server-setup",
            sshd_config.display()
        ),
        "✓ sshd -t accepts it",
        "podspawn's privilege model wants root:docker 2755\n    fix: sudo chown root:docker ",
        &format!(
            "✗ {} does not exist\n    fix: sudo podspawn server-setup",
            env.path("state/state.db").display()
        ),
        "✓ the container engine answers (version 20.10.24)",
        "✓ the default image test-image is here",
        "✓ podspawn's networks are kept apart (iptables -t mangle, chain PODSPAWN-",
        "✓ containers cannot reach the host's own addresses (but DNS), 169.254.0.0/16 \
         (egress policy, chain PODSPAWN-",
        "ℹ containers share the host's kernel (runc); for untrusted users, gVisor",
        "ℹ the engine's storage driver overlay2 can limit each container's disk",
        "ℹ no cleanup timer or cron job",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from:\n{stdout}"
        );
    }
    // The sshd lines, the binary, the state directory, the lock and agent
    // directories, the database: each is one ✗.
    let problems = stdout.matches('✗').count();
    run.assert_stderr(&format!("podspawn: {problems} problem(s) found\n"));
}

#[test]
fn doctor_says_when_the_rule_keeping_networks_apart_is_missing() {
    let env = TestEnv::new();
    // Gone after a reboot, and a chain of another state directory still jumped to.
    let mut rules = vec![
        Rule::program("iptables", &["-w", "-t", "mangle", "-S", "PODSPAWN-*"])
            .stderr("iptables: No chain/target/match by that name.\n")
            .exit(1),
        Rule::program("iptables", &["-w", "-t", "mangle", "-S", "FORWARD"])
            .stdout("-P FORWARD ACCEPT\n-A FORWARD -j PODSPAWN-0badc0de\n"),
    ];
    rules.extend(healthy_engine());
    env.scenario(&rules);
    env.write_config("defaults:\n  image: test-image\n");
    let run = env.podspawn(&["doctor", "--sshd-config", "/nonexistent/sshd_config"]);
    run.assert_code(1);
    let said = run.stdout();
    assert!(
        said.contains(
            "✗ podspawn's iptables rules are not all in place (without them, Docker's own rules \
             let packets between networks through while networks are made, and containers reach \
             the host): missing chain PODSPAWN-"
        ),
        "{said}"
    );
    assert!(
        said.contains("fix: sudo podspawn cleanup --rules (iptables rules do not last a reboot"),
        "{said}"
    );
    assert!(
        said.contains(
            "⚠ mangle FORWARD also jumps to PODSPAWN-0badc0de, another podspawn installation's"
        ),
        "{said}"
    );
}

#[test]
fn doctor_without_the_right_to_read_iptables_says_so_not_that_the_rule_is_missing() {
    let env = TestEnv::new();
    let mut rules = vec![
        Rule::program("iptables", &["-w", "-t", "mangle", "**"])
            .stderr("iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n")
            .exit(4),
    ];
    rules.extend(healthy_engine());
    env.scenario(&rules);
    env.write_config("defaults:\n  image: test-image\n");
    let run = env.podspawn(&["doctor", "--sshd-config", "/nonexistent/sshd_config"]);
    let said = run.stdout();
    assert!(
        said.contains("✗ cannot read the host's iptables rules: iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n    fix: run podspawn doctor as root"),
        "{said}"
    );
    assert!(!said.contains("missing chain"), "{said}");
}

#[test]
fn doctor_reports_an_engine_that_does_not_answer() {
    let env = TestEnv::new();
    let mut rules = vec![
        Rule::docker(&["version", "**"])
            .stderr("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n")
            .exit(1),
        Rule::docker(&["info", "**"])
            .stderr("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n")
            .exit(1),
    ];
    rules.extend(crate::support::iptables_set_up());
    env.scenario(&rules);
    let run = env.podspawn(&["doctor", "--sshd-config", "/nonexistent/sshd_config"]);
    run.assert_code(1);
    assert!(
        run.stdout()
            .contains("✗ the container engine does not answer"),
        "{}",
        run.stdout()
    );
    assert!(
        run.stdout()
            .contains("fix: start Docker, or set docker.host"),
        "{}",
        run.stdout()
    );
}

#[test]
fn doctor_on_a_server_set_up_by_server_setup_finds_nothing_wrong() {
    if !is_root() {
        return crate::support::skip("doctor test", "not root (server-setup creates a group)");
    }
    let env = TestEnv::new();
    env.fake_program("sshd");
    let group = format!("pstd{}", std::process::id());
    env.set_group(&group);
    let config = fs::read_to_string(env.config_path()).unwrap();
    env.write_config_text(&format!("{config}defaults:\n  image: test-image\n"));
    let sshd_config = env.path("sshd_config");
    fs::write(&sshd_config, "Port 22\n").unwrap();
    // server-setup adds the isolation rule, then doctor finds it.
    let mut rules = crate::support::iptables_to_be_set_up();
    rules.extend(healthy_engine());
    env.scenario(&rules);
    // podspawn installed as it should be: root:docker 2755.
    let binary = env.path("bin/podspawn");
    crate::support::copy_executable(
        std::path::Path::new(crate::support::PODSPAWN),
        &binary,
        0o755,
    );
    let docker_gid = fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|line| {
            line.strip_prefix("docker:x:")
                .and_then(|rest| rest.split(':').next()?.parse().ok())
        });
    let Some(docker_gid) = docker_gid else {
        return crate::support::skip("doctor test", "no docker group");
    };
    std::os::unix::fs::chown(&binary, Some(0), Some(docker_gid)).unwrap();
    fs::set_permissions(&binary, fs::Permissions::from_mode(0o2755)).unwrap();
    let run_installed = |args: &[&str]| {
        let output = std::process::Command::new(&binary)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                env.path("bin").display().to_string() + ":/usr/sbin:/usr/bin:/bin",
            )
            .env("PODSPAWN_CONFIG", env.config_path())
            .output()
            .unwrap();
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).to_string(),
            String::from_utf8_lossy(&output.stderr).to_string(),
        )
    };
    let path = sshd_config.display().to_string();
    let _group = GroupGuard(group.clone());
    let (code, _, stderr) = run_installed(&["server-setup", "--sshd-config", &path, "--no-reload"]);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, stdout, stderr) = run_installed(&["doctor", "--sshd-config", &path]);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
    assert!(!stdout.contains('✗'), "{stdout}");
    assert!(stdout.contains("is root:docker 2755"), "{stdout}");
}

/// Removes the test's group when the test ends, however it ends.
struct GroupGuard(String);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("groupdel").arg(&self.0).status();
    }
}

fn probe_output(missing: &[&str]) -> String {
    let values = [
        ("shell", "/bin/bash"),
        ("configured_shell", "/bin/bash"),
        ("sftp-server", "/usr/lib/openssh/sftp-server"),
        ("scp", "/usr/bin/scp"),
        ("rsync", "/usr/bin/rsync"),
        ("git", "/usr/bin/git"),
        ("utf8", "C.utf8"),
        ("grep", "/bin/grep"),
        ("cat", "/bin/cat"),
        ("sleep", "/bin/sleep"),
    ];
    values
        .iter()
        .map(|(key, value)| format!("{key}={}\n", if missing.contains(key) { "" } else { value }))
        .collect()
}

#[test]
fn verify_image_reports_each_item_and_the_package_of_what_is_missing() {
    let env = TestEnv::new();
    env.scenario(&[Rule::docker(&["run", "--rm", "--network", "none", "**"])
        .stdout(&probe_output(&["rsync", "git"]))]);
    let run = env.podspawn(&["verify-image", "some/image:1"]);
    run.assert_code(1);
    let stdout = run.stdout();
    assert!(
        stdout.starts_with("verify-image some/image:1\n✓ shell          /bin/bash\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("✓ sftp-server    /usr/lib/openssh/sftp-server\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "✗ rsync          missing, for rsync over SSH (Debian/Ubuntu package: rsync)\n"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "✗ git            missing, for cloning, agent forwarding (Debian/Ubuntu package: git)\n"
        ),
        "{stdout}"
    );
    run.assert_stderr("podspawn: some/image:1 lacks 2 of what sessions use\n");
    let call = env.docker_calls().remove(0);
    for flag in ["--rm", "--cap-drop", "--entrypoint"] {
        assert!(call.argv.contains(&flag.to_string()), "{:?}", call.argv);
    }
    assert!(call.flags("--label").contains(&"podspawn.managed=true"));
}

#[test]
fn verify_image_passes_a_complete_image_and_warns_about_a_missing_shell() {
    let env = TestEnv::new();
    let mut output = probe_output(&["configured_shell"]);
    output = output.replace("shell=/bin/bash", "shell=/bin/sh");
    env.scenario(&[Rule::docker(&["run", "**"]).stdout(&output)]);
    let run = env.podspawn(&["verify-image", "minimal"]);
    run.assert_success().assert_stderr("");
    assert!(
        run.stdout().contains(
            "⚠ shell          /bin/sh (defaults.shell /bin/bash is missing; /bin/sh is used)"
        ),
        "{}",
        run.stdout()
    );
}

#[test]
fn verify_image_refuses_an_image_without_sh() {
    let env = TestEnv::new();
    env.scenario(&[Rule::docker(&["run", "**"])
        .stderr("docker: Error response from daemon: failed to create shim task: exec: \"/bin/sh\": stat /bin/sh: no such file or directory\n")
        .exit(127)]);
    let run = env.podspawn(&["verify-image", "distroless"]);
    run.assert_code(1);
    assert!(
        run.stdout().contains("✗ /bin/sh         missing"),
        "{}",
        run.stdout()
    );
    run.assert_stderr("podspawn: distroless cannot be used: it has no working /bin/sh\n");
}

/// A runtime the engine does not know, and a user's settings file that is wrong: each
/// is one ✗ naming what to do (the file with its line).
#[test]
fn doctor_names_a_missing_runtime_and_a_broken_users_file() {
    if !is_root() {
        return crate::support::skip("doctor's user files", "not root (the files must be root's)");
    }
    let env = TestEnv::new();
    env.scenario(&healthy_engine());
    env.write_config("defaults:\n  image: test-image\nsecurity:\n  runtime: runsc\n");
    // Where spawn would trust them: root's all the way up (not under /tmp).
    struct Removed(std::path::PathBuf);
    impl Drop for Removed {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }
    let dir = Removed(std::path::PathBuf::from(format!(
        "/var/lib/podspawn-test-users-{}",
        std::process::id()
    )));
    let users = dir.0.join("users");
    fs::create_dir_all(&users).unwrap();
    for path in [&dir.0, &users] {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    for (name, text, mode) in [
        ("alice.yaml", "cpus: 1\n", 0o644),
        ("bob.yaml", "cpus: 1\nmemroy: 1g\n", 0o644),
        ("carol.yaml", "cpus: 1\n", 0o600),
    ] {
        fs::write(users.join(name), text).unwrap();
        fs::set_permissions(users.join(name), fs::Permissions::from_mode(mode)).unwrap();
    }
    let config = fs::read_to_string(env.config_path()).unwrap();
    env.write_config_text(&config.replacen(
        "  create_accounts: false\n",
        &format!(
            "  create_accounts: false\n  user_dir: {}\n",
            users.display()
        ),
        1,
    ));
    let run = env.podspawn(&["doctor", "--sshd-config", "/nonexistent/sshd_config"]);
    run.assert_code(1);
    let said = run.stdout();
    for expected in [
        "✗ the engine has no runtime runsc (it has runc): every session that uses it fails to start\n    fix: apt-get install runsc; in /etc/docker/daemon.json: \"runtimes\": {\"runsc\": {\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=host\", \"--host-uds=open\"]}}; then kill -HUP $(pidof dockerd)",
        &format!("✓ {} is valid", users.join("alice.yaml").display()),
        &format!(
            "✗ config {}, line 2: memroy: unknown key",
            users.join("bob.yaml").display()
        ),
        "    fix: correct or remove it: that user's logins fail until then",
        &format!(
            "✗ refusing config {}: mode 0600: spawn runs as the user and cannot read it (0644)",
            users.join("carol.yaml").display()
        ),
    ] {
        assert!(
            said.contains(expected),
            "{expected:?} missing from:\n{said}"
        );
    }
}

/// A disk limit on a storage driver that has none would fail every container: doctor
/// says so; without one it says what the driver allows.
#[test]
fn doctor_says_when_the_storage_driver_cannot_limit_disk() {
    let env = TestEnv::new();
    let mut rules =
        vec![Rule::docker(&["info", "--format", "*"]).stdout("runc \tfuse-overlayfs\n")];
    rules.extend(healthy_engine());
    env.scenario(&rules);
    env.write_config("defaults:\n  image: test-image\n  disk_size: 10g\n");
    let said = env
        .podspawn(&["doctor", "--sshd-config", "/nonexistent/sshd_config"])
        .stdout();
    assert!(
        said.contains(
            "✗ defaults.disk_size is set, and the engine's storage driver fuse-overlayfs has no \
             per-container disk limit: every container fails to start\n    fix: remove defaults.disk_size"
        ),
        "{said}"
    );
    env.write_config("defaults:\n  image: test-image\n");
    let said = env
        .podspawn(&["doctor", "--sshd-config", "/nonexistent/sshd_config"])
        .stdout();
    assert!(
        said.contains(
            "ℹ the engine's storage driver fuse-overlayfs has no per-container disk limit; \
             security.read_only_root keeps users off the disk"
        ),
        "{said}"
    );
}
