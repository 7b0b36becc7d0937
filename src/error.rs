//! The errors an admin command can end with, and the exit code each maps to.
//!
//! Each module has its own error type carrying its context (file, key, line, argv);
//! this enum only gathers them so `main` can print one line and pick the exit code in
//! one place. (`auth-keys` has no error exit: every problem there means "no keys".)
//!
//! `spawn` is sshd's forced command: its own failures exit 125 (docker's convention,
//! distinct from any exit code the user's command could mean) and the user sees
//! `user_line`, one line they can act on, while the details go to the log.

use std::fmt;

use crate::cli::UsageError;
use crate::client::ClientError;
use crate::cmd::spawn::SpawnError;
use crate::config::ConfigError;
use crate::keys::NameError;
use crate::keys::import::ImportError;
use crate::keys::store::StoreError;
use crate::project::ProjectError;
use crate::session::SessionError;

#[derive(Debug)]
pub enum Error {
    Usage(UsageError),
    Config(ConfigError),
    Name(NameError),
    Store(StoreError),
    Import(ImportError),
    /// The caller may not do this (not root, and cannot write what it would change).
    NotPermitted(String),
    /// The command was understood but would leave things broken; the text says why.
    Refused(String),
    Session(SessionError),
    Spawn(SpawnError),
    Project(ProjectError),
    /// A laptop command's (`setup`, `connect`).
    Client(ClientError),
}

/// A command line that does not parse.
pub const EXIT_USAGE: u8 = 2;
/// Anything else that stopped an admin command.
pub const EXIT_FAILURE: u8 = 1;
/// podspawn's own failure in `spawn`.
pub const EXIT_SPAWN_FAILURE: u8 = 125;

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Spawn(_) => EXIT_SPAWN_FAILURE,
            Error::Usage(err) if err.command == Some("spawn") => EXIT_SPAWN_FAILURE,
            Error::Usage(_) => EXIT_USAGE,
            Error::Config(_)
            | Error::Name(_)
            | Error::Store(_)
            | Error::Import(_)
            | Error::NotPermitted(_)
            | Error::Refused(_)
            | Error::Session(_)
            | Error::Project(_)
            | Error::Client(_) => EXIT_FAILURE,
        }
    }

    /// The line the caller sees after "podspawn: ".
    pub fn user_line(&self) -> String {
        match self {
            Error::Spawn(err) => err.user_message(),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Error::Usage(err) => err.fmt(f),
            Error::Config(err) => err.fmt(f),
            Error::Name(err) => err.fmt(f),
            Error::Store(err) => err.fmt(f),
            Error::Import(err) => err.fmt(f),
            Error::NotPermitted(message) | Error::Refused(message) => f.write_str(message),
            Error::Session(err) => err.fmt(f),
            Error::Spawn(err) => err.fmt(f),
            Error::Project(err) => err.fmt(f),
            Error::Client(err) => err.fmt(f),
        }
    }
}

impl std::error::Error for Error {}

macro_rules! from_error {
    ($($source:ty => $variant:ident),* $(,)?) => {
        $(impl From<$source> for Error {
            fn from(err: $source) -> Self {
                Error::$variant(err)
            }
        })*
    };
}

from_error! {
    UsageError => Usage,
    ConfigError => Config,
    NameError => Name,
    StoreError => Store,
    ImportError => Import,
    SessionError => Session,
    SpawnError => Spawn,
    ProjectError => Project,
    ClientError => Client,
}
