//! The test environment: the real built `podspawn`, run in a fresh temporary tree per
//! test, with a cleared environment and the strict fake `docker` from `testdata/`.
//!
//! A tree holds everything a run can touch:
//!
//! ```text
//! <tree>/etc/config.yaml     the server config (PODSPAWN_CONFIG points here)
//! <tree>/keys/               auth.key_dir
//! <tree>/state/              state.db_path and state.lock_dir live here
//! <tree>/log/podspawn.log    log.file
//! <tree>/bin/docker          -> testdata/fake-docker (first on PATH)
//! <tree>/fake-docker/        the fake's scenario.json and calls.jsonl
//! <tree>/home/               HOME
//! ```
//!
//! When an assertion fails it prints the command, its environment, its output, the
//! fake docker's call log and podspawn's log, so the failure explains itself.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

pub const PODSPAWN: &str = env!("CARGO_BIN_EXE_podspawn");

/// Public keys made with ssh-keygen for these tests.
pub const ED25519: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMNNt3bM09dqR+/DvKQyiVrHR8IJJibdSYGgZnFLKgx/ alice@laptop";
pub const ED25519_OTHER: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM6ChpQjGRPmIDcxl+jhYV0I5egsFIH0sMe5WArnLVSD";
pub const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGuk26OGgTnkw95Znl3hknkkHyj4X77sbUjxYLz2Phtq/XkXcQPwy4gGu5WaQGgh53C3+5zMNCVIZKkoqehc7Js= bob@desk";

/// The group the test config names unless a test names another: none of the host's,
/// so that nothing adds a host account to a real group.
pub const NO_GROUP: &str = "psnogroup";

/// uid/gid of `nobody`, the account sshd runs AuthorizedKeysCommand as.
pub const NOBODY: u32 = 65534;

/// The base64 body of a key line.
pub fn body(key: &str) -> &str {
    key.split(' ').nth(1).expect("key line has a body")
}

/// Says in one line that a test cannot run here, for the caller to return — except
/// under CI (`CI=true`), where a test that cannot run fails the run: CI must run every
/// layer, so a machine that cannot is a failure, never a pass.
pub fn skip(test: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} cannot run here ({reason}), and CI=true requires every layer to run");
    }
    eprintln!("{test} skipped: {reason}");
}

/// Whether the Docker engine has the OCI runtime `runtime` registered.
pub fn engine_has_runtime(runtime: &str) -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .is_ok_and(|output| {
            String::from_utf8_lossy(&output.stdout).contains(&format!("\"{runtime}\""))
        })
}

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// sshd (even `sshd -t`) refuses to run without its privilege-separation directory;
/// a machine whose own sshd never ran may lack it. Made when missing, and left: it
/// is sshd's standard directory.
pub fn ensure_sshd_privsep_dir() {
    let dir = Path::new("/run/sshd");
    if !dir.exists() && is_root() {
        let _ = fs::create_dir_all(dir);
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o755));
    }
}

pub fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

/// One test's private tree; removed on drop unless PODSPAWN_KEEP_TEST_TREES is set.
pub struct TestEnv {
    pub root: PathBuf,
    /// Set by the fake's own tests, which make unexpected calls on purpose.
    unexpected_calls_are_the_point: std::sync::atomic::AtomicBool,
    extra_env: Vec<(String, OsString)>,
    path: OsString,
}

impl TestEnv {
    pub fn new() -> TestEnv {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let name = std::thread::current()
            .name()
            .unwrap_or("test")
            .rsplit("::")
            .next()
            .unwrap_or("test")
            .to_string();
        let root = std::env::temp_dir().join(format!(
            "podspawn-test-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&root);
        for dir in ["etc", "keys", "state", "log", "bin", "fake-docker", "home"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        // 0755 everywhere, whatever the umask: tests run podspawn as `nobody` too.
        for dir in [
            &root,
            &root.join("keys"),
            &root.join("etc"),
            &root.join("bin"),
        ] {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
        }
        install_fake(&root.join("bin/docker"));
        // The host's account tools and its firewall are strict fakes too (found on
        // PATH before the real ones in /usr/sbin): no harness test may change the
        // host's accounts or rules.
        for tool in ["useradd", "usermod", "userdel", "iptables"] {
            install_fake(&root.join("bin").join(tool));
        }
        let path = OsString::from(format!(
            "{}:/usr/local/bin:/usr/bin:/bin",
            root.join("bin").display()
        ));
        let env = TestEnv {
            root,
            unexpected_calls_are_the_point: std::sync::atomic::AtomicBool::new(false),
            extra_env: Vec::new(),
            path,
        };
        fs::write(env.audit_path(), "").unwrap();
        fs::set_permissions(env.audit_path(), fs::Permissions::from_mode(0o666)).unwrap();
        env.write_config("");
        env
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("etc/config.yaml")
    }

    pub fn key_dir(&self) -> PathBuf {
        self.path("keys")
    }

    pub fn key_file(&self, user: &str) -> PathBuf {
        self.key_dir().join(user)
    }

    pub fn log_path(&self) -> PathBuf {
        self.path("log/podspawn.log")
    }

    /// The audit log (made in every tree, writable by the account spawn tests use).
    pub fn audit_path(&self) -> PathBuf {
        self.path("log/audit.jsonl")
    }

    /// Every event of the audit log, each line parsed (a line that is no JSON object
    /// fails the test).
    pub fn audit_events(&self) -> Vec<serde_json::Value> {
        audit_events_in(&self.audit_path())
    }

    /// The name of this tree's installation (`podspawn.installation` on what it makes).
    pub fn installation(&self) -> String {
        installation_of(&self.path("state"))
    }

    /// The base config pointing every path into the tree, followed by `extra` (YAML
    /// sections that are not in the base).
    pub fn write_config(&self, extra: &str) {
        let base = format!(
            "auth:\n  key_dir: {keys}\n  github_url: http://127.0.0.1:9\n  create_accounts: false\n  home_dir: {home}\n  group: {NO_GROUP}\n\
             docker:\n  binary: {docker}\n  config_dir: {docker_config}\n\
             state:\n  db_path: {state}/state.db\n  lock_dir: {state}/locks\n  agent_dir: {state}/agents\n\
             log:\n  file: {log}\n  level: debug\n  audit_log: {audit}\n",
            keys = self.key_dir().display(),
            home = self.path("home-shared").display(),
            docker = self.path("bin/docker").display(),
            docker_config = self.path("docker-config").display(),
            state = self.path("state").display(),
            log = self.log_path().display(),
            audit = self.audit_path().display(),
        );
        self.write_config_text(&format!("{base}{extra}"));
    }

    /// Names podspawn's group in the config (by default one that does not exist).
    pub fn set_group(&self, group: &str) {
        let config = fs::read_to_string(self.config_path()).unwrap();
        let line = format!("  group: {NO_GROUP}\n");
        assert!(
            config.contains(&line),
            "the config names no group:\n{config}"
        );
        self.write_config_text(&config.replacen(&line, &format!("  group: {group}\n"), 1));
    }

    /// Replaces the config file with exactly `text`.
    pub fn write_config_text(&self, text: &str) {
        fs::write(self.config_path(), text).unwrap();
        fs::set_permissions(self.config_path(), fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Writes a user's key file directly (as an admin editing it by hand would).
    pub fn write_key_file(&self, user: &str, text: &str) {
        fs::write(self.key_file(user), text).unwrap();
        fs::set_permissions(self.key_file(user), fs::Permissions::from_mode(0o644)).unwrap();
    }

    /// Puts the strict fake in as another program on PATH, e.g. `curl`.
    pub fn fake_program(&self, name: &str) {
        install_fake(&self.path("bin").join(name));
    }

    /// Writes the fake docker's scenario: its rules, in order.
    pub fn scenario(&self, rules: &[Rule]) {
        let rules: Vec<&serde_json::Map<String, serde_json::Value>> =
            rules.iter().map(|rule| &rule.0).collect();
        let text = serde_json::json!({ "rules": rules }).to_string();
        fs::write(self.path("fake-docker/scenario.json"), text).unwrap();
        fs::set_permissions(
            self.path("fake-docker/scenario.json"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }

    /// PATH holds only the tree's bin/: no curl, no real docker, nothing else.
    pub fn only_tree_on_path(&mut self) {
        self.path = self.path("bin").into_os_string();
    }

    pub fn set_env(&mut self, key: &str, value: impl Into<OsString>) {
        self.extra_env.push((key.to_string(), value.into()));
    }

    pub fn podspawn(&self, args: &[&str]) -> Run {
        self.invoke(args).run()
    }

    /// Runs podspawn as another uid/gid (only possible as root).
    pub fn podspawn_as(&self, uid: u32, gid: u32, args: &[&str]) -> Run {
        self.invoke(args).run_as(uid, gid).run()
    }

    /// A podspawn run to configure before running it.
    pub fn invoke(&self, args: &[&str]) -> Invocation<'_> {
        let mut vars: BTreeMap<String, OsString> = BTreeMap::new();
        vars.insert("PATH".into(), self.path.clone());
        vars.insert("HOME".into(), self.path("home").into_os_string());
        vars.insert(
            "PODSPAWN_CONFIG".into(),
            self.config_path().into_os_string(),
        );
        for (key, value) in &self.extra_env {
            vars.insert(key.clone(), value.clone());
        }
        Invocation {
            env: self,
            program: PathBuf::from(PODSPAWN),
            args: args.iter().map(|arg| arg.to_string()).collect(),
            ids: None,
            vars,
            input: Input::Null,
            file_size_limit: None,
        }
    }

    /// The account spawn tests connect as (`nobody` when the tests run as root, the
    /// caller otherwise), registered, and able to write the tree's state, log and
    /// fake-docker directories.
    pub fn spawn_user(&self) -> SpawnUser {
        let user = if is_root() {
            SpawnUser {
                name: "nobody".into(),
                uid: NOBODY,
                gid: NOBODY,
            }
        } else {
            let uid = unsafe { libc::getuid() };
            let name = std::env::var("USER").expect("USER names the caller");
            SpawnUser {
                name,
                uid,
                gid: unsafe { libc::getgid() },
            }
        };
        self.write_key_file(&user.name, &format!("{ED25519}\n"));
        if is_root() {
            for dir in ["state", "log", "fake-docker"] {
                std::os::unix::fs::chown(self.path(dir), Some(user.uid), Some(user.gid)).unwrap();
            }
        }
        user
    }

    /// `podspawn spawn --user NAME`, run as that user.
    pub fn spawn(&self, user: &SpawnUser) -> Invocation<'_> {
        self.invoke_as(user, &["spawn", "--user", &user.name])
    }

    /// podspawn run as the spawn tests' account (as root: `nobody`; otherwise the
    /// caller, who is that account already).
    pub fn invoke_as(&self, user: &SpawnUser, args: &[&str]) -> Invocation<'_> {
        let invocation = self.invoke(args);
        if is_root() {
            invocation.run_as(user.uid, user.gid)
        } else {
            invocation
        }
    }

    /// The docker calls so far (not other fake programs).
    pub fn docker_calls(&self) -> Vec<Call> {
        self.calls()
            .into_iter()
            .filter(|call| call.program == "docker")
            .collect()
    }

    /// The containers named by `docker rm` calls so far, in order.
    pub fn removed_containers(&self) -> Vec<String> {
        self.docker_calls()
            .into_iter()
            .filter(|call| call.subcommand() == "rm")
            .filter_map(|call| call.argv.last().cloned())
            .collect()
    }

    /// Waits up to `timeout` for `condition`; false if it never held.
    pub fn wait_for(
        &self,
        timeout: std::time::Duration,
        mut condition: impl FnMut() -> bool,
    ) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if condition() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// For the fake's own tests: the unexpected calls they make are what they test.
    pub fn unexpected_calls_are_the_point(&self) {
        self.unexpected_calls_are_the_point
            .store(true, Ordering::SeqCst);
    }

    /// Every call the fake programs recorded, in order.
    pub fn calls(&self) -> Vec<Call> {
        read_calls(&self.root)
    }
}

impl Drop for TestEnv {
    /// Every test's fakes are strict: a call no rule of its scenario expected fails
    /// the test here, at teardown, whether or not the test thought to ask.
    fn drop(&mut self) {
        let unexpected: Vec<Call> = self
            .calls()
            .into_iter()
            .filter(|call| !call.expected)
            .collect();
        if std::env::var_os("PODSPAWN_KEEP_TEST_TREES").is_none() {
            let _ = fs::remove_dir_all(&self.root);
        }
        if !unexpected.is_empty()
            && !self.unexpected_calls_are_the_point.load(Ordering::SeqCst)
            && !std::thread::panicking()
        {
            panic!("calls no rule of the scenario expected: {unexpected:#?}");
        }
    }
}

/// Makes `command` run as `uid`/`gid` with no supplementary groups (only as root).
pub fn as_account(command: &mut Command, uid: u32, gid: u32) {
    unsafe {
        command.pre_exec(move || {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A copy (not a link: the repository may not be readable by other users) of the
/// fake docker at `path`.
fn install_fake(path: &Path) {
    copy_executable(&testdata("fake-docker"), path, 0o755);
}

/// Copies a program that will be run, with `mode`. The copy is made by `cp`, not by
/// this process: a file this (multi-threaded) process had open for writing would be
/// inherited, still open, by whatever another test thread forks at that moment, and
/// running it would then fail with "text file busy".
pub fn copy_executable(from: &Path, to: &Path, mode: u32) {
    let status = Command::new("cp")
        .arg("--")
        .arg(from)
        .arg(to)
        .status()
        .expect("cp runs");
    assert!(
        status.success(),
        "cp {} {} failed",
        from.display(),
        to.display()
    );
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).unwrap();
}

/// One rule of the fake docker's scenario (see testdata/fake-docker).
#[derive(Debug, Clone)]
pub struct Rule(serde_json::Map<String, serde_json::Value>);

impl Rule {
    /// A docker call whose argv matches `patterns` (shell wildcards, final "**").
    pub fn docker(patterns: &[&str]) -> Rule {
        Rule::program("docker", patterns)
    }

    /// A call of another faked program (see `TestEnv::fake_program`).
    pub fn program(program: &str, patterns: &[&str]) -> Rule {
        Rule(serde_json::Map::new())
            .with("program", program.into())
            .with("argv", patterns.into())
    }

    fn with(mut self, key: &str, value: serde_json::Value) -> Rule {
        self.0.insert(key.to_string(), value);
        self
    }

    pub fn exit(self, code: i32) -> Rule {
        self.with("exit", code.into())
    }

    pub fn stdout(self, text: &str) -> Rule {
        self.with("stdout", text.into())
    }

    pub fn stderr(self, text: &str) -> Rule {
        self.with("stderr", text.into())
    }

    pub fn times(self, count: usize) -> Rule {
        self.with("times", count.into())
    }

    pub fn cat(self) -> Rule {
        self.with("cat", true.into())
    }

    pub fn wait_for_stdin(self) -> Rule {
        self.with("wait", "stdin".into())
    }

    pub fn sleep(self, seconds: f64) -> Rule {
        self.with("sleep", seconds.into())
    }

    /// Also start a lingering "process in the container" carrying the exec's --env.
    pub fn container_process(self) -> Rule {
        self.with("container_process", true.into())
    }
}

/// The account a spawn test connects as.
pub struct SpawnUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// One recorded call of a fake program (a line of its `calls.jsonl`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Call {
    pub program: String,
    pub argv: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub pid: i32,
    pub expected: bool,
}

impl Call {
    /// The docker subcommand ("run", "exec", ...).
    pub fn subcommand(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or("")
    }

    /// The value after `flag`, if the call has it.
    pub fn flag(&self, flag: &str) -> Option<&str> {
        self.argv
            .iter()
            .position(|arg| arg == flag)
            .and_then(|at| self.argv.get(at + 1))
            .map(String::as_str)
    }

    /// Every value given with `flag` (e.g. each --label).
    pub fn flags(&self, flag: &str) -> Vec<&str> {
        self.argv
            .windows(2)
            .filter(|pair| pair[0] == flag)
            .map(|pair| pair[1].as_str())
            .collect()
    }
}

fn read_calls(tree: &Path) -> Vec<Call> {
    let Ok(text) = fs::read_to_string(tree.join("fake-docker/calls.jsonl")) else {
        return Vec::new();
    };
    text.lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|err| panic!("fake call log: {err}: {line}"))
        })
        .collect()
}

/// What a podspawn run gets as its stdin.
pub enum Input {
    Null,
    Bytes(Vec<u8>),
    /// The slave side of a new pseudo-terminal (as sshd gives a PTY session).
    Tty,
    /// A pipe the test keeps open until the run ends.
    OpenPipe,
}

pub struct Invocation<'a> {
    env: &'a TestEnv,
    program: PathBuf,
    args: Vec<String>,
    ids: Option<(u32, u32)>,
    vars: BTreeMap<String, OsString>,
    input: Input,
    /// RLIMIT_FSIZE (soft, hard) to run with, as `ulimit -f` would set it.
    file_size_limit: Option<(u64, u64)>,
}

impl Invocation<'_> {
    /// Runs with this file size limit (bytes; `u64::MAX` for none).
    pub fn file_size_limit(mut self, soft: u64, hard: u64) -> Self {
        self.file_size_limit = Some((soft, hard));
        self
    }

    /// Run as another uid/gid, from a copy of the binary that user can reach.
    pub fn run_as(mut self, uid: u32, gid: u32) -> Self {
        self.ids = Some((uid, gid));
        self.program = binary_for_others();
        self
    }

    pub fn var(mut self, key: &str, value: &str) -> Self {
        self.vars.insert(key.to_string(), value.into());
        self
    }

    /// A variable whose value is any bytes (not only UTF-8).
    pub fn var_bytes(mut self, key: &str, value: &[u8]) -> Self {
        use std::os::unix::ffi::OsStrExt;
        self.vars
            .insert(key.to_string(), std::ffi::OsStr::from_bytes(value).into());
        self
    }

    pub fn stdin(mut self, bytes: &[u8]) -> Self {
        self.input = Input::Bytes(bytes.to_vec());
        self
    }

    pub fn input(mut self, input: Input) -> Self {
        self.input = input;
        self
    }

    fn describe(&self) -> String {
        let mut text = format!("command: {} {:?}\n", self.program.display(), self.args);
        if let Some((uid, gid)) = self.ids {
            let _ = writeln!(text, "as uid {uid}, gid {gid}");
        }
        for (key, value) in &self.vars {
            let _ = writeln!(text, "env: {key}={}", value.to_string_lossy());
        }
        text
    }

    pub fn run(self) -> Run {
        self.start().finish(std::time::Duration::from_secs(60))
    }

    /// Starts the run and returns at once.
    pub fn start(self) -> Running {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .env_clear()
            .envs(&self.vars)
            .current_dir(&self.env.root)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut terminal = None;
        match &self.input {
            Input::Null => {
                command.stdin(Stdio::null());
            }
            Input::Bytes(_) | Input::OpenPipe => {
                command.stdin(Stdio::piped());
            }
            Input::Tty => {
                let (master, slave) = open_pty();
                command.stdin(Stdio::from(slave));
                terminal = Some(master);
            }
        }
        if let Some((soft, hard)) = self.file_size_limit {
            // SAFETY: only setrlimit between fork and exec.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        if let Some((uid, gid)) = self.ids {
            as_account(&mut command, uid, gid);
        }
        let mut child = command.spawn().expect("podspawn starts");
        if let Input::Bytes(bytes) = &self.input {
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // A writer thread: the child may fill its stdout before reading all this.
            let bytes = bytes.clone();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&bytes);
            });
        }
        // For `Input::OpenPipe`, the test holds the pipe open until the run ends.
        let stdin = child.stdin.take();
        Running {
            context: self.describe(),
            child,
            stdin,
            _terminal: terminal,
            tree: self.env.root.clone(),
        }
    }
}

/// A podspawn run that is still going.
pub struct Running {
    context: String,
    pub child: std::process::Child,
    /// The open stdin pipe, for `Input::OpenPipe`.
    pub stdin: Option<std::process::ChildStdin>,
    /// The master side of the terminal, for `Input::Tty`.
    _terminal: Option<std::os::fd::OwnedFd>,
    tree: PathBuf,
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits up to `timeout` for the run to end and collects its output.
    pub fn finish(mut self, timeout: std::time::Duration) -> Run {
        let stdout = self.child.stdout.take();
        let stderr = self.child.stderr.take();
        let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                if let Some(mut pipe) = pipe {
                    let _ = pipe.read_to_end(&mut bytes);
                }
                bytes
            })
        };
        let stdout = read(stdout.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
        let stderr = read(stderr.map(|p| Box::new(p) as Box<dyn std::io::Read + Send>));
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                let status = self.child.wait().unwrap();
                let run = Run {
                    context: self.context.clone(),
                    output: Output {
                        status,
                        stdout: Vec::new(),
                        stderr: Vec::new(),
                    },
                    tree: self.tree.clone(),
                };
                run.fail(&format!("did not end within {timeout:?}"));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        drop(self.stdin.take());
        Run {
            context: self.context,
            output: Output {
                status,
                stdout: stdout.join().unwrap(),
                stderr: stderr.join().unwrap(),
            },
            tree: self.tree,
        }
    }
}

fn open_pty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (0, 0);
    // The size sshd gives a terminal from the client's request.
    let size = libc::winsize {
        ws_row: 24,
        ws_col: 80,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let result = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(result, 0, "openpty: {}", std::io::Error::last_os_error());
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    }
}

/// The directory of `binary_for_others`' copy, removed when the test process exits.
static BINARY_COPY_DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

/// A copy of the podspawn binary in a directory every user can reach (the
/// repository may sit under a private home), made once by this test process, shared
/// by its tests and removed when it exits.
pub fn binary_for_others() -> PathBuf {
    extern "C" fn remove_copy() {
        if let Some(dir) = BINARY_COPY_DIR.get() {
            let _ = fs::remove_dir_all(dir);
        }
    }
    BINARY_COPY_DIR
        .get_or_init(|| {
            // A new directory (made here, never one found: in the shared /tmp another
            // user could have put one there first), 0755 once ours.
            let dir = (0u32..100)
                .map(|n| {
                    std::env::temp_dir().join(format!(
                        "podspawn-test-bin-{}-{}-{n}",
                        std::process::id(),
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .subsec_nanos()
                    ))
                })
                .find(|dir| fs::create_dir(dir).is_ok())
                .expect("a new directory in the temp dir");
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
            copy_executable(Path::new(PODSPAWN), &dir.join("podspawn"), 0o755);
            // SAFETY: registers a plain function, run once by exit().
            unsafe { libc::atexit(remove_copy) };
            dir
        })
        .join("podspawn")
}

/// A finished podspawn run, with everything needed to explain a failed assertion.
pub struct Run {
    context: String,
    pub output: Output,
    tree: PathBuf,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    /// Panics with the whole context.
    pub fn fail(&self, why: &str) -> ! {
        let calls =
            fs::read_to_string(self.tree.join("fake-docker/calls.jsonl")).unwrap_or_default();
        let log = fs::read_to_string(self.tree.join("log/podspawn.log")).unwrap_or_default();
        panic!(
            "{why}\n--- {}exit status: {:?}\n--- stdout:\n{}\n--- stderr:\n{}\n--- fake calls:\n{calls}\n--- podspawn log:\n{log}",
            self.context,
            self.output.status,
            self.stdout(),
            self.stderr(),
        );
    }

    pub fn assert_code(&self, code: i32) -> &Run {
        if self.code() != Some(code) {
            self.fail(&format!("expected exit code {code}"));
        }
        self
    }

    pub fn assert_success(&self) -> &Run {
        self.assert_code(0)
    }

    pub fn assert_stdout(&self, expected: &str) -> &Run {
        if self.stdout() != expected {
            self.fail(&format!("expected stdout {expected:?}"));
        }
        self
    }

    pub fn assert_stderr(&self, expected: &str) -> &Run {
        if self.stderr() != expected {
            self.fail(&format!("expected stderr {expected:?}"));
        }
        self
    }

    pub fn assert_stderr_contains(&self, needle: &str) -> &Run {
        if !self.stderr().contains(needle) {
            self.fail(&format!("expected stderr to contain {needle:?}"));
        }
        self
    }

    /// An error exit: exactly one line on stderr, starting with "podspawn: " and holding
    /// `needle`, and nothing on stdout.
    pub fn assert_one_line_error(&self, code: i32, needle: &str) -> &Run {
        self.assert_code(code).assert_stdout("");
        let stderr = self.stderr();
        if stderr.lines().count() != 1
            || !stderr.starts_with("podspawn: ")
            || !stderr.ends_with('\n')
        {
            self.fail("expected exactly one 'podspawn: ...' line on stderr");
        }
        self.assert_stderr_contains(needle)
    }
}

/// How many rules the egress chain of the default config has on this host: for each
/// of the two pools and the build network, replies pass, DNS to each of the host's
/// resolvers and to the host passes, the rest to the host (and its broadcasts and
/// multicasts) and to link-local addresses is dropped; the build network reaches
/// neither pool.
pub fn egress_rules_here() -> usize {
    let resolvers = |path: &str| -> usize {
        let mut found: Vec<std::net::Ipv4Addr> = fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().strip_prefix("nameserver"))
            .filter_map(|rest| rest.trim().parse().ok())
            .filter(|address: &std::net::Ipv4Addr| !address.is_loopback())
            .collect();
        found.sort();
        found.dedup();
        found.len()
    };
    let mut count = resolvers("/etc/resolv.conf");
    if count == 0 {
        count = resolvers("/run/systemd/resolve/resolv.conf");
    }
    23 + 3 * 2 * count
}

/// The fake iptables of a host without podspawn's isolation chains, as `server-setup`
/// makes them once: each chain is looked for and made, its rules checked and added,
/// FORWARD's and PREROUTING's jumps checked and inserted; from then on everything is
/// there.
pub fn iptables_to_be_set_up() -> Vec<Rule> {
    let call = |words: &[&str]| {
        let mut argv = vec!["-w", "-t", "mangle"];
        argv.extend(words);
        Rule::program("iptables", &argv)
    };
    let mut rules = vec![
        call(&["-S", "PODSPAWN-*-OUT-NEW"]).exit(1),
        call(&["-S", "PODSPAWN-*-OUT"]).exit(1).times(1),
        call(&["-N", "PODSPAWN-*-OUT"]).times(1),
        call(&["-A", "PODSPAWN-*-OUT", "**"]).times(egress_rules_here()),
        call(&["-C", "PREROUTING", "-j", "PODSPAWN-*-OUT"])
            .exit(1)
            .times(1),
        call(&["-I", "PREROUTING", "1", "-j", "PODSPAWN-*-OUT"]).times(1),
        call(&["-S", "PODSPAWN-*"]).exit(1).times(1),
        call(&["-N", "PODSPAWN-*"]).times(1),
        call(&["-C", "PODSPAWN-*", "**"]).exit(1).times(4),
        call(&["-A", "PODSPAWN-*", "**"]).times(4),
        call(&["-C", "FORWARD", "-j", "PODSPAWN-*"])
            .exit(1)
            .times(1),
        call(&["-I", "FORWARD", "1", "-j", "PODSPAWN-*"]).times(1),
    ];
    rules.extend(iptables_set_up());
    rules
}

/// The fake iptables of a host where the chain, its rules for the default pools
/// and its jump are there: it answers only the questions (`-S`, `-C`), so any change
/// fails the test.
pub fn iptables_set_up() -> Vec<Rule> {
    let mut listing = "-N PODSPAWN-00000000\n".to_string();
    for from in ["10.214.0.0/16", "10.215.0.0/16"] {
        for to in ["10.214.0.0/16", "10.215.0.0/16"] {
            listing += &format!(
                "-A PODSPAWN-00000000 -s {from} -d {to} -m physdev ! --physdev-is-bridged \
                 -m comment --comment \"podspawn: no traffic between podspawn networks\" -j DROP\n"
            );
        }
    }
    let mut egress = "-N PODSPAWN-00000000-OUT\n".to_string();
    for _ in 0..egress_rules_here() {
        egress +=
            "-A PODSPAWN-00000000-OUT -m comment --comment \"podspawn: egress policy\" -j DROP\n";
    }
    vec![
        Rule::program("iptables", &["-w", "-t", "mangle", "-S", "FORWARD"])
            .stdout("-P FORWARD ACCEPT\n"),
        Rule::program(
            "iptables",
            &["-w", "-t", "mangle", "-S", "PODSPAWN-*-OUT-NEW"],
        )
        .exit(1),
        Rule::program("iptables", &["-w", "-t", "mangle", "-S", "PODSPAWN-*-OUT"]).stdout(&egress),
        Rule::program("iptables", &["-w", "-t", "mangle", "-S", "PODSPAWN-*"]).stdout(&listing),
        Rule::program("iptables", &["-w", "-t", "mangle", "-C", "**"]),
    ]
}

/// A tiny HTTP/1.0 server on 127.0.0.1 that answers fixed routes, standing in for
/// github.com in `add-user --github` tests. It records the paths it was asked for.
pub struct HttpServer {
    pub base_url: String,
    pub requests: Arc<Mutex<Vec<String>>>,
    address: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpServer {
    /// `routes`: (path, status, body); anything else is a 404.
    pub fn start(routes: Vec<(&str, u16, &str)>) -> HttpServer {
        HttpServer::start_bytes(
            routes
                .into_iter()
                .map(|(path, status, body)| (path.to_string(), status, body.as_bytes().to_vec()))
                .collect(),
        )
    }

    /// Like `start`, with bodies of any bytes.
    pub fn start_bytes(routes: Vec<(String, u16, Vec<u8>)>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let requests = requests.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        serve(stream, &routes, &requests);
                    }
                }
            })
        };
        HttpServer {
            base_url: format!("http://{address}"),
            requests,
            address,
            stop,
            thread: Some(thread),
        }
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, routes: &[(String, u16, Vec<u8>)], requests: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream);
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).is_err() {
        return;
    }
    // Drain the headers.
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
        line.clear();
    }
    let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
    requests.lock().unwrap().push(path.clone());
    let (status, body) = routes
        .iter()
        .find(|(route, _, _)| *route == path)
        .map(|(_, status, body)| (*status, body.clone()))
        .unwrap_or((404, b"Not Found".to_vec()));
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.0 {status} X\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(&body);
    let _ = stream.flush();
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A tree whose config names `image` and has `session` as its session section, and
/// the account spawn tests connect as.
pub fn spawn_env(image: &str, session: &str) -> (TestEnv, SpawnUser) {
    let env = TestEnv::new();
    env.write_config(&format!("defaults:\n  image: {image}\nsession:\n{session}"));
    let user = env.spawn_user();
    (env, user)
}

/// Every event of the audit log at `path`, each line parsed (a line that is no JSON
/// object fails the test).
pub fn audit_events_in(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| {
            let event: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|err| panic!("audit line is no JSON ({err}): {line:?}"));
            assert!(event.is_object(), "{line}");
            event
        })
        .collect()
}

/// The installation a state directory makes: the first 8 hex digits of the SHA-256 of
/// its path (worked out here by `sha256sum`, not by podspawn's code).
pub fn installation_of(state_dir: &Path) -> String {
    use std::io::Write;
    let mut sha = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sha.stdin
        .take()
        .unwrap()
        .write_all(state_dir.as_os_str().as_encoded_bytes())
        .unwrap();
    let output = sha.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout)[..8].to_string()
}
