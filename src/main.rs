//! podspawn: SSH in, get a container; exit, it's gone.
//!
//! `main` parses what comes before the subcommand, picks it (`cmd`), sets privileges,
//! runs it, and turns its outcome or error into output and an exit code. Everything
//! else lives in the module named after it.

mod accounts;
mod agent;
mod audit;
mod cli;
mod client;
mod cmd;
mod config;
mod container;
mod docker;
mod engine;
mod error;
mod exec;
mod files;
mod host;
mod image;
mod isolation;
mod keys;
mod lock;
mod logging;
mod network;
mod podfile;
mod privilege;
mod process;
mod progress;
mod project;
mod router;
mod session;
mod sha256;
mod sshd_config;
mod state;
mod system;
mod user_settings;
mod yaml;

use std::io::Write;
use std::process::ExitCode;

use cli::Start;
use cmd::{Context, Outcome};
use error::Error;

fn main() -> ExitCode {
    // Every file podspawn creates gets an explicit mode as well; this is the floor.
    unsafe { libc::umask(0o022) };
    let top = match cli::parse_top(std::env::args_os().skip(1)) {
        Ok(top) => top,
        Err(err) => return fail(&Error::Usage(err)),
    };
    let (name, parser) = match top.start {
        Start::Overview => return print_out(cmd::OVERVIEW),
        Start::Version => return print_out(&format!("{}\n", cli::version_line())),
        Start::Command(name, parser) => (name, parser),
    };
    let Some(command) = cmd::find(&name) else {
        return fail(&Error::Usage(cli::unknown_command(&name, cmd::listed())));
    };
    if command.keeps_group {
        // What spawn and the keeper create in the shared state directory (the
        // database, locks, the log) must stay usable by every user's spawn: group
        // read-write, nothing for others.
        unsafe { libc::umask(0o007) };
    } else if let Err(err) = privilege::drop_borrowed_group() {
        // Everything else runs with the caller's own privileges, and so may trust
        // the caller's choice of config.
        eprintln!("podspawn: cannot drop the setgid group ({err}); refusing to go on");
        return ExitCode::from(error::EXIT_FAILURE);
    }
    let mut args = cli::Args::new(parser, command.name);
    let context = Context { config: top.config };
    match (command.run)(&mut args, &context) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Print(text)) => print_out(&text),
        Ok(Outcome::Exit(code)) => ExitCode::from(code),
        Err(err) => fail(&err),
    }
}

fn fail(err: &Error) -> ExitCode {
    // One line, whatever a repo, a file or the engine put into the message.
    eprintln!("podspawn: {}", logging::one_safe_line(&err.user_line()));
    ExitCode::from(err.exit_code())
}

/// Prints to stdout; a reader that went away (`| head`) is not an error.
fn print_out(text: &str) -> ExitCode {
    let _ = std::io::stdout().write_all(text.as_bytes());
    ExitCode::SUCCESS
}
