//! The real world behind `session`'s traits: docker for containers, `exec` for
//! running a connection, `process` for liveness and for ending what a lost connection
//! left running, and the keeper started as a detached process.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::container::{CONNECTION_MARKER, ContainerSpec, ExecSpec};
use crate::docker::{ContainerState, Docker, DockerError, FIXED_PATH, Labels, ManagedContainer};
use crate::exec::{self, Ended};
use crate::keys::UserName;
use crate::keys::store::KeyStore;
use crate::network::UserNetwork;
use crate::process::{self, ProcessId};
use crate::session::{Engine, ExecEnd, Host, SessionError};

/// How long a lost connection's processes get after SIGHUP before SIGKILL.
const HANGUP_PATIENCE: Duration = Duration::from_secs(2);

pub struct DockerEngine {
    docker: Docker,
    /// The uid the connection's processes run under, in the container and here.
    uid: u32,
}

impl DockerEngine {
    pub fn new(docker: Docker, uid: u32) -> DockerEngine {
        DockerEngine { docker, uid }
    }
}

impl Engine for DockerEngine {
    fn create(&mut self, spec: &ContainerSpec) -> Result<(), DockerError> {
        self.docker.create(spec)
    }

    fn remove(&mut self, container: &str) -> Result<(), DockerError> {
        self.docker.remove(container)
    }

    fn state(&mut self, container: &str) -> Result<ContainerState, DockerError> {
        self.docker.state(container)
    }

    fn labels(&mut self, container: &str) -> Result<Option<Labels>, DockerError> {
        self.docker.labels(container)
    }

    fn list_managed(&mut self) -> Result<Vec<ManagedContainer>, DockerError> {
        self.docker.list_managed()
    }

    fn create_network(&mut self, network: &UserNetwork, user: &str) -> Result<(), DockerError> {
        self.docker.create_network(network, user)
    }

    fn networks_in(&mut self, cidr: &str) -> Result<Vec<(String, String)>, DockerError> {
        self.docker.managed_networks_in(cidr)
    }

    fn remove_network(&mut self, name: &str) -> Result<(), DockerError> {
        self.docker.remove_network(name)
    }

    fn exec(&mut self, spec: &ExecSpec) -> Result<ExecEnd, SessionError> {
        let ended = exec::supervise(self.docker.exec_command(spec)).map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                SessionError::Docker(self.docker.not_installed(err))
            } else {
                SessionError::Exec(err)
            }
        })?;
        match ended {
            Ended::Exited {
                status,
                held_stderr,
            } => Ok(ExecEnd::Exited {
                code: exec::exit_code(status),
                held_stderr,
            }),
            Ended::Disconnected { signal, mut child } => {
                // Killing the docker client does not end what it started in the
                // container: find those processes by their marker and end them.
                if let Some((name, value)) =
                    spec.env.iter().find(|(name, _)| name == CONNECTION_MARKER)
                {
                    let ended =
                        process::end_marked(self.uid, &format!("{name}={value}"), HANGUP_PATIENCE);
                    log::debug!("ended {ended} process(es) of {value}");
                }
                let _ = child.kill();
                let _ = child.wait();
                Ok(ExecEnd::Disconnected { signal })
            }
        }
    }
}

/// The sessions, as an admin command (root, no connection of its own) works on them.
pub fn admin_sessions(
    config: &crate::config::ServerConfig,
) -> Result<crate::session::Sessions<DockerEngine, SystemHost>, SessionError> {
    let engine = DockerEngine::new(Docker::new(&config.docker), 0);
    crate::session::Sessions::open(
        engine,
        SystemHost::new(config),
        config.state.db_path.as_path(),
        crate::lock::Locks::configured(config),
    )
}

pub struct SystemHost {
    /// The server config this process read, when not the default, for the keeper to
    /// read the same.
    config_path: Option<PathBuf>,
    keys: KeyStore,
}

impl SystemHost {
    pub fn new(config: &crate::config::ServerConfig) -> SystemHost {
        SystemHost {
            config_path: config.moved().map(PathBuf::from),
            keys: KeyStore::new(config.auth.key_dir.as_path()),
        }
    }
}

impl Host for SystemHost {
    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_secs() as i64)
            .unwrap_or(0)
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

    fn uid_of(&self, user: &str) -> Option<u32> {
        crate::accounts::uid_of(user)
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
}
