//! The subcommands. Each module owns its usage text, its argument parsing and its
//! `run`; `ALL` lists them. Adding a subcommand is one new module and one line in
//! `ALL` (and, if it is listed, its line in `OVERVIEW`; a test checks both agree).

use std::borrow::Cow;
use std::path::PathBuf;

use crate::audit::{self, Actor};
use crate::cli::Args;
use crate::config::{self, ServerConfig};
use crate::engine::DockerEngine;
use crate::error::Error;
use crate::host::SystemHost;
use crate::lock::Locks;
use crate::logging;
use crate::privilege;
use crate::session::{Effects, SessionError, Sessions};

mod add_project;
mod add_user;
mod auth_keys;
mod cleanup;
mod connect;
mod doctor;
mod help;
mod keeper;
mod list;
mod remove_project;
mod remove_user;
pub mod server_setup;
mod setup;
pub mod spawn;
mod status;
mod stop;
mod update_project;
mod verify_image;
mod version;

/// Every subcommand, in the order `podspawn --help` lists them.
pub const ALL: &[Command] = &[
    server_setup::COMMAND,
    add_user::COMMAND,
    remove_user::COMMAND,
    add_project::COMMAND,
    update_project::COMMAND,
    remove_project::COMMAND,
    list::COMMAND,
    status::COMMAND,
    stop::COMMAND,
    cleanup::COMMAND,
    doctor::COMMAND,
    verify_image::COMMAND,
    auth_keys::COMMAND,
    spawn::COMMAND,
    setup::COMMAND,
    connect::COMMAND,
    version::COMMAND,
    help::COMMAND,
    keeper::COMMAND,
];

/// One subcommand.
pub struct Command {
    pub name: &'static str,
    pub usage: &'static str,
    /// Named in `podspawn --help` and found by `help NAME` (the keeper is spawn's).
    pub listed: bool,
    /// Keeps a group a setgid install lends: spawn and its keeper need the docker
    /// socket. Every other subcommand drops it before anything else.
    pub keeps_group: bool,
    pub run: fn(&mut Args, &Context) -> Result<Outcome, Error>,
}

/// The subcommand called `name`.
pub fn find(name: &str) -> Option<&'static Command> {
    ALL.iter().find(|command| command.name == name)
}

/// The names `podspawn --help` lists.
pub fn listed() -> impl Iterator<Item = &'static str> {
    ALL.iter()
        .filter(|command| command.listed)
        .map(|command| command.name)
}

/// What every subcommand gets besides its own arguments.
pub struct Context {
    /// `--config PATH`, before the subcommand.
    pub config: Option<PathBuf>,
}

impl Context {
    /// The server config, read as the privilege model allows (see `config::load`).
    pub fn load_config(&self) -> config::Loaded {
        config::load(privilege::has_borrowed_group(), self.config.as_deref())
    }
}

/// How a subcommand that did not fail ended.
pub enum Outcome {
    Done,
    /// Text for stdout (help, version).
    Print(Cow<'static, str>),
    /// An exit code of its own (spawn passes on its command's).
    Exit(u8),
}

/// The sessions, as this process (a connection, its keeper, or an admin) works on
/// them.
pub fn sessions(config: &ServerConfig) -> Result<Sessions<DockerEngine, SystemHost>, SessionError> {
    Sessions::open(
        DockerEngine::new(config),
        SystemHost::new(config),
        config.state.db_path.as_path(),
        Locks::configured(config),
    )
}

/// The engine, for a command that needs no sessions (every change still passes
/// through the session layer's `Effects`).
pub fn effects(config: &ServerConfig) -> Effects<DockerEngine> {
    Effects::new(DockerEngine::new(config))
}

/// Runs an admin command with the server config, stderr logging and the audit log
/// (its events by `admin:<uid>`).
pub fn admin(
    context: &Context,
    run: impl FnOnce(&ServerConfig) -> Result<(), Error>,
) -> Result<Outcome, Error> {
    admin_as(context, Actor::Admin(unsafe { libc::getuid() }), run)
}

/// `admin`, its audit events by `actor` (`cleanup`).
pub fn admin_as(
    context: &Context,
    actor: Actor,
    run: impl FnOnce(&ServerConfig) -> Result<(), Error>,
) -> Result<Outcome, Error> {
    let config = context.load_config().result?;
    logging::init_admin(config.log.level.0);
    audit::start(&config.log, actor, None);
    run(&config)?;
    Ok(Outcome::Done)
}

/// The config for a command that logs to the service log (never the terminal), with
/// logging set up; a broken config is logged (to syslog: the configured log is not
/// known) and returned.
pub fn service_config(
    context: &Context,
    command: &'static str,
) -> Result<ServerConfig, config::ConfigError> {
    let loaded = context.load_config();
    let logged = match &loaded.result {
        Ok(config) => &config.log,
        Err(_) => &config::LogConfig::default(),
    };
    logging::init_service(logged, command);
    if let Some(ignored) = &loaded.ignored {
        log::warn!("{ignored}");
    }
    if let Err(err) = &loaded.result {
        log::error!("{err}");
    }
    loaded.result
}

/// The overview `podspawn --help` prints.
pub const OVERVIEW: &str = "\
podspawn — SSH in, get a container; exit, it's gone.

Usage: podspawn [--config PATH] <command> [options]

Admin commands (run as root):
  server-setup        configure sshd and create podspawn's group, dirs and state
  add-user NAME       register NAME's SSH keys (--key, --key-file, --github)
  remove-user NAME    delete NAME's keys (--force: destroy their sessions too)
  add-project NAME    register a project: clone --repo, read its Podfile, build it
  update-project NAME fetch a project's branch, rebuild if its image changed
  remove-project NAME remove a project (--force: end its sessions too)
  list                show sessions and their live connections (--json)
  status              sessions, connections, services and deadlines (--json, --prometheus)
  stop USER[@PROJECT] end a session now (its connections are told why)
  cleanup             expire sessions and remove orphans now (--daemon to repeat)
  doctor              check this host's set-up and say how to fix what is wrong
  verify-image IMAGE  check an image for a shell, sftp-server, scp, rsync, git, UTF-8

Called by sshd:
  auth-keys USER [TYPE KEY]
                      print USER's keys for AuthorizedKeysCommand
  spawn --user NAME   run the SSH session in NAME's container (the forced command)

On a laptop:
  setup               make ssh USER@NAME.pod work (--remove takes it out again)
  connect USER HOST PORT
                      ssh's ProxyCommand for NAME.pod (setup writes it)

Other:
  version             print the version
  help [COMMAND]      print this help, or a command's

The server config is /etc/podspawn/config.yaml; --config PATH (or PODSPAWN_CONFIG)
names another. A laptop's is ~/.podspawn/config.yaml. Each command takes --help.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_command_is_in_the_overview_once_and_has_its_help() {
        for command in ALL {
            let runs_help = |words: &[&str]| {
                let mut args = Args::of(command.name, words);
                match (command.run)(&mut args, &Context { config: None }) {
                    Ok(Outcome::Print(text)) => text.into_owned(),
                    _ => panic!("{} {words:?} printed no help", command.name),
                }
            };
            assert_eq!(runs_help(&["--help"]), command.usage);
            let listed_line = format!("\n  {} ", command.name);
            assert_eq!(
                OVERVIEW.matches(&listed_line).count(),
                usize::from(command.listed),
                "{}",
                command.name
            );
        }
        let names: Vec<&str> = ALL.iter().map(|command| command.name).collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "a name is listed twice");
    }
}
