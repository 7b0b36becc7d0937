//! podspawn: SSH in, get a container; exit, it's gone.
//!
//! `main` parses the command line, sets up logging, dispatches, and turns an error into
//! one line and an exit code. Everything else lives in the module named after it.

mod accounts;
mod agent;
mod auth_keys;
mod cleanup;
mod cli;
mod config;
mod container;
mod docker;
mod doctor;
mod engine;
mod error;
mod exec;
mod keeper;
mod keys;
mod list;
mod lock;
mod logging;
mod network;
mod privilege;
mod process;
mod router;
mod server_setup;
mod session;
mod spawn;
mod sshd_config;
mod state;
mod system;
mod users;
mod verify_image;

use std::io::Write;
use std::process::ExitCode;

use cli::Command;
use error::Error;

fn main() -> ExitCode {
    // Every file podspawn creates gets an explicit mode as well; this is the floor.
    unsafe { libc::umask(0o022) };
    let parsed = match cli::parse(std::env::args_os().skip(1)) {
        Ok(parsed) => parsed,
        Err(err) => return fail(&Error::Usage(err)),
    };
    let command = parsed.command;
    // Only `spawn` and the keeper it starts may keep a group borrowed from a setgid
    // install (they need the docker socket); everything else runs with the caller's
    // own privileges, and so may trust the caller's choice of config.
    if matches!(command, Command::Spawn(_) | Command::Keeper(_)) {
        // What they create in the shared state directory (the database, locks, the
        // log, agent directories) must stay usable by every user's spawn: group
        // read-write, nothing for others.
        unsafe { libc::umask(0o007) };
    } else {
        drop_borrowed_group();
    }
    let load = || config::load(privilege::has_borrowed_group(), parsed.config.as_deref());
    match command {
        Command::Help(text) => print_out(text),
        Command::Version => print_out(&format!("{}\n", cli::version_line())),
        Command::AuthKeys(args) => {
            run_auth_keys(load(), &args);
            ExitCode::SUCCESS
        }
        Command::Spawn(args) => run_spawn(load(), &args),
        Command::Keeper(args) => run_keeper(load(), &args),
        Command::AddUser(args) => admin(load(), |config| users::add_user(config, &args)),
        Command::RemoveUser(args) => admin(load(), |config| users::remove_user(config, &args)),
        Command::List(args) => admin(load(), |config| list::run(config, &args)),
        Command::Cleanup(args) => admin(load(), |config| cleanup::run(config, &args)),
        Command::ServerSetup(args) => admin(load(), |config| server_setup::run(config, &args)),
        Command::Doctor(args) => admin(load(), |config| doctor::run(config, &args)),
        Command::VerifyImage(args) => admin(load(), |config| verify_image::run(config, &args)),
    }
}

/// auth-keys has no failure: whatever goes wrong, sshd gets no keys and falls through
/// to its own authentication, and the reason goes to the service log.
fn run_auth_keys(loaded: config::Loaded, args: &cli::AuthKeysArgs) {
    std::panic::set_hook(Box::new(|info| {
        log::error!("auth-keys failed: {info}");
        std::process::exit(0);
    }));
    let Some(config) = service_config(loaded, "auth-keys") else {
        return;
    };
    auth_keys::run(&config, args);
}

/// spawn: the command's exit code, or 125 and one line for the user.
fn run_spawn(loaded: config::Loaded, args: &cli::SpawnArgs) -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        log::error!("spawn failed: {info}");
        eprintln!("podspawn: internal error; tell your admin");
        std::process::exit(i32::from(error::EXIT_SPAWN_FAILURE));
    }));
    let ignored = loaded.ignored;
    let result = loaded
        .result
        .map_err(spawn::SpawnError::Config)
        .and_then(|config| {
            logging::init_service(&config.log, "spawn");
            if let Some(ignored) = &ignored {
                log::warn!("{ignored}");
            }
            spawn::run(&config, args)
        });
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(err) => {
            if matches!(err, spawn::SpawnError::Config(_)) {
                // The configured log is not known: syslog then.
                logging::init_service(&config::LogConfig::default(), "spawn");
            }
            log::error!("{err}");
            fail(&Error::Spawn(err))
        }
    }
}

fn run_keeper(loaded: config::Loaded, args: &cli::KeeperArgs) -> ExitCode {
    let Some(config) = service_config(loaded, "keeper") else {
        return ExitCode::from(error::EXIT_FAILURE);
    };
    match keeper::run(&config, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("keeper of {}: {err}", args.user);
            ExitCode::from(err.exit_code())
        }
    }
}

/// The config for a command that logs to the service log, with logging set up; on
/// a broken config, the reason goes to syslog and there is no config.
fn service_config(loaded: config::Loaded, command: &'static str) -> Option<config::ServerConfig> {
    let config = match loaded.result {
        Ok(config) => {
            logging::init_service(&config.log, command);
            Some(config)
        }
        Err(err) => {
            // The configured log is not known: syslog then.
            logging::init_service(&config::LogConfig::default(), command);
            log::error!("{err}");
            None
        }
    };
    if let Some(ignored) = &loaded.ignored {
        log::warn!("{ignored}");
    }
    config
}

/// Runs an admin command with the server config and stderr logging.
fn admin(
    loaded: config::Loaded,
    run: impl FnOnce(&config::ServerConfig) -> Result<(), Error>,
) -> ExitCode {
    let result = loaded.result.map_err(Error::from).and_then(|config| {
        logging::init_admin(config.log.level.0);
        run(&config)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &Error) -> ExitCode {
    eprintln!("podspawn: {}", err.user_line());
    ExitCode::from(err.exit_code())
}

/// Prints to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> ExitCode {
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// Drops the group a setgid install lends, for good: effective and saved (a plain
/// `setgid` as a non-root caller keeps it in the saved gid, to be taken back).
fn drop_borrowed_group() {
    if let Err(err) = privilege::drop_borrowed_group() {
        eprintln!("podspawn: cannot drop the setgid group ({err}); refusing to go on");
        std::process::exit(i32::from(error::EXIT_FAILURE));
    }
}
