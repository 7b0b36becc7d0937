//! podspawn: SSH in, get a container; exit, it's gone.
//!
//! `main` parses the command line, sets up logging, dispatches, and turns an error into
//! one line and an exit code. Everything else lives in the module named after it.

mod auth_keys;
mod cli;
mod config;
mod error;
mod keys;
mod logging;
mod privilege;
mod users;

use std::io::Write;
use std::process::ExitCode;

use cli::Command;
use error::Error;

fn main() -> ExitCode {
    // Every file podspawn creates gets an explicit mode as well; this is the floor.
    unsafe { libc::umask(0o022) };
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(err) => return fail(&Error::Usage(err)),
    };
    // Only `spawn` (a later command) may keep a group borrowed from a setgid install;
    // everything else runs with the caller's own privileges.
    drop_borrowed_group();
    match command {
        Command::Help(text) => print_out(text),
        Command::Version => print_out(&format!("{}\n", cli::version_line())),
        Command::AuthKeys(args) => {
            run_auth_keys(&args);
            ExitCode::SUCCESS
        }
        Command::AddUser(args) => admin(|config| users::add_user(config, &args)),
        Command::RemoveUser(args) => admin(|config| users::remove_user(config, &args)),
    }
}

/// auth-keys has no failure: whatever goes wrong, sshd gets no keys and falls through
/// to its own authentication, and the reason goes to the service log.
fn run_auth_keys(args: &cli::AuthKeysArgs) {
    std::panic::set_hook(Box::new(|info| {
        log::error!("auth-keys failed: {info}");
        std::process::exit(0);
    }));
    let path = config::locate(!privilege::has_borrowed_group());
    match config::load(&path) {
        Ok(config) => {
            logging::init_service(&config.log, "auth-keys");
            auth_keys::run(&config, args);
        }
        Err(err) => {
            logging::init_service(&config::LogConfig::default(), "auth-keys");
            log::error!("no keys for {}: {err}", args.user);
        }
    }
}

/// Runs an admin command with the server config and stderr logging.
fn admin(run: impl FnOnce(&config::ServerConfig) -> Result<(), Error>) -> ExitCode {
    let path = config::locate(!privilege::has_borrowed_group());
    let result = config::load(&path).map_err(Error::from).and_then(|config| {
        logging::init_admin(config.log.level.0);
        run(&config)
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&err),
    }
}

fn fail(err: &Error) -> ExitCode {
    eprintln!("podspawn: {err}");
    ExitCode::from(err.exit_code())
}

/// Prints to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> ExitCode {
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

fn drop_borrowed_group() {
    if privilege::has_borrowed_group() {
        let real = unsafe { libc::getgid() };
        if unsafe { libc::setgid(real) } != 0 {
            eprintln!("podspawn: cannot drop the setgid group; refusing to go on");
            std::process::exit(i32::from(error::EXIT_FAILURE));
        }
    }
}
