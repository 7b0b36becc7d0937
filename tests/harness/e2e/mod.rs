//! End to end: a real OpenSSH sshd of the test's own (loopback port, own config and
//! host key), podspawn installed `root:docker 2755` as its AuthorizedKeysCommand, a
//! real Docker engine, real Unix accounts, and the real ssh, scp, sftp and rsync
//! clients.
//!
//! Runs whenever it can (root, an engine, sshd installed); otherwise every test says
//! in one line why it is skipped. A `Server` cleans up on drop — its sshd, accounts,
//! containers, networks, processes and files — also when a test fails. The one thing
//! it may leave is `/run/sshd`, sshd's standard privilege-separation directory, made
//! when missing because sshd refuses to start without it.

mod forwarding;
mod lifecycle;
mod sessions;
mod transfer;

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::real_engine::{docker_gid, image, unavailable};
use crate::support::PODSPAWN;

pub const SSHD: &str = "/usr/sbin/sshd";

/// Why this layer cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if let Some(reason) = unavailable() {
        return Some(reason);
    }
    for program in [
        SSHD,
        "/usr/bin/ssh",
        "/usr/bin/scp",
        "/usr/bin/sftp",
        "/usr/bin/rsync",
    ] {
        if !Path::new(program).exists() {
            return Some(format!("{program} is not installed"));
        }
    }
    None
}

/// Starts a server for a test, or returns from the test saying why it cannot.
#[macro_export]
macro_rules! server_or_skip {
    ($grace:expr, $users:expr) => {
        match $crate::e2e::skip_reason() {
            Some(reason) => {
                eprintln!("end-to-end test skipped: {reason}");
                return;
            }
            None => $crate::e2e::Server::start($grace, $users),
        }
    };
}

/// A Unix account made for a test.
pub struct Account {
    pub name: String,
    pub uid: u32,
    /// The client's private key for it.
    pub key: PathBuf,
}

impl Account {
    pub fn container(&self) -> String {
        format!("podspawn-{}", self.name)
    }
}

pub struct Server {
    pub root: PathBuf,
    pub port: u16,
    sshd: Option<Child>,
    /// Registered with podspawn.
    pub users: Vec<Account>,
    /// An ordinary account that logs in with its own ~/.ssh/authorized_keys.
    pub plain: Account,
}

fn run_quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Server {
    /// A server whose podspawn users are `users` new accounts (plus one ordinary,
    /// unregistered account), with `grace_period: grace`.
    pub fn start(grace: &str, users: usize) -> Server {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id());
        let root = PathBuf::from(format!("/var/lib/podspawn-e2e-{tag}"));
        let _ = fs::remove_dir_all(&root);
        for (dir, mode) in [
            ("", 0o755),
            ("bin", 0o755),
            ("keys", 0o755),
            ("state", 0o2770),
            ("client", 0o700),
            ("home", 0o755),
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
            fs::set_permissions(root.join(dir), fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut server = Server {
            root,
            port: 0,
            sshd: None,
            users: Vec::new(),
            plain: Account {
                name: String::new(),
                uid: 0,
                key: PathBuf::new(),
            },
        };
        server.install(grace);
        for index in 0..users {
            let account = server.account(&format!("pse{tag}u{index}"), false);
            server.register(&account);
            server.users.push(account);
        }
        server.plain = server.account(&format!("pse{tag}p"), true);
        server.start_sshd();
        server
    }

    fn install(&self, grace: &str) {
        let docker = docker_gid();
        std::os::unix::fs::chown(self.root.join("state"), Some(0), Some(docker)).unwrap();
        let binary = self.root.join("bin/podspawn");
        fs::copy(PODSPAWN, &binary).unwrap();
        std::os::unix::fs::chown(&binary, Some(0), Some(docker)).unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o2755)).unwrap();
        let config = format!(
            "auth:\n  key_dir: {root}/keys\ndefaults:\n  image: {image}\n  memory: 1g\n\
             session:\n  grace_period: {grace}\n\
             state:\n  db_path: {root}/state/state.db\n  lock_dir: {root}/state/locks\n  agent_dir: {root}/state/agents\n\
             log:\n  file: {root}/state/podspawn.log\n  level: debug\n",
            root = self.root.display(),
            image = image(),
        );
        fs::write(self.root.join("config.yaml"), config).unwrap();
        fs::set_permissions(
            self.root.join("config.yaml"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let key = self.root.join("ssh_host_ed25519_key");
        assert!(run_quietly(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]
        ));
    }

    /// A Unix account with a client key; `plain` ones get a home and authorize the
    /// key in ~/.ssh/authorized_keys, as any ordinary user would.
    fn account(&self, name: &str, plain: bool) -> Account {
        // podspawn users need no home of their own on the host, but sshd complains
        // on the session's stderr when it cannot chdir to one: give them an empty,
        // root-owned directory.
        let home = self.root.join("home").display().to_string();
        let mut args = vec!["--shell", "/bin/sh", "--user-group"];
        if plain {
            args.push("--create-home");
        } else {
            args.extend(["--no-create-home", "--home-dir", &home]);
        }
        args.push(name);
        let created = (0..5).any(|attempt| {
            std::thread::sleep(Duration::from_millis(200 * attempt));
            run_quietly("useradd", &args)
        });
        assert!(created, "useradd {name} failed");
        // `*`: no password, but not locked (sshd refuses locked accounts' keys).
        assert!(run_quietly("usermod", &["-p", "*", name]));
        let c_name = CString::new(name).unwrap();
        let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
        assert!(!entry.is_null());
        let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
        let key = self.root.join("client").join(name);
        assert!(run_quietly(
            "ssh-keygen",
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                name,
                "-f",
                key.to_str().unwrap()
            ]
        ));
        if plain {
            let ssh_dir = PathBuf::from(format!("/home/{name}/.ssh"));
            fs::create_dir_all(&ssh_dir).unwrap();
            fs::copy(key.with_extension("pub"), ssh_dir.join("authorized_keys")).unwrap();
            fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700)).unwrap();
            for path in [ssh_dir.clone(), ssh_dir.join("authorized_keys")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
        }
        Account {
            name: name.to_string(),
            uid,
            key,
        }
    }

    /// `podspawn add-user NAME --key-file KEY.pub`, as an admin would.
    fn register(&self, account: &Account) {
        let output = self.podspawn(&[
            "add-user",
            &account.name,
            "--key-file",
            account.key.with_extension("pub").to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "add-user: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The installed podspawn, as root, with this server's config.
    pub fn podspawn(&self, args: &[&str]) -> Output {
        Command::new(self.root.join("bin/podspawn"))
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("PODSPAWN_CONFIG", self.root.join("config.yaml"))
            .output()
            .unwrap()
    }

    fn start_sshd(&mut self) {
        if !Path::new("/run/sshd").exists() {
            let _ = fs::create_dir_all("/run/sshd");
            let _ = fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755));
        }
        let users: Vec<&str> = self.users.iter().map(|user| user.name.as_str()).collect();
        let match_users = if users.is_empty() {
            "nobody".to_string()
        } else {
            users.join(",")
        };
        for _attempt in 0..5 {
            self.port = free_port();
            let config = format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/ssh_host_ed25519_key\n\
                 PidFile {root}/sshd.pid\nUsePAM no\nPasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\n\
                 AuthorizedKeysCommand {root}/bin/podspawn --config {root}/config.yaml auth-keys %u %t %k\n\
                 AuthorizedKeysCommandUser nobody\nSubsystem sftp internal-sftp\n\
                 AcceptEnv LANG LC_* PODSPAWN_PROJECT\nX11Forwarding yes\nAllowAgentForwarding yes\n\
                 AllowTcpForwarding yes\nLogLevel VERBOSE\n\
                 Match User {match_users}\n    AllowStreamLocalForwarding no\n    AllowTcpForwarding local\n\
                 \x20   PermitTunnel no\n    PermitUserRC no\n",
                port = self.port,
                root = self.root.display(),
            );
            fs::write(self.root.join("sshd_config"), config).unwrap();
            let log = fs::File::create(self.root.join("sshd.log")).unwrap();
            let mut sshd = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(self.root.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("sshd starts");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    self.sshd = Some(sshd);
                    return;
                }
                if sshd.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        panic!("sshd did not start:\n{}", self.sshd_log());
    }

    pub fn sshd_log(&self) -> String {
        fs::read_to_string(self.root.join("sshd.log")).unwrap_or_default()
    }

    pub fn podspawn_log(&self) -> String {
        fs::read_to_string(self.root.join("state/podspawn.log")).unwrap_or_default()
    }

    /// Everything a failing assertion should show.
    pub fn explain(&self, output: &Output) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}\n--- podspawn log:\n{}\n--- sshd log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.podspawn_log(),
            self.sshd_log()
        )
    }

    /// Client options every tool shares: this server, this account's key only, no
    /// prompts, no host key bookkeeping, and no agent.
    pub fn client_options(&self, account: &Account) -> Vec<String> {
        self.options(account, None)
    }

    fn options(&self, account: &Account, agent: Option<&Path>) -> Vec<String> {
        let agent = agent.map_or("none".to_string(), |path| path.display().to_string());
        [
            "-F",
            "none",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "IdentitiesOnly=yes",
        ]
        .iter()
        .map(|option| option.to_string())
        .chain(["-o".to_string(), format!("IdentityAgent={agent}")])
        .chain(["-i".to_string(), account.key.display().to_string()])
        .collect()
    }

    /// `ssh -A` with the local agent at `agent`, running `command`.
    pub fn ssh_with_agent(&self, account: &Account, agent: &Path, command: &str) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.args(self.options(account, Some(agent)))
            .args(["-A", "-p", &self.port.to_string()])
            .arg(format!("{}@127.0.0.1", account.name))
            .arg("--")
            .arg(command)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.root.join("client"));
        ssh
    }

    /// `ssh -p PORT [extra] user@127.0.0.1 [command]`, not yet run.
    pub fn ssh(&self, account: &Account, extra: &[&str], command: Option<&str>) -> Command {
        let mut ssh = Command::new("ssh");
        ssh.args(self.client_options(account))
            .args(["-p", &self.port.to_string()])
            .args(extra)
            .arg(format!("{}@127.0.0.1", account.name));
        if let Some(command) = command {
            ssh.arg("--").arg(command);
        }
        ssh.env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.root.join("client"));
        ssh
    }

    /// Runs a remote command with stdin closed.
    pub fn run(&self, account: &Account, command: &str) -> Output {
        self.ssh(account, &[], Some(command))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The scp/sftp/rsync `-e`/option form of the client options.
    pub fn ssh_command_line(&self, account: &Account) -> String {
        format!(
            "ssh {} -p {}",
            self.client_options(account).join(" "),
            self.port
        )
    }

    pub fn container_exists(&self, account: &Account) -> bool {
        run_quietly(
            "docker",
            &["inspect", "--type", "container", &account.container()],
        )
    }

    /// Commands running in `account`'s container as the account.
    pub fn user_processes(&self, account: &Account) -> Vec<String> {
        let output = Command::new("docker")
            .args(["top", &account.container(), "-eo", "pid,uid,args"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .skip(1)
            .filter(|line| line.split_whitespace().nth(1) == Some(account.uid.to_string().as_str()))
            .map(str::to_string)
            .collect()
    }

    pub fn wait_until(
        &self,
        timeout: Duration,
        mut condition: impl FnMut() -> bool,
    ) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if condition() {
                return Some(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }

    /// A scratch directory for the test's local files.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.root.join("client").join(name);
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        for account in self.users.iter().chain(std::iter::once(&self.plain)) {
            if account.name.is_empty() {
                continue;
            }
            for args in [
                &["rm", "--force", &account.container()][..],
                &["network", "rm", &account.container()],
            ] {
                run_quietly("docker", args);
            }
            run_quietly("pkill", &["-KILL", "-u", &account.name]);
        }
        std::thread::sleep(Duration::from_millis(200));
        for account in self.users.iter().chain(std::iter::once(&self.plain)) {
            if !account.name.is_empty() {
                run_quietly("userdel", &["--remove", &account.name]);
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}
