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

mod audit;
mod client;
mod forwarding;
mod hardening;
mod lifecycle;
mod privilege;
mod projects;
mod services;
mod sessions;
mod setup;
mod transfer;

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::real_engine::{
    container_exists, docker_gid, image, processes_of, unavailable, wait_until,
};
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
        $crate::server_or_skip!($grace, $users, false)
    };
    ($grace:expr, $users:expr, $use_pam:expr) => {
        match $crate::e2e::skip_reason() {
            Some(reason) => return $crate::support::skip("end-to-end test", &reason),
            None => $crate::e2e::Server::start($grace, $users, $use_pam),
        }
    };
}

/// A Unix account made for a test.
#[derive(Clone)]
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
    /// The group of this server's podspawn users (server-setup makes it).
    pub group: String,
    /// Registered with podspawn.
    pub users: Vec<Account>,
    /// An ordinary account that logs in with its own ~/.ssh/authorized_keys.
    pub plain: Account,
    /// The host's iptables chain server-setup made for this server (removed with it).
    isolation_chain: Option<String>,
}

/// What every client of these tests passes: no config of the machine's, no prompts
/// about host keys, no noise; then `-o` each of `extra`.
fn base_options(extra: &[&str]) -> Vec<String> {
    let mut options: Vec<String> = [
        "-F",
        "none",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]
    .iter()
    .map(|option| option.to_string())
    .collect();
    for option in extra {
        options.extend(["-o".to_string(), option.to_string()]);
    }
    options
}

/// The iptables chain server-setup makes for a state directory: `PODSPAWN-` and the
/// installation's name.
fn isolation_chain_of(state_dir: &Path) -> String {
    format!("PODSPAWN-{}", crate::support::installation_of(state_dir))
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
    /// unregistered account), with `grace_period: grace`, and sshd's `UsePAM`.
    pub fn start(grace: &str, users: usize, use_pam: bool) -> Server {
        Server::start_with(grace, users, use_pam, "")
    }

    /// `start`, with `sections` (whole top-level sections the test layer's config
    /// does not have) added to the config.
    pub fn start_with(grace: &str, users: usize, use_pam: bool, sections: &str) -> Server {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}x{n}", std::process::id());
        let root = PathBuf::from(format!("/var/lib/podspawn-e2e-{tag}"));
        let _ = fs::remove_dir_all(&root);
        // Only what server-setup does not make: the binary's place and the client's.
        for (dir, mode) in [("", 0o755), ("bin", 0o755), ("client", 0o700)] {
            fs::create_dir_all(root.join(dir)).unwrap();
            fs::set_permissions(root.join(dir), fs::Permissions::from_mode(mode)).unwrap();
        }
        let mut server = Server {
            root,
            port: free_port(),
            sshd: None,
            group: format!("psg{tag}"),
            users: Vec::new(),
            plain: Account {
                name: String::new(),
                uid: 0,
                key: PathBuf::new(),
            },
            isolation_chain: None,
        };
        server.install(grace, use_pam, sections);
        crate::support::ensure_sshd_privsep_dir();
        // Known before server-setup runs, so that the chain goes with the server
        // however far server-setup gets.
        let chain = isolation_chain_of(&server.root.join("state"));
        server.isolation_chain = Some(chain.clone());
        assert_eq!(server.server_setup(), chain);
        for index in 0..users {
            let account = server.register(&format!("pse{tag}u{index}"));
            server.users.push(account);
        }
        server.plain = server.plain_account(&format!("pse{tag}p"));
        server.start_sshd();
        server
    }

    /// podspawn installed as production installs it (`root:docker 2755`), its
    /// config, and the base of an sshd_config: what any sshd of this test needs,
    /// with nothing of podspawn's yet.
    fn install(&self, grace: &str, use_pam: bool, sections: &str) {
        let docker = docker_gid();
        let binary = self.root.join("bin/podspawn");
        crate::support::copy_executable(Path::new(PODSPAWN), &binary, 0o755);
        std::os::unix::fs::chown(&binary, Some(0), Some(docker)).unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o2755)).unwrap();
        let config = format!(
            "auth:\n  key_dir: {root}/keys\n  group: {group}\n  home_dir: {root}/home\n\
             docker:\n  config_dir: {root}/docker-config\n\
             defaults:\n  image: {image}\n  memory: 1g\n\
             session:\n  grace_period: {grace}\n\
             state:\n  db_path: {root}/state/state.db\n  lock_dir: {root}/state/locks\n  agent_dir: {root}/state/agents\n\
             log:\n  file: {root}/state/podspawn.log\n  level: debug\n  audit_log: {root}/state/audit.jsonl\n\
             {sections}",
            root = self.root.display(),
            group = self.group,
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
        let sshd_config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {root}/ssh_host_ed25519_key\n\
             PidFile {root}/sshd.pid\nUsePAM {pam}\nPasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\nAuthorizedKeysFile .ssh/authorized_keys\n\
             Subsystem sftp internal-sftp\nAcceptEnv LANG LC_*\nX11Forwarding yes\n\
             AllowAgentForwarding yes\nAllowTcpForwarding yes\nLogLevel VERBOSE\n\
             MaxStartups 100:30:200\n",
            port = self.port,
            root = self.root.display(),
            pam = if use_pam { "yes" } else { "no" },
        );
        fs::write(self.root.join("sshd_config"), sshd_config).unwrap();
    }

    /// `podspawn server-setup --sshd-config` on this test's sshd_config: the real
    /// path an admin takes, and what the end-to-end tests run on. Returns the iptables
    /// chain it made (this server's own: it is named after the state directory).
    fn server_setup(&self) -> String {
        let sshd_config = self.root.join("sshd_config").display().to_string();
        let output = self.podspawn(&["server-setup", "--sshd-config", &sshd_config, "--no-reload"]);
        let said = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "server-setup: {said}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        said.split("chain ")
            .nth(1)
            .and_then(|rest| rest.split(')').next())
            .filter(|chain| chain.starts_with("PODSPAWN-"))
            .unwrap_or_else(|| panic!("server-setup named no chain: {said}"))
            .to_string()
    }

    fn client_key(&self, name: &str) -> PathBuf {
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
        key
    }

    fn account_ids(name: &str) -> u32 {
        let c_name = CString::new(name).unwrap();
        let entry = unsafe { libc::getpwnam(c_name.as_ptr()) };
        assert!(!entry.is_null(), "no account {name}");
        unsafe { (*entry).pw_uid }
    }

    /// `podspawn add-user NAME --key-file KEY.pub`, as an admin would: it creates
    /// the Unix account too.
    fn register(&self, name: &str) -> Account {
        self.add_user(name).0
    }

    /// `add-user` of a new key for `name`: the account (with that key) and what
    /// add-user printed.
    pub fn add_user(&self, name: &str) -> (Account, Output) {
        let key = self.client_key(&format!("{name}-podspawn"));
        let output = self.podspawn(&[
            "add-user",
            name,
            "--key-file",
            key.with_extension("pub").to_str().unwrap(),
        ]);
        assert!(
            output.status.success(),
            "add-user: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let account = Account {
            name: name.to_string(),
            uid: Server::account_ids(name),
            key,
        };
        (account, output)
    }

    /// The name of a further account of this server (removed with it).
    pub fn account_name(&self, suffix: &str) -> String {
        format!("pse{}{suffix}", self.group.trim_start_matches("psg"))
    }

    /// An ordinary account with a home that authorizes its key in
    /// ~/.ssh/authorized_keys, as any user of the host would.
    pub fn plain_account(&self, name: &str) -> Account {
        let args = ["--shell", "/bin/sh", "--user-group", "--create-home", name];
        let created = (0..5).any(|attempt| {
            std::thread::sleep(Duration::from_millis(200 * attempt));
            run_quietly("useradd", &args)
        });
        assert!(created, "useradd {name} failed");
        // `*`: no password, but not locked (sshd refuses locked accounts' keys).
        assert!(run_quietly("usermod", &["-p", "*", name]));
        let uid = Server::account_ids(name);
        let gid = {
            let c_name = CString::new(name).unwrap();
            unsafe { (*libc::getpwnam(c_name.as_ptr())).pw_gid }
        };
        let key = self.client_key(name);
        let ssh_dir = PathBuf::from(format!("/home/{name}/.ssh"));
        fs::create_dir_all(&ssh_dir).unwrap();
        fs::copy(key.with_extension("pub"), ssh_dir.join("authorized_keys")).unwrap();
        fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700)).unwrap();
        for path in [ssh_dir.clone(), ssh_dir.join("authorized_keys")] {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
        }
        Account {
            name: name.to_string(),
            uid,
            key,
        }
    }

    /// The installed podspawn, as root, with this server's config.
    pub fn podspawn(&self, args: &[&str]) -> Output {
        self.podspawn_command(args).output().unwrap()
    }

    /// The same, to start.
    pub fn podspawn_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(self.root.join("bin/podspawn"));
        command
            .args(args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("PODSPAWN_CONFIG", self.root.join("config.yaml"));
        command
    }

    fn start_sshd(&mut self) {
        let config_path = self.root.join("sshd_config");
        for _attempt in 0..5 {
            let log = fs::File::create(self.root.join("sshd.log")).unwrap();
            let mut sshd = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config_path)
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
            // The port may have been taken meanwhile: move to another.
            let old = format!("Port {}\n", self.port);
            self.port = free_port();
            let text = fs::read_to_string(&config_path).unwrap();
            fs::write(
                &config_path,
                text.replacen(&old, &format!("Port {}\n", self.port), 1),
            )
            .unwrap();
        }
        panic!("sshd did not start:\n{}", self.sshd_log());
    }

    /// The server gets a new host key, as a reinstalled or impersonated one would.
    pub fn new_host_key(&mut self) {
        if let Some(mut sshd) = self.sshd.take() {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
        let key = self.root.join("ssh_host_ed25519_key");
        let _ = fs::remove_file(&key);
        let _ = fs::remove_file(key.with_extension("pub"));
        assert!(run_quietly(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]
        ));
        self.start_sshd();
    }

    pub fn sshd_log(&self) -> String {
        fs::read_to_string(self.root.join("sshd.log")).unwrap_or_default()
    }

    /// Every event of this server's audit log, each line parsed (a line that is no
    /// JSON object fails the test).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        crate::support::audit_events_in(&self.root.join("state/audit.jsonl"))
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
        let mut options = base_options(&["BatchMode=yes", "IdentitiesOnly=yes"]);
        options.extend(["-o".to_string(), format!("IdentityAgent={agent}")]);
        options.extend(["-i".to_string(), account.key.display().to_string()]);
        options
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

    /// Gives `account` a password (sshd's password authentication checks it).
    pub fn set_password(&self, account: &Account, password: &str) {
        let mut chpasswd = Command::new("chpasswd")
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        chpasswd
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{}:{password}\n", account.name).as_bytes())
            .unwrap();
        assert!(chpasswd.wait().unwrap().success(), "chpasswd failed");
    }

    /// `ssh` logging in as `name` by password only (given by an askpass program),
    /// running `command` with stdin closed.
    pub fn run_with_password(&self, name: &str, password: &str, command: &str) -> Output {
        let askpass = self.root.join("client").join(format!("askpass-{name}"));
        fs::write(&askpass, format!("#!/bin/sh\necho '{password}'\n")).unwrap();
        fs::set_permissions(&askpass, fs::Permissions::from_mode(0o700)).unwrap();
        Command::new("ssh")
            .args(base_options(&[
                "PubkeyAuthentication=no",
                "PreferredAuthentications=password,keyboard-interactive",
                "NumberOfPasswordPrompts=1",
                "IdentityAgent=none",
            ]))
            .args(["-p", &self.port.to_string()])
            .arg(format!("{name}@127.0.0.1"))
            .arg("--")
            .arg(command)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", self.root.join("client"))
            .env("SSH_ASKPASS", &askpass)
            .env("SSH_ASKPASS_REQUIRE", "force")
            .env("DISPLAY", ":0")
            .stdin(Stdio::null())
            .output()
            .unwrap()
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
        container_exists(&account.container())
    }

    /// Commands running in `account`'s container as the account.
    pub fn user_processes(&self, account: &Account) -> Vec<String> {
        processes_of(&account.container(), account.uid)
    }

    pub fn wait_until(
        &self,
        timeout: Duration,
        condition: impl FnMut() -> bool,
    ) -> Option<Duration> {
        wait_until(timeout, condition)
    }

    /// A project name of this server's own (so that its images are too).
    pub fn project_name(&self, base: &str) -> String {
        format!("{base}-{}", self.group.trim_start_matches("psg"))
    }

    /// A new git repo `name` under the client's files, holding `files` in its first
    /// commit.
    pub fn git_repo(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let repo = self.scratch(name);
        git(&repo, &["init", "--quiet", "--initial-branch", "main"]);
        self.commit(&repo, files);
        repo
    }

    /// Writes `files` into `repo` and commits them.
    pub fn commit(&self, repo: &Path, files: &[(&str, &str)]) {
        for (path, text) in files {
            let path = repo.join(path);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, text).unwrap();
        }
        git(repo, &["add", "--all"]);
        git(repo, &["commit", "--quiet", "--message", "change"]);
    }

    /// `ssh` as `account` into `project` (`SetEnv=PODSPAWN_PROJECT=…`, as the laptop
    /// client sends it), not yet run.
    pub fn ssh_project(
        &self,
        account: &Account,
        project: &str,
        extra: &[&str],
        command: Option<&str>,
    ) -> Command {
        let set_env = format!("SetEnv=PODSPAWN_PROJECT={project}");
        let mut options = vec!["-o", &set_env];
        options.extend(extra);
        self.ssh(account, &options, command)
    }

    /// Runs a remote command in `project` with stdin closed.
    pub fn run_in(&self, account: &Account, project: &str, command: &str) -> Output {
        self.ssh_project(account, project, &[], Some(command))
            .stdin(Stdio::null())
            .output()
            .unwrap()
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
        // Every account of this server, also one whose registration failed midway:
        // they all carry the server's tag.
        let tag = self.group.trim_start_matches("psg");
        let prefix = format!("pse{tag}");
        let accounts: Vec<String> = fs::read_to_string("/etc/passwd")
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.split(':').next())
            .filter(|name| name.starts_with(&prefix))
            .map(str::to_string)
            .collect();
        for name in &accounts {
            // Their spawns and keepers first: one still running could make again
            // what is removed here.
            run_quietly("pkill", &["-KILL", "-u", name]);
            let label = format!("podspawn.user={name}");
            for container in labelled("ps", &label) {
                run_quietly("docker", &["rm", "--force", "--volumes", &container]);
            }
            // The user's network and their sessions' own.
            for network in labelled("network", &label) {
                run_quietly("docker", &["network", "rm", &network]);
            }
            for volume in labelled("volume", &label) {
                run_quietly("docker", &["volume", "rm", &volume]);
            }
        }
        // The images of this server's projects.
        let projects = fs::read_dir(self.root.join("state/projects"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
            .map(|entry| entry.file_name().to_string_lossy().to_string());
        for project in projects {
            for image in labelled("images", &format!("podspawn.project={project}")) {
                run_quietly("docker", &["rmi", "--force", &image]);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        for name in &accounts {
            // Accounts with a home of their own (made by `plain_account`) go with it.
            if Path::new(&format!("/home/{name}")).is_dir() {
                run_quietly("userdel", &["--remove", name]);
            } else {
                run_quietly("userdel", &[name]);
            }
        }
        run_quietly("groupdel", &[&self.group]);
        // The network its project builds ran on, if any.
        run_quietly(
            "docker",
            &[
                "network",
                "rm",
                &format!(
                    "podspawn.build.{}",
                    crate::support::installation_of(&self.root.join("state"))
                ),
            ],
        );
        if let Some(chain) = &self.isolation_chain {
            let egress = format!("{chain}-OUT");
            for action in [
                &["-D", "FORWARD", "-j", chain][..],
                &["-F", chain],
                &["-X", chain],
                &["-D", "PREROUTING", "-j", &egress],
                &["-F", &egress],
                &["-X", &egress],
            ] {
                let mut args = vec!["-w", "10", "-t", "mangle"];
                args.extend(action);
                run_quietly("iptables", &args);
            }
        }
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// The ids of the containers (`ps`), images (`images`), networks (`network`) or
/// volumes (`volume`) that carry `label`.
pub fn labelled(kind: &str, label: &str) -> Vec<String> {
    let mut args = match kind {
        "network" | "volume" => vec![kind, "ls", "--quiet", "--filter"],
        _ => vec![kind, "--quiet", "--filter"],
    };
    let filter = format!("label={label}");
    args.push(&filter);
    if kind == "ps" {
        args.push("--all");
    }
    let output = Command::new("docker").args(&args).output();
    output
        .map(|output| {
            String::from_utf8_lossy(&output.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// `git -C repo ARGS` as a test's author, which must succeed.
pub fn git(repo: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.org"])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?} in {}", repo.display());
}
