//! The command line's own shape: what comes before the subcommand (`--config`,
//! `--help`, `--version`), usage errors, and the small reader every subcommand
//! parses its arguments with.
//!
//! Parsing only checks shapes (which flags, how many arguments); what the values mean
//! — is this a valid user name, does the key parse — is decided by the modules that
//! own them. Help and version are outcomes like any other, not early exits.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use lexopt::prelude::*;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const COMMIT: &str = env!("PODSPAWN_COMMIT");

pub fn version_line() -> String {
    format!("podspawn {VERSION} ({COMMIT})")
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

/// What the words before the subcommand ask for.
#[derive(Debug)]
pub enum Start {
    /// `podspawn`, `podspawn --help`: the overview.
    Overview,
    /// `podspawn --version`.
    Version,
    /// A subcommand, by the name given, with the rest of the line.
    Command(String, lexopt::Parser),
}

/// The command line up to the subcommand.
#[derive(Debug)]
pub struct TopLevel {
    /// `--config PATH`, before the subcommand.
    pub config: Option<PathBuf>,
    pub start: Start,
}

pub fn parse_top(args: impl IntoIterator<Item = OsString>) -> Result<TopLevel, UsageError> {
    let mut parser = lexopt::Parser::from_args(args);
    let top = |message: String| UsageError {
        command: None,
        message,
    };
    let mut config = None;
    let start = loop {
        match parser.next().map_err(|err| top(err.to_string()))? {
            None | Some(Short('h') | Long("help")) => break Start::Overview,
            Some(Short('V') | Long("version")) => break Start::Version,
            Some(Long("config")) => {
                config = Some(PathBuf::from(
                    parser.value().map_err(|err| top(err.to_string()))?,
                ));
            }
            Some(Value(name)) => {
                let name = name
                    .into_string()
                    .map_err(|name| top(format!("unknown command {name:?}")))?;
                break Start::Command(name, parser);
            }
            Some(other) => return Err(top(format!("unknown option {}", describe(&other)))),
        }
    };
    Ok(TopLevel { config, start })
}

/// `name` is no subcommand: one line, with the nearest of `known` when it looks like
/// a typo of it.
pub fn unknown_command<'a>(name: &str, known: impl Iterator<Item = &'a str>) -> UsageError {
    let shown = name.escape_debug();
    let guess = known
        .map(|command| (edit_distance(name, command), command))
        .filter(|(distance, _)| *distance <= 2)
        .min();
    UsageError {
        command: None,
        message: match guess {
            Some((_, guess)) => format!("unknown command '{shown}' (did you mean '{guess}'?)"),
            None => format!("unknown command '{shown}'"),
        },
    }
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

/// One subcommand's arguments, read with lexopt; every error names the subcommand.
pub struct Args {
    parser: lexopt::Parser,
    command: &'static str,
}

impl Args {
    pub fn new(parser: lexopt::Parser, command: &'static str) -> Args {
        Args { parser, command }
    }

    /// The words after `command`, as a test would type them.
    #[cfg(test)]
    pub fn of(command: &'static str, words: &[&str]) -> Args {
        Args::new(
            lexopt::Parser::from_args(words.iter().map(OsString::from)),
            command,
        )
    }

    pub fn next(&mut self) -> Result<Option<lexopt::Arg<'_>>, UsageError> {
        let command = self.command;
        self.parser.next().map_err(|err| UsageError {
            command: Some(command),
            message: err.to_string(),
        })
    }

    /// The value of the option just read, as text.
    pub fn value(&mut self) -> Result<String, UsageError> {
        let value = self.value_os()?;
        self.text(value)
    }

    /// The value of the option just read, as it is.
    pub fn value_os(&mut self) -> Result<OsString, UsageError> {
        let command = self.command;
        self.parser.value().map_err(|err| UsageError {
            command: Some(command),
            message: err.to_string(),
        })
    }

    /// Every argument left, taken literally (never as options).
    pub fn rest(&mut self) -> Result<Vec<OsString>, UsageError> {
        let command = self.command;
        Ok(self
            .parser
            .raw_args()
            .map_err(|err| UsageError {
                command: Some(command),
                message: err.to_string(),
            })?
            .collect())
    }

    /// A value that must be text.
    pub fn text(&self, value: OsString) -> Result<String, UsageError> {
        value
            .into_string()
            .map_err(|value| self.error(format!("{value:?} is not valid UTF-8")))
    }

    pub fn error(&self, message: String) -> UsageError {
        UsageError {
            command: Some(self.command),
            message,
        }
    }

    /// An argument or option `command` does not take. (An associated function: the
    /// argument still borrows the reader it came from.)
    pub fn unexpected(command: &'static str, arg: &lexopt::Arg) -> UsageError {
        let message = match arg {
            Value(_) => format!("unexpected {}", describe(arg)),
            _ => format!("unknown option {}", describe(arg)),
        };
        UsageError {
            command: Some(command),
            message,
        }
    }

    /// For subcommands that take nothing but `--help`: true if help was asked for.
    pub fn nothing_but_help(&mut self) -> Result<bool, UsageError> {
        let command = self.command;
        match self.next()? {
            None => Ok(false),
            Some(Short('h') | Long("help")) => Ok(true),
            Some(other) => Err(Args::unexpected(command, &other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(words: &[&str]) -> Result<TopLevel, UsageError> {
        parse_top(words.iter().map(OsString::from))
    }

    #[test]
    fn config_comes_before_the_command() {
        let parsed = top(&["--config", "/srv/p.yaml", "list"]).unwrap();
        assert_eq!(parsed.config, Some(PathBuf::from("/srv/p.yaml")));
        assert!(matches!(parsed.start, Start::Command(ref name, _) if name == "list"));
        assert!(top(&["--config"]).is_err());
    }

    #[test]
    fn no_arguments_and_help_flags_are_the_overview() {
        for words in [&[][..], &["--help"], &["-h"]] {
            assert!(matches!(top(words).unwrap().start, Start::Overview));
        }
        assert!(matches!(top(&["--version"]).unwrap().start, Start::Version));
        assert!(version_line().starts_with(&format!("podspawn {VERSION} (")));
    }

    #[test]
    fn unknown_commands_and_options_are_named_with_a_hint() {
        let err = unknown_command("frobnicate", ["add-user", "list"].into_iter());
        assert_eq!(
            err.to_string(),
            "unknown command 'frobnicate'; see 'podspawn --help'"
        );
        let err = unknown_command("add-usr", ["add-user", "list"].into_iter());
        assert!(
            err.to_string().contains("did you mean 'add-user'?"),
            "{err}"
        );
        let err = top(&["--frob"]).unwrap_err();
        assert!(
            err.to_string().starts_with("unknown option '--frob'"),
            "{err}"
        );
    }
}
