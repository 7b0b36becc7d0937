//! The only module that knows the docker CLI: argv for every call podspawn makes, the
//! environment docker runs in, parsing of its output, and its failures as typed errors
//! that carry the argv, the exit status and docker's stderr.
//!
//! Docker always runs with an environment podspawn sets, never the caller's: a fixed
//! PATH, `DOCKER_CONFIG` in a root-owned directory (a user's `~/.docker` could name
//! credential helpers or CLI plugins, programs that would run with the docker group),
//! and `DOCKER_HOST` only from the server config.
//!
//! Everything podspawn creates carries the labels `podspawn.managed=true`,
//! `podspawn.installation`, `podspawn.user`, `podspawn.project` and `podspawn.session`
//! (a companion service also `podspawn.service`, its volumes too), so that what
//! podspawn made can always be found again, and only by the installation that made it.

use std::fmt;
use std::io;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::config::DockerConfig;
use crate::container::{self, AGENT_MOUNT, ContainerSpec, ExecSpec, ServiceSpec};
use crate::network::Network;

pub const LABEL_MANAGED: &str = "podspawn.managed";
/// Which installation (state directory) made it: see `ServerConfig::installation`.
pub const LABEL_INSTALLATION: &str = "podspawn.installation";
pub const LABEL_USER: &str = "podspawn.user";
pub const LABEL_PROJECT: &str = "podspawn.project";
pub const LABEL_SESSION: &str = "podspawn.session";
pub const LABEL_SERVICE: &str = "podspawn.service";

/// The PATH docker runs with (and on which a bare `docker.binary` is looked up).
pub const FIXED_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What a `docker run --detach` makes, for telling its failures apart.
struct Run<'a> {
    name: &'a str,
    network: Option<&'a str>,
    image: &'a str,
}

/// How to run the docker CLI.
#[derive(Debug, Clone)]
pub struct Docker {
    binary: String,
    host: Option<String>,
    config_dir: String,
    /// This installation's name (`podspawn.installation`): on all it makes, and all
    /// it lists.
    installation: String,
    /// The longest one docker call may take (not an exec, a build or a pull, which
    /// have their own ends): an engine that never answers must not hold a login.
    timeout: Duration,
}

/// What docker says of a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    Running,
    NotRunning,
    Missing,
}

/// The labels podspawn puts on a container, as found on one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labels {
    /// `podspawn.managed=true`, and made by this installation (another one's is not
    /// ours to remove).
    pub managed: bool,
    pub user: String,
    pub project: String,
}

/// A project image to build.
#[derive(Debug, Clone)]
pub struct BuildSpec<'a> {
    /// `podspawn/<project>:<hash>`.
    pub tag: &'a str,
    pub dockerfile: &'a str,
    /// The repo checkout the Dockerfile copies from.
    pub context: &'a std::path::Path,
    /// The longest the build may take.
    pub timeout: Duration,
}

/// A network that carries `podspawn.managed=true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedNetwork {
    pub name: String,
    /// Its `podspawn.user` label.
    pub user: String,
    /// Its `podspawn.project` label (a session's network's).
    pub project: String,
    /// Its `podspawn.session` label: empty on a user's network, the session id on a
    /// session's private one.
    pub session: String,
}

/// Where a container is and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Whereabouts {
    pub running: bool,
    /// Once it has stopped.
    pub exit_code: Option<i32>,
    pub address: Option<std::net::Ipv4Addr>,
}

/// What an image's config says (`docker image inspect`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// TCP ports it exposes.
    pub exposed: Vec<u16>,
    /// Paths it declares as volumes: each an anonymous volume per container.
    pub volumes: Vec<String>,
    /// The user it starts as; empty for root.
    pub user: String,
}

/// `{{json .Config}}` of an image; what is not there is empty.
fn parse_image_config(json: &str) -> ImageConfig {
    let value: serde_json::Value = serde_json::from_str(json.trim()).unwrap_or_default();
    let keys = |field: &str| -> Vec<String> {
        value[field]
            .as_object()
            .map(|map| map.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut exposed: Vec<u16> = keys("ExposedPorts")
        .iter()
        .filter(|port| !port.ends_with("/udp"))
        .filter_map(|port| port.trim_end_matches("/tcp").parse().ok())
        .collect();
    exposed.sort_unstable();
    ImageConfig {
        exposed,
        volumes: keys("Volumes"),
        user: value["User"].as_str().unwrap_or("").to_string(),
    }
}

/// A volume that carries `podspawn.managed=true`: a service's named volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedVolume {
    pub name: String,
    pub user: String,
    pub project: String,
    /// The session it is private to; empty for one kept across sessions.
    pub session: String,
}

/// A container that carries `podspawn.managed=true`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedContainer {
    pub name: String,
    pub running: bool,
    pub user: String,
    pub project: String,
    pub session: String,
    /// Its `podspawn.service` label: empty for a session's own container.
    pub service: String,
}

#[derive(Debug)]
pub enum DockerError {
    /// The docker binary could not be started at all.
    NotInstalled { binary: String, source: io::Error },
    /// The CLI ran but could not reach the engine.
    Unreachable { argv: Vec<String>, stderr: String },
    /// The image is not on this host and could not be pulled.
    ImageUnavailable { image: String, stderr: String },
    /// A container of that name exists already.
    NameInUse { name: String },
    /// The container's network does not exist (yet, or any more).
    NetworkMissing { network: String },
    /// The network's subnet overlaps another network's.
    NetworkOverlap { network: String, stderr: String },
    /// Any other failure.
    Failed {
        argv: Vec<String>,
        status: String,
        stderr: String,
    },
    /// Watching a running exec failed (a system call of podspawn's own).
    Supervise(io::Error),
    /// `docker build` failed; `last` is the last line it printed.
    BuildFailed {
        tag: String,
        status: String,
        last: String,
    },
    /// `docker build` ran past its deadline and was ended.
    BuildTimedOut { tag: String, after: Duration },
    /// An image a container still uses cannot be removed.
    ImageInUse { image: String },
    /// A session's network of that name exists already (left by an earlier one).
    NetworkExists { network: String },
    /// A volume a container still uses cannot be removed.
    VolumeInUse { volume: String },
    /// `docker pull` ran past its deadline and was ended.
    PullTimedOut { image: String, after: Duration },
    /// A docker call ran past `docker.timeout` and was ended (an engine that
    /// accepts the connection and never answers).
    TimedOut { argv: Vec<String>, after: Duration },
}

impl DockerError {
    /// The one line an SSH user sees (prefixed "podspawn: "); details go to the log.
    pub fn user_message(&self) -> String {
        match self {
            DockerError::NotInstalled { .. } | DockerError::Unreachable { .. } => {
                "cannot reach the container engine; tell your admin".to_string()
            }
            DockerError::TimedOut { after, .. } => format!(
                "the container engine did not answer within {}s; tell your admin",
                after.as_secs()
            ),
            DockerError::ImageUnavailable { image, .. } => {
                format!("the image {image} is not available on this server; tell your admin")
            }
            DockerError::NameInUse { .. }
            | DockerError::NetworkMissing { .. }
            | DockerError::NetworkOverlap { .. }
            | DockerError::Failed { .. }
            | DockerError::Supervise(_)
            | DockerError::BuildFailed { .. }
            | DockerError::BuildTimedOut { .. }
            | DockerError::ImageInUse { .. }
            | DockerError::NetworkExists { .. }
            | DockerError::VolumeInUse { .. }
            | DockerError::PullTimedOut { .. } => {
                "could not start your container; tell your admin".to_string()
            }
        }
    }
}

impl fmt::Display for DockerError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            DockerError::NotInstalled { binary, source } => {
                write!(f, "cannot run {binary}: {source}")
            }
            DockerError::Unreachable { argv, stderr } => {
                write!(f, "`{}` cannot reach the engine: {stderr}", shown(argv))
            }
            DockerError::TimedOut { argv, after } => write!(
                f,
                "`{}` did not finish within {}s (docker.timeout): the engine does not answer",
                shown(argv),
                after.as_secs()
            ),
            DockerError::ImageUnavailable { image, stderr } => {
                write!(f, "image {image} is not available: {stderr}")
            }
            DockerError::NameInUse { name } => write!(f, "a container named {name} exists already"),
            DockerError::NetworkMissing { network } => {
                write!(f, "network {network} does not exist")
            }
            DockerError::NetworkOverlap { network, stderr } => {
                write!(
                    f,
                    "network {network} overlaps another network (set network.pool): {stderr}"
                )
            }
            DockerError::Failed {
                argv,
                status,
                stderr,
            } => write!(f, "`{}` failed ({status}): {stderr}", shown(argv)),
            DockerError::Supervise(err) => write!(f, "cannot watch the session's exec: {err}"),
            DockerError::BuildFailed { tag, status, last } => {
                write!(f, "building {tag} failed ({status}): {last}")
            }
            DockerError::BuildTimedOut { tag, after } => {
                write!(
                    f,
                    "building {tag} took more than {}s; ended",
                    after.as_secs()
                )
            }
            DockerError::ImageInUse { image } => {
                write!(f, "image {image} is still used by a container")
            }
            DockerError::NetworkExists { network } => {
                write!(f, "network {network} exists already")
            }
            DockerError::VolumeInUse { volume } => {
                write!(f, "volume {volume} is still used by a container")
            }
            DockerError::PullTimedOut { image, after } => {
                write!(
                    f,
                    "pulling {image} took more than {}s; ended",
                    after.as_secs()
                )
            }
        }
    }
}

impl std::error::Error for DockerError {}

/// argv as one readable line for logs (not for a shell).
fn shown(argv: &[String]) -> String {
    argv.iter()
        .map(|arg| {
            let arg = if arg.len() > 80 {
                format!("{}…", &arg[..arg.floor_char_boundary(77)])
            } else {
                arg.clone()
            };
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("{arg:?}")
            } else {
                arg
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// docker's stderr folded to one line.
fn one_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn is_unreachable(stderr: &str) -> bool {
    [
        "Cannot connect to the Docker daemon",
        "Is the docker daemon running",
        "permission denied while trying to connect",
        "error during connect",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

fn is_missing(stderr: &str) -> bool {
    stderr.contains("No such container") || stderr.contains("No such object")
}

impl Docker {
    /// The docker CLI as `config` names it, for the installation `installation`.
    pub fn new(config: &DockerConfig, installation: &str) -> Docker {
        Docker {
            binary: config.binary.clone(),
            host: config.host.clone(),
            config_dir: config.config_dir.as_path().display().to_string(),
            installation: installation.to_string(),
            timeout: config.timeout.0,
        }
    }

    /// The `--filter`s of a listing of what this installation made.
    fn ours(&self) -> [String; 4] {
        [
            "--filter".to_string(),
            format!("label={LABEL_MANAGED}=true"),
            "--filter".to_string(),
            format!("label={LABEL_INSTALLATION}={}", self.installation),
        ]
    }

    /// A docker command with podspawn's environment and nothing of the caller's.
    fn command(&self, args: &[String]) -> Command {
        let mut command = Command::new(&self.binary);
        command
            .args(args)
            .env_clear()
            .env("PATH", FIXED_PATH)
            .env("HOME", "/nonexistent")
            .env("DOCKER_CONFIG", &self.config_dir);
        if let Some(host) = &self.host {
            command.env("DOCKER_HOST", host);
        }
        command
    }

    fn argv(&self, args: &[String]) -> Vec<String> {
        std::iter::once(self.binary.clone())
            .chain(args.iter().cloned())
            .collect()
    }

    /// Runs docker to completion with stdin closed and its output captured.
    fn run(
        &self,
        args: &[String],
    ) -> Result<(std::process::ExitStatus, String, String), DockerError> {
        let Some((status, stdout, stderr)) =
            crate::process::output_within(&mut self.command(args), self.timeout)
                .map_err(|source| self.not_installed(source))?
        else {
            return Err(DockerError::TimedOut {
                argv: self.argv(args),
                after: self.timeout,
            });
        };
        let stdout = String::from_utf8_lossy(&stdout).into_owned();
        let stderr = one_line(&stderr);
        if !status.success() && is_unreachable(&stderr) {
            return Err(DockerError::Unreachable {
                argv: self.argv(args),
                stderr,
            });
        }
        Ok((status, stdout, stderr))
    }

    pub fn not_installed(&self, source: io::Error) -> DockerError {
        DockerError::NotInstalled {
            binary: self.binary.clone(),
            source,
        }
    }

    fn failed(
        &self,
        args: &[String],
        status: std::process::ExitStatus,
        stderr: String,
    ) -> DockerError {
        DockerError::Failed {
            argv: self.argv(args),
            status: status.to_string(),
            stderr,
        }
    }

    /// `docker run --detach …`: creates and starts a session's container.
    pub fn create(&self, spec: &ContainerSpec) -> Result<(), DockerError> {
        let run = Run {
            name: &spec.name,
            network: Some(&spec.network.name),
            image: &spec.image,
        };
        self.run_detached(&run_args(spec, &self.installation), &run)
    }

    /// Runs a `docker run --detach` and says why it failed: the name taken, the
    /// network missing (when it names one), the image not to be had, or else
    /// docker's own words.
    fn run_detached(&self, args: &[String], run: &Run) -> Result<(), DockerError> {
        let (status, _, stderr) = self.run(args)?;
        if status.success() {
            return Ok(());
        }
        if stderr.contains("is already in use") {
            return Err(DockerError::NameInUse {
                name: run.name.to_string(),
            });
        }
        if let Some(network) = run.network
            && (stderr.contains(&format!("network {network} not found"))
                || stderr.contains("No such network"))
        {
            return Err(DockerError::NetworkMissing {
                network: network.to_string(),
            });
        }
        if stderr.contains("Unable to find image")
            || stderr.contains("No such image")
            || stderr.contains("pull access denied")
            || stderr.contains("manifest unknown")
        {
            return Err(DockerError::ImageUnavailable {
                image: run.image.to_string(),
                stderr,
            });
        }
        Err(self.failed(args, status, stderr))
    }

    /// `docker network create` for a user's network (one that exists is fine), or
    /// for a session's private one (one that exists is `NetworkExists`: an earlier
    /// session's, whose subnet and labels may not be this one's).
    pub fn create_network(
        &self,
        network: &Network,
        owner: &NetworkOwner,
    ) -> Result<(), DockerError> {
        let args = network_create_args(network, owner, &self.installation);
        let (status, _, stderr) = self.run(&args)?;
        if status.success() {
            return Ok(());
        }
        if stderr.contains("already exists") {
            return if owner.session.is_empty() {
                Ok(())
            } else {
                Err(DockerError::NetworkExists {
                    network: network.name.clone(),
                })
            };
        }
        if stderr.contains("overlaps") {
            return Err(DockerError::NetworkOverlap {
                network: network.name.clone(),
                stderr,
            });
        }
        Err(self.failed(&args, status, stderr))
    }

    /// podspawn's network for what is no session's (a project's build steps, an image
    /// being tried): made when missing, kept (it holds nothing), its bridge named so
    /// the egress policy knows it (`isolation`).
    pub fn ensure_build_network(&self) -> Result<(), DockerError> {
        let args = build_network_args(&self.installation);
        let (status, _, stderr) = self.run(&args)?;
        if status.success() {
            return Ok(());
        }
        // There already, or just made by a build beside this one (docker then says
        // another thing: "networks have same bridge name"): it is fine if it is
        // podspawn's, with the bridge the egress policy knows.
        let name = build_network(&self.installation);
        let inspect = strings(&[
            "network",
            "inspect",
            "--format",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
            &name,
        ]);
        let (found, bridge, _) = self.run(&inspect)?;
        if found.success() && bridge.trim() == build_bridge(&self.installation) {
            Ok(())
        } else {
            Err(self.failed(&args, status, stderr))
        }
    }

    /// `docker run --detach …` of a session's companion service.
    pub fn create_service(&self, spec: &ServiceSpec) -> Result<(), DockerError> {
        let run = Run {
            name: &spec.container,
            network: Some(&spec.network),
            image: &spec.image,
        };
        self.run_detached(&service_run_args(spec, &self.installation), &run)
    }

    /// `docker run --detach` of a service's image on its own, to try it (on the build
    /// network).
    pub fn probe_service(&self, spec: &ServiceSpec) -> Result<(), DockerError> {
        self.ensure_build_network()?;
        let run = Run {
            name: &spec.container,
            network: None,
            image: &spec.image,
        };
        self.run_detached(&service_probe_args(spec, &self.installation), &run)
    }

    /// A container's address on its (first) network, its exit code once it has
    /// stopped; `None` when there is no such container.
    pub fn whereabouts(&self, name: &str) -> Result<Option<Whereabouts>, DockerError> {
        let args = strings(&[
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.State.Running}}\t{{.State.ExitCode}}\t{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}",
            name,
        ]);
        let (status, stdout, stderr) = self.run(&args)?;
        if !status.success() {
            return if is_missing(&stderr) {
                Ok(None)
            } else {
                Err(self.failed(&args, status, stderr))
            };
        }
        let mut fields = stdout.trim_end().split('\t');
        let running = fields.next() == Some("true");
        let code = fields
            .next()
            .and_then(|code| code.parse().ok())
            .unwrap_or(-1);
        let address = fields
            .next()
            .and_then(|addresses| addresses.split_whitespace().next())
            .and_then(|address| address.parse().ok());
        Ok(Some(Whereabouts {
            running,
            exit_code: (!running).then_some(code),
            address,
        }))
    }

    /// The last `lines` lines a container printed (stdout and stderr), one line
    /// each, as much as fits in 4 KiB.
    pub fn logs(&self, name: &str, lines: usize) -> Result<String, DockerError> {
        let args = vec![
            "logs".to_string(),
            "--tail".to_string(),
            lines.to_string(),
            name.to_string(),
        ];
        let output = self
            .command(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|source| self.not_installed(source))?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        let mut text: String = text.chars().take(4096).collect();
        text.truncate(text.trim_end().len());
        Ok(text)
    }

    /// What an image's config says a service of it needs: the ports it exposes,
    /// the volumes it declares, the user it starts as.
    pub fn image_config(&self, image: &str) -> Result<ImageConfig, DockerError> {
        let args = strings(&["image", "inspect", "--format", "{{json .Config}}", image]);
        let (status, stdout, stderr) = self.run(&args)?;
        if !status.success() {
            return Err(
                if stderr.contains("No such image") || stderr.contains("No such object") {
                    DockerError::ImageUnavailable {
                        image: image.to_string(),
                        stderr,
                    }
                } else {
                    self.failed(&args, status, stderr)
                },
            );
        }
        Ok(parse_image_config(&stdout))
    }

    /// `docker volume rm`: a volume that is already gone is not an error; one a
    /// container still uses is `VolumeInUse`.
    pub fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        let args = strings(&["volume", "rm", name]);
        let (status, _, stderr) = self.run(&args)?;
        if status.success()
            || stderr.contains("no such volume")
            || stderr.contains("No such volume")
        {
            Ok(())
        } else if stderr.contains("volume is in use") {
            Err(DockerError::VolumeInUse {
                volume: name.to_string(),
            })
        } else {
            Err(self.failed(&args, status, stderr))
        }
    }

    /// Every volume podspawn made.
    pub fn list_managed_volumes(&self) -> Result<Vec<ManagedVolume>, DockerError> {
        Ok(self
            .list_owned("volume")?
            .into_iter()
            .map(|[name, user, project, session]| ManagedVolume {
                name,
                user,
                project,
                session,
            })
            .collect())
    }

    /// `docker network ls` or `docker volume ls` of what this installation made:
    /// each one's name, user, project and session labels.
    fn list_owned(&self, kind: &str) -> Result<Vec<[String; 4]>, DockerError> {
        let mut args = vec![kind.to_string(), "ls".to_string()];
        args.extend(self.ours());
        args.extend([
            "--format".to_string(),
            format!(
                "{{{{.Name}}}}\t{{{{.Label \"{LABEL_USER}\"}}}}\t{{{{.Label \"{LABEL_PROJECT}\"}}}}\t{{{{.Label \"{LABEL_SESSION}\"}}}}"
            ),
        ]);
        let (status, stdout, stderr) = self.run(&args)?;
        if !status.success() {
            return Err(self.failed(&args, status, stderr));
        }
        Ok(stdout
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split('\t').collect();
                let [name, user, project, session] = fields[..] else {
                    return None;
                };
                Some([name, user, project, session].map(str::to_string))
            })
            .collect())
    }

    /// `docker pull`, ended past `timeout`.
    pub fn pull(&self, image: &str, timeout: Duration) -> Result<(), DockerError> {
        let args = strings(&["pull", "--quiet", image]);
        let mut child = self
            .command(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| self.not_installed(source))?;
        // The reader ends when docker does; its end is our deadline's to wait for.
        let stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            if let Some(stderr) = stderr {
                use std::io::Read;
                let _ = stderr.take(64 * 1024).read_to_end(&mut text);
            }
            text
        });
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            match child.try_wait().map_err(DockerError::Supervise)? {
                Some(status) => break status,
                None if std::time::Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(DockerError::PullTimedOut {
                        image: image.to_string(),
                        after: timeout,
                    });
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let stderr = one_line(&reader.join().unwrap_or_default());
        if status.success() {
            return Ok(());
        }
        if is_unreachable(&stderr) {
            return Err(DockerError::Unreachable {
                argv: self.argv(&args),
                stderr,
            });
        }
        Err(DockerError::ImageUnavailable {
            image: image.to_string(),
            stderr,
        })
    }

    /// `docker network rm`: a network that is already gone is not an error.
    pub fn remove_network(&self, name: &str) -> Result<(), DockerError> {
        let args = strings(&["network", "rm", name]);
        let (status, _, stderr) = self.run(&args)?;
        if status.success() || stderr.contains("not found") || stderr.contains("No such network") {
            Ok(())
        } else {
            Err(self.failed(&args, status, stderr))
        }
    }

    /// `docker rm --force --volumes`: a container that is already gone is not an
    /// error. Its anonymous volumes (an image's `VOLUME`s) go with it: without
    /// `--volumes` they stay behind, even for a `--rm` container.
    pub fn remove(&self, name: &str) -> Result<(), DockerError> {
        let args = strings(&["rm", "--force", "--volumes", name]);
        let (status, _, stderr) = self.run(&args)?;
        if status.success() || is_missing(&stderr) {
            Ok(())
        } else {
            Err(self.failed(&args, status, stderr))
        }
    }

    /// `docker inspect`: is the container there, and running?
    pub fn state(&self, name: &str) -> Result<ContainerState, DockerError> {
        let args = strings(&[
            "inspect",
            "--type",
            "container",
            "--format",
            "{{.State.Running}}",
            name,
        ]);
        let (status, stdout, stderr) = self.run(&args)?;
        match (status.success(), stdout.trim()) {
            (true, "true") => Ok(ContainerState::Running),
            (true, _) => Ok(ContainerState::NotRunning),
            (false, _) if is_missing(&stderr) => Ok(ContainerState::Missing),
            (false, _) => Err(self.failed(&args, status, stderr)),
        }
    }

    /// podspawn's labels on container `name`; `None` when there is no such container.
    pub fn labels(&self, name: &str) -> Result<Option<Labels>, DockerError> {
        let format = format!(
            "{{{{index .Config.Labels \"{LABEL_MANAGED}\"}}}}\t{{{{index .Config.Labels \"{LABEL_INSTALLATION}\"}}}}\t{{{{index .Config.Labels \"{LABEL_USER}\"}}}}\t{{{{index .Config.Labels \"{LABEL_PROJECT}\"}}}}"
        );
        let args = strings(&["inspect", "--type", "container", "--format", &format, name]);
        let (status, stdout, stderr) = self.run(&args)?;
        if !status.success() {
            return if is_missing(&stderr) {
                Ok(None)
            } else {
                Err(self.failed(&args, status, stderr))
            };
        }
        Ok(Some(parse_labels(&stdout, &self.installation)))
    }

    /// Every container this installation made, running or not.
    pub fn list_managed(&self) -> Result<Vec<ManagedContainer>, DockerError> {
        let format = format!(
            "{{{{.Names}}}}\t{{{{.State}}}}\t{{{{.Label \"{LABEL_USER}\"}}}}\t{{{{.Label \"{LABEL_PROJECT}\"}}}}\t{{{{.Label \"{LABEL_SESSION}\"}}}}\t{{{{.Label \"{LABEL_SERVICE}\"}}}}"
        );
        let mut args = strings(&["ps", "--all", "--no-trunc"]);
        args.extend(self.ours());
        args.extend(["--format".to_string(), format]);
        let (status, stdout, stderr) = self.run(&args)?;
        if !status.success() {
            return Err(self.failed(&args, status, stderr));
        }
        Ok(parse_managed(&stdout))
    }

    /// Every network this installation made.
    pub fn list_managed_networks(&self) -> Result<Vec<ManagedNetwork>, DockerError> {
        Ok(self
            .list_owned("network")?
            .into_iter()
            .map(|[name, user, project, session]| ManagedNetwork {
                name,
                user,
                project,
                session,
            })
            .collect())
    }

    /// The engine's version, if it answers.
    pub fn server_version(&self) -> Result<String, DockerError> {
        let args = strings(&["version", "--format", "{{.Server.Version}}"]);
        let (status, stdout, stderr) = self.run(&args)?;
        if status.success() {
            Ok(stdout.trim().to_string())
        } else {
            Err(self.failed(&args, status, stderr))
        }
    }

    /// The OCI runtimes the engine knows (`docker info`'s `Runtimes`, by name) and
    /// its storage driver.
    pub fn runtimes(&self) -> Result<(Vec<String>, String), DockerError> {
        let args = strings(&[
            "info",
            "--format",
            "{{range $name, $_ := .Runtimes}}{{$name}} {{end}}\t{{.Driver}}",
        ]);
        let (status, stdout, stderr) = self.run(&args)?;
        if !status.success() {
            return Err(self.failed(&args, status, stderr));
        }
        let (names, driver) = stdout.trim_end().split_once('\t').unwrap_or((&stdout, ""));
        Ok((
            names.split_whitespace().map(str::to_string).collect(),
            driver.trim().to_string(),
        ))
    }

    /// Whether the engine has `image` (without pulling it).
    pub fn image_exists(&self, image: &str) -> Result<bool, DockerError> {
        let args = strings(&["image", "inspect", "--format", "{{.Id}}", image]);
        let (status, _, stderr) = self.run(&args)?;
        if status.success() {
            Ok(true)
        } else if stderr.contains("No such image") || stderr.contains("No such object") {
            Ok(false)
        } else {
            Err(self.failed(&args, status, stderr))
        }
    }

    /// Runs `script` once with the image's /bin/sh (`docker run --rm`, no network, the
    /// same hardening as sessions); its exit status, stdout and stderr.
    pub fn probe(
        &self,
        image: &str,
        script: &str,
        args: &[&str],
    ) -> Result<(i32, String, String), DockerError> {
        let mut argv = strings(&[
            "run",
            "--rm",
            "--network",
            "none",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
        ]);
        for label in [
            format!("{LABEL_MANAGED}=true"),
            format!("{LABEL_INSTALLATION}={}", self.installation),
            format!("{LABEL_USER}="),
            format!("{LABEL_PROJECT}="),
            format!("{LABEL_SESSION}=probe"),
        ] {
            argv.extend(["--label".to_string(), label]);
        }
        argv.extend(strings(&[
            "--entrypoint",
            "/bin/sh",
            image,
            "-c",
            script,
            "podspawn-probe",
        ]));
        argv.extend(strings(args));
        let (status, stdout, stderr) = self.run(&argv)?;
        if stderr.contains("Unable to find image")
            || stderr.contains("No such image")
            || stderr.contains("pull access denied")
        {
            return Err(DockerError::ImageUnavailable {
                image: image.to_string(),
                stderr,
            });
        }
        Ok((status.code().unwrap_or(-1), stdout, stderr))
    }

    /// `docker build` of a project's image: the Dockerfile on stdin (it carries
    /// podspawn's labels itself: each `--label` would be one more step to commit),
    /// `spec.context` as the build context. Every line the build prints goes to
    /// `output`; past `spec.timeout` the build is killed.
    pub fn build(&self, spec: &BuildSpec, output: &mut dyn FnMut(&str)) -> Result<(), DockerError> {
        use std::io::Write;
        // A repo owner's steps run as root: on podspawn's build network, under the
        // egress policy, never on docker's default bridge.
        self.ensure_build_network()?;
        let mut args = strings(&["build", "--tag", spec.tag, "--file", "-", "--force-rm"]);
        args.extend(["--network".into(), build_network(&self.installation)]);
        args.push(spec.context.display().to_string());
        let (read, write) = std::io::pipe().map_err(DockerError::Supervise)?;
        let mut command = self.command(&args);
        // The builder whose output is `Step N/M : …` lines (BuildKit prints others).
        command
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::piped())
            .stdout(write.try_clone().map_err(DockerError::Supervise)?)
            .stderr(write);
        let mut child = command
            .spawn()
            .map_err(|source| self.not_installed(source))?;
        // The command holds the write ends; ours go with it, or the reader never ends.
        drop(command);
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(spec.dockerfile.as_bytes());
        }
        // Bounded: a build may print anything, for as long as it runs.
        let (lines, received) = std::sync::mpsc::sync_channel(1024);
        std::thread::spawn(move || {
            bounded_lines(read, MAX_BUILD_LINE, |line| lines.send(line).is_ok());
        });
        let deadline = std::time::Instant::now() + spec.timeout;
        let mut last = String::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match received.recv_timeout(left) {
                Ok(line) => {
                    // The legacy builder's failure quotes the whole command, over as
                    // many lines as its script has: keep what it says of the end.
                    if let Some(at) = line.find("returned a non-zero code:") {
                        last = format!("its command {}", &line[at..]);
                    } else if !line.trim().is_empty() {
                        last.clone_from(&line);
                    }
                    output(&line);
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(DockerError::BuildTimedOut {
                        tag: spec.tag.to_string(),
                        after: spec.timeout,
                    });
                }
            }
        }
        let status = child.wait().map_err(DockerError::Supervise)?;
        if status.success() {
            return Ok(());
        }
        if is_unreachable(&last) {
            return Err(DockerError::Unreachable {
                argv: self.argv(&args),
                stderr: last,
            });
        }
        Err(DockerError::BuildFailed {
            tag: spec.tag.to_string(),
            status: status.to_string(),
            last,
        })
    }

    /// `docker image rm`: an image that is gone already is not an error; one a
    /// container still uses is `ImageInUse`.
    pub fn remove_image(&self, image: &str) -> Result<(), DockerError> {
        let args = strings(&["image", "rm", image]);
        let (status, _, stderr) = self.run(&args)?;
        if status.success() || stderr.contains("No such image") {
            Ok(())
        } else if stderr.contains("is using its referenced image")
            || stderr.contains("image is being used")
            || stderr.contains("conflict")
        {
            Err(DockerError::ImageInUse {
                image: image.to_string(),
            })
        } else {
            Err(self.failed(&args, status, stderr))
        }
    }

    /// The images this installation built for `project`, or for any project
    /// (`repository:tag`, or the id of one whose tag is gone).
    pub fn project_images(&self, project: Option<&str>) -> Result<Vec<String>, DockerError> {
        let mut args = strings(&["image", "ls"]);
        args.extend(self.ours());
        args.push("--filter".to_string());
        args.push(match project {
            Some(project) => format!("label={LABEL_PROJECT}={project}"),
            None => format!("label={LABEL_PROJECT}"),
        });
        args.extend([
            "--format".to_string(),
            "{{.Repository}}:{{.Tag}}\t{{.ID}}".to_string(),
        ]);
        let (status, stdout, stderr) = self.run(&args)?;
        if !status.success() {
            return Err(self.failed(&args, status, stderr));
        }
        // An image whose tag went to a newer build is known by its id alone.
        Ok(stdout
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(name, id)| if name.contains("<none>") { id } else { name }.to_string())
            .collect())
    }

    /// podspawn's networks with the given subnet.
    pub fn managed_networks_on(&self, cidr: &str) -> Result<Vec<ManagedNetwork>, DockerError> {
        let names: Vec<String> = self
            .list_managed_networks()?
            .into_iter()
            .map(|network| network.name)
            .collect();
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let mut args = strings(&[
            "network",
            "inspect",
            "--format",
            &format!(
                "{{{{.Name}}}}\t{{{{range .IPAM.Config}}}}{{{{.Subnet}}}}{{{{end}}}}\t{{{{index .Labels \"{LABEL_USER}\"}}}}\t{{{{index .Labels \"{LABEL_PROJECT}\"}}}}\t{{{{index .Labels \"{LABEL_SESSION}\"}}}}"
            ),
        ]);
        args.extend(names);
        let (status, stdout, stderr) = self.run(&args)?;
        if !status.success() {
            return Err(self.failed(&args, status, stderr));
        }
        Ok(stdout
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\t');
                let (name, subnet, user) =
                    (fields.next()?, fields.next()?, fields.next().unwrap_or(""));
                (subnet == cidr).then(|| ManagedNetwork {
                    name: name.to_string(),
                    user: user.to_string(),
                    project: fields.next().unwrap_or("").to_string(),
                    session: fields.next().unwrap_or("").to_string(),
                })
            })
            .collect())
    }

    /// The `docker exec` command for a connection; the caller wires its stdio.
    pub fn exec_command(&self, spec: &ExecSpec) -> Command {
        self.command(&exec_args(spec))
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

/// argv after `docker` for creating a session's container.
/// The longest line of a build's output podspawn keeps; the rest of it is cut.
const MAX_BUILD_LINE: usize = 4096;

/// Hands `each` every line `reader` gives (without its line end), each cut at `max`
/// bytes, until the reader ends or `each` says stop. Memory stays bounded whatever
/// the reader sends.
fn bounded_lines(mut reader: impl std::io::Read, max: usize, mut each: impl FnMut(String) -> bool) {
    let finish = |line: &[u8], cut: bool| {
        let mut text = String::from_utf8_lossy(line).trim_end().to_string();
        if cut {
            text.push_str("…(cut)");
        }
        text
    };
    let mut buffer = [0u8; 8192];
    let mut line = Vec::new();
    let mut cut = false;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &byte in &buffer[..n] {
            if byte == b'\n' {
                if !each(finish(&line, cut)) {
                    return;
                }
                line.clear();
                cut = false;
            } else if line.len() < max {
                line.push(byte);
            } else {
                cut = true;
            }
        }
    }
    if !line.is_empty() {
        each(finish(&line, cut));
    }
}

/// argv after `docker` for creating a session's container, made by `installation`.
pub fn run_args(spec: &ContainerSpec, installation: &str) -> Vec<String> {
    let user = &spec.user;
    let mut args = strings(&["run", "--detach", "--rm", "--init"]);
    if crate::image::is_project_image(&spec.image) {
        // Built here or not at all: a missing one is built, never pulled.
        args.extend(strings(&["--pull", "never"]));
    }
    args.extend(["--name".into(), spec.name.clone()]);
    args.extend(["--hostname".into(), spec.name.clone()]);
    // Every label of podspawn's set, empty where unused: none comes from the image
    // (a base image could carry `podspawn.service`, and pass for a service).
    for (label, value) in [
        (LABEL_MANAGED, "true"),
        (LABEL_INSTALLATION, installation),
        (LABEL_USER, user.name.as_str()),
        (LABEL_PROJECT, spec.project.as_str()),
        (LABEL_SESSION, spec.session_id.as_str()),
        (LABEL_SERVICE, ""),
    ] {
        args.extend(["--label".into(), format!("{label}={value}")]);
    }
    let hardening = &spec.hardening;
    let runtime = hardening.runtime.as_deref();
    limit_args(
        &mut args,
        spec.cpus,
        spec.memory_bytes,
        spec.pids_limit,
        runtime,
    );
    args.extend(["--ulimit".into(), ulimit("nofile", hardening.nofile)]);
    if let Some(nproc) = nproc(hardening.nproc, spec.pids_limit, runtime) {
        args.extend(["--ulimit".into(), ulimit("nproc", nproc)]);
    }
    if let Some(bytes) = hardening.disk_bytes {
        args.extend(["--storage-opt".into(), format!("size={bytes}")]);
    }
    args.extend(["--network".into(), spec.network.name.clone()]);
    args.extend(["--ip".into(), spec.network.container.to_string()]);
    // IPv4 only, whatever the engine's defaults: the host's rules are IPv4's.
    if hardening.ipv6_off {
        args.extend(strings(&["--sysctl", NO_IPV6]));
    }
    args.extend(strings(&["--cap-drop", "ALL"]));
    if hardening.sudo {
        // Root inside on request: what sudo and a package manager need, and the
        // setuid bit of sudo must work.
        for capability in container::SUDO_CAPABILITIES {
            args.extend(["--cap-add".into(), capability.to_string()]);
        }
    } else {
        args.extend(strings(&["--security-opt", "no-new-privileges"]));
    }
    // The home is a tmpfs owned by the user from the start: nothing in the container
    // needs CAP_CHOWN to give it to them.
    args.extend([
        "--tmpfs".into(),
        format!(
            "{}:rw,exec,nosuid,nodev,size={},uid={},gid={},mode=0700",
            user.home(),
            hardening.home_bytes,
            user.uid,
            user.gid
        ),
    ]);
    if hardening.read_only_root {
        args.push("--read-only".into());
        // In memory too: each a share that leaves the container room to run.
        let scratch = (spec.memory_bytes / 8).max(1 << 20);
        for dir in ["/tmp", "/var/tmp"] {
            args.extend([
                "--tmpfs".into(),
                format!("{dir}:rw,nosuid,nodev,size={scratch},mode=1777"),
            ]);
        }
        args.extend([
            "--tmpfs".into(),
            "/run:rw,nosuid,nodev,size=16777216,mode=0755".into(),
        ]);
        // The setup writes the user into /etc/passwd, and a project's workspace is
        // the user's to work in: each is the container's own copy, a volume docker
        // fills from the image's, labelled as the session's (it goes with the
        // container; cleanup removes one left behind).
        let copies = std::iter::once("/etc").chain(spec.workspace.as_deref());
        for target in copies {
            let mut mount = format!("type=volume,target={target}");
            for (label, value) in [
                (LABEL_MANAGED, "true"),
                (LABEL_INSTALLATION, installation),
                (LABEL_USER, user.name.as_str()),
                (LABEL_PROJECT, spec.project.as_str()),
                (LABEL_SESSION, spec.session_id.as_str()),
            ] {
                mount.push_str(&format!(",volume-label={label}={value}"));
            }
            args.extend(["--mount".into(), mount]);
        }
    }
    if let Some(agent_dir) = &spec.agent_dir {
        args.extend([
            "--mount".into(),
            // Read-only: connecting to a socket there still works, and the container
            // cannot fill the filesystem that holds the state database.
            format!("type=bind,source={agent_dir},target={AGENT_MOUNT},readonly"),
        ]);
    }
    args.extend(strings(&["--entrypoint", "/bin/sh"]));
    args.push(spec.image.clone());
    args.extend(container::setup_command(spec));
    args
}

/// The runtime, if not the engine's default; cpus, memory (swap included: none
/// beyond it) and processes.
///
/// Under a sandboxing runtime the engine's pids limit counts the sandbox's host
/// threads, not the processes inside: gVisor's (Debian's 20221219, ptrace platform)
/// idles at ~44 and takes ~6–15 more per process, and the whole sandbox dies when a
/// thread cannot be made — a limit of 1024 ended it at ~80 processes. There the
/// limit on processes is `nproc` inside (the sandbox's own kernel counts it, per
/// sandbox), and the host's limit has room for the sandbox's threads. It still bounds
/// what a sandbox takes of the host: under a fork bomb whose processes are reaped
/// (tini), that gVisor's host threads grow without end (measured: 7,474 after 32 s
/// at nproc 64), and the sandbox dies at the limit — the user's session ends, the
/// host and other sessions do not notice.
fn limit_args(
    args: &mut Vec<String>,
    cpus: f64,
    memory_bytes: u64,
    pids_limit: u32,
    runtime: Option<&str>,
) {
    if let Some(runtime) = runtime {
        args.extend(["--runtime".into(), runtime.to_string()]);
    }
    args.extend(["--cpus".into(), cpus.to_string()]);
    args.extend(["--memory".into(), memory_bytes.to_string()]);
    args.extend(["--memory-swap".into(), memory_bytes.to_string()]);
    if container::counts_host_threads(runtime) {
        let host = pids_limit
            .saturating_mul(SANDBOX_TASKS_PER_PROCESS)
            .saturating_add(SANDBOX_IDLE_TASKS);
        args.extend(["--pids-limit".into(), host.to_string()]);
    } else {
        args.extend(["--pids-limit".into(), pids_limit.to_string()]);
    }
}

/// The sysctl that keeps a container off IPv6 (podspawn's networks and the host's
/// rules are IPv4's; an engine may give new networks IPv6 by default).
const NO_IPV6: &str = "net.ipv6.conf.all.disable_ipv6=1";

/// Host tasks a sandbox may have per process inside, and for itself.
const SANDBOX_TASKS_PER_PROCESS: u32 = 8;
const SANDBOX_IDLE_TASKS: u32 = 64;

/// The `--ulimit nproc` of a container: the configured one, and under a sandboxing
/// runtime never more than its pids limit (see `limit_args`).
fn nproc(configured: Option<u32>, pids_limit: u32, runtime: Option<&str>) -> Option<u32> {
    if container::counts_host_threads(runtime) {
        Some(configured.map_or(pids_limit, |nproc| nproc.min(pids_limit)))
    } else {
        configured
    }
}

/// `--ulimit NAME=N:N`: the soft limit is the hard one.
fn ulimit(name: &str, value: u32) -> String {
    format!("{name}={value}:{value}")
}

/// The name of the build network of `installation` (a `.`: no user's network's name).
pub fn build_network(installation: &str) -> String {
    format!("podspawn.build.{installation}")
}

/// The bridge of the build network of `installation` (at most 15 characters).
pub fn build_bridge(installation: &str) -> String {
    format!("psb-{installation}")
}

/// argv after `docker` for creating the build network: docker picks its subnet; its
/// bridge has a name of podspawn's; it is nobody's (user, project, session empty).
fn build_network_args(installation: &str) -> Vec<String> {
    let mut args = strings(&["network", "create", "--driver", "bridge", "--opt"]);
    args.push(format!(
        "com.docker.network.bridge.name={}",
        build_bridge(installation)
    ));
    for (label, value) in [
        (LABEL_MANAGED, "true"),
        (LABEL_INSTALLATION, installation),
        (LABEL_USER, ""),
        (LABEL_PROJECT, ""),
        (LABEL_SESSION, ""),
    ] {
        args.extend(["--label".into(), format!("{label}={value}")]);
    }
    args.push(build_network(installation));
    args
}

/// Whose a network is, as its labels say: a user's (`project` and `session` empty:
/// no session's), or one session's private one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetworkOwner<'a> {
    pub user: &'a str,
    pub project: &'a str,
    pub session: &'a str,
}

/// argv after `docker` for creating a user's or a session's network.
pub fn network_create_args(
    network: &Network,
    owner: &NetworkOwner,
    installation: &str,
) -> Vec<String> {
    let mut args = strings(&["network", "create", "--driver", "bridge"]);
    args.extend(["--subnet".into(), network.cidr()]);
    args.extend(["--gateway".into(), network.gateway.to_string()]);
    for (label, value) in [
        (LABEL_MANAGED, "true"),
        (LABEL_INSTALLATION, installation),
        (LABEL_USER, owner.user),
        (LABEL_PROJECT, owner.project),
        (LABEL_SESSION, owner.session),
    ] {
        args.extend(["--label".into(), format!("{label}={value}")]);
    }
    args.push(network.name.clone());
    args
}

/// argv after `docker` for creating a companion service: on the session's network
/// (its name a DNS alias there), podspawn's labels, its share of the session's limits,
/// every capability dropped but the configured few, no new privileges, no port
/// published on the host; its named volumes are made with podspawn's labels.
pub fn service_run_args(spec: &ServiceSpec, installation: &str) -> Vec<String> {
    service_args(spec, installation, true)
}

/// argv after `docker` for trying a service's image (`verify-image --service`):
/// hardened and labelled as a session's service, but alone on docker's default
/// network, at whatever address docker gives it.
pub fn service_probe_args(spec: &ServiceSpec, installation: &str) -> Vec<String> {
    service_args(spec, installation, false)
}

fn service_args(spec: &ServiceSpec, installation: &str, on_session_network: bool) -> Vec<String> {
    // Its image is here already (add-project made sure); one that went is a
    // service that cannot start, not a pull of unbounded length under a user's lock.
    let mut args = strings(&["run", "--detach", "--init", "--pull", "never"]);
    args.extend(["--name".into(), spec.container.clone()]);
    args.extend(["--hostname".into(), spec.name.clone()]);
    let labels = [
        (LABEL_MANAGED, "true"),
        (LABEL_INSTALLATION, installation),
        (LABEL_USER, spec.user.as_str()),
        (LABEL_PROJECT, spec.project.as_str()),
        (LABEL_SESSION, spec.session_id.as_str()),
        (LABEL_SERVICE, spec.name.as_str()),
    ];
    for (label, value) in labels {
        args.extend(["--label".into(), format!("{label}={value}")]);
    }
    let runtime = spec.runtime.as_deref();
    limit_args(
        &mut args,
        spec.cpus,
        spec.memory_bytes,
        spec.pids_limit,
        runtime,
    );
    if let Some(nproc) = nproc(None, spec.pids_limit, runtime) {
        args.extend(["--ulimit".into(), ulimit("nproc", nproc)]);
    }
    args.extend(["--network".into(), spec.network.clone()]);
    if spec.ipv6_off {
        args.extend(strings(&["--sysctl", NO_IPV6]));
    }
    if on_session_network {
        args.extend(["--ip".into(), spec.address.to_string()]);
        args.extend(["--network-alias".into(), spec.name.clone()]);
    }
    args.extend(strings(&["--cap-drop", "ALL"]));
    for capability in &spec.capabilities {
        args.extend(["--cap-add".into(), capability.clone()]);
    }
    args.extend(strings(&["--security-opt", "no-new-privileges"]));
    for (key, value) in &spec.env {
        args.extend(["--env".into(), format!("{key}={value}")]);
    }
    for volume in &spec.volumes {
        let mut mount = format!(
            "type=volume,source={},target={}",
            volume.name, volume.target
        );
        if volume.read_only {
            mount.push_str(",readonly");
        }
        let session = if volume.persistent {
            ""
        } else {
            spec.session_id.as_str()
        };
        for (label, value) in [
            (LABEL_MANAGED, "true"),
            (LABEL_INSTALLATION, installation),
            (LABEL_USER, spec.user.as_str()),
            (LABEL_PROJECT, spec.project.as_str()),
            (LABEL_SESSION, session),
        ] {
            mount.push_str(&format!(",volume-label={label}={value}"));
        }
        args.extend(["--mount".into(), mount]);
    }
    args.push(spec.image.clone());
    if let Some(command) = &spec.command {
        args.extend(command.iter().cloned());
    }
    args
}

/// argv after `docker` for one connection's exec.
pub fn exec_args(spec: &ExecSpec) -> Vec<String> {
    let user = &spec.user;
    let mut args = strings(&["exec", "--interactive"]);
    if spec.tty {
        args.push("--tty".into());
    }
    args.extend(["--user".into(), format!("{}:{}", user.uid, user.gid)]);
    args.extend([
        "--workdir".into(),
        spec.workdir.clone().unwrap_or_else(|| user.home()),
    ]);
    let identity = [
        ("HOME", user.home()),
        ("USER", user.name.to_string()),
        ("LOGNAME", user.name.to_string()),
        ("SHELL", user.shell.clone()),
    ];
    for (key, value) in identity
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
    {
        args.extend(["--env".into(), format!("{key}={value}")]);
    }
    args.push(spec.container.clone());
    args.extend(spec.argv.iter().cloned());
    args
}

/// The labels from `labels`'s format; a label that is not there reads `<no value>`.
/// A container's labels (managed, installation, user, project), as `installation`
/// sees them.
fn parse_labels(stdout: &str, installation: &str) -> Labels {
    let line = stdout.lines().next().unwrap_or("");
    let mut fields = line.split('\t').map(|field| match field {
        "<no value>" => "",
        field => field,
    });
    let managed = fields.next() == Some("true");
    let ours = fields.next() == Some(installation);
    Labels {
        managed: managed && ours,
        user: fields.next().unwrap_or("").to_string(),
        project: fields.next().unwrap_or("").to_string(),
    }
}

fn parse_managed(stdout: &str) -> Vec<ManagedContainer> {
    stdout
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split('\t').collect();
            let [name, state, user, project, session, service] = fields[..] else {
                return None;
            };
            Some(ManagedContainer {
                name: name.to_string(),
                running: state == "running",
                user: user.to_string(),
                project: project.to_string(),
                session: session.to_string(),
                service: service.to_string(),
            })
        })
        .collect()
}

/// True when a failed exec's held-back stderr is docker saying the container is not
/// there or not running — i.e. the command never ran.
pub fn says_container_gone(stderr: &str) -> bool {
    is_missing(stderr) || stderr.contains("is not running") || stderr.contains("is restarting")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::Identity;
    use crate::keys::UserName;
    use std::time::Duration;

    fn alice() -> Identity {
        Identity::new(
            UserName::parse("alice").unwrap(),
            1001,
            1001,
            "alice",
            "/bin/bash",
        )
    }

    #[test]
    fn run_args_carry_labels_limits_and_the_hardening() {
        let spec = ContainerSpec {
            name: "podspawn-alice".into(),
            image: "debian:bookworm".into(),
            project: String::new(),
            session_id: "0123abcd".into(),
            user: alice(),
            cpus: 1.5,
            memory_bytes: 512 << 20,
            pids_limit: 256,
            lifetime: Duration::from_secs(8 * 3600),
            network: crate::network::Pool::default().for_user("alice", 1001),
            agent_dir: Some("/var/lib/podspawn/agents/alice".into()),
            hardening: container::Hardening::default(),
            workspace: None,
        };
        let args = run_args(&spec, "0123abcd");
        let text = args.join(" ");
        for expected in [
            "run --detach --rm --init --name podspawn-alice --hostname podspawn-alice",
            "--label podspawn.managed=true --label podspawn.installation=0123abcd \
             --label podspawn.user=alice --label podspawn.project= --label podspawn.session=0123abcd",
            "--cpus 1.5 --memory 536870912 --memory-swap 536870912 --pids-limit 256 \
             --ulimit nofile=16384:16384 --network podspawn-alice --ip 10.214.62.146",
            "--mount type=bind,source=/var/lib/podspawn/agents/alice,target=/run/ssh-agent,readonly",
            "--cap-drop ALL --security-opt no-new-privileges",
            "--tmpfs /home/alice:rw,exec,nosuid,nodev,size=1073741824,uid=1001,gid=1001,mode=0700",
            "--entrypoint /bin/sh debian:bookworm -c",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text}");
        }
        assert_eq!(args[args.len() - 2..], ["28800", "0"]);
        assert!(
            !args
                .iter()
                .any(|arg| arg == "--privileged" || arg.starts_with("--cap-add"))
        );
        assert!(!text.contains("--pull"), "the default image may be pulled");
        for absent in [
            "--runtime",
            "--read-only",
            "nproc",
            "target=/etc",
            "--storage-opt",
        ] {
            assert!(!text.contains(absent), "{absent} in {text}");
        }
        // A project's image is built here, never pulled from a registry.
        let project = ContainerSpec {
            image: "podspawn/api:0123456789ab".into(),
            ..spec
        };
        assert!(
            run_args(&project, "0123abcd")
                .join(" ")
                .starts_with("run --detach --rm --init --pull never --name ")
        );
    }

    #[test]
    fn hardening_options_reach_the_container_and_its_services() {
        let spec = ContainerSpec {
            name: "podspawn-alice".into(),
            image: "debian:bookworm".into(),
            project: "api".into(),
            session_id: "0123abcd".into(),
            user: alice(),
            cpus: 1.0,
            memory_bytes: 256 << 20,
            pids_limit: 100,
            lifetime: Duration::from_secs(60),
            network: crate::network::Pool::default().for_user("alice", 1001),
            agent_dir: None,
            hardening: container::Hardening {
                home_bytes: 64 << 20,
                nofile: 1024,
                nproc: Some(500),
                disk_bytes: Some(10 << 30),
                runtime: Some("runsc".into()),
                read_only_root: true,
                sudo: true,
                ipv6_off: true,
            },
            workspace: Some("/workspace/api".into()),
        };
        let text = run_args(&spec, "0123abcd").join(" ");
        for expected in [
            // Under gVisor: processes are limited inside, the host's count is its threads.
            "--runtime runsc --cpus 1 --memory 268435456 --memory-swap 268435456 --pids-limit 864 \
             --ulimit nofile=1024:1024 --ulimit nproc=100:100 --storage-opt size=10737418240",
            "--cap-drop ALL --cap-add AUDIT_WRITE --cap-add CHOWN --cap-add DAC_OVERRIDE",
            "--tmpfs /home/alice:rw,exec,nosuid,nodev,size=67108864,",
            "--read-only --tmpfs /tmp:rw,nosuid,nodev,size=33554432,mode=1777 \
             --tmpfs /var/tmp:rw,nosuid,nodev,size=33554432,mode=1777 \
             --tmpfs /run:rw,nosuid,nodev,size=16777216,mode=0755",
            "--mount type=volume,target=/workspace/api,volume-label=podspawn.managed=true,",
            "--sysctl net.ipv6.conf.all.disable_ipv6=1",
            "--mount type=volume,target=/etc,volume-label=podspawn.managed=true,\
             volume-label=podspawn.installation=0123abcd,volume-label=podspawn.user=alice,\
             volume-label=podspawn.project=api,volume-label=podspawn.session=0123abcd",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in {text}");
        }
        // sudo needs setuid to work: no no-new-privileges.
        assert!(!text.contains("no-new-privileges"), "{text}");
        let limits = container::ServiceLimits {
            share: 0.5,
            capabilities: Vec::new(),
            persist_volumes: false,
        };
        let service = container::Service {
            name: "db".into(),
            image: "postgres".into(),
            ports: vec![5432],
            env: Vec::new(),
            volumes: Vec::new(),
            command: None,
        };
        let service = ServiceSpec::of(&service, 1, &spec, 0, &limits);
        let text = service_run_args(&service, "0123abcd").join(" ");
        assert!(
            text.contains(
                "--runtime runsc --cpus 0.5 --memory 134217728 --memory-swap 134217728 \
                 --pids-limit 576 --ulimit nproc=64:64"
            ),
            "{text}"
        );
        // Under runc the pids limit is the processes', and nproc is the admin's alone.
        let plain = ContainerSpec {
            hardening: container::Hardening {
                runtime: None,
                nproc: None,
                disk_bytes: None,
                ..spec.hardening.clone()
            },
            ..spec
        };
        let text = run_args(&plain, "0123abcd").join(" ");
        assert!(
            text.contains("--pids-limit 100 --ulimit nofile=1024:1024 --network"),
            "{text}"
        );
    }

    #[test]
    fn an_images_config_says_its_ports_volumes_and_user() {
        let config = parse_image_config(
            r#"{"User":"redis","ExposedPorts":{"6379/tcp":{},"53/udp":{},"80":{}},"Volumes":{"/data":{}},"Cmd":null}"#,
        );
        assert_eq!(
            config,
            ImageConfig {
                exposed: vec![80, 6379],
                volumes: vec!["/data".into()],
                user: "redis".into(),
            }
        );
        assert_eq!(parse_image_config("null"), ImageConfig::default());
    }

    #[test]
    fn build_output_lines_are_cut_and_memory_stays_bounded() {
        let mut text = b"Step 1/2 : FROM x\r\n".to_vec();
        text.extend(std::iter::repeat_n(b'y', 100_000));
        text.extend(b"\nlast");
        let mut seen = Vec::new();
        bounded_lines(&text[..], 20, |line| {
            seen.push(line);
            true
        });
        assert_eq!(
            seen,
            [
                "Step 1/2 : FROM x",
                &format!("{}…(cut)", "y".repeat(20)),
                "last"
            ]
        );
        let mut count = 0;
        bounded_lines(&b"a\nb\nc\n"[..], 10, |_| {
            count += 1;
            count < 2
        });
        assert_eq!(count, 2);
    }

    #[test]
    fn networks_are_created_with_their_subnet_and_labels() {
        let network = crate::network::Pool::default().for_user("alice", 1001);
        assert_eq!(
            network_create_args(
                &network,
                &NetworkOwner {
                    user: "alice",
                    project: "",
                    session: ""
                },
                "0123abcd"
            )
            .join(" "),
            "network create --driver bridge --subnet 10.214.62.144/28 --gateway 10.214.62.145 \
             --label podspawn.managed=true --label podspawn.installation=0123abcd --label podspawn.user=alice --label podspawn.project= \
             --label podspawn.session= podspawn-alice"
        );
    }

    #[test]
    fn exec_args_set_identity_and_keep_the_program_argv_intact() {
        let spec = ExecSpec {
            container: "podspawn-alice".into(),
            user: alice(),
            tty: true,
            workdir: None,
            env: vec![("TERM".into(), "xterm-256color".into())],
            argv: vec!["/bin/sh".into(), "-c".into(), "echo 'a b'; exit 3".into()],
        };
        assert_eq!(
            exec_args(&spec),
            [
                "exec",
                "--interactive",
                "--tty",
                "--user",
                "1001:1001",
                "--workdir",
                "/home/alice",
                "--env",
                "HOME=/home/alice",
                "--env",
                "USER=alice",
                "--env",
                "LOGNAME=alice",
                "--env",
                "SHELL=/bin/bash",
                "--env",
                "TERM=xterm-256color",
                "podspawn-alice",
                "/bin/sh",
                "-c",
                "echo 'a b'; exit 3",
            ]
        );
        let piped = ExecSpec { tty: false, ..spec };
        assert!(!exec_args(&piped).contains(&"--tty".to_string()));
    }

    #[test]
    fn docker_runs_with_a_fixed_environment() {
        let config = DockerConfig {
            binary: "docker".into(),
            host: Some("unix:///run/other.sock".into()),
            config_dir: crate::config::AbsolutePath::from("/etc/podspawn/docker"),
            timeout: crate::config::ConfigDuration(Duration::from_secs(60)),
        };
        let command = Docker::new(&config, "0123abcd").command(&[]);
        let env: Vec<(String, String)> = command
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into(),
                    v.unwrap().to_string_lossy().into(),
                )
            })
            .collect();
        assert_eq!(
            env,
            [
                (
                    "DOCKER_CONFIG".to_string(),
                    "/etc/podspawn/docker".to_string()
                ),
                ("DOCKER_HOST".into(), "unix:///run/other.sock".into()),
                ("HOME".into(), "/nonexistent".into()),
                ("PATH".into(), FIXED_PATH.into()),
            ]
        );
    }

    #[test]
    fn managed_containers_parse_from_ps_lines() {
        let out = "podspawn-alice\trunning\talice\t\tabc\t\npodspawn-bob-api.db\texited\tbob\tapi\tdef\tdb\nbroken line\n";
        assert_eq!(
            parse_managed(out),
            [
                ManagedContainer {
                    name: "podspawn-alice".into(),
                    running: true,
                    user: "alice".into(),
                    project: "".into(),
                    session: "abc".into(),
                    service: "".into(),
                },
                ManagedContainer {
                    name: "podspawn-bob-api.db".into(),
                    running: false,
                    user: "bob".into(),
                    project: "api".into(),
                    session: "def".into(),
                    service: "db".into(),
                },
            ]
        );
    }

    #[test]
    fn labels_parse_and_absent_ones_are_empty() {
        assert_eq!(
            parse_labels("true\t0123abcd\talice\tapi\n", "0123abcd"),
            Labels {
                managed: true,
                user: "alice".into(),
                project: "api".into()
            }
        );
        // Another installation's is not ours.
        assert_eq!(
            parse_labels("true\t4567cdef\talice\tapi\n", "0123abcd"),
            Labels {
                managed: false,
                user: "alice".into(),
                project: "api".into()
            }
        );
        assert_eq!(
            parse_labels(
                "<no value>\t<no value>\t<no value>\t<no value>\n",
                "0123abcd"
            ),
            Labels {
                managed: false,
                user: String::new(),
                project: String::new()
            }
        );
    }

    #[test]
    fn docker_errors_are_recognised() {
        assert!(says_container_gone(
            "Error response from daemon: No such container: podspawn-alice"
        ));
        assert!(says_container_gone(
            "Error response from daemon: Container 3f2a is not running"
        ));
        assert!(!says_container_gone(
            "ls: cannot access 'x': No such file or directory"
        ));
        assert!(is_unreachable(
            "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
        ));
        assert!(is_unreachable(
            "permission denied while trying to connect to the Docker daemon socket"
        ));
    }

    #[test]
    fn long_arguments_are_shortened_in_logs() {
        let line = shown(&["docker".into(), "a b".into(), "x".repeat(200)]);
        assert!(line.starts_with("docker \"a b\" xxx"), "{line}");
        assert!(line.len() < 100, "{line}");
    }
}
