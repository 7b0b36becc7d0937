//! The one interface to the container engine: every change podspawn makes there is an
//! `Effect` passed to `Engine::apply`, every question a method, and a connection's
//! exec is run here. `DockerEngine` is the real one, over the `docker` module's CLI
//! calls; the session layer's tests use a fake. Nothing outside this module and
//! `docker` runs the CLI.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::config::ServerConfig;
use crate::container::{CONNECTION_MARKER, ContainerSpec, ExecSpec, ServiceSpec};
use crate::docker::{
    BuildSpec, ContainerState, Docker, DockerError, ImageConfig, Labels, ManagedContainer,
    ManagedNetwork, ManagedVolume, NetworkOwner, Whereabouts,
};
use crate::exec::{self, Ended};
use crate::network::Network;
use crate::process;
use crate::session::Passed;

/// How long a lost connection's processes get after SIGHUP before SIGKILL.
const HANGUP_PATIENCE: Duration = Duration::from_secs(2);

/// A change podspawn makes in the engine. Everything podspawn creates there carries
/// its labels (`docker` puts them on), so it can always be found again.
#[derive(Debug, Clone, Copy)]
pub enum Effect<'a> {
    CreateContainer(&'a ContainerSpec),
    /// A session's companion service.
    CreateService(&'a ServiceSpec),
    /// Removing what is already gone is not an error; its anonymous volumes go too.
    RemoveContainer(&'a str),
    /// A user's network (creating what exists already is not an error), or a
    /// session's (`owner.session` set: one that exists is `NetworkExists`).
    CreateNetwork {
        network: &'a Network,
        owner: NetworkOwner<'a>,
    },
    /// Removing what is already gone is not an error.
    RemoveNetwork(&'a str),
    /// Removing what is already gone is not an error; one a container still uses
    /// stays (`DockerError::VolumeInUse`).
    RemoveVolume(&'a str),
    /// Removing what is already gone is not an error; one a container still uses
    /// stays (`DockerError::ImageInUse`).
    RemoveImage(&'a str),
    /// Fetches an image the engine does not have (a service's), within `timeout`.
    PullImage {
        image: &'a str,
        timeout: Duration,
    },
}

impl fmt::Display for Effect<'_> {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Effect::CreateContainer(spec) => {
                write!(f, "create container {} (image {})", spec.name, spec.image)
            }
            Effect::CreateService(spec) => {
                write!(
                    f,
                    "create service {} (image {})",
                    spec.container, spec.image
                )
            }
            Effect::RemoveContainer(name) => write!(f, "remove container {name}"),
            Effect::CreateNetwork { network, owner } => {
                write!(f, "create network {} for {}", network.name, owner.user)
            }
            Effect::RemoveNetwork(name) => write!(f, "remove network {name}"),
            Effect::RemoveVolume(name) => write!(f, "remove volume {name}"),
            Effect::RemoveImage(image) => write!(f, "remove image {image}"),
            Effect::PullImage { image, .. } => write!(f, "pull image {image}"),
        }
    }
}

/// How a connection's exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// The program exited with `code`; `held_stderr` is a first stderr line that may be
    /// docker saying the container is gone, not yet shown to the user.
    Exited { code: i32, held_stderr: Vec<u8> },
    /// The client went away; what ran for it in the container has been ended.
    Disconnected { signal: i32 },
    /// An admin ended the session (`podspawn stop`) while the program ran, or before;
    /// `code` and `held_stderr` as for `Exited` (the program's own end, if the session
    /// was not destroyed after all).
    Stopped { code: i32, held_stderr: Vec<u8> },
}

/// What a probe run of an image printed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// The container engine, as podspawn uses it.
pub trait Engine {
    /// Makes one change. Only `session::Effects`, the one place that also says why,
    /// can call it: it alone makes a `Passed`.
    fn apply(&mut self, effect: &Effect, passed: Passed) -> Result<(), DockerError>;
    /// Makes several changes at once (a session's container and its services), each
    /// with its own result, in order.
    fn apply_all(&mut self, effects: &[Effect], passed: Passed) -> Vec<Result<(), DockerError>> {
        effects
            .iter()
            .map(|effect| self.apply(effect, passed))
            .collect()
    }
    fn state(&mut self, container: &str) -> Result<ContainerState, DockerError>;
    /// podspawn's labels on a container; `None` when it does not exist.
    fn labels(&mut self, container: &str) -> Result<Option<Labels>, DockerError>;
    /// Every container podspawn made (by its labels), running or not.
    fn containers(&mut self) -> Result<Vec<ManagedContainer>, DockerError>;
    /// Every network podspawn made.
    fn networks(&mut self) -> Result<Vec<ManagedNetwork>, DockerError>;
    /// Every volume podspawn made.
    fn volumes(&mut self) -> Result<Vec<ManagedVolume>, DockerError>;
    /// podspawn's networks on subnet `cidr`.
    fn networks_on(&mut self, cidr: &str) -> Result<Vec<ManagedNetwork>, DockerError>;
    /// The engine's version, if it answers.
    fn version(&mut self) -> Result<String, DockerError>;
    /// The OCI runtimes the engine knows, by name, and its storage driver.
    fn runtimes(&mut self) -> Result<(Vec<String>, String), DockerError>;
    /// Whether the engine has `image` (without pulling it).
    fn has_image(&mut self, image: &str) -> Result<bool, DockerError>;
    /// Runs `script` once in `image` and removes it (no network, no capabilities):
    /// a container, so only `session::Effects` can ask for it.
    fn probe(
        &mut self,
        image: &str,
        script: &str,
        args: &[&str],
        passed: Passed,
    ) -> Result<Probe, DockerError>;
    /// Starts a service's image on its own, hardened as a session's service, to try
    /// it (`verify-image --service`): a container, so only `session::Effects` can ask
    /// for it.
    fn probe_service(&mut self, spec: &ServiceSpec, passed: Passed) -> Result<(), DockerError>;
    /// A container's state, exit code and address; `None` when it does not exist.
    fn whereabouts(&mut self, container: &str) -> Result<Option<Whereabouts>, DockerError>;
    /// The last lines a container printed.
    fn logs(&mut self, container: &str, lines: usize) -> Result<String, DockerError>;
    /// What an image's config says (ports, volumes, user).
    fn image_config(&mut self, image: &str) -> Result<ImageConfig, DockerError>;
    /// Builds a project's image, each line of output to `output`: an image, so only
    /// `session::Effects` can ask for it.
    fn build(
        &mut self,
        spec: &BuildSpec,
        output: &mut dyn FnMut(&str),
        passed: Passed,
    ) -> Result<(), DockerError>;
    /// The images podspawn built for `project`, or for any project.
    fn project_images(&mut self, project: Option<&str>) -> Result<Vec<String>, DockerError>;
    /// Runs one connection's exec to its end, with this process's stdio.
    fn exec(&mut self, spec: &ExecSpec) -> Result<ExecEnd, DockerError>;
}

/// The real engine: the docker CLI as the config names it.
pub struct DockerEngine {
    docker: Docker,
    /// The uid the connection's processes run under, in the container and here.
    uid: u32,
}

impl DockerEngine {
    /// The engine for this process: its connections' processes run as the caller.
    pub fn new(config: &ServerConfig) -> DockerEngine {
        DockerEngine {
            docker: Docker::new(&config.docker, &config.installation()),
            uid: unsafe { libc::getuid() },
        }
    }
}

/// One change, by the docker CLI.
fn apply_with(docker: &Docker, effect: &Effect) -> Result<(), DockerError> {
    match *effect {
        Effect::CreateContainer(spec) => docker.create(spec),
        Effect::CreateService(spec) => docker.create_service(spec),
        Effect::RemoveContainer(name) => docker.remove(name),
        Effect::CreateNetwork { network, owner } => docker.create_network(network, &owner),
        Effect::RemoveNetwork(name) => docker.remove_network(name),
        Effect::RemoveVolume(name) => docker.remove_volume(name),
        Effect::RemoveImage(image) => docker.remove_image(image),
        Effect::PullImage { image, timeout } => docker.pull(image, timeout),
    }
}

impl Engine for DockerEngine {
    fn apply(&mut self, effect: &Effect, _: Passed) -> Result<(), DockerError> {
        apply_with(&self.docker, effect)
    }

    /// Each change in its own docker process, all at once: the engine starts
    /// containers side by side, and a session's services add no waiting to its start.
    fn apply_all(&mut self, effects: &[Effect], _: Passed) -> Vec<Result<(), DockerError>> {
        let docker = &self.docker;
        if let [effect] = effects {
            return vec![apply_with(docker, effect)];
        }
        std::thread::scope(|scope| {
            let running: Vec<_> = effects
                .iter()
                .map(|effect| scope.spawn(move || apply_with(docker, effect)))
                .collect();
            running
                .into_iter()
                .map(|thread| {
                    thread.join().unwrap_or_else(|_| {
                        Err(DockerError::Supervise(io::Error::other(
                            "a docker call's thread panicked",
                        )))
                    })
                })
                .collect()
        })
    }

    fn state(&mut self, container: &str) -> Result<ContainerState, DockerError> {
        self.docker.state(container)
    }

    fn labels(&mut self, container: &str) -> Result<Option<Labels>, DockerError> {
        self.docker.labels(container)
    }

    fn containers(&mut self) -> Result<Vec<ManagedContainer>, DockerError> {
        self.docker.list_managed()
    }

    fn networks(&mut self) -> Result<Vec<ManagedNetwork>, DockerError> {
        self.docker.list_managed_networks()
    }

    fn volumes(&mut self) -> Result<Vec<ManagedVolume>, DockerError> {
        self.docker.list_managed_volumes()
    }

    fn networks_on(&mut self, cidr: &str) -> Result<Vec<ManagedNetwork>, DockerError> {
        self.docker.managed_networks_on(cidr)
    }

    fn version(&mut self) -> Result<String, DockerError> {
        self.docker.server_version()
    }

    fn runtimes(&mut self) -> Result<(Vec<String>, String), DockerError> {
        self.docker.runtimes()
    }

    fn has_image(&mut self, image: &str) -> Result<bool, DockerError> {
        self.docker.image_exists(image)
    }

    fn probe(
        &mut self,
        image: &str,
        script: &str,
        args: &[&str],
        _: Passed,
    ) -> Result<Probe, DockerError> {
        let (status, stdout, stderr) = self.docker.probe(image, script, args)?;
        Ok(Probe {
            status,
            stdout,
            stderr,
        })
    }

    fn probe_service(&mut self, spec: &ServiceSpec, _: Passed) -> Result<(), DockerError> {
        self.docker.probe_service(spec)
    }

    fn whereabouts(&mut self, container: &str) -> Result<Option<Whereabouts>, DockerError> {
        self.docker.whereabouts(container)
    }

    fn logs(&mut self, container: &str, lines: usize) -> Result<String, DockerError> {
        self.docker.logs(container, lines)
    }

    fn image_config(&mut self, image: &str) -> Result<ImageConfig, DockerError> {
        self.docker.image_config(image)
    }

    fn build(
        &mut self,
        spec: &BuildSpec,
        output: &mut dyn FnMut(&str),
        _: Passed,
    ) -> Result<(), DockerError> {
        self.docker.build(spec, output)
    }

    fn project_images(&mut self, project: Option<&str>) -> Result<Vec<String>, DockerError> {
        self.docker.project_images(project)
    }

    fn exec(&mut self, spec: &ExecSpec) -> Result<ExecEnd, DockerError> {
        let ended = exec::supervise(self.docker.exec_command(spec)).map_err(|err| {
            if err.kind() == io::ErrorKind::NotFound {
                self.docker.not_installed(err)
            } else {
                DockerError::Supervise(err)
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
            Ended::Stopped {
                status,
                held_stderr,
            } => Ok(ExecEnd::Stopped {
                code: exec::exit_code(status),
                held_stderr,
            }),
        }
    }
}
