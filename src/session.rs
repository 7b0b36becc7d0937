//! The session lifecycle: when a container is created, shared, kept and destroyed.
//!
//! A session is one container (a user's default environment or one project) with the
//! connections into it. Every decision happens under the user's lock (`lock`), from
//! the rows in `state` and the liveness of the processes they name:
//!
//! - connect: reattach to the session's container, or create it (replacing one whose
//!   lifetime or grace period is over), record the connection, run the exec, release;
//! - release: when the last live connection ends, `grace-period` starts the grace
//!   period, `destroy-on-disconnect` destroys at once, `persistent` keeps it;
//! - the keeper, one detached process per session, wakes every second to prune dead
//!   connections (a `kill -9`ed spawn), start or cancel the grace period, and destroy
//!   the container when grace or lifetime is over — with no cron and no daemon.
//!
//! The decisions themselves (`plan_connect`, `decide`) are pure functions; the rest
//! talks to the world through the `Engine` and `Host` traits, so all of it is unit
//! tested here without processes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::SessionMode;
use crate::container::{self, ContainerSpec, ExecSpec, Identity};
use crate::docker::{ContainerState, DockerError, Labels, ManagedContainer};
use crate::exec::write_stderr;
use crate::keys::UserName;
use crate::lock::{LockError, Locks, UserLock};
use crate::network::{Pool, UserNetwork};
use crate::process::ProcessId;
use crate::router::{Program, Routed};
use crate::state::{SessionRow, State, StateError};

/// How long a persistent container's main process sleeps: ten years.
const PERSISTENT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86400);
/// The longest a keeper sleeps between looks.
pub const KEEPER_TICK: Duration = Duration::from_secs(1);

/// What a new container gets, from the server config.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub image: String,
    pub shell: String,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub pids_limit: u32,
    pub grace: Duration,
    pub lifetime: Duration,
    pub mode: SessionMode,
    pub pool: Pool,
}

/// The container engine, as the lifecycle needs it.
pub trait Engine {
    fn create(&mut self, spec: &ContainerSpec) -> Result<(), DockerError>;
    /// Removes the container; one that is already gone is not an error.
    fn remove(&mut self, container: &str) -> Result<(), DockerError>;
    fn state(&mut self, container: &str) -> Result<ContainerState, DockerError>;
    /// podspawn's labels on a container; `None` when it does not exist.
    fn labels(&mut self, container: &str) -> Result<Option<Labels>, DockerError>;
    /// Every container podspawn made (by its labels), running or not.
    fn list_managed(&mut self) -> Result<Vec<ManagedContainer>, DockerError>;
    /// Creates a user's network; one that exists already is fine.
    fn create_network(&mut self, network: &UserNetwork, user: &str) -> Result<(), DockerError>;
    /// podspawn's networks on subnet `cidr`: (name, user).
    fn networks_in(&mut self, cidr: &str) -> Result<Vec<(String, String)>, DockerError>;
    fn remove_network(&mut self, name: &str) -> Result<(), DockerError>;
    /// Runs one connection's exec to its end, with this process's stdio.
    fn exec(&mut self, spec: &ExecSpec) -> Result<ExecEnd, SessionError>;
}

/// How a connection's exec ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEnd {
    /// The program exited with `code`; `held_stderr` is a first stderr line that may be
    /// docker saying the container is gone, not yet shown to the user.
    Exited { code: i32, held_stderr: Vec<u8> },
    /// The client went away; what ran for it in the container has been ended.
    Disconnected { signal: i32 },
}

/// Time, processes and the keeper, as the lifecycle needs them.
pub trait Host {
    /// Seconds since the epoch.
    fn now(&self) -> i64;
    /// This process (the connection being made).
    fn this_process(&self) -> ProcessId;
    fn is_alive(&self, process: &ProcessId) -> bool;
    /// Starts the keeper of a session, detached from this connection.
    fn start_keeper(&mut self, user: &UserName, project: &str) -> Result<ProcessId, String>;
    fn new_session_id(&mut self) -> String;
    /// The uid of a host account, if it exists.
    fn uid_of(&self, user: &str) -> Option<u32>;
    /// Whether the user still has keys with podspawn (asked under their lock, so a
    /// `remove-user` that ran meanwhile is seen).
    fn is_registered(&self, user: &UserName) -> bool;
}

#[derive(Debug)]
pub enum SessionError {
    Docker(DockerError),
    State(StateError),
    Lock(LockError),
    Exec(std::io::Error),
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
                "a container named {container} that podspawn did not make is in the way; tell your admin"
            ),
            SessionError::NotRegistered(_) => {
                "you are not registered with podspawn on this server; tell your admin".to_string()
            }
            SessionError::Lock(err) if err.timed_out() => {
                "your session is busy (another of your connections holds it); try again shortly"
                    .to_string()
            }
            SessionError::State(_) | SessionError::Lock(_) | SessionError::Exec(_) => {
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
            SessionError::Exec(err) => write!(f, "cannot run the session's exec: {err}"),
            SessionError::ContainerDied { container } => {
                write!(
                    f,
                    "container {container} was not running right after it was created"
                )
            }
            SessionError::Foreign { container } => write!(
                f,
                "container {container} exists without podspawn's labels for this session; \
                 not removing it"
            ),
            SessionError::NotRegistered(user) => {
                write!(f, "{user} was removed while connecting")
            }
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

/// Whether a container's labels say podspawn made it for this user's session.
fn is_ours(labels: &Labels, user: &Identity, project: &str) -> bool {
    labels.managed && labels.user == user.name.as_str() && labels.project == project
}

/// What to do for a new connection, given the session's row (if any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectPlan {
    Reattach,
    Create,
    /// The row's container is past its lifetime or grace period: destroy, then create.
    Replace,
}

pub fn plan_connect(existing: Option<&SessionRow>, now: i64) -> ConnectPlan {
    match existing {
        None => ConnectPlan::Create,
        Some(session) if session.expires_at.is_some_and(|end| now >= end) => ConnectPlan::Replace,
        Some(session) if session.grace_until.is_some_and(|end| now >= end) => ConnectPlan::Replace,
        Some(_) => ConnectPlan::Reattach,
    }
}

/// Why a container was destroyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyReason {
    GraceExpired,
    LifetimeExpired,
    /// `destroy-on-disconnect`: the last connection ended.
    LastDisconnect,
    /// An admin asked (`remove-user --force`).
    Removed,
}

impl fmt::Display for DestroyReason {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            DestroyReason::GraceExpired => "grace period expired",
            DestroyReason::LifetimeExpired => "max lifetime reached",
            DestroyReason::LastDisconnect => "last connection ended",
            DestroyReason::Removed => "user removed",
        })
    }
}

/// What a session needs now, given how many live connections it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change.
    Keep,
    StartGrace {
        until: i64,
    },
    CancelGrace,
    Destroy(DestroyReason),
}

pub fn decide(session: &SessionRow, live_connections: usize, now: i64) -> Decision {
    if session.expires_at.is_some_and(|end| now >= end) {
        return Decision::Destroy(DestroyReason::LifetimeExpired);
    }
    if live_connections > 0 {
        return match session.grace_until {
            Some(_) => Decision::CancelGrace,
            None => Decision::Keep,
        };
    }
    match session.mode {
        SessionMode::Persistent => Decision::Keep,
        SessionMode::DestroyOnDisconnect => Decision::Destroy(DestroyReason::LastDisconnect),
        SessionMode::GracePeriod => match session.grace_until {
            None if session.grace_secs <= 0 => Decision::Destroy(DestroyReason::GraceExpired),
            None => Decision::StartGrace {
                until: now + session.grace_secs,
            },
            Some(end) if now >= end => Decision::Destroy(DestroyReason::GraceExpired),
            Some(_) => Decision::Keep,
        },
    }
}

/// A connection as spawn asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    pub user: Identity,
    pub project: String,
    pub routed: Routed,
    /// Environment for the program, after podspawn's own (TERM, LANG, …).
    pub env: Vec<(String, String)>,
    /// The user's agent directory on the host, mounted into a new container.
    pub agent_dir: Option<String>,
}

/// A recorded connection into a session.
struct Attached {
    session: SessionRow,
    connection: i64,
    /// The container was created for this connection.
    created: bool,
}

/// What one cleanup pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sweep {
    pub grace_expired: usize,
    pub lifetime_expired: usize,
    pub orphans_removed: usize,
    pub rows_dropped: usize,
    /// Networks of users who are no longer registered (counted by `cleanup`).
    pub networks_removed: usize,
}

/// What a keeper does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Sleep(Duration),
    /// The session is gone, or belongs to another keeper: exit.
    Stop,
}

pub struct Sessions<E: Engine, H: Host> {
    pub engine: E,
    pub host: H,
    state: State,
    locks: Locks,
}

impl<E: Engine, H: Host> Sessions<E, H> {
    pub fn open(engine: E, host: H, db_path: &Path, locks: Locks) -> Result<Self, SessionError> {
        Ok(Sessions {
            engine,
            host,
            state: State::open(db_path)?,
            locks,
        })
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    fn lock(&self, user: &str) -> Result<UserLock, SessionError> {
        // Names in rows were validated when they were written.
        let user = UserName::parse(user).map_err(|err| {
            SessionError::Lock(LockError {
                path: PathBuf::from(user),
                source: std::io::Error::other(err.to_string()),
            })
        })?;
        Ok(self.locks.acquire(&user)?)
    }

    /// The user's lock for a pass over everyone (cleanup): a user whose lock stays
    /// held is skipped this time (`None`), not a reason to stop the whole pass.
    fn lock_or_skip(&self, user: &str) -> Result<Option<UserLock>, SessionError> {
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
        loop {
            let attached = self.attach(request, settings)?;
            let spec = self.exec_spec(request, &attached);
            let end = match self.engine.exec(&spec) {
                Ok(end) => end,
                Err(err) => {
                    let _ = self.release(&attached);
                    return Err(err);
                }
            };
            match end {
                ExecEnd::Exited {
                    code: 1,
                    held_stderr,
                } if !held_stderr.is_empty() => {
                    // Exit 1 is also what docker returns when the container is gone;
                    // only then did docker print what we held back. Ask once.
                    match self.engine.state(&attached.session.container) {
                        Ok(ContainerState::Running) => {
                            write_stderr(&held_stderr);
                            return Ok(self.finish(&attached, 1));
                        }
                        Ok(_) => {}
                        Err(err) => {
                            write_stderr(&held_stderr);
                            let _ = self.release(&attached);
                            return Err(err.into());
                        }
                    }
                    // The command never ran: the container is gone (removed by hand,
                    // the engine restarted, the host rebooted). Forget it and start over
                    // — once: a container made for this very connection that is gone
                    // already will not do better a second time.
                    log::warn!(
                        "container {} of {} is gone ({}); creating a new one",
                        attached.session.container,
                        attached.session.user,
                        String::from_utf8_lossy(&held_stderr).trim()
                    );
                    self.forget(&attached)?;
                    if attached.created {
                        return Err(SessionError::ContainerDied {
                            container: attached.session.container,
                        });
                    }
                }
                ExecEnd::Exited { code, held_stderr } => {
                    write_stderr(&held_stderr);
                    return Ok(self.finish(&attached, code));
                }
                ExecEnd::Disconnected { signal } => {
                    log::info!(
                        "connection of {} to {} dropped (signal {signal})",
                        attached.session.user,
                        attached.session.container
                    );
                    return Ok(self.finish(&attached, 128 + signal));
                }
            }
        }
    }

    /// Releases a connection whose command ran, and passes on its exit code: the
    /// command's result is the user's, whatever podspawn's bookkeeping runs into
    /// afterwards (a connection row left behind is pruned once this process is gone).
    fn finish(&mut self, attached: &Attached, code: i32) -> i32 {
        if let Err(err) = self.release(attached) {
            log::error!(
                "releasing the connection of {} to {}: {err}",
                attached.session.user,
                attached.session.container
            );
        }
        code
    }

    fn exec_spec(&self, request: &ConnectRequest, attached: &Attached) -> ExecSpec {
        let mut argv = container::program_argv(&request.routed.program, &request.user.shell);
        if attached.created {
            argv = container::after_setup(argv);
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
        let user = request.user.name.as_str();
        let project = request.project.as_str();
        let _lock = self.lock(user)?;
        if !self.host.is_registered(&request.user.name) {
            return Err(SessionError::NotRegistered(request.user.name.clone()));
        }
        let now = self.host.now();
        let existing = self.state.session(user, project)?;
        let (session, created) = match plan_connect(existing.as_ref(), now) {
            ConnectPlan::Reattach => {
                let session = existing.expect("reattach has a session");
                if session.grace_until.is_some() {
                    self.state.set_grace_until(user, project, None)?;
                }
                self.ensure_keeper(&session)?;
                (session, false)
            }
            ConnectPlan::Replace => {
                let old = existing.expect("replace has a session");
                self.destroy(&old, decide(&old, 0, now))?;
                (self.create(request, settings, now)?, true)
            }
            ConnectPlan::Create => (self.create(request, settings, now)?, true),
        };
        let program = match &request.routed.program {
            Program::Shell => "shell",
            Program::Sftp => "sftp",
            Program::Command(_) => "command",
        };
        let connection =
            self.state
                .add_connection(&session, &self.host.this_process(), now, program)?;
        Ok(Attached {
            session,
            connection,
            created,
        })
    }

    fn create(
        &mut self,
        request: &ConnectRequest,
        settings: &Settings,
        now: i64,
    ) -> Result<SessionRow, SessionError> {
        let user = &request.user;
        let name = container::container_name(&user.name, &request.project);
        let persistent = settings.mode == SessionMode::Persistent;
        let spec = ContainerSpec {
            name: name.clone(),
            image: settings.image.clone(),
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
            network: settings.pool.for_user(user.name.as_str(), user.uid),
            agent_dir: request.agent_dir.clone(),
        };
        let mut repairs = 0;
        loop {
            match self.engine.create(&spec) {
                Ok(()) => break,
                Err(DockerError::NameInUse { .. }) if repairs < 2 => {
                    // A container of ours with no row (the state was lost, or a crash
                    // came between create and insert) belongs to nobody now; anything
                    // else of that name is someone else's, and stays.
                    match self.engine.labels(&name)? {
                        Some(labels) if !is_ours(&labels, user, &request.project) => {
                            return Err(SessionError::Foreign { container: name });
                        }
                        Some(_) => {
                            log::warn!("removing {name}, which has no session row");
                            self.engine.remove(&name)?;
                        }
                        // Gone meanwhile: just create it again.
                        None => {}
                    }
                }
                Err(DockerError::NetworkMissing { .. }) if repairs < 2 => {
                    // add-user makes it; a first login after the engine lost it, or
                    // for a user added while the engine was down, makes it here.
                    log::info!("creating network {}", spec.network.name);
                    match self
                        .engine
                        .create_network(&spec.network, user.name.as_str())
                    {
                        Err(DockerError::NetworkOverlap { .. }) => {
                            self.reclaim_subnet(&spec.network, settings.pool)?;
                            self.engine
                                .create_network(&spec.network, user.name.as_str())?;
                        }
                        other => other?,
                    }
                }
                Err(err) => return Err(err.into()),
            }
            repairs += 1;
        }
        log::info!(
            "created {name} for {} (image {})",
            user.name,
            settings.image
        );
        let session = SessionRow {
            user: user.name.to_string(),
            project: request.project.clone(),
            container: name.clone(),
            session_id: spec.session_id.clone(),
            image: settings.image.clone(),
            mode: settings.mode,
            grace_secs: settings.grace.as_secs() as i64,
            created_at: now,
            expires_at: (!persistent).then(|| now + settings.lifetime.as_secs() as i64),
            grace_until: None,
            keeper: None,
        };
        if let Err(err) = self.state.insert_session(&session) {
            let _ = self.engine.remove(&name);
            return Err(err.into());
        }
        self.ensure_keeper(&session)?;
        Ok(session)
    }

    /// The user's subnet is taken by another podspawn network. If it belongs to a
    /// user who is gone or no longer has this slot (deleted by hand, uid reused),
    /// it is stale: remove it. Two live users in one slot is a real collision.
    fn reclaim_subnet(&mut self, network: &UserNetwork, pool: Pool) -> Result<(), SessionError> {
        for (name, owner) in self.engine.networks_in(&network.cidr())? {
            if name == network.name {
                continue;
            }
            let owner_slot = self
                .host
                .uid_of(&owner)
                .map(|uid| pool.for_user(&owner, uid).subnet);
            if owner_slot == Some(network.subnet) {
                return Err(SessionError::Docker(DockerError::NetworkOverlap {
                    network: network.name.clone(),
                    stderr: format!("{owner}'s network {name} has the same subnet"),
                }));
            }
            log::warn!(
                "removing stale network {name} of {owner:?}, which held {}",
                network.cidr()
            );
            self.engine.remove_network(&name)?;
        }
        Ok(())
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
        let user = UserName::parse(&session.user).expect("rows hold valid names");
        match self.host.start_keeper(&user, &session.project) {
            Ok(keeper) => self
                .state
                .set_keeper(&session.user, &session.project, &keeper)?,
            // Without a keeper the next spawn or cleanup still enforces grace and
            // lifetime; the connection itself can go on.
            Err(err) => log::error!("cannot start the keeper of {}: {err}", session.container),
        }
        Ok(())
    }

    /// Under the user's lock: drop the connection and, if it was the last, apply the
    /// session's mode.
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
        self.apply(&current, decide(&current, live, now))?;
        Ok(())
    }

    /// Under the user's lock: the exec found the container gone; drop the row.
    fn forget(&mut self, attached: &Attached) -> Result<(), SessionError> {
        let session = &attached.session;
        let _lock = self.lock(&session.user)?;
        self.state.remove_connection(attached.connection)?;
        if let Some(current) = self.state.session(&session.user, &session.project)?
            && current.session_id == session.session_id
        {
            self.engine.remove(&current.container)?;
            self.state.delete_session(&current.user, &current.project)?;
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
    fn apply(&mut self, session: &SessionRow, decision: Decision) -> Result<bool, SessionError> {
        match decision {
            Decision::Keep => {}
            Decision::StartGrace { until } => {
                log::info!(
                    "{} has no connections; grace period until {}",
                    session.container,
                    crate::logging::utc_timestamp(
                        std::time::UNIX_EPOCH + Duration::from_secs(until.max(0) as u64)
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
                self.destroy(session, Decision::Destroy(reason))?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn destroy(&mut self, session: &SessionRow, decision: Decision) -> Result<(), SessionError> {
        let reason = match decision {
            Decision::Destroy(reason) => reason.to_string(),
            _ => "replaced".to_string(),
        };
        log::info!(
            "destroying {} of {}: {reason}",
            session.container,
            session.user
        );
        self.engine.remove(&session.container)?;
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
        let _lock = self.lock(user.as_str())?;
        let Some(session) = self.state.session(user.as_str(), project)? else {
            return Ok(Tick::Stop);
        };
        if session.keeper.as_ref() != Some(me) {
            return Ok(Tick::Stop);
        }
        let live = self.live_connections(&session)?;
        let now = self.host.now();
        let decision = decide(&session, live, now);
        if self.apply(&session, decision)? {
            return Ok(Tick::Stop);
        }
        let next_deadline = match decision {
            Decision::StartGrace { until } => Some(until),
            Decision::CancelGrace => None,
            _ => session.grace_until,
        }
        .into_iter()
        .chain(session.expires_at)
        .min();
        let sleep = match next_deadline {
            Some(deadline) if deadline <= now => Duration::ZERO,
            _ => KEEPER_TICK,
        };
        Ok(Tick::Sleep(sleep))
    }

    /// One cleanup pass over every session and every container podspawn made: what
    /// the keepers would do (in case one is not running), plus reconciliation — rows
    /// whose container is gone or stopped are dropped, containers with no row are
    /// removed. Safe while sessions connect: each decision is made under the user's
    /// lock, on a fresh look at that user's row.
    pub fn cleanup(&mut self) -> Result<Sweep, SessionError> {
        let mut sweep = Sweep::default();
        let managed = self.engine.list_managed()?;
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
            let listed = managed
                .iter()
                .find(|container| container.name == session.container);
            // The list predates the lock: a container made since then is not in it,
            // so ask about this one before believing it is gone.
            let running = match listed {
                Some(container) => container.running,
                None => self.engine.state(&session.container)? == ContainerState::Running,
            };
            if !running {
                log::info!(
                    "dropping {} of {}: its container is gone or stopped",
                    session.container,
                    session.user
                );
                self.engine.remove(&session.container)?;
                self.state.delete_session(&session.user, &session.project)?;
                sweep.rows_dropped += 1;
                continue;
            }
            let live = self.live_connections(&session)?;
            let decision = decide(&session, live, self.host.now());
            self.apply(&session, decision)?;
            match decision {
                Decision::Destroy(DestroyReason::GraceExpired | DestroyReason::LastDisconnect) => {
                    sweep.grace_expired += 1
                }
                Decision::Destroy(DestroyReason::LifetimeExpired) => sweep.lifetime_expired += 1,
                _ => {}
            }
        }
        for container in managed
            .iter()
            .filter(|container| !owned.contains(&container.name))
        {
            let owner = UserName::parse(&container.user).ok();
            let _lock = match &owner {
                Some(user) => match self.lock_or_skip(user.as_str())? {
                    Some(lock) => Some(lock),
                    None => continue,
                },
                None => None,
            };
            let has_row = match &owner {
                Some(user) => self
                    .state
                    .session(user.as_str(), &container.project)?
                    .is_some_and(|session| session.container == container.name),
                None => false,
            };
            if !has_row {
                log::info!(
                    "removing orphaned container {} (user {:?})",
                    container.name,
                    container.user
                );
                self.engine.remove(&container.name)?;
                sweep.orphans_removed += 1;
            }
        }
        Ok(sweep)
    }

    /// The sessions of the user whose lock is held.
    pub fn sessions_of(&self, held: &UserLock) -> Result<Vec<SessionRow>, SessionError> {
        Ok(self
            .state
            .sessions()?
            .into_iter()
            .filter(|session| session.user == held.user().as_str())
            .collect())
    }

    /// Destroys every session of the user whose lock is held; returns how many.
    pub fn destroy_user(&mut self, held: &UserLock) -> Result<usize, SessionError> {
        let sessions = self.sessions_of(held)?;
        for session in &sessions {
            self.destroy(session, Decision::Destroy(DestroyReason::Removed))?;
        }
        Ok(sessions.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::{TempDb, session};
    use std::collections::{BTreeMap, BTreeSet};

    #[test]
    fn plans_for_a_new_connection() {
        let now = 5000;
        assert_eq!(plan_connect(None, now), ConnectPlan::Create);
        let live = session("alice");
        assert_eq!(plan_connect(Some(&live), now), ConnectPlan::Reattach);
        let in_grace = SessionRow {
            grace_until: Some(now + 10),
            ..live.clone()
        };
        assert_eq!(plan_connect(Some(&in_grace), now), ConnectPlan::Reattach);
        let grace_over = SessionRow {
            grace_until: Some(now),
            ..live.clone()
        };
        assert_eq!(plan_connect(Some(&grace_over), now), ConnectPlan::Replace);
        let too_old = SessionRow {
            expires_at: Some(now - 1),
            ..live.clone()
        };
        assert_eq!(plan_connect(Some(&too_old), now), ConnectPlan::Replace);
        let persistent = SessionRow {
            expires_at: None,
            mode: SessionMode::Persistent,
            ..live
        };
        assert_eq!(
            plan_connect(Some(&persistent), now + 1_000_000),
            ConnectPlan::Reattach
        );
    }

    #[test]
    fn decisions_for_each_mode() {
        let now = 5000;
        let grace = session("alice");
        assert_eq!(decide(&grace, 2, now), Decision::Keep);
        assert_eq!(
            decide(&grace, 0, now),
            Decision::StartGrace { until: now + 60 }
        );
        let waiting = SessionRow {
            grace_until: Some(now + 30),
            ..grace.clone()
        };
        assert_eq!(decide(&waiting, 0, now), Decision::Keep);
        assert_eq!(decide(&waiting, 1, now), Decision::CancelGrace);
        assert_eq!(
            decide(&waiting, 0, now + 30),
            Decision::Destroy(DestroyReason::GraceExpired)
        );
        let no_grace = SessionRow {
            grace_secs: 0,
            ..grace.clone()
        };
        assert_eq!(
            decide(&no_grace, 0, now),
            Decision::Destroy(DestroyReason::GraceExpired)
        );

        let at_once = SessionRow {
            mode: SessionMode::DestroyOnDisconnect,
            ..grace.clone()
        };
        assert_eq!(decide(&at_once, 1, now), Decision::Keep);
        assert_eq!(
            decide(&at_once, 0, now),
            Decision::Destroy(DestroyReason::LastDisconnect)
        );

        let kept = SessionRow {
            mode: SessionMode::Persistent,
            expires_at: None,
            ..grace.clone()
        };
        assert_eq!(decide(&kept, 0, now + 1_000_000), Decision::Keep);

        let expired = SessionRow {
            expires_at: Some(now),
            ..grace
        };
        assert_eq!(
            decide(&expired, 3, now),
            Decision::Destroy(DestroyReason::LifetimeExpired)
        );
    }

    /// An engine that keeps containers in a map and answers execs from a script.
    #[derive(Default)]
    struct FakeEngine {
        running: BTreeMap<String, String>,
        creates: usize,
        removes: Vec<String>,
        execs: Vec<ExecSpec>,
        /// What the next execs return; `Exited { code: 0 }` when empty.
        script: Vec<ExecEnd>,
        /// Containers that vanish the moment an exec is tried (removed by hand).
        vanish_on_exec: bool,
        networks: BTreeSet<String>,
        /// name -> (cidr, user)
        subnets: BTreeMap<String, (String, String)>,
        /// Running containers that are not podspawn's (no labels).
        foreign: BTreeSet<String>,
    }

    impl Engine for FakeEngine {
        fn create(&mut self, spec: &ContainerSpec) -> Result<(), DockerError> {
            if !self.networks.contains(&spec.network.name) {
                return Err(DockerError::NetworkMissing {
                    network: spec.network.name.clone(),
                });
            }
            if self.running.contains_key(&spec.name) || self.foreign.contains(&spec.name) {
                return Err(DockerError::NameInUse {
                    name: spec.name.clone(),
                });
            }
            self.creates += 1;
            self.running
                .insert(spec.name.clone(), spec.session_id.clone());
            Ok(())
        }

        fn remove(&mut self, container: &str) -> Result<(), DockerError> {
            self.removes.push(container.to_string());
            self.running.remove(container);
            Ok(())
        }

        fn state(&mut self, container: &str) -> Result<ContainerState, DockerError> {
            Ok(if self.running.contains_key(container) {
                ContainerState::Running
            } else {
                ContainerState::Missing
            })
        }

        fn labels(&mut self, container: &str) -> Result<Option<Labels>, DockerError> {
            Ok(if self.foreign.contains(container) {
                Some(Labels {
                    managed: false,
                    user: String::new(),
                    project: String::new(),
                })
            } else {
                self.running.contains_key(container).then(|| Labels {
                    managed: true,
                    user: container.trim_start_matches("podspawn-").to_string(),
                    project: String::new(),
                })
            })
        }

        fn create_network(&mut self, network: &UserNetwork, user: &str) -> Result<(), DockerError> {
            if let Some((name, _)) = self
                .subnets
                .iter()
                .find(|(_, (cidr, _))| *cidr == network.cidr())
                && *name != network.name
            {
                return Err(DockerError::NetworkOverlap {
                    network: network.name.clone(),
                    stderr: String::new(),
                });
            }
            self.subnets
                .insert(network.name.clone(), (network.cidr(), user.to_string()));
            self.networks.insert(network.name.clone());
            Ok(())
        }

        fn networks_in(&mut self, cidr: &str) -> Result<Vec<(String, String)>, DockerError> {
            Ok(self
                .subnets
                .iter()
                .filter(|(_, (subnet, _))| subnet == cidr)
                .map(|(name, (_, user))| (name.clone(), user.clone()))
                .collect())
        }

        fn remove_network(&mut self, name: &str) -> Result<(), DockerError> {
            self.subnets.remove(name);
            self.networks.remove(name);
            Ok(())
        }

        fn list_managed(&mut self) -> Result<Vec<ManagedContainer>, DockerError> {
            Ok(self
                .running
                .iter()
                .map(|(name, session)| ManagedContainer {
                    name: name.clone(),
                    running: true,
                    user: name.trim_start_matches("podspawn-").to_string(),
                    project: String::new(),
                    session: session.clone(),
                })
                .collect())
        }

        fn exec(&mut self, spec: &ExecSpec) -> Result<ExecEnd, SessionError> {
            self.execs.push(spec.clone());
            if self.vanish_on_exec {
                self.vanish_on_exec = false;
                self.running.remove(&spec.container);
            }
            if !self.running.contains_key(&spec.container) {
                return Ok(ExecEnd::Exited {
                    code: 1,
                    held_stderr: b"Error response from daemon: No such container: x\n".to_vec(),
                });
            }
            Ok(if self.script.is_empty() {
                ExecEnd::Exited {
                    code: 0,
                    held_stderr: Vec::new(),
                }
            } else {
                self.script.remove(0)
            })
        }
    }

    /// A host with a settable clock and processes that live until told otherwise.
    struct FakeHost {
        now: i64,
        me: i32,
        dead: BTreeSet<i32>,
        keepers: Vec<i32>,
        next_pid: i32,
        sessions: usize,
        /// Host accounts besides alice (uid 1001).
        accounts: BTreeMap<String, u32>,
        /// Users whose keys were removed.
        removed: BTreeSet<String>,
    }

    impl Default for FakeHost {
        fn default() -> Self {
            FakeHost {
                now: 10_000,
                me: 100,
                dead: BTreeSet::new(),
                keepers: Vec::new(),
                next_pid: 5000,
                sessions: 0,
                accounts: [("alice".to_string(), 1001)].into(),
                removed: BTreeSet::new(),
            }
        }
    }

    fn pid(pid: i32) -> ProcessId {
        ProcessId {
            pid,
            start_ticks: 1,
            boot_id: "boot".into(),
        }
    }

    impl Host for FakeHost {
        fn now(&self) -> i64 {
            self.now
        }
        fn this_process(&self) -> ProcessId {
            pid(self.me)
        }
        fn is_alive(&self, process: &ProcessId) -> bool {
            !self.dead.contains(&process.pid)
        }
        fn start_keeper(&mut self, _: &UserName, _: &str) -> Result<ProcessId, String> {
            self.next_pid += 1;
            self.keepers.push(self.next_pid);
            Ok(pid(self.next_pid))
        }
        fn new_session_id(&mut self) -> String {
            self.sessions += 1;
            format!("session{}", self.sessions)
        }
        fn uid_of(&self, user: &str) -> Option<u32> {
            self.accounts.get(user).copied()
        }
        fn is_registered(&self, user: &UserName) -> bool {
            !self.removed.contains(user.as_str())
        }
    }

    struct Fixture {
        _db: TempDb,
        sessions: Sessions<FakeEngine, FakeHost>,
    }

    fn fixture(mode: SessionMode) -> (Fixture, Settings) {
        let db = TempDb::new("session");
        let sessions = Sessions::open(
            FakeEngine::default(),
            FakeHost::default(),
            &db.path(),
            Locks::new(&db.dir.join("locks"), Duration::from_secs(10)),
        )
        .unwrap();
        let settings = Settings {
            image: "img".into(),
            shell: "/bin/bash".into(),
            cpus: 2.0,
            memory_bytes: 1 << 30,
            pids_limit: 100,
            grace: Duration::from_secs(60),
            lifetime: Duration::from_secs(3600),
            mode,
            pool: Pool::default(),
        };
        (Fixture { _db: db, sessions }, settings)
    }

    fn request(program: Program) -> ConnectRequest {
        ConnectRequest {
            user: Identity::new(
                UserName::parse("alice").unwrap(),
                1001,
                1001,
                "alice",
                "/bin/bash",
            ),
            project: String::new(),
            routed: Routed {
                program,
                tty: false,
            },
            env: vec![("LANG".into(), "C.UTF-8".into())],
            agent_dir: None,
        }
    }

    impl Fixture {
        fn connect(&mut self, settings: &Settings) -> i32 {
            self.sessions
                .connect(&request(Program::Command("true".into())), settings)
                .unwrap()
        }

        fn row(&self) -> Option<SessionRow> {
            self.sessions.state().session("alice", "").unwrap()
        }

        /// Records a live connection by `process` (as spawn does before its exec), so
        /// the session holds no grace deadline.
        fn open_connection(&mut self, process: i32) {
            let row = self.row().unwrap();
            let state = self.sessions.state();
            state.set_grace_until("alice", "", None).unwrap();
            state
                .add_connection(&row, &pid(process), 10_000, "shell")
                .unwrap();
        }

        fn tick(&mut self) -> Tick {
            let keeper = self.row().and_then(|row| row.keeper).unwrap_or(pid(1));
            let alice = UserName::parse("alice").unwrap();
            self.sessions.keeper_tick(&alice, "", &keeper).unwrap()
        }
    }

    #[test]
    fn the_first_connection_creates_and_a_second_reattaches() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        assert_eq!(f.connect(&settings), 0);
        assert!(
            f.sessions.engine.networks.contains("podspawn-alice"),
            "a missing network is made"
        );
        let first = f.row().unwrap();
        assert_eq!(first.container, "podspawn-alice");
        assert_eq!(first.expires_at, Some(10_000 + 3600));
        assert!(
            first.grace_until.is_some(),
            "the only connection ended: grace starts"
        );
        f.sessions.host.now += 10;
        assert_eq!(f.connect(&settings), 0);
        assert_eq!(f.sessions.engine.creates, 1);
        assert_eq!(f.row().unwrap().session_id, first.session_id);
        // The first exec waits for the container's setup; the reattach does not.
        let execs = &f.sessions.engine.execs;
        assert_eq!(execs[0].argv[3], "podspawn-wait");
        assert_eq!(execs[1].argv[..2], ["/bin/sh", "-c"]);
        assert_eq!(execs[1].argv[2], "true");
        let marker = execs[1].env.last().unwrap();
        assert_eq!(marker.0, "PODSPAWN_CONNECTION");
        assert!(marker.1.starts_with("session1-"));
        assert_eq!(f.sessions.host.keepers.len(), 1, "one keeper, still alive");
    }

    #[test]
    fn the_exit_code_is_passed_on_and_a_disconnect_is_128_plus_signal() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.sessions.engine.script = vec![
            ExecEnd::Exited {
                code: 42,
                held_stderr: Vec::new(),
            },
            ExecEnd::Disconnected {
                signal: libc::SIGHUP,
            },
        ];
        assert_eq!(f.connect(&settings), 42);
        assert_eq!(f.connect(&settings), 129);
        assert!(
            f.sessions
                .state()
                .connections("alice", "")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn exit_1_with_a_running_container_is_the_commands_own() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.connect(&settings);
        f.sessions.engine.script = vec![ExecEnd::Exited {
            code: 1,
            held_stderr: b"Error response from daemon: No such container: x\n".to_vec(),
        }];
        assert_eq!(f.connect(&settings), 1);
        assert_eq!(f.sessions.engine.creates, 1);
    }

    #[test]
    fn a_container_removed_by_hand_is_healed_on_the_next_connection() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.connect(&settings);
        f.sessions.engine.vanish_on_exec = true;
        assert_eq!(f.connect(&settings), 0);
        assert_eq!(f.sessions.engine.creates, 2);
        assert_eq!(f.row().unwrap().session_id, "session2");
        assert_eq!(f.sessions.engine.execs.len(), 3);
    }

    #[test]
    fn a_container_without_a_row_is_replaced() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.sessions
            .engine
            .running
            .insert("podspawn-alice".into(), "lost".into());
        assert_eq!(f.connect(&settings), 0);
        assert_eq!(f.sessions.engine.removes, ["podspawn-alice"]);
        assert_eq!(f.sessions.engine.running["podspawn-alice"], "session1");
    }

    #[test]
    fn a_container_of_the_name_that_is_not_podspawns_is_left_alone() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.sessions.engine.foreign.insert("podspawn-alice".into());
        let err = f
            .sessions
            .connect(&request(Program::Command("true".into())), &settings)
            .unwrap_err();
        assert!(
            matches!(err, SessionError::Foreign { ref container } if container == "podspawn-alice")
        );
        assert!(
            err.user_message().contains("podspawn-alice"),
            "{}",
            err.user_message()
        );
        assert!(f.sessions.engine.removes.is_empty());
        assert!(f.row().is_none());
    }

    #[test]
    fn a_user_removed_while_connecting_gets_no_container() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.sessions.host.removed.insert("alice".into());
        let err = f
            .sessions
            .connect(&request(Program::Command("true".into())), &settings)
            .unwrap_err();
        assert!(matches!(err, SessionError::NotRegistered(_)), "{err}");
        assert_eq!(f.sessions.engine.creates, 0);
        assert!(f.row().is_none());
    }

    #[test]
    fn grace_reconnect_gets_the_same_container_and_expiry_destroys_it() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.connect(&settings);
        let until = f.row().unwrap().grace_until.unwrap();
        assert_eq!(until, 10_000 + 60);
        f.sessions.host.now = until - 1;
        assert_eq!(f.tick(), Tick::Sleep(KEEPER_TICK));
        f.connect(&settings);
        assert_eq!(f.sessions.engine.creates, 1, "reconnected in time");
        f.sessions.host.now += 59;
        assert_eq!(f.tick(), Tick::Sleep(KEEPER_TICK));
        f.sessions.host.now += 1;
        assert_eq!(f.tick(), Tick::Stop);
        assert_eq!(f.sessions.engine.removes, ["podspawn-alice"]);
        assert!(f.row().is_none());
    }

    #[test]
    fn a_killed_connection_stops_counting() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.connect(&settings);
        // A connection whose spawn was SIGKILLed: its row stays, its process is gone.
        f.open_connection(777);
        assert_eq!(f.tick(), Tick::Sleep(KEEPER_TICK));
        assert_eq!(f.row().unwrap().grace_until, None, "pid 777 is alive");
        f.sessions.host.dead.insert(777);
        f.tick();
        assert_eq!(f.row().unwrap().grace_until, Some(10_000 + 60));
        assert!(
            f.sessions
                .state()
                .connections("alice", "")
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn destroy_on_disconnect_destroys_at_once_and_persistent_keeps() {
        let (mut f, settings) = fixture(SessionMode::DestroyOnDisconnect);
        f.connect(&settings);
        assert_eq!(f.sessions.engine.removes, ["podspawn-alice"]);
        assert!(f.row().is_none());

        let (mut f, settings) = fixture(SessionMode::Persistent);
        f.connect(&settings);
        let row = f.row().unwrap();
        assert_eq!(
            (row.expires_at, row.grace_until, row.keeper),
            (None, None, None)
        );
        assert!(
            f.sessions.host.keepers.is_empty(),
            "persistent sessions need no keeper"
        );
        assert!(f.sessions.engine.removes.is_empty());
    }

    #[test]
    fn lifetime_ends_a_session_even_with_connections() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.connect(&settings);
        f.open_connection(778);
        let row = f.row().unwrap();
        f.sessions.host.now = row.expires_at.unwrap();
        assert_eq!(f.tick(), Tick::Stop);
        assert_eq!(f.sessions.engine.removes, ["podspawn-alice"]);
        // And a connection arriving after the lifetime gets a fresh container.
        f.connect(&settings);
        assert_eq!(f.sessions.engine.creates, 2);
    }

    #[test]
    fn a_dead_keeper_is_replaced_and_a_stale_keeper_stops() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.connect(&settings);
        let old_keeper = f.row().unwrap().keeper.unwrap();
        f.sessions.host.dead.insert(old_keeper.pid);
        f.connect(&settings);
        let new_keeper = f.row().unwrap().keeper.unwrap();
        assert_ne!(new_keeper, old_keeper);
        let alice = UserName::parse("alice").unwrap();
        assert_eq!(
            f.sessions.keeper_tick(&alice, "", &old_keeper).unwrap(),
            Tick::Stop
        );
    }

    #[test]
    fn cleanup_expires_what_no_keeper_expired_and_reconciles() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.connect(&settings);
        // The keeper is dead and the grace period over: cleanup does the keeper's job.
        let keeper = f.row().unwrap().keeper.unwrap();
        f.sessions.host.dead.insert(keeper.pid);
        f.sessions.host.now += 61;
        // A container nobody has a row for, and a row whose container is gone.
        f.sessions
            .engine
            .running
            .insert("podspawn-bob".into(), "lost".into());
        let mut carol = session("carol");
        carol.created_at = f.sessions.host.now;
        carol.expires_at = Some(carol.created_at + 100);
        f.sessions.state().insert_session(&carol).unwrap();

        let sweep = f.sessions.cleanup().unwrap();
        assert_eq!(
            sweep,
            Sweep {
                grace_expired: 1,
                orphans_removed: 1,
                rows_dropped: 1,
                ..Sweep::default()
            }
        );
        assert!(f.sessions.engine.running.is_empty());
        assert!(f.sessions.state().sessions().unwrap().is_empty());
        assert_eq!(
            f.sessions.cleanup().unwrap(),
            Sweep::default(),
            "a second pass finds nothing"
        );
    }

    #[test]
    fn cleanup_leaves_live_sessions_alone() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        f.connect(&settings);
        f.open_connection(900);
        assert_eq!(f.sessions.cleanup().unwrap(), Sweep::default());
        assert_eq!(f.sessions.engine.running.len(), 1);
        assert!(f.row().is_some());
    }

    #[test]
    fn a_stale_network_on_the_users_subnet_is_reclaimed_and_a_live_one_is_not() {
        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        let cidr = settings.pool.for_user("alice", 1001).cidr();
        // Left by "ghost", whose account is gone (alice got its uid).
        f.sessions
            .engine
            .subnets
            .insert("podspawn-ghost".into(), (cidr.clone(), "ghost".into()));
        assert_eq!(f.connect(&settings), 0);
        assert!(!f.sessions.engine.subnets.contains_key("podspawn-ghost"));
        assert_eq!(f.sessions.engine.subnets["podspawn-alice"].0, cidr);

        let (mut f, settings) = fixture(SessionMode::GracePeriod);
        // "bob" still exists, with a uid in alice's slot: a real collision.
        f.sessions.host.accounts.insert("bob".into(), 1001 + 4096);
        f.sessions
            .engine
            .subnets
            .insert("podspawn-bob".into(), (cidr, "bob".into()));
        let request = request(Program::Command("true".into()));
        let err = f.sessions.connect(&request, &settings).unwrap_err();
        assert!(err.to_string().contains("same subnet"), "{err}");
        assert!(f.sessions.engine.subnets.contains_key("podspawn-bob"));
    }

    #[test]
    fn destroy_user_counts_the_sessions() {
        let (mut f, settings) = fixture(SessionMode::Persistent);
        f.connect(&settings);
        let alice = UserName::parse("alice").unwrap();
        let held = f.sessions.locks.acquire(&alice).unwrap();
        assert_eq!(f.sessions.destroy_user(&held).unwrap(), 1);
        assert_eq!(f.sessions.destroy_user(&held).unwrap(), 0);
        assert!(f.sessions.engine.running.is_empty());
    }
}
