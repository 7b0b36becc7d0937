//! `podspawn spawn --user NAME`: what sshd runs, as the user, after one of their keys
//! matched. It checks who is calling, routes `SSH_ORIGINAL_COMMAND` into the user's
//! container (creating or reattaching it) and exits with the command's exit code.
//!
//! Its stdout and stderr are the user's session: podspawn's own failures end in one
//! line on stderr that the user can act on, exit 125; the details go to the log.

use std::ffi::OsStr;
use std::fmt;

use crate::accounts;
use crate::agent;
use crate::audit::{self, Actor, Event};
use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::{ConfigError, ServerConfig};
use crate::container::Identity;
use crate::error::Error;
use crate::keys::store::{KeyStore, StoreError};
use crate::keys::{NameError, UserName};
use crate::privilege;
use crate::project::ProjectName;
use crate::router;
use crate::session::{ConnectRequest, SessionError, Settings};
use crate::user_settings::{self, UserSettings};

pub const COMMAND: Command = Command {
    name: "spawn",
    usage: USAGE,
    listed: true,
    keeps_group: true,
    run,
};

const USAGE: &str = "\
Usage: podspawn spawn --user NAME

The forced command in every key line auth-keys prints: sshd runs it as NAME after
NAME's key matched. It puts the session in NAME's container, creating it or
joining the one NAME already has, and exits with the command's exit code.

What runs depends on SSH_ORIGINAL_COMMAND: nothing means a login shell (with a
terminal if the client asked for one), the sftp subsystem means the image's
sftp-server, anything else runs as `sh -c COMMAND` (scp, rsync, any command).

When NAME's last connection ends, the container is kept for session.grace_period
and then destroyed (session.mode can say otherwise), by a `podspawn keeper`
process that spawn starts for it; max_lifetime ends it in any case.

podspawn's own failures exit 125 with one line on stderr; details go to log.file
or syslog.
";

/// `spawn --user NAME [--project NAME]`: sshd's forced command.
#[derive(Debug, PartialEq, Eq)]
struct SpawnArgs {
    user: String,
    /// For tests and admins; a connection names its project in `PODSPAWN_PROJECT`.
    project: Option<String>,
}

/// The variable a client sends (`SetEnv`, accepted by sshd's `AcceptEnv`) to name
/// its project.
const PROJECT_VARIABLE: &str = "PODSPAWN_PROJECT";

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<SpawnArgs>, UsageError> {
    const NAME: &str = "spawn";
    let mut user = None;
    let mut project = None;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("user") => user = Some(args.value()?),
            Long("project") => project = Some(args.value()?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let user = user.ok_or_else(|| args.error("missing --user NAME".to_string()))?;
    Ok(Some(SpawnArgs { user, project }))
}

/// The command's exit code, or 125 and one line for the user.
fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    std::panic::set_hook(Box::new(|info| {
        log::error!("spawn failed: {info}");
        eprintln!("podspawn: internal error; tell your admin");
        std::process::exit(i32::from(crate::error::EXIT_SPAWN_FAILURE));
    }));
    let config = super::service_config(context, "spawn").map_err(SpawnError::Config)?;
    match connect(&config, &args) {
        Ok(code) => Ok(Outcome::Exit(code.clamp(0, 255) as u8)),
        Err(err) => {
            log::error!("{err}");
            if let Some(reason) = err.refusal() {
                let project = args
                    .project
                    .clone()
                    .or_else(|| std::env::var(PROJECT_VARIABLE).ok())
                    .unwrap_or_default();
                audit::record(
                    Event::new("refused")
                        .with("reason", reason)
                        .with("user", args.user.as_str())
                        .with_text("project", project.as_bytes())
                        .with("error", err.to_string()),
                );
            }
            Err(err.into())
        }
    }
}

/// Environment the program in the container gets from the SSH session (sshd sets
/// these, or accepts them from the client with AcceptEnv).
const PASSED_ENV: &[&str] = &["TERM", "LANG", "SSH_CONNECTION", "SSH_CLIENT", "DISPLAY"];

#[derive(Debug)]
pub enum SpawnError {
    Config(ConfigError),
    Name(NameError),
    Account(String),
    /// The key's forced command names another user than the one logged in.
    NotYou {
        user: UserName,
        caller: String,
    },
    Root,
    NotRegistered(UserName),
    Keys(StoreError),
    /// The state directories are missing or not root's: `server-setup` was not run.
    NotSetUp(String),
    /// `PODSPAWN_PROJECT` (or `--project`) is no project name.
    BadProject(String),
    /// A project declared in the config that no `update-project` has set up yet.
    ProjectNotSetUp(ProjectName),
    /// A registered project whose checkout's Podfile cannot be read now.
    BrokenProject(ProjectName, String),
    Session(SessionError),
}

impl SpawnError {
    /// The policy this connection was refused by, for the audit log (`None`: it
    /// failed rather than being refused).
    fn refusal(&self) -> Option<&'static str> {
        match self {
            SpawnError::NotYou { .. } => Some("other_user"),
            SpawnError::Root => Some("root"),
            SpawnError::NotRegistered(_) | SpawnError::Session(SessionError::NotRegistered(_)) => {
                Some("not_registered")
            }
            SpawnError::BadProject(_) => Some("project_name"),
            SpawnError::ProjectNotSetUp(_) | SpawnError::BrokenProject(..) => Some("project"),
            SpawnError::Session(SessionError::TooManySessions { .. }) => Some("session_limit"),
            SpawnError::Session(SessionError::NameTaken { .. }) => Some("name_taken"),
            SpawnError::Session(SessionError::Foreign { .. }) => Some("foreign_container"),
            _ => None,
        }
    }

    /// The one line the SSH user sees.
    pub fn user_message(&self) -> String {
        match self {
            SpawnError::Config(_) => {
                "the podspawn configuration of this server is broken; tell your admin".to_string()
            }
            SpawnError::Name(_)
            | SpawnError::Account(_)
            | SpawnError::NotYou { .. }
            | SpawnError::Root => {
                "this key is not set up for your account; tell your admin".to_string()
            }
            SpawnError::NotRegistered(_) | SpawnError::Keys(_) => {
                "you are not registered with podspawn on this server; tell your admin".to_string()
            }
            SpawnError::NotSetUp(_) => {
                "podspawn is not set up on this server; tell your admin".to_string()
            }
            SpawnError::BadProject(err) => format!("PODSPAWN_PROJECT: {err}"),
            SpawnError::ProjectNotSetUp(project) => format!(
                "project {project} is declared but not set up yet; tell your admin (podspawn update-project {project})"
            ),
            SpawnError::BrokenProject(project, _) => {
                format!("project {project} cannot be used now; tell your admin")
            }
            SpawnError::Session(err) => err.user_message(),
        }
    }
}

impl fmt::Display for SpawnError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            SpawnError::Config(err) => err.fmt(f),
            SpawnError::Name(err) => err.fmt(f),
            SpawnError::Account(err) => write!(f, "cannot look up the calling account: {err}"),
            SpawnError::NotYou { user, caller } => {
                write!(f, "spawn --user {user} was run by {caller}")
            }
            SpawnError::Root => write!(f, "spawn refuses to run as root"),
            SpawnError::NotRegistered(user) => write!(f, "{user} has no keys registered"),
            SpawnError::Keys(err) => err.fmt(f),
            SpawnError::NotSetUp(reason) => f.write_str(reason),
            SpawnError::BadProject(err) => write!(f, "PODSPAWN_PROJECT: {err}"),
            SpawnError::ProjectNotSetUp(project) => {
                write!(
                    f,
                    "project {project} is declared in the config but not set up"
                )
            }
            SpawnError::BrokenProject(project, err) => write!(f, "project {project}: {err}"),
            SpawnError::Session(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for SpawnError {}

impl From<SessionError> for SpawnError {
    fn from(err: SessionError) -> Self {
        SpawnError::Session(err)
    }
}

/// What a new container of a user with these settings gets: theirs where they have
/// their own, the server's defaults otherwise.
pub fn settings(config: &ServerConfig, user: &UserSettings) -> Settings {
    let defaults = &config.defaults;
    let security = &config.security;
    Settings {
        cpus: user.cpus.unwrap_or(defaults.cpus).0,
        memory_bytes: user.memory.unwrap_or(defaults.memory).0,
        pids_limit: user.pids_limit.unwrap_or(defaults.pids_limit),
        grace: config.session.grace_period.0,
        lifetime: config.session.max_lifetime.0,
        mode: user.mode.unwrap_or(config.session.mode),
        pool: config.network.pool,
        max_per_user: user.max_sessions.unwrap_or(config.session.max_per_user),
        hardening: crate::container::Hardening {
            // A full home must leave the container memory to run in: at most half.
            home_bytes: user
                .home_size
                .unwrap_or(defaults.home_size)
                .0
                .min(user.memory.unwrap_or(defaults.memory).0 / 2),
            nofile: defaults.nofile,
            nproc: defaults.nproc,
            disk_bytes: defaults.disk_size.map(|size| size.0),
            runtime: user
                .runtime
                .as_ref()
                .or(security.runtime.as_ref())
                .map(|runtime| runtime.0.clone()),
            read_only_root: security.read_only_root,
            sudo: user.sudo.unwrap_or(security.sudo),
            ipv6_off: std::path::Path::new("/proc/sys/net/ipv6").exists(),
        },
        services: crate::session::ServiceSettings {
            pool: config.network.services_pool,
            limits: crate::container::ServiceLimits {
                share: config.services.share.0,
                capabilities: config
                    .services
                    .capabilities
                    .iter()
                    .map(|capability| capability.0.clone())
                    .collect(),
                persist_volumes: config.services.persist_volumes,
            },
            // The host reaches the containers of a local engine only.
            ready_timeout: config
                .docker
                .host
                .as_deref()
                .is_none_or(|host| host.starts_with("unix://"))
                .then_some(config.services.ready_timeout.0),
        },
    }
}

/// The project a connection asks for: `--project` (tests, admins), else
/// `PODSPAWN_PROJECT` as the client sent it; none for the default environment.
fn asked_project(args: &SpawnArgs) -> Result<Option<ProjectName>, SpawnError> {
    let asked = match &args.project {
        Some(project) => project.clone(),
        None => match std::env::var_os(PROJECT_VARIABLE) {
            None => return Ok(None),
            Some(value) => value.to_string_lossy().into_owned(),
        },
    };
    if asked.is_empty() {
        return Ok(None);
    }
    ProjectName::parse(&asked)
        .map(Some)
        .map_err(SpawnError::BadProject)
}

/// Runs the connection; returns the exit code of the command in the container.
fn connect(config: &ServerConfig, args: &SpawnArgs) -> Result<i32, SpawnError> {
    let user = UserName::parse(&args.user).map_err(SpawnError::Name)?;
    // `stop`'s signal must find a handler from the moment this connection could be
    // recorded: by default it would end this process without a word to its user.
    if let Err(err) = crate::exec::catch_stop() {
        log::warn!("cannot catch stop's signal: {err}");
    }
    let caller = accounts::caller().map_err(|err| SpawnError::Account(err.to_string()))?;
    audit::start(
        &config.log,
        Actor::User(caller.name.clone()),
        std::env::var("SSH_CONNECTION").ok().as_deref(),
    );
    // A config named in the environment is not read with the borrowed group: an
    // attempt worth an admin's eye.
    if privilege::has_borrowed_group()
        && std::env::var_os(crate::config::PATH_VARIABLE).is_some_and(|path| !path.is_empty())
    {
        audit::record(
            Event::new("refused")
                .with("reason", "config_override")
                .with("user", user.as_str()),
        );
    }
    if caller.uid == 0 {
        return Err(SpawnError::Root);
    }
    if caller.name != user.as_str() {
        return Err(SpawnError::NotYou {
            user,
            caller: caller.name,
        });
    }
    let store = KeyStore::new(config.auth.key_dir.as_path());
    if !store.is_registered(&user).map_err(SpawnError::Keys)? {
        return Err(SpawnError::NotRegistered(user));
    }
    if privilege::has_borrowed_group() {
        privilege::check_shared_dirs(config).map_err(SpawnError::NotSetUp)?;
    }

    let project = asked_project(args)?;
    let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let original_command = std::env::var_os("SSH_ORIGINAL_COMMAND");
    let routed = router::route(original_command.as_deref(), tty);
    let own = user_settings::load(config, &user, privilege::has_borrowed_group())
        .map_err(SpawnError::Config)?;
    let settings = settings(config, &own);
    let mut sessions = super::sessions(config)?;
    let environment = match &project {
        None => None,
        Some(name) => match sessions.project(name)? {
            Some(row) => Some(
                crate::project::environment(config, &row, &user)
                    .map_err(|err| SpawnError::BrokenProject(name.clone(), err.to_string()))?,
            ),
            None if config.projects.keys().any(|key| &key.0 == name) => {
                return Err(SpawnError::ProjectNotSetUp(name.clone()));
            }
            // Not a project: a named scratch environment on the default image.
            None => None,
        },
    };
    // The project's Podfile, then the user's own settings, then the server's.
    let default_shell = own
        .shell
        .as_ref()
        .unwrap_or(&config.defaults.shell)
        .as_path()
        .display()
        .to_string();
    let shell = environment
        .as_ref()
        .and_then(|environment| environment.shell.clone())
        .unwrap_or(default_shell);
    let identity = Identity::new(user.clone(), caller.uid, caller.gid, &caller.group, &shell);
    let mut env = passed_env(routed.tty);
    let session_name = project.as_ref().map_or("", |project| project.as_str());
    env.extend(
        own.env
            .iter()
            .map(|(name, value)| (name.0.clone(), value.expand(user.as_str(), session_name))),
    );
    match (&project, &environment) {
        (_, Some(environment)) => env.extend(environment.env.iter().cloned()),
        (Some(scratch), None) => env.extend(crate::project::session_env(&user, scratch.as_str())),
        (None, None) => {}
    }
    let session = project.as_ref().map_or("", |project| project.as_str());
    let agent_dir = match agent::session_dir(config.state.agent_dir.as_path(), &user, session) {
        Ok(dir) => Some(dir),
        Err(err) => {
            log::warn!("no agent forwarding for {user}: {err}");
            None
        }
    };
    // Held until the connection ends: the relay lives exactly as long.
    let upstream_agent = std::env::var_os("SSH_AUTH_SOCK");
    log::debug!("forwarded agent: {upstream_agent:?}");
    let _relay = match (&agent_dir, upstream_agent) {
        (Some(dir), Some(upstream)) => match agent::Relay::start(dir, upstream.into()) {
            Ok(relay) => {
                env.push((
                    "SSH_AUTH_SOCK".to_string(),
                    relay.container_path().to_string(),
                ));
                Some(relay)
            }
            Err(err) => {
                log::warn!("no agent forwarding for {user}: {err}");
                None
            }
        },
        _ => None,
    };
    // Later settings win: the client's, then the user's own, then the project's.
    let mut seen = std::collections::BTreeSet::new();
    env.reverse();
    env.retain(|(name, _)| seen.insert(name.clone()));
    env.reverse();
    let request = ConnectRequest {
        user: identity,
        project: project
            .as_ref()
            .map(ProjectName::to_string)
            .unwrap_or_default(),
        env,
        window: routed
            .tty
            .then(|| crate::exec::terminal_size(libc::STDIN_FILENO))
            .flatten(),
        client: std::env::var("SSH_CONNECTION")
            .ok()
            .and_then(|connection| audit::client_of(&connection))
            .map(|client| client.to_string())
            .unwrap_or_default(),
        routed,
        agent_dir: agent_dir.map(|dir| dir.display().to_string()),
        image: environment.as_ref().map_or_else(
            || {
                own.image
                    .clone()
                    .unwrap_or_else(|| config.defaults.image.clone())
            },
            |environment| environment.image.clone(),
        ),
        build: environment
            .as_ref()
            .map(|environment| environment.build.clone()),
        workdir: environment
            .as_ref()
            .map(|environment| environment.workspace.clone()),
        services: environment
            .as_ref()
            .map(|environment| environment.services.clone())
            .unwrap_or_default(),
        on_start: environment.and_then(|environment| environment.on_start),
    };
    log::info!(
        "{user} connects: {}",
        original_command
            .as_deref()
            .map_or("(shell)".into(), OsStr::to_string_lossy)
    );
    let code = sessions.connect(&request, &settings)?;
    log::info!("{user} disconnects: exit {code}");
    Ok(code)
}

/// The session environment handed into the container: terminal type (only with a
/// terminal), locale, and where the connection comes from. A value that is not
/// UTF-8 (a client may send any `LANG`) names no locale and cannot cross the
/// engine's JSON API unchanged: it is left out, and the log says so.
fn passed_env(tty: bool) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for (name, value) in std::env::vars_os() {
        let Some(name) = name.to_str() else { continue };
        let wanted = (PASSED_ENV.contains(&name) && (name != "TERM" || tty))
            || (name.starts_with("LC_")
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        if !wanted {
            continue;
        }
        match value.into_string() {
            Ok(value) => env.push((name.to_string(), value)),
            Err(value) => log::warn!("not passing {name}={value:?}: it is not UTF-8"),
        }
    }
    env.sort();
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_settings_win_over_the_servers_and_the_home_leaves_room_to_run() {
        let config = crate::config::parse(
            "defaults:\n  memory: 512m\n  cpus: 2\n  home_size: 1g\n\
             security:\n  runtime: runsc\nsession:\n  max_per_user: 4\n",
        )
        .unwrap();
        let server = settings(&config, &UserSettings::default());
        assert_eq!((server.cpus, server.max_per_user), (2.0, 4));
        // A home as large as the memory would leave nothing to run in when full.
        assert_eq!(server.hardening.home_bytes, 256 << 20);
        assert_eq!(server.hardening.runtime.as_deref(), Some("runsc"));
        let own = crate::user_settings::parse(
            "cpus: 0.5\nmemory: 128m\nmax_sessions: 1\nruntime: runc\nmode: persistent\n",
        )
        .unwrap();
        let theirs = settings(&config, &own);
        assert_eq!((theirs.cpus, theirs.memory_bytes), (0.5, 128 << 20));
        assert_eq!(theirs.max_per_user, 1);
        assert_eq!(theirs.hardening.home_bytes, 64 << 20);
        assert_eq!(theirs.hardening.runtime.as_deref(), Some("runc"));
        assert_eq!(theirs.mode, crate::config::SessionMode::Persistent);
    }

    #[test]
    fn spawn_needs_its_user() {
        let parse_words = |words: &[&str]| parse(&mut Args::of("spawn", words));
        assert_eq!(
            parse_words(&["--user", "alice"]),
            Ok(Some(SpawnArgs {
                user: "alice".into(),
                project: None
            }))
        );
        let err = parse_words(&["--user"]).unwrap_err().to_string();
        assert!(
            err.starts_with("spawn: missing argument for option '--user'"),
            "{err}"
        );
        assert!(parse_words(&[]).is_err());
    }
}
