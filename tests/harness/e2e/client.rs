//! The laptop side through the real ssh client: `podspawn setup` in a private home,
//! a client config naming this test's sshd, then `ssh USER@NAME.pod` — through the
//! block's `Match exec`, the per-name file it includes and `podspawn connect` as the
//! ProxyCommand — into the right environment, with scp, sftp and a ControlMaster
//! connection as VS Code makes one, host keys checked once per server.
//!
//! ssh reads `~/.ssh/config` of the account's passwd home, not `$HOME`, so the
//! laptop's file is given with `-F`: the same file, read the same way.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use super::{Account, Server};
use crate::support::PODSPAWN;

/// A developer's laptop: a home of its own, with podspawn set up in it.
struct Laptop<'a> {
    server: &'a Server,
    home: PathBuf,
}

impl<'a> Laptop<'a> {
    /// A new home with `podspawn setup` run in it and `config` as the client config.
    fn set_up(server: &'a Server, name: &str, config: &str) -> Laptop<'a> {
        let laptop = Laptop {
            server,
            home: server.scratch(name),
        };
        let setup = laptop.podspawn(&["setup"]);
        assert!(setup.status.success(), "{}", server.explain(&setup));
        let said = String::from_utf8_lossy(&setup.stdout);
        assert!(said.contains("added podspawn's block to"), "{said}");
        fs::create_dir_all(laptop.home.join(".podspawn")).unwrap();
        fs::write(laptop.home.join(".podspawn/config.yaml"), config).unwrap();
        laptop
    }

    fn podspawn(&self, args: &[&str]) -> Output {
        Command::new(PODSPAWN)
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.home)
            .output()
            .unwrap()
    }

    /// The options of every client here: the laptop's ssh config, its known_hosts
    /// (a new key is taken, a changed one refused), the account's key, no prompts.
    fn options(&self, account: &Account, config: &str) -> Vec<String> {
        let mut options: Vec<String> = vec!["-F".into(), config.to_string()];
        for option in [
            format!("UserKnownHostsFile={}", self.path(".ssh/known_hosts")),
            "StrictHostKeyChecking=accept-new".to_string(),
            "BatchMode=yes".to_string(),
            "IdentitiesOnly=yes".to_string(),
            "IdentityAgent=none".to_string(),
        ] {
            options.extend(["-o".to_string(), option]);
        }
        options.extend(["-i".to_string(), account.key.display().to_string()]);
        options
    }

    fn path(&self, relative: &str) -> String {
        self.home.join(relative).display().to_string()
    }

    /// `program` (ssh, scp, sftp) with the laptop's options and environment.
    fn client(&self, program: &str, account: &Account) -> Command {
        self.client_reading(program, account, &self.path(".ssh/config"))
    }

    /// The same, reading the ssh config `config` (`none`: none at all).
    fn client_reading(&self, program: &str, account: &Account, config: &str) -> Command {
        let mut command = Command::new(program);
        command
            .args(self.options(account, config))
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", &self.home)
            .stdin(Stdio::null());
        command
    }

    /// `ssh USER@HOST COMMAND`, run.
    fn ssh(&self, account: &Account, host: &str, command: &str) -> Output {
        self.client("ssh", account)
            .arg(format!("{}@{host}", account.name))
            .args(["--", command])
            .output()
            .unwrap()
    }

    fn known_hosts(&self) -> Vec<String> {
        fs::read_to_string(self.home.join(".ssh/known_hosts"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// What ran, for a failing assertion.
    fn explain(&self, output: &Output) -> String {
        let files: String = fs::read_dir(self.home.join(".podspawn/ssh"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| fs::read_to_string(entry.path()).unwrap_or_default())
            .collect();
        format!(
            "{}\n--- ~/.ssh/config:\n{}\n--- per-name files:\n{files}",
            self.server.explain(output),
            fs::read_to_string(self.home.join(".ssh/config")).unwrap_or_default()
        )
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

#[test]
fn pod_names_reach_their_environments_with_every_client_and_one_host_key() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let laptop = Laptop::set_up(
        &server,
        "laptop",
        &format!("servers:\n  default: 127.0.0.1:{}\n", server.port),
    );

    let api = laptop.ssh(user, "api.pod", "hostname; echo $PODSPAWN_PROJECT");
    assert!(api.status.success(), "{}", laptop.explain(&api));
    assert_eq!(
        stdout(&api),
        format!("podspawn-{}-api\napi\n", user.name),
        "{}",
        laptop.explain(&api)
    );
    // ssh's note of the new key, under the server's name, and nothing else.
    assert_eq!(
        String::from_utf8_lossy(&api.stderr),
        format!(
            "Warning: Permanently added '[127.0.0.1]:{}' (ED25519) to the list of known hosts.\r\n",
            server.port
        ),
        "{}",
        laptop.explain(&api)
    );
    // A client that will not take the connection handed over gets it relayed.
    let no_fdpass = laptop
        .client("ssh", user)
        .args(["-o", "ProxyUseFdpass=no"])
        .arg(format!("{}@api.pod", user.name))
        .args(["--", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&no_fdpass),
        format!("podspawn-{}-api\n", user.name),
        "{}",
        laptop.explain(&no_fdpass)
    );
    // Host names are not case sensitive; ssh's Host lines are, so the name's file
    // takes the spelling ssh was given.
    let upper = laptop.ssh(user, "API.pod", "hostname");
    assert_eq!(
        stdout(&upper),
        format!("podspawn-{}-api\n", user.name),
        "{}",
        laptop.explain(&upper)
    );
    let work = laptop.ssh(user, "work.pod", "hostname");
    assert_eq!(
        stdout(&work),
        format!("podspawn-{}-work\n", user.name),
        "{}",
        laptop.explain(&work)
    );
    // The server's name, not the project's, holds the key: asked once per server.
    let known = laptop.known_hosts();
    assert_eq!(known.len(), 1, "{known:?}");
    assert!(
        known[0].starts_with(&format!("[127.0.0.1]:{} ", server.port)),
        "{known:?}"
    );
    // The server itself, without .pod: the default environment, the same entry.
    let plain = laptop
        .client("ssh", user)
        .args(["-p", &server.port.to_string()])
        .arg(format!("{}@127.0.0.1", user.name))
        .args(["--", "hostname"])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&plain),
        format!("podspawn-{}\n", user.name),
        "{}",
        laptop.explain(&plain)
    );
    assert_eq!(laptop.known_hosts().len(), 1);

    // scp and sftp to a .pod name land in its environment.
    let local = laptop.home.join("notes.txt");
    fs::write(&local, "to api\n").unwrap();
    let scp = laptop
        .client("scp", user)
        .arg(&local)
        .arg(format!("{}@api.pod:/tmp/by-scp.txt", user.name))
        .output()
        .unwrap();
    assert!(scp.status.success(), "{}", laptop.explain(&scp));
    let batch = laptop.home.join("sftp-batch");
    fs::write(
        &batch,
        format!("put {} /tmp/by-sftp.txt\nls /tmp\n", local.display()),
    )
    .unwrap();
    let sftp = laptop
        .client("sftp", user)
        .args(["-b", &batch.display().to_string()])
        .arg(format!("{}@api.pod", user.name))
        .output()
        .unwrap();
    assert!(sftp.status.success(), "{}", laptop.explain(&sftp));
    // rsync runs ssh itself: the laptop's options are its -e.
    let rsync = Command::new("rsync")
        .arg("-e")
        .arg(format!(
            "ssh {}",
            laptop.options(user, &laptop.path(".ssh/config")).join(" ")
        ))
        .arg(&local)
        .arg(format!("{}@api.pod:/tmp/by-rsync.txt", user.name))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", &laptop.home)
        .output()
        .unwrap();
    assert!(rsync.status.success(), "{}", laptop.explain(&rsync));
    let all = laptop.ssh(
        user,
        "api.pod",
        "cat /tmp/by-scp.txt /tmp/by-sftp.txt /tmp/by-rsync.txt",
    );
    assert_eq!(
        stdout(&all),
        "to api\nto api\nto api\n",
        "{}",
        laptop.explain(&all)
    );
    let elsewhere = laptop.ssh(user, "work.pod", "ls /tmp/by-scp.txt 2>&1 || true");
    assert!(
        stdout(&elsewhere).contains("No such file"),
        "{}",
        stdout(&elsewhere)
    );

    // A terminal: its size, a resize, Ctrl-C and the exit code, through the name.
    let terminal = crate::real_engine::Terminal::start(
        {
            let mut ssh = laptop.client("ssh", user);
            ssh.arg("-tt").arg(format!("{}@api.pod", user.name));
            ssh
        },
        24,
        80,
    );
    crate::real_engine::check_terminal_session(terminal, &|| {
        format!("{}\n{}", server.podspawn_log(), server.sshd_log())
    });

    // The seeds' line by hand, without setup's block: `connect` relaying every
    // byte, to the same place, and 16 MiB through it and back unchanged.
    let relayed = |command: &str| {
        let mut ssh = laptop.client_reading("ssh", user, "none");
        ssh.args(["-o", &format!("ProxyCommand={PODSPAWN} connect %r %h %p")])
            .args(["-o", "SetEnv=PODSPAWN_PROJECT=api"])
            .arg(format!("{}@api.pod", user.name))
            .args(["--", command]);
        ssh
    };
    let by_hand = relayed("hostname").output().unwrap();
    assert_eq!(
        stdout(&by_hand),
        format!("podspawn-{}-api\n", user.name),
        "{}",
        laptop.explain(&by_hand)
    );
    let data: Vec<u8> = (0..16u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8)
        .collect();
    let mut echo = relayed("cat")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = echo.stdin.take().unwrap();
    let sent = data.clone();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut input, &sent));
    let echoed = echo.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(echoed.status.success(), "{}", laptop.explain(&echoed));
    assert!(
        echoed.stdout == data,
        "16 MiB came back changed ({} bytes)",
        echoed.stdout.len()
    );

    // VS Code's way: one ControlMaster connection through the proxy, and channels
    // in parallel over it.
    let control = format!("ControlPath={}", laptop.path("cm-%C"));
    let mux = |command: &str| {
        let mut ssh = laptop.client("ssh", user);
        ssh.args(["-o", "ControlMaster=auto", "-o", &control])
            .args(["-o", "ControlPersist=60"])
            .arg(format!("{}@api.pod", user.name))
            .args(["--", command])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        ssh
    };
    let logins = || {
        server
            .sshd_log()
            .matches(&format!("Accepted publickey for {} ", user.name))
            .count()
    };
    let first = mux("echo master").output().unwrap();
    assert_eq!(stdout(&first), "master\n", "{}", laptop.explain(&first));
    let before = logins();
    let channels: Vec<_> = (0..4)
        .map(|n| {
            mux(&format!("sleep 1; echo channel-{n}; hostname"))
                .spawn()
                .unwrap()
        })
        .collect();
    for (n, channel) in channels.into_iter().enumerate() {
        let output = channel.wait_with_output().unwrap();
        assert_eq!(
            stdout(&output),
            format!("channel-{n}\npodspawn-{}-api\n", user.name),
            "{}",
            laptop.explain(&output)
        );
    }
    assert_eq!(logins(), before, "the channels logged in again");
    let exit = laptop
        .client("ssh", user)
        .args(["-o", &control, "-O", "exit"])
        .arg(format!("{}@api.pod", user.name))
        .output()
        .unwrap();
    assert!(exit.status.success(), "{}", laptop.explain(&exit));

    // --remove: the file setup made is gone, and so are the per-name files.
    let removed = laptop.podspawn(&["setup", "--remove"]);
    assert!(removed.status.success(), "{}", laptop.explain(&removed));
    assert!(!laptop.home.join(".ssh/config").exists());
    assert!(!laptop.home.join(".podspawn/ssh").exists());
}

#[test]
fn a_name_without_a_server_is_one_line_and_a_changed_host_key_is_refused() {
    let mut server = crate::server_or_skip!("60s", 1);
    let user = server.users[0].clone();
    let laptop_home = {
        let laptop = Laptop::set_up(
            &server,
            "laptop",
            &format!(
                "servers:\n  mappings:\n    api.pod: 127.0.0.1:{0}\n    web: 127.0.0.1:{0}\n",
                server.port
            ),
        );
        let nowhere = laptop.ssh(&user, "nope.pod", "true");
        assert_eq!(
            nowhere.status.code(),
            Some(255),
            "{}",
            laptop.explain(&nowhere)
        );
        assert_eq!(
            String::from_utf8_lossy(&nowhere.stderr),
            format!(
                "podspawn: no server for nope.pod: set servers.default (or servers.mappings.nope) in {}/.podspawn/config.yaml\n",
                laptop.home.display()
            )
        );
        let api = laptop.ssh(&user, "api.pod", "hostname");
        assert_eq!(
            stdout(&api),
            format!("podspawn-{}-api\n", user.name),
            "{}",
            laptop.explain(&api)
        );
        laptop.home.clone()
    };

    server.new_host_key();
    let laptop = Laptop {
        server: &server,
        home: laptop_home,
    };
    for name in ["api.pod", "web.pod"] {
        let changed = laptop.ssh(&user, name, "echo should-not-run");
        assert_eq!(
            changed.status.code(),
            Some(255),
            "{}",
            laptop.explain(&changed)
        );
        assert!(stdout(&changed).is_empty());
        let said = String::from_utf8_lossy(&changed.stderr);
        assert!(
            said.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                || said.contains("Host key verification failed"),
            "{said}"
        );
    }
    assert_eq!(
        laptop.known_hosts().len(),
        1,
        "the old key is kept, not replaced"
    );
}
