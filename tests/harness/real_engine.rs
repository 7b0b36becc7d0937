//! spawn against a real Docker engine, as a real Unix account, through a binary
//! installed the way production installs it (`root:docker 2755`).
//!
//! These run whenever an engine answers and the tests run as root (they create and
//! delete Unix accounts); otherwise each says in one line why it is skipped. The
//! image is the offline test image of `testdata/build-test-image` (built here if
//! missing). Every test leaves no account, container, process or file behind, also
//! when it fails: `RealEnv` cleans up on drop.

use std::ffi::CString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{ED25519, PODSPAWN, copy_executable, testdata};

/// Why the real-engine layer cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (they create Unix accounts)".into());
    }
    let answered = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !answered {
        return Some("no Docker engine answers".into());
    }
    None
}

/// The test image's tag, built once per test process if it is not there yet.
pub fn image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| build("build-test-image"))
}

/// The busybox-only image, built once per test process if it is not there yet.
pub fn minimal_image() -> &'static str {
    static TAG: OnceLock<String> = OnceLock::new();
    TAG.get_or_init(|| build("build-minimal-image"))
}

/// The companion-service images (PostgreSQL, Redis), built once per test process if
/// they are not there yet.
pub fn service_images() -> &'static (String, String) {
    static TAGS: OnceLock<(String, String)> = OnceLock::new();
    TAGS.get_or_init(|| {
        let tags = build("build-service-images");
        let mut lines = tags.lines().map(str::to_string);
        (lines.next().unwrap(), lines.next().unwrap())
    })
}

fn build(script: &str) -> String {
    let output = Command::new(testdata(script))
        .output()
        .expect("the image script runs");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

pub fn docker_gid() -> u32 {
    let name = CString::new("docker").unwrap();
    let group = unsafe { libc::getgrnam(name.as_ptr()) };
    assert!(!group.is_null(), "there is no docker group");
    unsafe { (*group).gr_gid }
}

pub fn container_exists(container: &str) -> bool {
    Command::new("docker")
        .args(["inspect", "--type", "container", container])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// The engine's id of `container` (empty when there is none).
pub fn container_id(container: &str) -> String {
    let output = Command::new("docker")
        .args([
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.Id}}",
            container,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// The commands running in `container` as `uid` (as `docker top` sees them).
pub fn processes_of(container: &str, uid: u32) -> Vec<String> {
    let output = Command::new("docker")
        .args(["top", container, "-eo", "pid,uid,args"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .skip(1)
        .filter(|line| line.split_whitespace().nth(1) == Some(uid.to_string().as_str()))
        .map(str::to_string)
        .collect()
}

/// Polls `condition` until it holds (how long it took) or `timeout` passes.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if condition() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A Unix account, a root-owned podspawn install and config, torn down on drop.
struct RealEnv {
    user: String,
    uid: u32,
    gid: u32,
    root: PathBuf,
    grace: String,
    image: String,
}

macro_rules! real_env_or_skip {
    ($grace:expr) => {
        real_env_or_skip!($grace, image())
    };
    ($grace:expr, $image:expr) => {
        match unavailable() {
            Some(reason) => return $crate::support::skip("real-engine test", &reason),
            None => RealEnv::new($grace, $image),
        }
    };
}

impl RealEnv {
    fn new(grace: &str, image: &str) -> RealEnv {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let user = format!("pst{}x{n}", std::process::id());
        // Tests run in parallel and useradd locks /etc/passwd: try a few times.
        let created = (0..5).any(|attempt| {
            std::thread::sleep(Duration::from_millis(200 * attempt));
            Command::new("useradd")
                .args([
                    "--no-create-home",
                    "--shell",
                    "/bin/sh",
                    "--user-group",
                    &user,
                ])
                .status()
                .expect("useradd runs")
                .success()
        });
        assert!(created, "useradd {user} failed");
        let root = PathBuf::from(format!("/var/lib/podspawn-test-{user}"));
        let mut env = RealEnv {
            user,
            uid: 0,
            gid: 0,
            root,
            grace: grace.to_string(),
            image: image.to_string(),
        };
        let (uid, gid) = env.ids();
        env.uid = uid;
        env.gid = gid;
        env.install();
        env
    }

    fn ids(&self) -> (u32, u32) {
        let name = CString::new(self.user.as_str()).unwrap();
        let entry = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(!entry.is_null());
        unsafe { ((*entry).pw_uid, (*entry).pw_gid) }
    }

    fn container(&self) -> String {
        format!("podspawn-{}", self.user)
    }

    /// bin/podspawn root:docker 2755, keys/ and config root's, state/ root:docker 2770.
    fn install(&self) {
        let dirs = [
            ("", 0o755),
            ("bin", 0o755),
            ("keys", 0o755),
            ("state", 0o2770),
            ("state/locks", 0o2770),
            ("state/agents", 0o2770),
        ];
        let docker = docker_gid();
        for (dir, mode) in dirs {
            let path = self.root.join(dir);
            fs::create_dir_all(&path).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            if dir.starts_with("state") {
                std::os::unix::fs::chown(&path, Some(0), Some(docker)).unwrap();
            }
        }
        let binary = self.root.join("bin/podspawn");
        copy_executable(std::path::Path::new(PODSPAWN), &binary, 0o755);
        std::os::unix::fs::chown(&binary, Some(0), Some(docker)).unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o2755)).unwrap();
        fs::write(
            self.root.join("keys").join(&self.user),
            format!("{ED25519}\n"),
        )
        .unwrap();
        fs::set_permissions(
            self.root.join("keys").join(&self.user),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        self.configure("", "");
    }

    /// Writes the config: the test layer's, with `defaults` (lines under `defaults:`,
    /// each replacing the layer's own of its key) and `sections` (more top-level
    /// sections) added.
    fn configure(&self, defaults: &str, sections: &str) {
        let image = format!("  image: {}\n", self.image);
        let mut base = String::new();
        for line in [image.as_str(), "  memory: 512m\n", "  cpus: 1\n"] {
            let key = line.split(':').next().unwrap();
            if !defaults
                .lines()
                .any(|own| own.starts_with(&format!("{key}:")))
            {
                base.push_str(line);
            }
        }
        let config = format!(
            "auth:\n  key_dir: {root}/keys\n  user_dir: {root}/users\n\
             defaults:\n{base}{defaults}\
             session:\n  grace_period: {grace}\n\
             state:\n  db_path: {root}/state/state.db\n  lock_dir: {root}/state/locks\n  agent_dir: {root}/state/agents\n\
             log:\n  file: {root}/state/podspawn.log\n  level: debug\n{sections}",
            root = self.root.display(),
            grace = self.grace,
        );
        fs::write(self.root.join("config.yaml"), config).unwrap();
        fs::set_permissions(
            self.root.join("config.yaml"),
            fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }

    /// `podspawn --config CONFIG spawn` as the user, as sshd's forced command runs it.
    fn spawn(&self, command: Option<&str>) -> Command {
        let config = self.root.join("config.yaml");
        let mut spawn = self.as_user(&[
            "--config",
            config.to_str().unwrap(),
            "spawn",
            "--user",
            &self.user,
        ]);
        if let Some(command) = command {
            spawn.env("SSH_ORIGINAL_COMMAND", command);
        }
        spawn
    }

    /// The installed podspawn with `args`, run as the user with a bare environment.
    fn as_user(&self, args: &[&str]) -> Command {
        let mut spawn = Command::new(self.root.join("bin/podspawn"));
        spawn
            .args(args)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .current_dir("/");
        crate::support::as_account(&mut spawn, self.uid, self.gid);
        spawn
    }

    fn run(&self, command: &str) -> Output {
        self.spawn(Some(command))
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.root.join("state/podspawn.log")).unwrap_or_default()
    }

    fn container_exists(&self) -> bool {
        container_exists(&self.container())
    }

    /// Commands running in the container as the user (not its setup or keep-alive).
    fn user_processes(&self) -> Vec<String> {
        processes_of(&self.container(), self.uid)
    }

    fn wait_until(&self, timeout: Duration, condition: impl FnMut() -> bool) -> Option<Duration> {
        wait_until(timeout, condition)
    }

    fn explain(&self, output: &Output) -> String {
        format!(
            "status {:?}\nstdout: {}\nstderr: {}\nlog:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            self.log()
        )
    }
}

impl Drop for RealEnv {
    fn drop(&mut self) {
        let build_network = format!(
            "podspawn.build.{}",
            crate::support::installation_of(&self.root.join("state"))
        );
        for args in [
            &["rm", "--force", &self.container()][..],
            &["network", "rm", &self.container()],
            &["network", "rm", &build_network],
        ] {
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        // Keepers and anything else still running as the account.
        let _ = Command::new("pkill")
            .args(["-KILL", "-u", &self.user])
            .status();
        std::thread::sleep(Duration::from_millis(100));
        let _ = Command::new("userdel")
            .arg(&self.user)
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.root);
    }
}

#[test]
fn a_commands_exit_code_comes_back() {
    let env = real_env_or_skip!("60s");
    let output = env.run("echo out; echo err >&2; exit 42");
    assert_eq!(output.status.code(), Some(42), "{}", env.explain(&output));
    assert_eq!(output.stdout, b"out\n", "{}", env.explain(&output));
    assert_eq!(output.stderr, b"err\n", "{}", env.explain(&output));
}

#[test]
fn the_user_inside_has_their_uid_gid_name_and_home() {
    let env = real_env_or_skip!("60s");
    let output = env.run(
        "id -u; id -g; id -un; echo $HOME; pwd; hostname; touch ~/x && echo writable; stat -c %a ~",
    );
    let expected = format!(
        "{}\n{}\n{}\n/home/{3}\n/home/{3}\npodspawn-{3}\nwritable\n700\n",
        env.uid, env.gid, env.user, env.user
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        expected,
        "{}",
        env.explain(&output)
    );
}

#[test]
fn sixty_four_mebibytes_pass_through_cat_unchanged() {
    let env = real_env_or_skip!("60s");
    let data: Vec<u8> = (0..64u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let mut child = env
        .spawn(Some("cat"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            stdin.write_all(&data).unwrap();
        })
    };
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(output.status.success(), "{}", env.explain(&output));
    assert!(
        output.stdout.len() == data.len() && output.stdout == data,
        "{} bytes came back",
        output.stdout.len()
    );
}

#[test]
fn two_connections_share_one_container() {
    let env = real_env_or_skip!("60s");
    // Each side waits for the other's file (not for a fixed time: a loaded machine
    // may take seconds to start the first).
    let first = env
        .spawn(Some(
            "echo shared > ~/mark; i=0; while [ ! -e ~/second ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; cat ~/second",
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mark = format!("/home/{}/mark", env.user);
    assert!(
        env.wait_until(Duration::from_secs(30), || {
            Command::new("docker")
                .args(["exec", "-u", &format!("{}:{}", env.uid, env.gid)])
                .args([&env.container(), "test", "-e", &mark])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success())
        })
        .is_some(),
        "the first connection never wrote its mark"
    );
    let second = env.run("cat ~/mark; echo hello > ~/second");
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        "shared\n",
        "{}",
        env.explain(&second)
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        "hello\n",
        "{}",
        env.explain(&first)
    );
    assert_eq!(
        env.log()
            .matches(" INFO create container podspawn-")
            .count(),
        1,
        "{}",
        env.log()
    );
}

#[test]
fn after_the_grace_period_the_container_is_really_gone() {
    let env = real_env_or_skip!("2s");
    let output = env.run("true");
    assert!(output.status.success(), "{}", env.explain(&output));
    let ended = Instant::now();
    assert!(env.container_exists());
    let gone = env.wait_until(Duration::from_secs(10), || !env.container_exists());
    assert!(
        gone.is_some(),
        "still there 10s after the last disconnect\n{}",
        env.log()
    );
    let after = ended.elapsed();
    assert!(
        after >= Duration::from_secs(2),
        "gone after {after:?}, inside the grace period"
    );
    eprintln!(
        "container gone {:.1}s after the last disconnect (grace 2s)",
        after.as_secs_f64()
    );
}

/// Runs `sleep 300` through spawn and waits until it runs in the container.
fn start_sleeper(env: &RealEnv) -> std::process::Child {
    let spawn = env
        .spawn(Some("sleep 300"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = env.wait_until(Duration::from_secs(30), || {
        env.user_processes()
            .iter()
            .any(|line| line.contains("sleep 300"))
    });
    assert!(
        started.is_some(),
        "the command never started\n{}",
        env.log()
    );
    spawn
}

#[test]
fn a_killed_spawn_does_not_pin_the_container() {
    let env = real_env_or_skip!("2s");
    let mut spawn = start_sleeper(&env);
    spawn.kill().unwrap();
    spawn.wait().unwrap();
    let killed = Instant::now();
    let gone = env.wait_until(Duration::from_secs(12), || !env.container_exists());
    assert!(
        gone.is_some(),
        "the container outlived its killed connection\n{}",
        env.log()
    );
    eprintln!(
        "container gone {:.1}s after kill -9 (grace 2s)",
        killed.elapsed().as_secs_f64()
    );
}

#[test]
fn a_terminated_connection_leaves_no_process_in_the_container() {
    let env = real_env_or_skip!("60s");
    let mut spawn = start_sleeper(&env);
    unsafe { libc::kill(spawn.id() as i32, libc::SIGTERM) };
    let status = spawn.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM));
    let cleared = env.wait_until(Duration::from_secs(5), || env.user_processes().is_empty());
    assert!(cleared.is_some(), "left behind: {:?}", env.user_processes());
    assert!(
        env.container_exists(),
        "the container itself stays for its grace period"
    );
}

/// A terminal session: the pty slave is the command's controlling terminal and all
/// of its stdio (as sshd gives spawn, or as a user's terminal gives ssh); the test
/// types into the master.
pub struct Terminal {
    master: std::os::fd::OwnedFd,
    pub child: std::process::Child,
    pub seen: String,
}

impl Terminal {
    pub fn start(mut command: Command, rows: u16, cols: u16) -> Terminal {
        use std::os::fd::{AsRawFd, FromRawFd};
        let (mut master, mut slave) = (0, 0);
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(
            unsafe {
                libc::openpty(
                    &mut master,
                    &mut slave,
                    std::ptr::null_mut(),
                    std::ptr::null(),
                    &size,
                )
            },
            0
        );
        let master = unsafe { std::os::fd::OwnedFd::from_raw_fd(master) };
        let slave = unsafe { std::os::fd::OwnedFd::from_raw_fd(slave) };
        command.env("TERM", "xterm");
        command.stdin(Stdio::from(slave.try_clone().unwrap()));
        command.stdout(Stdio::from(slave.try_clone().unwrap()));
        command.stderr(Stdio::from(slave));
        unsafe {
            command.pre_exec(|| {
                // Its own session with the terminal as controlling tty, as sshd does.
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().unwrap();
        let _ = master.as_raw_fd();
        Terminal {
            master,
            child,
            seen: String::new(),
        }
    }

    pub fn type_text(&self, text: &str) {
        use std::os::fd::AsRawFd;
        let written =
            unsafe { libc::write(self.master.as_raw_fd(), text.as_ptr().cast(), text.len()) };
        assert_eq!(written, text.len() as isize);
    }

    /// Reads until `needle` appears in the output; false after `timeout`.
    pub fn expect(&mut self, needle: &str, timeout: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let deadline = Instant::now() + timeout;
        while !self.seen.contains(needle) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let mut fds = [libc::pollfd {
                fd: self.master.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            }];
            if unsafe { libc::poll(fds.as_mut_ptr(), 1, left.as_millis() as i32) } <= 0 {
                continue;
            }
            let mut buffer = [0u8; 4096];
            let n = unsafe {
                libc::read(
                    self.master.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if n <= 0 {
                return false;
            }
            self.seen
                .push_str(&String::from_utf8_lossy(&buffer[..n as usize]));
        }
        true
    }

    pub fn resize(&self, rows: u16, cols: u16) {
        use std::os::fd::AsRawFd;
        let size = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        assert_eq!(
            unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ, &size) },
            0
        );
    }
}

#[test]
fn a_terminal_session_resizes_interrupts_and_returns_the_exit_code() {
    let env = real_env_or_skip!("60s");
    let terminal = Terminal::start(env.spawn(None), 24, 80);
    check_terminal_session(terminal, &|| env.log());
}

/// `ssh -t host CMD`: the program's very first look at its terminal finds the
/// client's size. This engine (API 1.41) starts an exec's program on a 0x0 terminal
/// and resizes it only after; a bare `docker exec -t` showed `0 0` to `stty size` in
/// 2 of 30 tries here, so 20 tries (a reattach and cold starts) catch it most times.
#[test]
fn a_program_on_a_terminal_sees_the_clients_size_from_its_start() {
    let env = real_env_or_skip!("60s");
    for attempt in 0..20 {
        let mut terminal = Terminal::start(env.spawn(Some("stty size; echo sized")), 33, 111);
        assert!(
            terminal.expect("sized", Duration::from_secs(30)),
            "{}\n{}",
            terminal.seen,
            env.log()
        );
        assert!(
            terminal.seen.contains("33 111"),
            "attempt {attempt}: the program saw another size:\n{}",
            terminal.seen
        );
        assert_eq!(terminal.child.wait().unwrap().code(), Some(0));
    }
}

/// What a user does in a terminal session, checked step by step: a prompt, a real
/// terminal of the right size, a resize that reaches the container, Ctrl-C that
/// stops `sleep` but not the shell, and `exit 7` coming back as the exit code.
pub fn check_terminal_session(mut terminal: Terminal, log: &dyn Fn() -> String) {
    let wait = Duration::from_secs(30);
    terminal.type_text("tty; stty size; echo ready-$((6*7))\n");
    assert!(
        terminal.expect("ready-42", wait),
        "no shell prompt:\n{}\n{}",
        terminal.seen,
        log()
    );
    assert!(
        terminal.seen.contains("/dev/pts/"),
        "not a terminal:\n{}",
        terminal.seen
    );
    assert!(
        terminal.seen.contains("24 80"),
        "wrong size:\n{}",
        terminal.seen
    );

    terminal.resize(50, 132);
    std::thread::sleep(Duration::from_millis(500));
    terminal.type_text("stty size; echo resized-$((1+1))\n");
    assert!(terminal.expect("resized-2", wait), "{}", terminal.seen);
    assert!(
        terminal.seen.contains("50 132"),
        "the resize did not reach the container:\n{}",
        terminal.seen
    );

    terminal.type_text("sleep 100; echo slept\n");
    std::thread::sleep(Duration::from_millis(800));
    terminal.type_text("\x03");
    terminal.type_text("echo alive-$((3*3))\n");
    assert!(
        terminal.expect("alive-9", wait),
        "Ctrl-C killed the session:\n{}",
        terminal.seen
    );
    // "slept" shows in the echo of what was typed (once or, when the terminal echoed
    // it before the shell redrew the line, twice); only a sleep that ran out prints it
    // on its own.
    assert_eq!(
        terminal.seen.matches("slept").count(),
        terminal.seen.matches("echo slept").count(),
        "{}",
        terminal.seen
    );
    assert_eq!(
        terminal.child.try_wait().unwrap(),
        None,
        "the session died of Ctrl-C"
    );

    terminal.type_text("exit 7\n");
    let status = terminal.child.wait().unwrap();
    assert_eq!(status.code(), Some(7), "{}\n{}", terminal.seen, log());
}

#[test]
fn a_minimal_busybox_image_works_without_bash_or_useradd() {
    let env = real_env_or_skip!("60s", minimal_image());
    let output =
        env.run("id -un; id -u; id -g; echo $HOME; echo $SHELL; pwd; touch ~/x && echo writable");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!(
            "{0}\n{1}\n{2}\n/home/{0}\n/bin/bash\n/home/{0}\nwritable\n",
            env.user, env.uid, env.gid
        ),
        "{}",
        env.explain(&output)
    );
    // A login shell: the image has no bash, so /bin/sh it is.
    let mut terminal = Terminal::start(env.spawn(None), 24, 80);
    terminal.type_text("echo shell-$SHELL-$((40+2))\n");
    assert!(
        terminal.expect("shell-/bin/sh-42", Duration::from_secs(30)),
        "{}\n{}",
        terminal.seen,
        env.log()
    );
    terminal.type_text("exit 3\n");
    assert_eq!(terminal.child.wait().unwrap().code(), Some(3));
    // No sftp-server: the user is told what is missing, in one line.
    let sftp = env.run("internal-sftp");
    assert_eq!(sftp.status.code(), Some(127), "{}", env.explain(&sftp));
    assert_eq!(
        String::from_utf8_lossy(&sftp.stderr),
        "podspawn: this image has no sftp-server (Debian/Ubuntu: openssh-sftp-server)\n"
    );
}

#[test]
fn verify_image_reports_what_the_real_images_have() {
    if let Some(reason) = unavailable() {
        return crate::support::skip("real-engine test", &reason);
    }
    let verify = |image: &str| {
        Command::new(PODSPAWN)
            .args(["verify-image", image])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("PODSPAWN_CONFIG", "/nonexistent/config.yaml")
            .output()
            .unwrap()
    };
    let full = verify(image());
    assert!(
        full.status.success(),
        "{}",
        String::from_utf8_lossy(&full.stdout)
    );
    assert!(!String::from_utf8_lossy(&full.stdout).contains('✗'));
    let minimal = verify(minimal_image());
    assert_eq!(minimal.status.code(), Some(1));
    let report = String::from_utf8_lossy(&minimal.stdout).to_string();
    for line in [
        "⚠ shell          /bin/sh (defaults.shell /bin/bash is missing; /bin/sh is used)",
        "✗ sftp-server    missing, for SFTP, scp's default protocol, VS Code Remote (Debian/Ubuntu package: openssh-sftp-server)",
        "✗ rsync          missing",
        // busybox's sh answers `command -v` with the applet's name.
        "✓ grep           ",
        "✓ sleep          ",
    ] {
        assert!(report.contains(line), "{line:?} missing from:\n{report}");
    }
}

/// A directory of the account's own under the test's root, for files it controls.
fn own_dir(env: &RealEnv) -> PathBuf {
    let own = env.root.join("own");
    fs::create_dir_all(&own).unwrap();
    std::os::unix::fs::chown(&own, Some(env.uid), Some(env.gid)).unwrap();
    fs::set_permissions(&own, fs::Permissions::from_mode(0o755)).unwrap();
    own
}

/// Writes `path` as the account's own file.
fn write_owned(env: &RealEnv, path: &std::path::Path, text: &str, mode: u32) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).unwrap();
        std::os::unix::fs::chown(parent, Some(env.uid), Some(env.gid)).unwrap();
    }
    fs::write(path, text).unwrap();
    std::os::unix::fs::chown(path, Some(env.uid), Some(env.gid)).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Points `argv[1]` at `argv[2]` and `argv[3]` in turn, forever, each flip one rename.
const FLIP_LINK: &str = r#"import os, sys
link, targets = sys.argv[1], sys.argv[2:]
i = 0
while True:
    os.symlink(targets[i % 2], link + ".new")
    os.rename(link + ".new", link)
    i += 1
"#;

/// The setgid binary checks a config it is pointed at and then reads it; a symlink of
/// the caller's that keeps flipping between a root-owned file and the caller's own
/// config must never get the caller's config read. If it were, its `docker.binary`
/// (a program of the caller's) would run with the docker group: root on the host.
#[test]
fn a_flipping_config_symlink_never_runs_the_callers_program() {
    let env = real_env_or_skip!("60s");
    let own = own_dir(&env);
    let marker = own.join("ran-with-the-docker-group");
    // Everything a spawn needs, all in the caller's tree, so that a podspawn which
    // read this config would go as far as running the caller's "docker".
    write_owned(
        &env,
        &own.join("evil-docker"),
        &format!("#!/bin/sh\n: > {}\nexit 1\n", marker.display()),
        0o755,
    );
    write_owned(
        &env,
        &own.join("keys").join(&env.user),
        &format!("{ED25519}\n"),
        0o644,
    );
    fs::set_permissions(own.join("keys"), fs::Permissions::from_mode(0o755)).unwrap();
    let evil = own.join("evil.yaml");
    write_owned(
        &env,
        &evil,
        &format!(
            "auth:\n  key_dir: {own}/keys\ndocker:\n  binary: {own}/evil-docker\n\
             state:\n  db_path: {own}/state.db\n  lock_dir: {own}/locks\n  agent_dir: {own}/agents\n",
            own = own.display()
        ),
        0o644,
    );
    let link = own.join("config.yaml");
    // The caller flips the link as fast as it can, each flip one atomic rename.
    let mut flipper = {
        let mut command = Command::new("python3");
        command
            .args([
                "-c",
                FLIP_LINK,
                link.to_str().unwrap(),
                "/etc/passwd",
                evil.to_str().unwrap(),
            ])
            .stdin(Stdio::null());
        crate::support::as_account(&mut command, env.uid, env.gid);
        command.spawn().expect("python3 runs")
    };
    assert!(
        wait_until(Duration::from_secs(10), || link.exists()).is_some(),
        "the flipper never made its link"
    );
    const ATTEMPTS: usize = 2000;
    let link_text = link.to_str().unwrap().to_string();
    let mut attempts = 0;
    let mut outcomes = std::collections::BTreeMap::new();
    for how in ["--config", "PODSPAWN_CONFIG"] {
        for _ in 0..ATTEMPTS {
            let mut spawn = match how {
                "--config" => env.as_user(&["--config", &link_text, "spawn", "--user", &env.user]),
                _ => {
                    let mut spawn = env.as_user(&["spawn", "--user", &env.user]);
                    spawn.env("PODSPAWN_CONFIG", &link_text);
                    spawn
                }
            };
            let output = spawn
                .env("SSH_ORIGINAL_COMMAND", "true")
                .stdin(Stdio::null())
                .output()
                .unwrap();
            attempts += 1;
            *outcomes
                .entry((how, output.status.code()))
                .or_insert(0usize) += 1;
            if marker.exists() {
                break;
            }
        }
    }
    let _ = flipper.kill();
    let _ = flipper.wait();
    eprintln!("{attempts} attempts against a flipping config link: {outcomes:?}");
    assert!(
        !marker.exists(),
        "the caller's program ran with the docker group after {attempts} attempts: {outcomes:?}"
    );
    assert_eq!(
        outcomes.keys().map(|(_, code)| *code).collect::<Vec<_>>(),
        [Some(125), Some(125)],
        "every attempt is refused with spawn's own exit code: {outcomes:?}"
    );
}

/// Under the setgid group, an override with nothing in it would silently mean "every
/// default": another engine, no limits, no log. It is refused instead.
#[test]
fn an_override_without_settings_is_refused_under_the_setgid_group() {
    let env = real_env_or_skip!("60s");
    let empty = env.root.join("empty.yaml");
    fs::write(&empty, "# nothing but a comment\n---\n").unwrap();
    fs::set_permissions(&empty, fs::Permissions::from_mode(0o644)).unwrap();
    let output = env
        .as_user(&[
            "--config",
            empty.to_str().unwrap(),
            "spawn",
            "--user",
            &env.user,
        ])
        .env("SSH_ORIGINAL_COMMAND", "true")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(125), "{}", env.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "podspawn: the podspawn configuration of this server is broken; tell your admin\n"
    );
    assert!(!env.container_exists());
}

/// The agent directory is mounted into every container of the user; written from
/// inside, it would fill the filesystem that holds the state database.
#[test]
fn the_agent_directory_is_read_only_inside() {
    let env = real_env_or_skip!("60s");
    let output = env.run(
        "test -d /run/ssh-agent && echo mounted; \
         dd if=/dev/zero of=/run/ssh-agent/fill bs=1k count=1 2>&1; echo dd=$?",
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(text.starts_with("mounted\n"), "{}", env.explain(&output));
    assert!(
        text.contains("Read-only file system"),
        "{}",
        env.explain(&output)
    );
    assert!(text.ends_with("dd=1\n"), "{}", env.explain(&output));
    let agents = env.root.join("state/agents").join(&env.user);
    assert_eq!(
        fs::read_dir(&agents).unwrap().count(),
        0,
        "{agents:?} was written"
    );
}

/// A command that is not UTF-8 (a latin-1 file name in `scp -t`) reaches the
/// container as the bytes it is; a locale that is not UTF-8 is left out.
#[test]
fn bytes_that_are_not_utf8_reach_the_container_as_they_are() {
    use std::os::unix::ffi::OsStrExt;
    let env = real_env_or_skip!("60s");
    let output = env
        .spawn(None)
        .env(
            "SSH_ORIGINAL_COMMAND",
            std::ffi::OsStr::from_bytes(b"printf '%s|' caf\xe9 \"$LANG\" | od -An -c | tr -s ' '"),
        )
        .env("LANG", std::ffi::OsStr::from_bytes(b"x\xff"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        " c a f 351 | |\n",
        "{}",
        env.explain(&output)
    );
}

/// A container of the session's name that podspawn did not make is not podspawn's
/// to remove: the login ends with one line naming it, and the container stays.
#[test]
fn a_foreign_container_of_the_sessions_name_is_left_alone() {
    let env = real_env_or_skip!("60s");
    let started = Command::new("docker")
        .args([
            "run",
            "--detach",
            "--rm",
            "--name",
            &env.container(),
            "--entrypoint",
            "/bin/sh",
        ])
        .args([image(), "-c", "sleep 120"])
        .output()
        .unwrap();
    assert!(
        started.status.success(),
        "{}",
        String::from_utf8_lossy(&started.stderr)
    );
    let output = env.run("true");
    assert_eq!(output.status.code(), Some(125), "{}", env.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!(
            "podspawn: a container named {} that this podspawn did not make is in the way; tell your admin\n",
            env.container()
        )
    );
    assert!(env.container_exists(), "the foreign container was removed");
}

/// spawn never makes the shared directories itself (a directory the first caller
/// made would be the caller's): without them, one line, and nothing created.
#[test]
fn spawn_refuses_a_server_whose_state_directories_are_missing() {
    let env = real_env_or_skip!("60s");
    fs::remove_dir(env.root.join("state/agents")).unwrap();
    let output = env.run("true");
    assert_eq!(output.status.code(), Some(125), "{}", env.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "podspawn: podspawn is not set up on this server; tell your admin\n"
    );
    assert!(!env.root.join("state/agents").exists());
    assert!(!env.root.join("state/state.db").exists());
    assert!(!env.container_exists());
}

/// The agent relay reaches the caller's agent as the caller: an agent that asks its
/// peer's credentials must not see the docker group.
#[test]
fn the_agent_relay_reaches_the_agent_without_the_docker_group() {
    use std::os::fd::AsRawFd;
    let env = real_env_or_skip!("60s");
    let own = own_dir(&env);
    let socket = own.join("agent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let peer = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut credentials = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut length = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        let result = unsafe {
            libc::getsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut credentials as *mut libc::ucred).cast(),
                &mut length,
            )
        };
        assert_eq!(result, 0);
        (credentials.uid, credentials.gid)
    });
    let output = env
        .spawn(Some("ssh-add -l; true"))
        .env("SSH_AUTH_SOCK", &socket)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", env.explain(&output));
    let (uid, gid) = peer.join().unwrap();
    assert_eq!(
        (uid, gid),
        (env.uid, env.gid),
        "the agent saw gid {gid} (docker is {})",
        docker_gid()
    );
}

mod hardening;
