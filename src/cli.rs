//! The command line: lexopt parsing into one `Command`, and the help texts.
//!
//! Parsing only checks shapes (which flags, how many arguments); what the values mean
//! — is this a valid user name, does the key parse — is decided by the modules that
//! own them. Help and version are commands like any other, not early exits.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use lexopt::prelude::*;

use crate::keys::import::KeySource;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("PODSPAWN_COMMIT");

#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Help(&'static str),
    Version,
    AuthKeys(AuthKeysArgs),
    AddUser(AddUserArgs),
    RemoveUser(RemoveUserArgs),
    Spawn(SpawnArgs),
    Keeper(KeeperArgs),
    List(ListArgs),
    Cleanup(CleanupArgs),
    ServerSetup(ServerSetupArgs),
    Doctor(DoctorArgs),
    VerifyImage(VerifyImageArgs),
}

/// `doctor [--sshd-config PATH]`.
#[derive(Debug, PartialEq, Eq)]
pub struct DoctorArgs {
    pub sshd_config: PathBuf,
}

/// `verify-image IMAGE`.
#[derive(Debug, PartialEq, Eq)]
pub struct VerifyImageArgs {
    pub image: String,
}

/// `server-setup [--sshd-config PATH] [--dry-run] [--no-reload]`.
#[derive(Debug, PartialEq, Eq)]
pub struct ServerSetupArgs {
    pub sshd_config: PathBuf,
    pub dry_run: bool,
    pub no_reload: bool,
}

/// `list [--json]`.
#[derive(Debug, PartialEq, Eq)]
pub struct ListArgs {
    pub json: bool,
}

/// `cleanup [--daemon [--interval DURATION]]`.
#[derive(Debug, PartialEq, Eq)]
pub struct CleanupArgs {
    /// With `--daemon`: the time between passes.
    pub daemon_interval: Option<std::time::Duration>,
}

/// `spawn --user NAME`: sshd's forced command.
#[derive(Debug, PartialEq, Eq)]
pub struct SpawnArgs {
    pub user: String,
}

/// `keeper --user NAME [--project NAME]`: started by spawn, not by people.
#[derive(Debug, PartialEq, Eq)]
pub struct KeeperArgs {
    pub user: String,
    /// Empty for the user's default environment.
    pub project: String,
}

/// `auth-keys USER [TYPE KEY]`, as sshd's `AuthorizedKeysCommand ... %u %t %k`.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthKeysArgs {
    /// Not yet validated: sshd passes whatever name the client sent.
    pub user: String,
    /// The key the client offered (`%t %k`), when sshd passes it.
    pub offered: Option<OfferedKey>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct OfferedKey {
    pub kind: String,
    pub body: String,
}

#[derive(Debug, PartialEq, Eq)]
pub struct AddUserArgs {
    pub name: String,
    pub sources: Vec<KeySource>,
}

#[derive(Debug, PartialEq, Eq)]
pub struct RemoveUserArgs {
    pub name: String,
    /// Destroy the user's sessions first.
    pub force: bool,
}

/// A command line that does not fit: one line naming the problem, plus a hint.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError {
    /// The subcommand whose usage was wrong, if it got that far.
    pub command: Option<&'static str>,
    pub message: String,
}

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self.command {
            Some(command) => write!(
                f,
                "{command}: {}; see 'podspawn {command} --help'",
                self.message
            ),
            None => write!(f, "{}; see 'podspawn --help'", self.message),
        }
    }
}

impl std::error::Error for UsageError {}

pub const USAGE: &str = "\
podspawn — SSH in, get a container; exit, it's gone.

Usage: podspawn [--config PATH] <command> [options]

Admin commands (run as root):
  server-setup        configure sshd and create podspawn's group, dirs and state
  add-user NAME       register NAME's SSH keys (--key, --key-file, --github)
  remove-user NAME    delete NAME's keys (--force: destroy their sessions too)
  list                show sessions and their live connections (--json)
  cleanup             expire sessions and remove orphans now (--daemon to repeat)
  doctor              check this host's set-up and say how to fix what is wrong
  verify-image IMAGE  check an image for a shell, sftp-server, scp, rsync, git, UTF-8

Called by sshd:
  auth-keys USER [TYPE KEY]
                      print USER's keys for AuthorizedKeysCommand
  spawn --user NAME   run the SSH session in NAME's container (the forced command)

Other:
  version             print the version
  help [COMMAND]      print this help, or a command's

The server config is /etc/podspawn/config.yaml; --config PATH (or PODSPAWN_CONFIG)
names another. Each command takes --help.
";

const AUTH_KEYS_USAGE: &str = "\
Usage: podspawn auth-keys USER [TYPE KEY]

Prints USER's registered keys in authorized_keys format, each wrapped in a forced
`podspawn spawn --user USER` command. sshd runs it, as `nobody`, through

  AuthorizedKeysCommand /usr/local/bin/podspawn auth-keys %u %t %k
  AuthorizedKeysCommandUser nobody

With TYPE and KEY (the key the client offered) only that key is printed. For a user
podspawn does not know, or on any problem, it prints nothing and exits 0, so sshd
falls through to its normal authentication. It reads only the key store: no
database, no docker, no network. Problems go to log.file or syslog.
";

const ADD_USER_USAGE: &str = "\
Usage: podspawn add-user NAME [--key KEY]... [--key-file PATH]... [--github LOGIN]...

Registers SSH public keys for NAME in the key store (auth.key_dir/NAME). Keys
already registered are not added twice. Every key is checked before anything is
written: one bad key and nothing changes.

Options:
  --key KEY          a public key line, e.g. \"ssh-ed25519 AAAA... sarah@laptop\"
  --key-file PATH    a .pub or authorized_keys-style file (one key per line)
  --github LOGIN     the public keys of GitHub user LOGIN (fetched once with curl;
                     authentication never touches the network)
  -h, --help         print this help

Key lines must be bare keys: podspawn adds its own authorized_keys options.
";

const REMOVE_USER_USAGE: &str = "\
Usage: podspawn remove-user NAME [--force]

Deletes NAME's keys from the key store. From then on sshd gets no keys for NAME
from podspawn and falls through to its normal authentication. If NAME still has
sessions, it refuses unless --force is given.

Options:
  --force            destroy NAME's containers first (their connections end)
  -h, --help         print this help
";

const SPAWN_USAGE: &str = "\
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

const SERVER_SETUP_USAGE: &str = "\
Usage: podspawn server-setup [--sshd-config PATH] [--dry-run] [--no-reload]

Makes this host a podspawn server. It checks sshd_config with `sshd -t` first and
refuses if sshd already has another AuthorizedKeysCommand; backs the file up to
PATH.podspawn.bak; adds podspawn's lines (AuthorizedKeysCommand, AcceptEnv
PODSPAWN_PROJECT LANG LC_*) before any Include or Match, and at the end a Match
Group block that stops podspawn's users from reaching the host (Unix-socket,
tunnel and remote forwarding, ~/.ssh/rc); checks again with `sshd -t`, restoring
the original if sshd refuses; and reloads sshd (open sessions stay). Then it
creates the podspawn group, the key, state, lock and agent directories with their
owners and modes, the state database and a commented default config.

Running it again changes nothing and says so.

Options:
  --sshd-config PATH  edit this file instead of /etc/ssh/sshd_config
  --dry-run           print what would change, change nothing
  --no-reload         do not reload sshd afterwards
  -h, --help          print this help
";

const DOCTOR_USAGE: &str = "\
Usage: podspawn doctor [--sshd-config PATH]

Checks this host: sshd_config has podspawn's AuthorizedKeysCommand and sshd -t
accepts it; the binary is root:docker 2755; the key, state, lock and agent
directories have their owners and modes; the engine answers and has the default
image; the state database is intact; no podspawn user is in the docker group;
a cleanup timer or cron job is there (optional). Each problem comes with its fix.
Exits 1 when anything is wrong.

Options:
  --sshd-config PATH  check this file instead of /etc/ssh/sshd_config
  -h, --help          print this help
";

const VERIFY_IMAGE_USAGE: &str = "\
Usage: podspawn verify-image IMAGE

Runs IMAGE once (no network, no capabilities) and reports what podspawn's users
will find: a shell, sftp-server (and its path), scp, rsync, git and a UTF-8
locale, and what podspawn itself needs (/bin/sh, grep, cat, sleep), naming the
Debian/Ubuntu package for each missing one. Exits 1 when something is missing.

Options:
  -h, --help          print this help
";

const LIST_USAGE: &str = "\
Usage: podspawn list [--json]

Shows every session: USER PROJECT CONTAINER STATUS CONNS AGE LIFETIME LEFT.
CONNS counts live connections only. STATUS is running, grace_period (no
connections; destroyed when the grace period ends), or missing/stopped when the
engine no longer has the container (the next spawn or cleanup reconciles it).

Options:
  --json             one JSON array of objects instead of the table
  -h, --help         print this help
";

const CLEANUP_USAGE: &str = "\
Usage: podspawn cleanup [--daemon [--interval DURATION]]

One pass: destroys sessions whose grace period or max lifetime is over, drops
sessions whose container is gone, and removes podspawn's containers that no
session owns. Prints one summary line. Safe to run while users connect, and never
needed for correctness: each session's keeper does the same for its own session.

Options:
  --daemon           repeat forever (for a systemd service); stops on SIGTERM
  --interval D       time between passes with --daemon (default 60s)
  -h, --help         print this help
";

const KEEPER_USAGE: &str = "\
Usage: podspawn keeper --user NAME [--project NAME]

Started by spawn, one per session, detached from every connection: it ends the
session's container when its grace period or max lifetime is over. Not for
running by hand.
";

const VERSION_USAGE: &str = "\
Usage: podspawn version

Prints the version and the commit it was built from.
";

/// The subcommands, with their help, in the order `--help` lists them.
const COMMANDS: &[(&str, &str)] = &[
    ("server-setup", SERVER_SETUP_USAGE),
    ("add-user", ADD_USER_USAGE),
    ("remove-user", REMOVE_USER_USAGE),
    ("list", LIST_USAGE),
    ("cleanup", CLEANUP_USAGE),
    ("doctor", DOCTOR_USAGE),
    ("verify-image", VERIFY_IMAGE_USAGE),
    ("auth-keys", AUTH_KEYS_USAGE),
    ("spawn", SPAWN_USAGE),
    ("version", VERSION_USAGE),
    ("help", USAGE),
];

pub fn version_line() -> String {
    format!("podspawn {VERSION} ({COMMIT})")
}

/// A command line: the server config it names, if any, and the command.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    /// `--config PATH`, before the command.
    pub config: Option<PathBuf>,
    pub command: Command,
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, UsageError> {
    let mut parser = lexopt::Parser::from_args(args);
    let top = |message: String| UsageError {
        command: None,
        message,
    };
    let mut config = None;
    let name = loop {
        match parser.next().map_err(|err| top(err.to_string()))? {
            None => {
                return Ok(Parsed {
                    config,
                    command: Command::Help(USAGE),
                });
            }
            Some(Short('h') | Long("help")) => {
                return Ok(Parsed {
                    config,
                    command: Command::Help(USAGE),
                });
            }
            Some(Short('V') | Long("version")) => {
                return Ok(Parsed {
                    config,
                    command: Command::Version,
                });
            }
            Some(Long("config")) => {
                config = Some(PathBuf::from(
                    parser.value().map_err(|err| top(err.to_string()))?,
                ));
            }
            Some(Value(name)) => {
                break name
                    .into_string()
                    .map_err(|name| top(format!("unknown command {name:?}")))?;
            }
            Some(other) => return Err(top(format!("unknown option {}", describe(&other)))),
        }
    };
    let command = parse_command(&name, parser)?;
    Ok(Parsed { config, command })
}

fn parse_command(name: &str, mut parser: lexopt::Parser) -> Result<Command, UsageError> {
    let top = |message: String| UsageError {
        command: None,
        message,
    };
    match name {
        "auth-keys" => parse_auth_keys(parser),
        "add-user" => parse_add_user(&mut parser),
        "remove-user" => parse_remove_user(&mut parser),
        "spawn" => parse_spawn(&mut parser),
        "keeper" => parse_keeper(&mut parser),
        "list" => parse_list(&mut parser),
        "server-setup" => parse_server_setup(&mut parser),
        "doctor" => parse_doctor(&mut parser),
        "verify-image" => parse_verify_image(&mut parser),
        "cleanup" => parse_cleanup(&mut parser),
        "version" => parse_no_arguments(&mut parser, "version", VERSION_USAGE, Command::Version),
        "help" => parse_help(&mut parser),
        unknown => Err(top(unknown_command(unknown))),
    }
}

fn unknown_command(name: &str) -> String {
    let shown = name.escape_debug();
    match closest_command(name) {
        Some(guess) => format!("unknown command '{shown}' (did you mean '{guess}'?)"),
        None => format!("unknown command '{shown}'"),
    }
}

/// The listed command nearest to a mistyped one, if it is close enough to be a typo.
fn closest_command(name: &str) -> Option<&'static str> {
    COMMANDS
        .iter()
        .map(|(command, _)| (edit_distance(name, command), *command))
        .filter(|(distance, _)| *distance <= 2)
        .min()
        .map(|(_, command)| command)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current.push(substitution.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

fn describe(arg: &lexopt::Arg) -> String {
    match arg {
        Short(c) => format!("'-{}'", c.escape_debug()),
        Long(name) => format!("'--{}'", name.escape_debug()),
        Value(value) => format!("argument {:?}", value),
    }
}

/// A usage error inside `command`, from lexopt or from our own checks.
fn usage(command: &'static str) -> impl Fn(String) -> UsageError {
    move |message| UsageError {
        command: Some(command),
        message,
    }
}

fn unexpected(command: &'static str, arg: lexopt::Arg) -> UsageError {
    let message = match arg {
        Value(_) => format!("unexpected {}", describe(&arg)),
        _ => format!("unknown option {}", describe(&arg)),
    };
    usage(command)(message)
}

fn string(command: &'static str, value: OsString) -> Result<String, UsageError> {
    value
        .into_string()
        .map_err(|value| usage(command)(format!("{value:?} is not valid UTF-8")))
}

/// `auth-keys` is sshd's: its arguments are taken as they come, never as options, so a
/// client's user name like `--help` or `-o` is just an unknown user.
fn parse_auth_keys(mut parser: lexopt::Parser) -> Result<Command, UsageError> {
    let args: Vec<String> = parser
        .raw_args()
        .map_err(|err| usage("auth-keys")(err.to_string()))?
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    match args.as_slice() {
        [only] if only == "--help" || only == "-h" => Ok(Command::Help(AUTH_KEYS_USAGE)),
        [user] => Ok(Command::AuthKeys(AuthKeysArgs {
            user: user.clone(),
            offered: None,
        })),
        [user, kind, body] => Ok(Command::AuthKeys(AuthKeysArgs {
            user: user.clone(),
            offered: Some(OfferedKey {
                kind: kind.clone(),
                body: body.clone(),
            }),
        })),
        _ => Err(usage("auth-keys")(format!(
            "expected USER or USER TYPE KEY, got {} argument(s)",
            args.len()
        ))),
    }
}

fn parse_add_user(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "add-user";
    let fail = usage(COMMAND);
    let mut name = None;
    let mut sources = Vec::new();
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(ADD_USER_USAGE)),
            Long("key") => {
                let value = parser.value().map_err(|err| fail(err.to_string()))?;
                sources.push(KeySource::Literal(string(COMMAND, value)?));
            }
            Long("key-file") => {
                let value = parser.value().map_err(|err| fail(err.to_string()))?;
                sources.push(KeySource::File(PathBuf::from(value)));
            }
            Long("github") => {
                let value = parser.value().map_err(|err| fail(err.to_string()))?;
                sources.push(KeySource::GitHub(string(COMMAND, value)?));
            }
            Value(value) if name.is_none() => name = Some(string(COMMAND, value)?),
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    let name = name.ok_or_else(|| fail("missing NAME".to_string()))?;
    if sources.is_empty() {
        return Err(fail(
            "give at least one --key, --key-file or --github".to_string(),
        ));
    }
    Ok(Command::AddUser(AddUserArgs { name, sources }))
}

fn parse_remove_user(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "remove-user";
    let fail = usage(COMMAND);
    let mut name = None;
    let mut force = false;
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(REMOVE_USER_USAGE)),
            Long("force") => force = true,
            Value(value) if name.is_none() => name = Some(string(COMMAND, value)?),
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    let name = name.ok_or_else(|| fail("missing NAME".to_string()))?;
    Ok(Command::RemoveUser(RemoveUserArgs { name, force }))
}

fn parse_spawn(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "spawn";
    let fail = usage(COMMAND);
    let mut user = None;
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(SPAWN_USAGE)),
            Long("user") => {
                let value = parser.value().map_err(|err| fail(err.to_string()))?;
                user = Some(string(COMMAND, value)?);
            }
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    let user = user.ok_or_else(|| fail("missing --user NAME".to_string()))?;
    Ok(Command::Spawn(SpawnArgs { user }))
}

fn parse_server_setup(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "server-setup";
    let fail = usage(COMMAND);
    let mut args = ServerSetupArgs {
        sshd_config: PathBuf::from("/etc/ssh/sshd_config"),
        dry_run: false,
        no_reload: false,
    };
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(SERVER_SETUP_USAGE)),
            Long("sshd-config") => {
                args.sshd_config =
                    PathBuf::from(parser.value().map_err(|err| fail(err.to_string()))?);
            }
            Long("dry-run") => args.dry_run = true,
            Long("no-reload") => args.no_reload = true,
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    Ok(Command::ServerSetup(args))
}

fn parse_doctor(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "doctor";
    let fail = usage(COMMAND);
    let mut sshd_config = PathBuf::from("/etc/ssh/sshd_config");
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(DOCTOR_USAGE)),
            Long("sshd-config") => {
                sshd_config = PathBuf::from(parser.value().map_err(|err| fail(err.to_string()))?);
            }
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    Ok(Command::Doctor(DoctorArgs { sshd_config }))
}

fn parse_verify_image(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "verify-image";
    let fail = usage(COMMAND);
    let mut image = None;
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(VERIFY_IMAGE_USAGE)),
            Value(value) if image.is_none() => image = Some(string(COMMAND, value)?),
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    let image = image.ok_or_else(|| fail("missing IMAGE".to_string()))?;
    if image.starts_with('-') || image.chars().any(char::is_whitespace) {
        return Err(fail(format!("{image:?} is not an image name")));
    }
    Ok(Command::VerifyImage(VerifyImageArgs { image }))
}

fn parse_list(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "list";
    let fail = usage(COMMAND);
    let mut json = false;
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(LIST_USAGE)),
            Long("json") => json = true,
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    Ok(Command::List(ListArgs { json }))
}

fn parse_cleanup(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "cleanup";
    let fail = usage(COMMAND);
    let mut daemon = false;
    let mut interval = None;
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(CLEANUP_USAGE)),
            Long("daemon") => daemon = true,
            Long("interval") => {
                let value = string(
                    COMMAND,
                    parser.value().map_err(|err| fail(err.to_string()))?,
                )?;
                let parsed = crate::config::ConfigDuration::parse(&value)
                    .map_err(|err| fail(format!("--interval: {err}")))?;
                if parsed.is_zero() {
                    return Err(fail("--interval must be more than 0s".to_string()));
                }
                interval = Some(parsed);
            }
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    if interval.is_some() && !daemon {
        return Err(fail("--interval goes with --daemon".to_string()));
    }
    let daemon_interval = daemon.then(|| interval.unwrap_or(std::time::Duration::from_secs(60)));
    Ok(Command::Cleanup(CleanupArgs { daemon_interval }))
}

fn parse_keeper(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    const COMMAND: &str = "keeper";
    let fail = usage(COMMAND);
    let mut user = None;
    let mut project = String::new();
    while let Some(arg) = parser.next().map_err(|err| fail(err.to_string()))? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help(KEEPER_USAGE)),
            Long("user") => {
                let value = parser.value().map_err(|err| fail(err.to_string()))?;
                user = Some(string(COMMAND, value)?);
            }
            Long("project") => {
                let value = parser.value().map_err(|err| fail(err.to_string()))?;
                project = string(COMMAND, value)?;
            }
            other => return Err(unexpected(COMMAND, other)),
        }
    }
    let user = user.ok_or_else(|| fail("missing --user NAME".to_string()))?;
    Ok(Command::Keeper(KeeperArgs { user, project }))
}

fn parse_no_arguments(
    parser: &mut lexopt::Parser,
    command: &'static str,
    help: &'static str,
    then: Command,
) -> Result<Command, UsageError> {
    match parser
        .next()
        .map_err(|err| usage(command)(err.to_string()))?
    {
        None => Ok(then),
        Some(Short('h') | Long("help")) => Ok(Command::Help(help)),
        Some(other) => Err(unexpected(command, other)),
    }
}

/// `help` alone, or `help COMMAND`.
fn parse_help(parser: &mut lexopt::Parser) -> Result<Command, UsageError> {
    let fail = usage("help");
    match parser.next().map_err(|err| fail(err.to_string()))? {
        None | Some(Short('h') | Long("help")) => Ok(Command::Help(USAGE)),
        Some(Value(value)) => {
            let name = string("help", value)?;
            COMMANDS
                .iter()
                .find(|(command, _)| *command == name)
                .map(|(_, help)| Command::Help(help))
                .ok_or_else(|| fail(unknown_command(&name)))
        }
        Some(other) => Err(unexpected("help", other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Command, UsageError> {
        parse(words.iter().map(OsString::from)).map(|parsed| parsed.command)
    }

    #[test]
    fn config_comes_before_the_command() {
        let parsed = parse(
            ["--config", "/srv/p.yaml", "list"]
                .iter()
                .map(OsString::from),
        )
        .unwrap();
        assert_eq!(parsed.config, Some(PathBuf::from("/srv/p.yaml")));
        assert_eq!(parsed.command, Command::List(ListArgs { json: false }));
        assert!(parse(["--config"].iter().map(OsString::from)).is_err());
    }

    #[test]
    fn no_arguments_and_help_flags_print_the_overview() {
        for words in [&[][..], &["--help"], &["-h"], &["help"]] {
            assert_eq!(parse_words(words), Ok(Command::Help(USAGE)));
        }
    }

    #[test]
    fn every_listed_command_has_help() {
        for (command, help) in COMMANDS {
            assert_eq!(parse_words(&[command, "--help"]), Ok(Command::Help(help)));
            assert_eq!(parse_words(&["help", command]), Ok(Command::Help(help)));
            if *command != "help" {
                assert!(USAGE.contains(command), "{command} is not in the overview");
            }
        }
    }

    #[test]
    fn version_in_both_spellings() {
        assert_eq!(parse_words(&["version"]), Ok(Command::Version));
        assert_eq!(parse_words(&["--version"]), Ok(Command::Version));
        assert!(version_line().starts_with(&format!("podspawn {VERSION} (")));
    }

    #[test]
    fn unknown_commands_are_named_with_a_hint() {
        let err = parse_words(&["frobnicate"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown command 'frobnicate'; see 'podspawn --help'"
        );
        let err = parse_words(&["add-usr", "alice"]).unwrap_err();
        assert!(
            err.to_string().contains("did you mean 'add-user'?"),
            "{err}"
        );
        let err = parse_words(&["--frob"]).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown option '--frob'"),
            "{err}"
        );
    }

    #[test]
    fn unknown_flags_name_the_flag_and_the_command() {
        let err = parse_words(&["add-user", "alice", "--kye", "x"]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "add-user: unknown option '--kye'; see 'podspawn add-user --help'"
        );
        let err = parse_words(&["remove-user", "-f", "alice"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("remove-user: unknown option '-f'"),
            "{err}"
        );
        let err = parse_words(&["spawn", "--user"]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spawn: missing argument for option '--user'"),
            "{err}"
        );
        let err = parse_words(&["version", "extra"]).unwrap_err();
        assert!(err.to_string().contains("unexpected argument"), "{err}");
    }

    #[test]
    fn add_user_collects_sources_in_order() {
        let command = parse_words(&[
            "add-user",
            "sarah",
            "--github",
            "sarahcodes",
            "--key=ssh-ed25519 AAAA x",
            "--key-file",
            "/tmp/k.pub",
        ])
        .unwrap();
        assert_eq!(
            command,
            Command::AddUser(AddUserArgs {
                name: "sarah".into(),
                sources: vec![
                    KeySource::GitHub("sarahcodes".into()),
                    KeySource::Literal("ssh-ed25519 AAAA x".into()),
                    KeySource::File("/tmp/k.pub".into()),
                ],
            })
        );
    }

    #[test]
    fn add_user_needs_a_name_and_a_key_source() {
        let err = parse_words(&["add-user", "--key", "k"]).unwrap_err();
        assert!(err.message.contains("missing NAME"), "{err}");
        let err = parse_words(&["add-user", "alice"]).unwrap_err();
        assert!(err.message.contains("--key"), "{err}");
        let err = parse_words(&["add-user", "alice", "--key"]).unwrap_err();
        assert!(err.message.contains("--key"), "{err}");
        let err = parse_words(&["add-user", "alice", "bob", "--key", "k"]).unwrap_err();
        assert!(err.message.contains("unexpected argument"), "{err}");
    }

    #[test]
    fn auth_keys_takes_its_arguments_literally() {
        let command = parse_words(&["auth-keys", "-o"]).unwrap();
        assert_eq!(
            command,
            Command::AuthKeys(AuthKeysArgs {
                user: "-o".into(),
                offered: None
            })
        );
        let command = parse_words(&["auth-keys", "--help", "ssh-ed25519", "AAAA"]).unwrap();
        assert!(
            matches!(command, Command::AuthKeys(AuthKeysArgs { ref user, offered: Some(_) }) if user == "--help")
        );
        assert_eq!(
            parse_words(&["auth-keys", "--help"]),
            Ok(Command::Help(AUTH_KEYS_USAGE))
        );
        assert!(parse_words(&["auth-keys"]).is_err());
        assert!(parse_words(&["auth-keys", "a", "b"]).is_err());
    }
}
