//! This host as the session lifecycle needs it: the time, processes and their
//! liveness, the keeper started as a detached process, and who is registered.
//! `SystemHost` is the real one; the session layer's tests use a fake.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::ServerConfig;
use crate::docker::FIXED_PATH;
use crate::keys::UserName;
use crate::keys::store::KeyStore;
use crate::process::{self, ProcessId};

/// Milliseconds since the epoch: what every time in the state is.
pub type Millis = i64;

pub trait Host {
    fn now(&self) -> Millis;
    /// This process (the connection being made).
    fn this_process(&self) -> ProcessId;
    fn is_alive(&self, process: &ProcessId) -> bool;
    /// Starts the keeper of a session, detached from this connection.
    fn start_keeper(&mut self, user: &UserName, project: &str) -> Result<ProcessId, String>;
    fn new_session_id(&mut self) -> String;
    /// The uid of a host account, if it exists.
    fn uid_of(&self, user: &str) -> Option<u32>;
    /// Whether the user has keys with podspawn (asked under their lock, so a
    /// `remove-user` that ran meanwhile is seen).
    fn is_registered(&self, user: &UserName) -> bool;
    /// Asks a session's keeper to look now rather than at its next tick.
    fn wake(&self, keeper: &ProcessId);
    /// Tells a connection's spawn that an admin is ending its session (`stop`): when
    /// its program ends, it says so rather than making the session again.
    fn tell_stopped(&self, connection: &ProcessId);
    /// Whether this process was told so (`tell_stopped`).
    fn was_stopped(&self) -> bool;
    /// Whether `address` accepts a TCP connection before `until` (a companion
    /// service's port, tried again and again until then).
    fn wait_for_port(&self, address: std::net::SocketAddrV4, until: Millis) -> bool;
    /// Every registered user but `user`, with their uid (those with an account).
    fn other_users(&self, user: &UserName) -> Vec<(String, u32)>;
}

/// The users registered in `store` but `user`, each with their account's uid (a
/// user without an account is left out: they have no addresses); and `user`'s own
/// uid, if they have an account. One listing of the store, one read of /etc/passwd.
pub fn registered_uids(store: &KeyStore, user: &UserName) -> (Option<u32>, Vec<(String, u32)>) {
    let users = match store.users() {
        Ok(users) => users,
        Err(err) => {
            log::error!("cannot list the registered users: {err}");
            Vec::new()
        }
    };
    // Sorted, as the store lists them, with `user` in its place.
    let mut names: Vec<&str> = users.iter().map(UserName::as_str).collect();
    if let Err(at) = names.binary_search(&user.as_str()) {
        names.insert(at, user.as_str());
    }
    let mut uids = crate::accounts::uids_of(&names).unwrap_or_default();
    let own = uids
        .iter()
        .position(|(name, _)| name == user.as_str())
        .map(|at| uids.remove(at).1);
    (own, uids)
}

/// The users registered in `store` but `user`, with their uids (see
/// `registered_uids`).
pub fn other_users(store: &KeyStore, user: &UserName) -> Vec<(String, u32)> {
    registered_uids(store, user).1
}

/// The signal that wakes a keeper: its default action is to be ignored, so a keeper
/// that does not listen yet (it has just started) misses nothing it would not see on
/// its first look anyway.
pub const WAKE_SIGNAL: i32 = libc::SIGWINCH;

/// What `stop` sends a connection's spawn (which catches it from its start).
pub const STOP_SIGNAL: i32 = libc::SIGUSR1;

pub struct SystemHost {
    /// The server config this process read, when not the default, for the keeper to
    /// read the same.
    config_path: Option<PathBuf>,
    keys: KeyStore,
}

impl SystemHost {
    pub fn new(config: &ServerConfig) -> SystemHost {
        SystemHost {
            config_path: config.moved().map(PathBuf::from),
            keys: KeyStore::new(config.auth.key_dir.as_path()),
        }
    }
}

/// Whether `address` accepts a TCP connection before `until`, tried again every
/// 10 ms (each try at most 250 ms) until then: a refused try costs microseconds, and
/// a new session's first program waits for this.
pub fn wait_for_port(address: std::net::SocketAddrV4, until: Millis) -> bool {
    const ATTEMPT: std::time::Duration = std::time::Duration::from_millis(250);
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(10);
    loop {
        let left = until - now_millis();
        if left <= 0 {
            return false;
        }
        let patience = ATTEMPT.min(std::time::Duration::from_millis(left as u64));
        let started = std::time::Instant::now();
        if std::net::TcpStream::connect_timeout(&address.into(), patience).is_ok() {
            return true;
        }
        // Refused at once (nothing listens yet): a short pause, not a busy loop.
        if let Some(rest) = PAUSE.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}

/// The time now, in milliseconds since the epoch.
pub fn now_millis() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_millis() as Millis)
        .unwrap_or(0)
}

impl Host for SystemHost {
    fn now(&self) -> Millis {
        now_millis()
    }

    fn this_process(&self) -> ProcessId {
        process::current()
    }

    fn is_alive(&self, process: &ProcessId) -> bool {
        process::is_alive(process)
    }

    /// The keeper is this same binary, `podspawn keeper`, in a session of its own with
    /// no stdio: nothing ties it to the SSH connection, so neither a hang-up nor sshd
    /// waiting for open descriptors reaches it.
    fn start_keeper(&mut self, user: &UserName, project: &str) -> Result<ProcessId, String> {
        let mut command = Command::new("/proc/self/exe");
        command.arg0("podspawn");
        if let Some(path) = &self.config_path {
            command.arg("--config").arg(path);
        }
        command.args(["keeper", "--user", user.as_str()]);
        if !project.is_empty() {
            command.args(["--project", project]);
        }
        command
            .env_clear()
            .env("PATH", FIXED_PATH)
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|err| format!("cannot start podspawn keeper: {err}"))?;
        process::identify(child.id() as i32).ok_or_else(|| "the keeper exited at once".to_string())
    }

    fn new_session_id(&mut self) -> String {
        let mut bytes = [0u8; 8];
        let filled = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
        if filled != bytes.len() as isize {
            // getrandom cannot fail for 8 bytes after boot; if it did, time and pid
            // still make the id unique on this host.
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|since| since.as_nanos() as u64)
                .unwrap_or(0);
            bytes = (nanos ^ u64::from(std::process::id()) << 32).to_be_bytes();
        }
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    fn uid_of(&self, user: &str) -> Option<u32> {
        crate::accounts::uid_of(user)
    }

    fn wake(&self, keeper: &ProcessId) {
        // The keeper runs as the caller (or the caller is root); the pid was checked
        // to be that very process just before.
        unsafe { libc::kill(keeper.pid, WAKE_SIGNAL) };
    }

    fn tell_stopped(&self, connection: &ProcessId) {
        // Only that very process: a pid used again since is someone else's.
        if crate::process::identify(connection.pid).as_ref() == Some(connection) {
            unsafe { libc::kill(connection.pid, STOP_SIGNAL) };
        }
    }

    fn was_stopped(&self) -> bool {
        crate::exec::stop_requested()
    }

    fn wait_for_port(&self, address: std::net::SocketAddrV4, until: Millis) -> bool {
        wait_for_port(address, until)
    }

    fn other_users(&self, user: &UserName) -> Vec<(String, u32)> {
        other_users(&self.keys, user)
    }

    fn is_registered(&self, user: &UserName) -> bool {
        match self.keys.is_registered(user) {
            Ok(registered) => registered,
            Err(err) => {
                log::error!("cannot tell whether {user} is registered: {err}");
                false
            }
        }
    }
}
