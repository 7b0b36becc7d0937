//! The session lifecycle: when a container is created, shared, kept and destroyed —
//! and every other change podspawn makes in the engine (a user's network, a stale
//! one, an orphan). Commands ask this layer; none changes the engine itself.
//!
//! A session is one container (a user's default environment or one project) with the
//! connections into it. Every decision happens under the user's lock (`lock`), from
//! the rows in `state` and the liveness of the processes they name:
//!
//! - connect: reattach to the session's container, or create it (replacing one that
//!   must not be joined), record the connection, run the exec, release;
//! - release: when the last live connection ends, `grace-period` starts the grace
//!   period, `persistent` keeps it, and destroying is left to the keeper, so the
//!   user's exit code never waits for `docker rm`;
//! - the keeper, one detached process per session, wakes at least every second to
//!   prune dead connections (a `kill -9`ed spawn), start or cancel the grace period,
//!   and destroy the container when its time is up — with no cron and no daemon.
//!
//! What to do is decided by the pure functions of `plan`; `Sessions` asks the state,
//! the host (`host::Host`) and the engine, and carries the decisions out, every
//! engine change through `Effects`, the one place they pass.

mod effects;
mod plan;
mod services;

use std::fmt;
use std::path::Path;
use std::time::Duration;

use effects::Owner;
pub use effects::{Effects, Passed};
use plan::{AfterExec, AtRelease, ConnectPlan, Decision, Healing, NameHolder, Repair};
pub use plan::{Reason, probe_label};
pub use services::{ServiceFailure, ServiceSettings, check_service};

use crate::audit::{self, Event};
use crate::config::SessionMode;
use crate::container::{self, ContainerSpec, ExecSpec, Identity, Service, ServiceSpec};
use crate::docker::{ContainerState, DockerError, ManagedNetwork};
use crate::engine::{Effect, Engine};
use crate::exec::write_stderr;
use crate::host::{Host, Millis};
use crate::keys::UserName;
use crate::lock::{LockError, Locks, UserLock};
use crate::network::{Network, Pool};
use crate::process::ProcessId;
use crate::router::{Program, Routed};
use crate::state::{ConnectionRow, SessionRow, State, StateError};

/// How long a persistent container's main process sleeps: ten years.
const PERSISTENT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);

/// What a new container gets, from the server config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub cpus: f64,
    pub memory_bytes: u64,
    pub pids_limit: u32,
    pub grace: Duration,
    pub lifetime: Duration,
    pub mode: SessionMode,
    pub pool: Pool,
    /// How many sessions (containers) one user may have at once.
    pub max_per_user: u32,
    /// How a session's companion services run.
    pub services: ServiceSettings,
    pub hardening: container::Hardening,
}

/// How a project's image is built when it is missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageBuild {
    pub project: String,
    /// Where the Podfile is in the repo (`podfile.yaml`), for the user's first line.
    pub podfile: String,
    pub dockerfile: String,
    /// The repo checkout it copies from.
    pub context: std::path::PathBuf,
    /// Where the build's whole output is kept.
    pub log: std::path::PathBuf,
    pub timeout: Duration,
}

#[derive(Debug)]
pub enum SessionError {
    Docker(DockerError),
    State(StateError),
    Lock(LockError),
    /// A container podspawn just created was not running when the exec tried it.
    ContainerDied {
        container: String,
    },
    /// A container of the session's name that podspawn did not make for this
    /// session is in the way: not podspawn's to remove.
    Foreign {
        container: String,
    },
    /// The user was removed while this connection was on its way in.
    NotRegistered(UserName),
    /// An admin ended the session this connection was in (`podspawn stop`).
    Stopped,
    /// `stop` found no such session.
    NoSuchSession {
        user: UserName,
        project: String,
    },
    /// The user has as many sessions as they may have.
    TooManySessions {
        running: Vec<String>,
        /// `session.max_per_user`; the default session always keeps its place.
        limit: u32,
    },
    /// The project was updated or removed while this connection was on its way in:
    /// what it knows of it (its image, how to build it) is stale.
    ProjectChanged {
        project: String,
    },
    /// The session's container name is another session's (user names may hold
    /// `-`: `bob`'s project `dev` and user `bob-dev` are both `podspawn-bob-dev`).
    NameTaken {
        container: String,
        holder: UserName,
    },
    /// The session's private network would have addresses that are another
    /// registered user's too (their uids share a block of `network.services_pool`).
    AddressesShared {
        other: String,
    },
    /// The session's image is not there, and it says how it is built (a signal
    /// within `connect`, which builds it outside the user's lock and tries again).
    ImageMissing,
    /// Building a project's image failed at `step`; its whole output is in `log`.
    BuildFailed {
        image: String,
        step: String,
        log: std::path::PathBuf,
        cause: Box<DockerError>,
    },
}

impl SessionError {
    /// The one line an SSH user sees; details go to the log.
    pub fn user_message(&self) -> String {
        match self {
            SessionError::Docker(err) => err.user_message(),
            SessionError::ContainerDied { .. } => {
                "your container stopped as soon as it started; tell your admin".to_string()
            }
            SessionError::Foreign { container } => format!(
                "a container named {container} that this podspawn did not make is in the way; tell your admin"
            ),
            SessionError::NotRegistered(_) => {
                "you are not registered with podspawn on this server; tell your admin".to_string()
            }
            SessionError::Stopped => "an admin ended this session".to_string(),
            SessionError::NoSuchSession { .. } => self.to_string(),
            SessionError::TooManySessions { running, limit } => {
                if running.len() >= *limit as usize {
                    format!(
                        "you have {} sessions already ({}); end one first",
                        running.len(),
                        running.join(", ")
                    )
                } else if *limit <= 1 {
                    "this server allows only your default session (session.max_per_user is 1)"
                        .to_string()
                } else {
                    format!(
                        "you may have {} project or scratch session(s) besides your default one; end one of {} first",
                        limit - 1,
                        running.join(", ")
                    )
                }
            }
            SessionError::ProjectChanged { project } => {
                format!("project {project} was just updated; connect again")
            }
            SessionError::NameTaken { container, .. } => format!(
                "your session's container name {container} is another user's session's; tell your admin"
            ),
            SessionError::ImageMissing => {
                "your session's image is missing; tell your admin".to_string()
            }
            SessionError::AddressesShared { .. } => {
                "your session's services would share addresses with another user's; tell your admin (network.services_pool)".to_string()
            }
            SessionError::BuildFailed {
                image, step, log, ..
            } => format!(
                "building {image} failed at \"{step}\" (log: {}); tell your admin",
                log.display()
            ),
            SessionError::Lock(err) if err.timed_out() => {
                "your session is busy (another of your connections holds it); try again shortly"
                    .to_string()
            }
            SessionError::State(_) | SessionError::Lock(_) => {
                "podspawn could not keep track of your session; tell your admin".to_string()
            }
        }
    }
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SessionError::Docker(err) => err.fmt(f),
            SessionError::State(err) => err.fmt(f),
            SessionError::Lock(err) => err.fmt(f),
            SessionError::ContainerDied { container } => write!(
                f,
                "container {container} was not running right after it was created"
            ),
            SessionError::Foreign { container } => write!(
                f,
                "container {container} exists without podspawn's labels for this session; \
                 not removing it"
            ),
            SessionError::NotRegistered(user) => {
                write!(f, "{user} was removed while connecting")
            }
            SessionError::Stopped => f.write_str("an admin ended the session"),
            SessionError::NoSuchSession { user, project } if project.is_empty() => {
                write!(f, "{user} has no default session")
            }
            SessionError::NoSuchSession { user, project } => {
                write!(f, "{user} has no session {project}")
            }
            SessionError::TooManySessions { running, limit } => {
                write!(
                    f,
                    "refused a session beyond the limit of {limit}: {}",
                    running.join(", ")
                )
            }
            SessionError::ProjectChanged { project } => {
                write!(f, "project {project} changed while connecting")
            }
            SessionError::NameTaken { container, holder } => {
                write!(
                    f,
                    "container name {container} is held by a session of {holder}"
                )
            }
            SessionError::ImageMissing => f.write_str("the session's image is missing"),
            SessionError::AddressesShared { other } => write!(
                f,
                "refused a session with services: its addresses in network.services_pool would be {other}'s too (uids in one block; give the pool a larger range)"
            ),
            SessionError::BuildFailed {
                image,
                step,
                log,
                cause,
            } => write!(
                f,
                "building {image} failed at \"{step}\": {cause} (log: {})",
                log.display()
            ),
        }
    }
}

impl std::error::Error for SessionError {}

impl From<DockerError> for SessionError {
    fn from(err: DockerError) -> Self {
        SessionError::Docker(err)
    }
}

impl From<StateError> for SessionError {
    fn from(err: StateError) -> Self {
        SessionError::State(err)
    }
}

impl From<LockError> for SessionError {
    fn from(err: LockError) -> Self {
        SessionError::Lock(err)
    }
}

/// A connection as spawn asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The user inside (their shell is the session's).
    pub user: Identity,
    /// The project or scratch environment; empty for the user's default one.
    pub project: String,
    pub routed: Routed,
    /// The size of the client's terminal, when it has one.
    pub window: Option<container::WindowSize>,
    /// Where the connection comes from (`ADDRESS:PORT`); empty when not known.
    pub client: String,
    /// Environment for the program, after podspawn's own (TERM, LANG, the
    /// project's, …).
    pub env: Vec<(String, String)>,
    /// The user's agent directory on the host, mounted into a new container.
    pub agent_dir: Option<String>,
    /// The image a new container of the session is made from…
    pub image: String,
    /// …and how it is built when it is missing (a project's).
    pub build: Option<ImageBuild>,
    /// Where the session's programs start (a project's workspace); the home if none.
    pub workdir: Option<String>,
    /// A project's `on_start`, run at the start of each interactive shell.
    pub on_start: Option<String>,
    /// A project's companion services, made with a new container of the session.
    pub services: Vec<Service>,
}

impl ConnectRequest {
    /// An interactive shell: the only session whose terminal shows podspawn's lines.
    fn interactive(&self) -> bool {
        self.routed.tty && self.routed.program == Program::Shell
    }
}

/// The audit log's `session.connect`: who, where, from where (the audit knows the
/// client), and what they run.
fn audit_connect(request: &ConnectRequest, attached: &Attached) {
    let program = &request.routed.program;
    let mut event = Event::new("session.connect")
        .with("user", request.user.name.as_str())
        .with("project", request.project.as_str())
        .with("session", attached.session.session_id.as_str())
        .with("container", attached.session.container.as_str())
        .with("connection", attached.connection)
        .with("kind", program.kind())
        .with("tty", request.routed.tty)
        .with("created", attached.created);
    if let Program::Command(command) = program {
        event = event.with_command(command.as_encoded_bytes());
    }
    audit::record(event);
}

/// The audit log's `session.disconnect`: how the connection ended, and after how long.
fn audit_disconnect(attached: &Attached, result: &Result<i32, SessionError>, took: Duration) {
    let event = disconnect_event(attached, took);
    audit::record(match result {
        Ok(code) => event.with("exit_code", *code),
        Err(err) => event.with("error", err.to_string()),
    });
}

/// A `session.disconnect` of `attached`, connected for `took`.
fn disconnect_event(attached: &Attached, took: Duration) -> Event {
    let session = &attached.session;
    Event::new("session.disconnect")
        .with("user", session.user.as_str())
        .with("project", session.project.as_str())
        .with("session", session.session_id.as_str())
        .with("container", session.container.as_str())
        .with("connection", attached.connection)
        .with("duration_ms", took.as_millis() as u64)
}

/// A recorded connection into a session.
#[derive(Clone)]
struct Attached {
    session: SessionRow,
    connection: i64,
    /// The container was created for this connection.
    created: bool,
    /// The session's services.
    services: Vec<ServiceSpec>,
    /// Services that could not be made with a container created for this connection.
    failures: Vec<ServiceFailure>,
}

/// A session just made: its row, its services, and those that could not be made.
struct Created {
    session: SessionRow,
    services: Vec<ServiceSpec>,
    failures: Vec<ServiceFailure>,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    pub grace_expired: usize,
    pub lifetime_expired: usize,
    pub orphans_removed: usize,
    pub rows_dropped: usize,
    /// Networks of users who are no longer registered.
    pub networks_removed: usize,
    /// Images of projects that are no longer their project's image.
    pub images_removed: usize,
    /// Services of running sessions that were gone or stopped, made again.
    pub services_restarted: usize,
    /// Volumes of services that nothing keeps any more.
    pub volumes_removed: usize,
}

/// What a keeper does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Sleep(Duration),
    /// The session is gone, or belongs to another keeper: exit.
    Stop,
}

/// A session as `list` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub session: SessionRow,
    pub live_connections: usize,
    /// Where each live connection comes from (those whose client is known).
    pub clients: Vec<String>,
    /// What the engine says of its container; `None` when the engine did not answer.
    pub running: Option<ContainerState>,
    /// Its services, each with what the engine says of its container.
    pub services: Vec<(ServiceSpec, Option<ContainerState>)>,
}

pub struct Sessions<E: Engine, H: Host> {
    effects: Effects<E>,
    pub host: H,
    state: State,
    locks: Locks,
}

impl<E: Engine, H: Host> Sessions<E, H> {
    pub fn open(engine: E, host: H, db_path: &Path, locks: Locks) -> Result<Self, SessionError> {
        Ok(Sessions {
            effects: Effects::new(engine),
            host,
            state: State::open(db_path)?,
            locks,
        })
    }

    /// Whether the engine answers at all (`status`).
    pub fn engine_answers(&mut self) -> bool {
        self.effects.engine_answers()
    }

    /// The engine, for the questions this layer's callers may ask it themselves.
    #[cfg(test)]
    fn engine(&mut self) -> &mut E {
        self.effects.engine()
    }

    fn lock(&self, user: &UserName) -> Result<UserLock, SessionError> {
        Ok(self.locks.acquire(user)?)
    }

    /// The user's lock for a pass over everyone (cleanup): a user whose lock stays
    /// held is skipped this time (`None`), not a reason to stop the whole pass.
    fn lock_or_skip(&self, user: &UserName) -> Result<Option<UserLock>, SessionError> {
        match self.lock(user) {
            Ok(lock) => Ok(Some(lock)),
            Err(SessionError::Lock(err)) if err.timed_out() => {
                log::warn!("skipping {user} this pass: {err}");
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    /// Runs one connection from attach to release; returns the exit code to pass on.
    pub fn connect(
        &mut self,
        request: &ConnectRequest,
        settings: &Settings,
    ) -> Result<i32, SessionError> {
        let mut connected = None;
        let result = self.connect_and_run(request, settings, &mut connected);
        if let Some((attached, since)) = &connected {
            audit_disconnect(attached, &result, since.elapsed());
        }
        result
    }

    /// `connect`'s work; `connected` is the attached session once the connection
    /// has one (audited as connected then), and since when: the connection's start,
    /// or the moment a container made anew replaced the first.
    fn connect_and_run(
        &mut self,
        request: &ConnectRequest,
        settings: &Settings,
        connected: &mut Option<(Attached, std::time::Instant)>,
    ) -> Result<i32, SessionError> {
        let started = std::time::Instant::now();
        let mut built = false;
        loop {
            let attached = match self.attach(request, settings) {
                Ok(attached) => attached,
                // Built here, outside the user's lock (a build takes minutes), once.
                Err(SessionError::ImageMissing) if !built && request.build.is_some() => {
                    // Progress only on an interactive session's terminal, and never
                    // written by the holder of the project's lock itself.
                    let terminal = request
                        .interactive()
                        .then(crate::exec::TerminalLines::start);
                    // The build's audit events are this user's and project's.
                    let before = self.effects.set_owner(Some(Owner {
                        user: request.user.name.to_string(),
                        project: request.project.clone(),
                        session: String::new(),
                    }));
                    let result = self.build_image(request, terminal.as_ref());
                    self.effects.set_owner(before);
                    if let Some(terminal) = terminal {
                        terminal.finish(Duration::from_secs(1));
                    }
                    result?;
                    built = true;
                    continue;
                }
                Err(err) => return Err(err),
            };
            // Outside the user's lock: a service that takes its time to answer keeps
            // only this connection waiting.
            if attached.created {
                self.wait_for_services(
                    &attached.services,
                    &attached.failures,
                    request.interactive(),
                    settings.services.ready_timeout,
                );
            }
            if request.interactive() {
                let address = address_of(
                    &attached.session,
                    request.user.uid,
                    &settings.pool,
                    &settings.services.pool,
                );
                write_stderr(
                    format!(
                        "podspawn: your container is {} at {address}; ssh -L PORT:{address}:PORT reaches its ports\n",
                        attached.session.container
                    )
                    .as_bytes(),
                );
                if let Some(line) = services::banner(&attached.services) {
                    write_stderr(line.as_bytes());
                }
            }
            // A container made anew (the last one was gone before the command ran)
            // is a new connection in it: the audit log says so, one ending the other.
            let since = match connected.take() {
                Some((replaced, since)) if replaced.connection != attached.connection => {
                    audit::record(
                        disconnect_event(&replaced, since.elapsed())
                            .with("reason", Reason::Gone.name()),
                    );
                    audit_connect(request, &attached);
                    std::time::Instant::now()
                }
                Some((_, since)) => since,
                None => {
                    audit_connect(request, &attached);
                    started
                }
            };
            *connected = Some((attached.clone(), since));
            let spec = self.exec_spec(request, &attached);
            let end = match self.effects.engine().exec(&spec) {
                Ok(crate::engine::ExecEnd::Stopped { code, held_stderr }) => {
                    // `stop` told this connection, then destroyed the session, unless
                    // it could not: then the program's end is its own.
                    match self.survived_stop(&attached) {
                        Ok(true) => crate::engine::ExecEnd::Exited { code, held_stderr },
                        Ok(false) => crate::engine::ExecEnd::Stopped { code, held_stderr },
                        Err(err) => {
                            self.release_or_log(&attached);
                            return Err(err);
                        }
                    }
                }
                Ok(end) => end,
                Err(err) => {
                    self.release_or_log(&attached);
                    return Err(err.into());
                }
            };
            let held_stderr = match &end {
                crate::engine::ExecEnd::Exited { held_stderr, .. } => held_stderr.clone(),
                crate::engine::ExecEnd::Disconnected { signal } => {
                    log::info!(
                        "connection of {} to {} dropped (signal {signal})",
                        attached.session.user,
                        attached.session.container
                    );
                    Vec::new()
                }
                crate::engine::ExecEnd::Stopped { .. } => Vec::new(),
            };
            match plan::after_exec(&end) {
                AfterExec::Stopped => {
                    self.release_or_log(&attached);
                    return Err(SessionError::Stopped);
                }
                AfterExec::Finished { code } => {
                    write_stderr(&held_stderr);
                    return Ok(self.finish(&attached, code));
                }
                // Exit 1 is also what docker returns when the container is gone; only
                // then did docker print what was held back. Ask once.
                AfterExec::AskEngine => {
                    let state = match self.effects.engine().state(&attached.session.container) {
                        Ok(state) => state,
                        Err(err) => {
                            write_stderr(&held_stderr);
                            self.release_or_log(&attached);
                            return Err(err.into());
                        }
                    };
                    let healing = plan::heal(state, attached.created);
                    match healing {
                        Healing::CommandsOwn => {
                            write_stderr(&held_stderr);
                            return Ok(self.finish(&attached, 1));
                        }
                        Healing::Recreate | Healing::GiveUp => {
                            log::warn!(
                                "container {} of {} is gone ({})",
                                attached.session.container,
                                attached.session.user,
                                String::from_utf8_lossy(&held_stderr).trim()
                            );
                            self.forget(&attached)?;
                            // Gone because an admin stopped the session: end here.
                            if self.host.was_stopped() {
                                return Err(SessionError::Stopped);
                            }
                            if healing == Healing::GiveUp {
                                return Err(SessionError::ContainerDied {
                                    container: attached.session.container,
                                });
                            }
                            // The command never ran: start over with a new container.
                        }
                    }
                }
            }
        }
    }

    /// Whether the session of `attached` is still there after `stop` told this
    /// connection (it destroys it then, unless it cannot). Asked under the user's lock,
    /// which `stop` holds until the row is gone: the container, and so the exec, ends
    /// before that.
    fn survived_stop(&mut self, attached: &Attached) -> Result<bool, SessionError> {
        let _lock = self.lock(&attached.session.user)?;
        Ok(self
            .state
            .session(&attached.session.user, &attached.session.project)?
            .is_some_and(|row| row.session_id == attached.session.session_id))
    }

    /// Releases a connection, and passes on `code`: the command's result is the
    /// user's, whatever podspawn's bookkeeping runs into afterwards (a connection row
    /// left behind is pruned once this process is gone).
    fn finish(&mut self, attached: &Attached, code: i32) -> i32 {
        self.release_or_log(attached);
        code
    }

    fn release_or_log(&mut self, attached: &Attached) {
        if let Err(err) = self.release(attached) {
            log::error!(
                "releasing the connection of {} to {}: {err}",
                attached.session.user,
                attached.session.container
            );
        }
    }

    /// Builds the request's image under its project's build lock: of the connections
    /// that find it missing at once, one builds and the others wait and find it.
    /// An interactive shell's terminal shows progress lines; nothing else ever does
    /// (scp, sftp and rsync speak a protocol on stdout), and the whole output goes to
    /// the build log.
    fn build_image(
        &mut self,
        request: &ConnectRequest,
        terminal: Option<&crate::exec::TerminalLines>,
    ) -> Result<(), SessionError> {
        let build = request.build.as_ref().expect("asked only with a build");
        let show = |text: &str| {
            if let Some(terminal) = terminal {
                terminal.show(text);
            }
        };
        let lock_name = format!("project.{}", build.project);
        let _lock = match self.locks.acquire_named(&lock_name, Duration::ZERO) {
            Ok(lock) => lock,
            Err(err) if err.timed_out() => {
                show(&format!(
                    "Waiting for the build of {} another connection started...\n",
                    build.project
                ));
                self.locks.acquire_named(&lock_name, build.timeout)?
            }
            Err(err) => return Err(err.into()),
        };
        if self.effects.engine().has_image(&request.image)? {
            return Ok(());
        }
        // The registration read before the lock may be stale: an update meanwhile
        // moved the checkout on, and its sources would not make this tag.
        let current = crate::project::ProjectName::parse(&build.project)
            .ok()
            .map(|name| self.state.project(&name))
            .transpose()?
            .flatten();
        if current.is_none_or(|row| row.image != request.image) {
            return Err(SessionError::ProjectChanged {
                project: build.project.clone(),
            });
        }
        show(&format!(
            "Building environment from {} (first time, this takes a minute)...\n",
            build.podfile
        ));
        let mut progress = crate::progress::Progress::new(&build.dockerfile, &build.log);
        let spec = crate::docker::BuildSpec {
            tag: &request.image,
            dockerfile: &build.dockerfile,
            context: &build.context,
            timeout: build.timeout,
        };
        let result = self
            .effects
            .build(&spec, Reason::ImageMissing, &mut |line| {
                if let Some(shown) = progress.line(line) {
                    show(&shown);
                }
            });
        if let Some(shown) = progress.finish(result.is_ok()) {
            show(&shown);
        }
        result.map_err(|cause| SessionError::BuildFailed {
            image: request.image.clone(),
            step: progress.step().to_string(),
            log: build.log.clone(),
            cause: Box::new(cause),
        })
    }

    fn exec_spec(&self, request: &ConnectRequest, attached: &Attached) -> ExecSpec {
        let mut argv = container::program_argv(
            &request.routed.program,
            &request.user.shell,
            request
                .on_start
                .as_deref()
                .filter(|_| request.interactive()),
        );
        if attached.created {
            argv = container::after_setup(argv);
        }
        if let Some(size) = request.window.filter(|_| request.routed.tty) {
            argv = container::sized_terminal(argv, size);
        }
        let mut env = request.env.clone();
        env.push((
            container::CONNECTION_MARKER.to_string(),
            format!("{}-{}", attached.session.session_id, attached.connection),
        ));
        ExecSpec {
            container: attached.session.container.clone(),
            user: request.user.clone(),
            tty: request.routed.tty,
            workdir: request.workdir.clone(),
            env,
            argv,
        }
    }

    /// Under the user's lock: find or make the session's container and record this
    /// connection in it.
    fn attach(
        &mut self,
        request: &ConnectRequest,
        settings: &Settings,
    ) -> Result<Attached, SessionError> {
        let user = &request.user.name;
        let project = request.project.as_str();
        let _lock = self.lock(user)?;
        if !self.host.is_registered(user) {
            return Err(SessionError::NotRegistered(user.clone()));
        }
        let now = self.host.now();
        let existing = self.state.session(user, project)?;
        let live = match &existing {
            Some(session) => self.live_connections(session)?,
            None => 0,
        };
        let (created, made) = match plan::plan_connect(existing.as_ref(), live, now) {
            ConnectPlan::Reattach => {
                let session = existing.expect("reattach has a session");
                if session.grace_until.is_some() {
                    self.state.set_grace_until(user, project, None)?;
                }
                self.ensure_keeper(&session)?;
                // Only a terminal's banner names them.
                let services = if request.interactive() && !session.network.is_empty() {
                    self.state.services(user, project)?
                } else {
                    Vec::new()
                };
                let joined = Created {
                    session,
                    services,
                    failures: Vec::new(),
                };
                (false, joined)
            }
            ConnectPlan::Replace(reason) => {
                let old = existing.expect("replace has a session");
                self.destroy(&old, reason)?;
                (true, self.create(request, settings, old.slot, now)?)
            }
            ConnectPlan::Create => {
                let slot = self.free_slot(user, project, settings.max_per_user)?;
                (true, self.create(request, settings, slot, now)?)
            }
        };
        let Created {
            session,
            services,
            failures,
        } = made;
        let program = match &request.routed.program {
            Program::Shell => "shell",
            Program::Sftp => "sftp",
            Program::Command(_) => "command",
        };
        let connection = self.state.add_connection(
            &session,
            &self.host.this_process(),
            now,
            program,
            &request.client,
        )?;
        Ok(Attached {
            session,
            connection,
            created,
            services,
            failures,
        })
    }

    /// Under the user's lock: the address slot of a new session, or why there is
    /// none (the user has as many sessions as they may).
    fn free_slot(
        &self,
        user: &UserName,
        project: &str,
        max_per_user: u32,
    ) -> Result<u32, SessionError> {
        let others: Vec<SessionRow> = self
            .state
            .sessions()?
            .into_iter()
            .filter(|session| &session.user == user)
            .collect();
        let used: Vec<u32> = others.iter().map(|session| session.slot).collect();
        match plan::free_slot(project.is_empty(), &used, max_per_user) {
            Some(slot) => Ok(slot),
            None => Err(SessionError::TooManySessions {
                limit: max_per_user,
                running: others
                    .iter()
                    .map(|session| match session.project.as_str() {
                        "" => "default".to_string(),
                        project => project.to_string(),
                    })
                    .collect(),
            }),
        }
    }

    /// Makes the session's container and its services side by side (repairing what is
    /// in the way), records them, and starts its keeper. A service that cannot be made
    /// does not stop the session: it is said (`ServiceFailure`), and `cleanup` tries
    /// again.
    fn create(
        &mut self,
        request: &ConnectRequest,
        settings: &Settings,
        slot: u32,
        now: Millis,
    ) -> Result<Created, SessionError> {
        let user = &request.user;
        let name = container::container_name(&user.name, &request.project);
        // One row per container name: a name another user's row holds is theirs,
        // even while its container is gone.
        if let Some(holder) = self.state.sessions()?.into_iter().find(|row| {
            row.container == name && (row.user != user.name || row.project != request.project)
        }) {
            return Err(SessionError::NameTaken {
                container: name,
                holder: holder.user,
            });
        }
        let persistent = settings.mode == SessionMode::Persistent;
        // A session with services has a network of its own, where their names are
        // theirs alone; any other is on its user's network.
        let network = if request.services.is_empty() {
            let mut network = settings.pool.for_user(user.name.as_str(), user.uid);
            network.container = network.address(slot);
            network
        } else {
            settings.services.pool.for_session(&name, user.uid, slot)
        };
        let spec = ContainerSpec {
            name: name.clone(),
            image: request.image.clone(),
            project: request.project.clone(),
            session_id: self.host.new_session_id(),
            user: user.clone(),
            cpus: settings.cpus,
            memory_bytes: settings.memory_bytes,
            pids_limit: settings.pids_limit,
            lifetime: if persistent {
                PERSISTENT_LIFETIME
            } else {
                settings.lifetime
            },
            network,
            agent_dir: request.agent_dir.clone(),
            hardening: settings.hardening.clone(),
            workspace: request.workdir.clone(),
        };
        let services: Vec<ServiceSpec> = request
            .services
            .iter()
            .enumerate()
            .map(|(index, service)| {
                let count = request.services.len();
                ServiceSpec::of(service, count, &spec, index, &settings.services.limits)
            })
            .collect();
        if !services.is_empty() {
            // Addresses another registered user's uid would be given too are
            // neither's (their key lines would forward to each other's services).
            let others = self.host.other_users(&user.name);
            let pools = (&settings.pool, &settings.services.pool);
            if let (_, Some(other)) = crate::network::sharing(user.uid, &others, pools.0, pools.1) {
                return Err(SessionError::AddressesShared {
                    other: other.to_string(),
                });
            }
            self.make_session_network(&spec)?;
        }
        let mut effects = vec![Effect::CreateContainer(&spec)];
        effects.extend(services.iter().map(Effect::CreateService));
        let mut results = self
            .effects
            .apply_all(&effects, Reason::NewSession)
            .into_iter();
        let first = results.next().expect("a result for each effect");
        let made = self.finish_container(request, settings, &spec, first);
        let failures = self.settle_services(&services, results.collect());
        if let Err(err) = made {
            self.undo(&spec, &services);
            return Err(err);
        }
        let session = SessionRow {
            user: user.name.clone(),
            project: request.project.clone(),
            container: name.clone(),
            session_id: spec.session_id.clone(),
            image: request.image.clone(),
            mode: settings.mode,
            grace_secs: settings.grace.as_secs() as i64,
            created_at: now,
            expires_at: (!persistent).then(|| now + settings.lifetime.as_millis() as i64),
            grace_until: None,
            keeper: None,
            slot,
            network: if services.is_empty() {
                String::new()
            } else {
                spec.network.name.clone()
            },
        };
        if let Err(err) = self.state.insert_session(&session, &services) {
            let _ = self
                .effects
                .apply(Effect::RemoveContainer(&name), Reason::Orphan);
            self.undo(&spec, &services);
            return Err(err.into());
        }
        self.ensure_keeper(&session)?;
        Ok(Created {
            session,
            services,
            failures,
        })
    }

    /// The rest of a container's making, given how its first attempt went: what is
    /// in the way is repaired (a name, a missing network) and it is tried again.
    fn finish_container(
        &mut self,
        request: &ConnectRequest,
        settings: &Settings,
        spec: &ContainerSpec,
        first: Result<(), DockerError>,
    ) -> Result<(), SessionError> {
        let user = &request.user;
        let mut result = first;
        let mut repairs = 0;
        loop {
            let err = match result {
                Ok(()) => return Ok(()),
                Err(err) => err,
            };
            match plan::repair(&err, repairs) {
                // A project's image that is not there is built (see `connect`).
                None if matches!(err, DockerError::ImageUnavailable { .. })
                    && request.build.is_some() =>
                {
                    return Err(SessionError::ImageMissing);
                }
                None => return Err(err.into()),
                Some(Repair::ClearName) => {
                    let labels = self.effects.engine().labels(&spec.name)?;
                    match plan::name_holder(labels.as_ref(), &user.name, &request.project) {
                        // podspawn's, with no row (the state was lost, or a crash came
                        // between create and insert): it belongs to nobody now.
                        NameHolder::Ours => self
                            .effects
                            .apply(Effect::RemoveContainer(&spec.name), Reason::Orphan)?,
                        NameHolder::Foreign => {
                            return Err(SessionError::Foreign {
                                container: spec.name.clone(),
                            });
                        }
                        NameHolder::Gone => {}
                    }
                }
                // add-user makes a user's network; a first login after the engine lost
                // it, or for a user added while the engine was down, makes it here.
                Some(Repair::MakeNetwork) if request.services.is_empty() => {
                    self.make_network(&spec.network, &user.name, settings.pool)?
                }
                // The session's own network, made a moment ago, went meanwhile.
                Some(Repair::MakeNetwork) => {
                    let owner = services::owner_of(spec);
                    let create = Effect::CreateNetwork {
                        network: &spec.network,
                        owner,
                    };
                    match self.effects.apply(create, Reason::NetworkMissing) {
                        Ok(()) | Err(DockerError::NetworkExists { .. }) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
            }
            repairs += 1;
            result = self
                .effects
                .apply(Effect::CreateContainer(spec), Reason::NewSession);
        }
    }

    /// Makes a user's network; a stale network of podspawn's holding its subnet (its
    /// user gone, or moved to another slot) is removed first.
    fn make_network(
        &mut self,
        network: &Network,
        user: &UserName,
        pool: Pool,
    ) -> Result<(), SessionError> {
        let create = Effect::CreateNetwork {
            network,
            owner: crate::docker::NetworkOwner {
                user: user.as_str(),
                project: "",
                session: "",
            },
        };
        match self.effects.apply(create, Reason::NetworkMissing) {
            Err(DockerError::NetworkOverlap { .. }) => {}
            other => return Ok(other?),
        }
        let on_subnet = self.effects.engine().networks_on(&network.cidr())?;
        let host = &self.host;
        let stale = plan::stale_networks(&on_subnet, network, |owner| {
            host.uid_of(owner)
                .map(|uid| pool.for_user(owner, uid).subnet)
        })
        .map_err(|owner| {
            SessionError::Docker(DockerError::NetworkOverlap {
                network: network.name.clone(),
                stderr: format!(
                    "{}'s network {} has the same subnet",
                    owner.user, owner.name
                ),
            })
        })?;
        for old in stale {
            self.effects
                .apply(Effect::RemoveNetwork(&old.name), Reason::StaleNetwork)?;
        }
        Ok(self.effects.apply(create, Reason::NetworkMissing)?)
    }

    /// Starts the session's keeper unless it runs already (or the session needs none).
    fn ensure_keeper(&mut self, session: &SessionRow) -> Result<(), SessionError> {
        if session.mode == SessionMode::Persistent {
            return Ok(());
        }
        if session
            .keeper
            .as_ref()
            .is_some_and(|keeper| self.host.is_alive(keeper))
        {
            return Ok(());
        }
        match self.host.start_keeper(&session.user, &session.project) {
            Ok(keeper) => self
                .state
                .set_keeper(&session.user, &session.project, &keeper)?,
            // Without a keeper the next spawn or cleanup still enforces grace and
            // lifetime; the connection itself can go on.
            Err(err) => log::error!("cannot start the keeper of {}: {err}", session.container),
        }
        Ok(())
    }

    /// Under the user's lock: drop the connection and, if it was the last, start the
    /// grace period — or wake the keeper to destroy the container (see
    /// `plan::at_release`).
    fn release(&mut self, attached: &Attached) -> Result<(), SessionError> {
        let session = &attached.session;
        let _lock = self.lock(&session.user)?;
        self.state.remove_connection(attached.connection)?;
        let Some(current) = self.state.session(&session.user, &session.project)? else {
            return Ok(());
        };
        if current.session_id != session.session_id {
            return Ok(());
        }
        let live = self.live_connections(&current)?;
        let now = self.host.now();
        let keeper = current
            .keeper
            .as_ref()
            .filter(|keeper| self.host.is_alive(keeper));
        match plan::at_release(plan::decide(&current, live, now), keeper.is_some()) {
            AtRelease::Do(decision) => {
                self.carry_out(&current, decision)?;
            }
            AtRelease::WakeKeeper => {
                if let Some(keeper) = keeper {
                    self.host.wake(keeper);
                }
            }
        }
        Ok(())
    }

    /// Under the user's lock: the exec found the container gone; drop what is left.
    fn forget(&mut self, attached: &Attached) -> Result<(), SessionError> {
        let session = &attached.session;
        let _lock = self.lock(&session.user)?;
        self.state.remove_connection(attached.connection)?;
        if let Some(current) = self.state.session(&session.user, &session.project)?
            && current.session_id == session.session_id
        {
            self.destroy(&current, Reason::Gone)?;
        }
        Ok(())
    }

    /// Live connections of a session; rows of dead processes are deleted.
    fn live_connections(&mut self, session: &SessionRow) -> Result<usize, SessionError> {
        let mut live = 0;
        for connection in self.state.connections(&session.user, &session.project)? {
            if self.host.is_alive(&connection.process) {
                live += 1;
            } else {
                self.state.remove_connection(connection.id)?;
            }
        }
        Ok(live)
    }

    /// Carries out a decision; true if the session was destroyed.
    fn carry_out(
        &mut self,
        session: &SessionRow,
        decision: Decision,
    ) -> Result<bool, SessionError> {
        match decision {
            Decision::Keep => {}
            Decision::StartGrace { until } => {
                log::info!(
                    "{} has no connections; grace period until {}",
                    session.container,
                    crate::logging::utc_timestamp(
                        std::time::UNIX_EPOCH + Duration::from_millis(until.max(0) as u64)
                    )
                );
                self.state
                    .set_grace_until(&session.user, &session.project, Some(until))?;
            }
            Decision::CancelGrace => {
                self.state
                    .set_grace_until(&session.user, &session.project, None)?;
            }
            Decision::Destroy(reason) => {
                self.destroy(session, reason)?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Removes a session's container, its services, network and volumes, then its
    /// rows; what will not go now stays recorded, for the next try.
    fn destroy(&mut self, session: &SessionRow, reason: Reason) -> Result<(), SessionError> {
        let services = self.state.services(&session.user, &session.project)?;
        let before = self.effects.set_owner(Some(Owner {
            user: session.user.to_string(),
            project: session.project.clone(),
            session: session.session_id.clone(),
        }));
        let removed = self.remove_parts(&session.container, &session.network, &services, reason);
        self.effects.set_owner(before);
        removed?;
        self.state.delete_session(&session.user, &session.project)?;
        Ok(())
    }

    /// One look by a session's keeper.
    pub fn keeper_tick(
        &mut self,
        user: &UserName,
        project: &str,
        me: &ProcessId,
    ) -> Result<Tick, SessionError> {
        let _lock = self.lock(user)?;
        let Some(session) = self.state.session(user, project)? else {
            return Ok(Tick::Stop);
        };
        if session.keeper.as_ref() != Some(me) {
            return Ok(Tick::Stop);
        }
        let live = self.live_connections(&session)?;
        let now = self.host.now();
        let decision = plan::decide(&session, live, now);
        if self.carry_out(&session, decision)? {
            return Ok(Tick::Stop);
        }
        Ok(Tick::Sleep(plan::keeper_sleep(&session, decision, now)))
    }

    /// One cleanup pass over every session and every container and network podspawn
    /// made: what the keepers would do (in case one is not running), plus
    /// reconciliation — rows whose container is gone or stopped are dropped,
    /// containers with no row are removed, and networks of users who are neither
    /// registered nor have a session. Safe while sessions connect: each decision is
    /// made under the user's lock, on a fresh look at that user's row.
    pub fn cleanup(&mut self) -> Result<Sweep, SessionError> {
        let mut sweep = Sweep::default();
        let managed = self.effects.engine().containers()?;
        // Containers that had a row when their user's lock was held: never orphans.
        let mut owned = std::collections::BTreeSet::new();
        for row in self.state.sessions()? {
            let Some(_lock) = self.lock_or_skip(&row.user)? else {
                // Not ours to judge now: not an orphan either.
                owned.insert(row.container.clone());
                continue;
            };
            let Some(session) = self.state.session(&row.user, &row.project)? else {
                continue;
            };
            owned.insert(session.container.clone());
            for service in self.state.services(&row.user, &row.project)? {
                owned.insert(service.container);
            }
            let listed = managed
                .iter()
                .find(|container| container.name == session.container);
            // The list predates the lock: a container made since then is not in it,
            // so ask about this one before believing it is gone.
            let running = match listed {
                Some(container) => container.running,
                None => self.effects.engine().state(&session.container)? == ContainerState::Running,
            };
            if !running {
                self.destroy(&session, Reason::Gone)?;
                sweep.rows_dropped += 1;
                continue;
            }
            let live = self.live_connections(&session)?;
            let decision = plan::decide(&session, live, self.host.now());
            if !self.carry_out(&session, decision)? {
                sweep.services_restarted += self.reconcile_services(&session, &managed)?;
            }
            match decision {
                Decision::Destroy(Reason::GraceExpired | Reason::LastDisconnect) => {
                    sweep.grace_expired += 1
                }
                Decision::Destroy(Reason::LifetimeExpired) => sweep.lifetime_expired += 1,
                _ => {}
            }
        }
        for container in plan::orphans(&managed, &owned, self.host.now()) {
            // Judged under its user's lock, on a fresh look: a connection may have
            // made it and its row since the list.
            let owner = UserName::parse(&container.user).ok();
            let _lock = match &owner {
                Some(user) => match self.lock_or_skip(user)? {
                    Some(lock) => Some(lock),
                    None => continue,
                },
                None => None,
            };
            let has_row = match &owner {
                Some(user) if container.service.is_empty() => self
                    .state
                    .session(user, &container.project)?
                    .is_some_and(|session| session.container == container.name),
                Some(user) => self
                    .state
                    .services(user, &container.project)?
                    .iter()
                    .any(|service| service.container == container.name),
                None => false,
            };
            if !has_row {
                let labelled =
                    Owner::labelled(&container.user, &container.project, &container.session);
                self.effects.apply_as(
                    labelled,
                    Effect::RemoveContainer(&container.name),
                    Reason::Orphan,
                )?;
                sweep.orphans_removed += 1;
            }
        }
        Ok(sweep)
    }

    /// After `cleanup`: the images podspawn built that are no longer their project's
    /// (an update replaced them while a session used them, or the project was
    /// removed then), now that no container uses them. Each project is judged under
    /// its lock, so a build that has not registered its image yet is left alone; a
    /// project whose lock is busy waits for the next pass.
    pub fn remove_replaced_images(&mut self) -> Result<usize, SessionError> {
        let mut removed = 0;
        let images = self.effects.engine().project_images(None)?;
        let mut by_project: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for image in images {
            // `podspawn/<project>:<tag>`; an image known only by its id has no tag
            // to be anyone's current one.
            let project = image
                .strip_prefix(crate::image::REPOSITORY_PREFIX)
                .and_then(|rest| rest.split(':').next())
                .unwrap_or("")
                .to_string();
            by_project.entry(project).or_default().push(image);
        }
        for (project, images) in by_project {
            let name = crate::project::ProjectName::parse(&project).ok();
            let _lock = match &name {
                Some(name) => match self
                    .locks
                    .acquire_named(&format!("project.{name}"), Duration::ZERO)
                {
                    Ok(lock) => Some(lock),
                    Err(err) if err.timed_out() => continue,
                    Err(err) => return Err(err.into()),
                },
                None => None,
            };
            let current = match &name {
                Some(name) => self.state.project(name)?.map(|row| row.image),
                None => None,
            };
            for image in images {
                if current.as_ref() == Some(&image) {
                    continue;
                }
                match self
                    .effects
                    .apply(Effect::RemoveImage(&image), Reason::ProjectChanged)
                {
                    Ok(()) => removed += 1,
                    Err(DockerError::ImageInUse { .. }) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(removed)
    }

    /// After `cleanup`: the networks of users who are neither registered nor have a
    /// session, and sessions' private networks that no session has. A network that
    /// will not go now is logged and tried again next pass.
    pub fn remove_unused_networks(&mut self) -> Result<usize, SessionError> {
        let with_sessions: Vec<UserName> = self
            .state
            .sessions()?
            .into_iter()
            .map(|session| session.user)
            .collect();
        let networks = self.effects.engine().networks()?;
        let host = &self.host;
        let is_registered = |user: &str| {
            UserName::parse(user)
                .ok()
                .is_some_and(|user| host.is_registered(&user))
        };
        let unused: Vec<ManagedNetwork> =
            plan::unused_networks(&networks, is_registered, &with_sessions)
                .into_iter()
                .cloned()
                .collect();
        let mut removed = 0;
        for network in unused {
            let labelled = Owner::labelled(&network.user, &network.project, &network.session);
            let removal = Effect::RemoveNetwork(&network.name);
            if self
                .effects
                .apply_as(labelled, removal, Reason::UserUnregistered)
                .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed + self.remove_unused_session_networks(&networks)?)
    }

    /// Builds a project's image (`add-project`, `update-project`, holding the
    /// project's lock), each line of the build to `output`, unless the engine has it
    /// already; true if it built.
    pub fn build_project_image(
        &mut self,
        _held: &crate::lock::NamedLock,
        spec: &crate::docker::BuildSpec,
        reason: Reason,
        output: &mut dyn FnMut(&str),
    ) -> Result<bool, SessionError> {
        if self.effects.engine().has_image(spec.tag)? {
            return Ok(false);
        }
        self.effects.build(spec, reason, output)?;
        Ok(true)
    }

    /// Makes sure the engine has `image` (a service's), pulling it within `timeout`
    /// if not; true if it pulled.
    pub fn ensure_image(&mut self, image: &str, timeout: Duration) -> Result<bool, SessionError> {
        if self.effects.engine().has_image(image)? {
            return Ok(false);
        }
        self.effects
            .apply(Effect::PullImage { image, timeout }, Reason::ProjectChanged)?;
        Ok(true)
    }

    /// Takes a project's build lock, for work on its checkout that no build may
    /// read meanwhile.
    pub fn lock_project(
        &self,
        project: &crate::project::ProjectName,
        patience: Duration,
    ) -> Result<crate::lock::NamedLock, SessionError> {
        Ok(self
            .locks
            .acquire_named(&format!("project.{project}"), patience)?)
    }

    /// Registers a project (or its update).
    pub fn register_project(&self, project: &crate::state::ProjectRow) -> Result<(), SessionError> {
        Ok(self.state.put_project(project)?)
    }

    /// The sessions of a project, every user's.
    pub fn project_sessions(
        &self,
        project: &crate::project::ProjectName,
    ) -> Result<Vec<SessionRow>, SessionError> {
        Ok(self
            .state
            .sessions()?
            .into_iter()
            .filter(|session| session.project == project.as_str())
            .collect())
    }

    /// Ends a project: destroys every user's session of it (each under its user's
    /// lock), forgets it, and removes its images (one a container still uses stays:
    /// it goes with a later `remove-project`). Returns how many sessions.
    pub fn remove_project(
        &mut self,
        project: &crate::project::ProjectName,
    ) -> Result<usize, SessionError> {
        let mut destroyed = 0;
        for row in self.project_sessions(project)? {
            let _lock = self.lock(&row.user)?;
            if let Some(session) = self.state.session(&row.user, &row.project)? {
                self.destroy(&session, Reason::ProjectRemoved)?;
                destroyed += 1;
            }
        }
        self.state.delete_project(project)?;
        for image in self
            .effects
            .engine()
            .project_images(Some(project.as_str()))?
        {
            match self
                .effects
                .apply(Effect::RemoveImage(&image), Reason::ProjectRemoved)
            {
                Ok(()) | Err(DockerError::ImageInUse { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(destroyed)
    }

    /// Removes an image of a project's that is no longer its current one, unless a
    /// container still uses it (then a later update or removal takes it).
    pub fn remove_old_image(&mut self, image: &str) -> Result<(), SessionError> {
        match self
            .effects
            .apply(Effect::RemoveImage(image), Reason::ProjectChanged)
        {
            Ok(()) | Err(DockerError::ImageInUse { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Every registered project, by name.
    pub fn projects(&self) -> Result<Vec<crate::state::ProjectRow>, SessionError> {
        Ok(self.state.projects()?)
    }

    /// A registered project.
    pub fn project(
        &self,
        name: &crate::project::ProjectName,
    ) -> Result<Option<crate::state::ProjectRow>, SessionError> {
        Ok(self.state.project(name)?)
    }

    /// The sessions of the user whose lock is held.
    pub fn sessions_of(&self, held: &UserLock) -> Result<Vec<SessionRow>, SessionError> {
        Ok(self
            .state
            .sessions()?
            .into_iter()
            .filter(|session| &session.user == held.user())
            .collect())
    }

    /// Ends `user`'s session `project` now (`podspawn stop`): each live connection is
    /// told (it says so to its user when its program ends, and makes nothing again),
    /// then the container, its services, network and volumes go. Returns the session
    /// and how many connections it had.
    pub fn stop(
        &mut self,
        user: &UserName,
        project: &str,
    ) -> Result<(SessionRow, usize), SessionError> {
        let _lock = self.lock(user)?;
        let Some(session) = self.state.session(user, project)? else {
            return Err(SessionError::NoSuchSession {
                user: user.clone(),
                project: project.to_string(),
            });
        };
        let live: Vec<ProcessId> = self
            .state
            .connections(user, project)?
            .into_iter()
            .map(|connection| connection.process)
            .filter(|process| self.host.is_alive(process))
            .collect();
        for process in &live {
            self.host.tell_stopped(process);
        }
        self.destroy(&session, Reason::Stopped)?;
        Ok((session, live.len()))
    }

    /// Destroys every session of the user whose lock is held, then their network;
    /// returns how many sessions, and whether the network went (if the engine would
    /// not remove it now, `cleanup` does later: the user is no longer registered).
    pub fn remove_user(
        &mut self,
        held: &UserLock,
    ) -> Result<(usize, Result<(), DockerError>), SessionError> {
        let sessions = self.sessions_of(held)?;
        for session in &sessions {
            self.destroy(session, Reason::UserRemoved)?;
        }
        Ok((
            sessions.len(),
            remove_user_network(&mut self.effects, held.user()),
        ))
    }

    /// Every session with its live connections and what the engine says of its
    /// container (one question for all). Reads only: prunes and destroys nothing.
    pub fn overview(&mut self) -> Result<Vec<Listed>, SessionError> {
        let rows = self.state.sessions()?;
        let containers = if rows.is_empty() {
            Some(Vec::new())
        } else {
            match self.effects.engine().containers() {
                Ok(containers) => Some(containers),
                Err(err) => {
                    log::warn!(
                        "cannot ask the engine ({err}); statuses are from the state database"
                    );
                    None
                }
            }
        };
        let state_of = |name: &str| {
            containers.as_ref().map(
                |containers| match containers.iter().find(|c| c.name == name) {
                    Some(container) if container.running => ContainerState::Running,
                    Some(_) => ContainerState::NotRunning,
                    None => ContainerState::Missing,
                },
            )
        };
        let mut listed = Vec::new();
        for session in rows {
            let services = self
                .state
                .services(&session.user, &session.project)?
                .into_iter()
                .map(|service| {
                    let running = state_of(&service.container);
                    (service, running)
                })
                .collect();
            let live: Vec<ConnectionRow> = self
                .state
                .connections(&session.user, &session.project)?
                .into_iter()
                .filter(|connection| self.host.is_alive(&connection.process))
                .collect();
            let running = state_of(&session.container);
            listed.push(Listed {
                session,
                live_connections: live.len(),
                clients: live
                    .into_iter()
                    .map(|connection| connection.client)
                    .filter(|client| !client.is_empty())
                    .collect(),
                running,
                services,
            });
        }
        Ok(listed)
    }
}

/// The address of a session's container, for `ssh -L`: on its private network when it
/// has one, else its slot's on its user's network.
pub fn address_of(
    session: &SessionRow,
    uid: u32,
    pool: &Pool,
    services_pool: &crate::network::ServicesPool,
) -> std::net::Ipv4Addr {
    if session.network.is_empty() {
        pool.for_user(session.user.as_str(), uid)
            .address(session.slot)
    } else {
        services_pool
            .for_session(&session.container, uid, session.slot)
            .container
    }
}

/// A newly added user's network, made now so a first login needs no extra docker
/// call (the first login makes it if this cannot).
pub fn add_user_network<E: Engine>(
    effects: &mut Effects<E>,
    user: &UserName,
    network: &Network,
) -> Result<(), DockerError> {
    let owner = crate::docker::NetworkOwner {
        user: user.as_str(),
        project: "",
        session: "",
    };
    effects.apply(Effect::CreateNetwork { network, owner }, Reason::UserAdded)
}

/// A removed user's network (see `Sessions::remove_user`; this is for a host whose
/// state database does not exist yet, so no session either).
pub fn remove_user_network<E: Engine>(
    effects: &mut Effects<E>,
    user: &UserName,
) -> Result<(), DockerError> {
    let network = crate::network::network_name(user);
    let owner = Owner {
        user: user.to_string(),
        ..Owner::default()
    };
    effects.apply_as(owner, Effect::RemoveNetwork(&network), Reason::UserRemoved)
}

#[cfg(test)]
mod tests;
