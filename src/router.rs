//! What a connection runs in its container, decided from `SSH_ORIGINAL_COMMAND` and
//! whether sshd allocated a terminal. Pure: no processes, no environment.
//!
//! The command is bytes, as sshd passes it: a file name in `scp -t` or `rsync` need
//! not be UTF-8, and such a command is still a command, never a login shell.
//!
//! | `SSH_ORIGINAL_COMMAND`                         | runs                        |
//! | ---------------------------------------------- | --------------------------- |
//! | unset or empty                                 | login shell (PTY if given)  |
//! | `internal-sftp`, or a path ending `sftp-server` | the image's sftp-server     |
//! | anything else (scp, rsync, commands)           | `sh -c "<command>"`         |

use std::ffi::{OsStr, OsString};

/// What to run for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    pub program: Program,
    /// Attach a terminal (`docker exec -t`): only when sshd allocated one, and never
    /// for sftp, whose byte stream a terminal would mangle.
    pub tty: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// The user's login shell.
    Shell,
    /// The SFTP server, found in the image at its usual paths.
    Sftp,
    /// `sh -c <command>`, exactly as the client sent it.
    Command(OsString),
}

impl Program {
    /// What kind of session this is, as the audit log says: `shell`, `sftp`, `scp`,
    /// `rsync`, or `command` for anything else.
    pub fn kind(&self) -> &'static str {
        match self {
            Program::Shell => "shell",
            Program::Sftp => "sftp",
            Program::Command(command) => {
                let bytes = command.as_encoded_bytes();
                if bytes.starts_with(b"scp ") {
                    "scp"
                } else if bytes.starts_with(b"rsync --server") {
                    "rsync"
                } else {
                    "command"
                }
            }
        }
    }
}

pub fn route(original_command: Option<&OsStr>, tty: bool) -> Routed {
    let program = match original_command {
        None => Program::Shell,
        Some(command) if command.is_empty() => Program::Shell,
        Some(command) if command.to_str().is_some_and(is_sftp) => Program::Sftp,
        Some(command) => Program::Command(command.to_os_string()),
    };
    let tty = tty && program != Program::Sftp;
    Routed { program, tty }
}

/// sshd sets `SSH_ORIGINAL_COMMAND` to the configured sftp subsystem when a client
/// asks for it: `internal-sftp` or a path such as `/usr/lib/openssh/sftp-server`,
/// possibly with flags. Anything more than one line, or whose first word merely
/// contains "sftp", is a command like any other.
fn is_sftp(command: &str) -> bool {
    if command.chars().any(|c| c.is_control() && c != '\t') {
        return false;
    }
    let program = command.split_whitespace().next().unwrap_or("");
    program == "internal-sftp" || program == "sftp-server" || program.ends_with("/sftp-server")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(command: Option<&str>) -> Program {
        route(command.map(OsStr::new), false).program
    }

    fn command(text: &str) -> Program {
        Program::Command(text.into())
    }

    #[test]
    fn a_command_that_is_not_utf8_is_a_command_byte_for_byte() {
        use std::os::unix::ffi::OsStrExt;
        let bytes = OsStr::from_bytes(b"scp -t 'caf\xe9.txt'");
        assert_eq!(
            route(Some(bytes), false).program,
            Program::Command(bytes.to_os_string())
        );
        let sftp_looking = OsStr::from_bytes(b"internal-sftp \xff");
        assert_eq!(
            route(Some(sftp_looking), true).program,
            Program::Command(sftp_looking.to_os_string())
        );
    }

    #[test]
    fn no_command_is_a_login_shell_with_or_without_a_terminal() {
        assert_eq!(
            route(None, true),
            Routed {
                program: Program::Shell,
                tty: true
            }
        );
        assert_eq!(
            route(Some(OsStr::new("")), true),
            Routed {
                program: Program::Shell,
                tty: true
            }
        );
        assert_eq!(
            route(None, false),
            Routed {
                program: Program::Shell,
                tty: false
            }
        );
    }

    #[test]
    fn sftp_subsystems_go_to_the_sftp_server() {
        for text in [
            "internal-sftp",
            "/usr/lib/openssh/sftp-server",
            "/usr/libexec/openssh/sftp-server",
            "/usr/lib/openssh/sftp-server -e -l INFO",
            "internal-sftp -f AUTH",
            "sftp-server",
            "  internal-sftp  ",
            "\tinternal-sftp",
        ] {
            assert_eq!(program(Some(text)), Program::Sftp, "{text:?}");
        }
    }

    #[test]
    fn sftp_never_gets_a_terminal() {
        assert_eq!(
            route(Some(OsStr::new("internal-sftp")), true),
            Routed {
                program: Program::Sftp,
                tty: false
            }
        );
    }

    #[test]
    fn paths_that_merely_mention_sftp_are_commands() {
        for text in [
            "/opt/sftp-server-wrapper",
            "cat /usr/lib/openssh/sftp-server",
            "echo internal-sftp",
            "sftp-server; rm -rf ~",
            "\"internal-sftp\"",
            "internal-sftp\nrm -rf ~",
            "internal-sftpx",
            "/usr/bin/sftp",
        ] {
            assert_eq!(program(Some(text)), command(text), "{text:?}");
        }
    }

    #[test]
    fn everything_else_is_passed_to_sh_c_untouched() {
        for text in [
            "scp -t /workspace",
            "scp -f 'odd name.txt'",
            "rsync --server -vlogDtprze.iLsfxCIvu . src/",
            "exit 42",
            "  leading spaces",
            " ",
            "echo \"quoted $HOME\" 'single' `tick`",
            "printf 'a\\nb'\nline two",
            "cd /tmp && make test",
        ] {
            assert_eq!(program(Some(text)), command(text), "{text:?}");
        }
    }

    #[test]
    fn commands_keep_the_terminal_they_asked_for() {
        assert_eq!(
            route(Some(OsStr::new("top")), true),
            Routed {
                program: command("top"),
                tty: true
            }
        );
        assert_eq!(
            route(Some(OsStr::new("ls")), false),
            Routed {
                program: command("ls"),
                tty: false
            }
        );
    }

    #[test]
    fn kinds_name_what_the_client_runs() {
        let kind = |command: Option<&str>| route(command.map(OsStr::new), false).program.kind();
        assert_eq!(kind(None), "shell");
        assert_eq!(kind(Some("/usr/lib/openssh/sftp-server")), "sftp");
        assert_eq!(kind(Some("scp -t /tmp")), "scp");
        assert_eq!(kind(Some("rsync --server -vlogDtpre.iLsfxC . /x")), "rsync");
        assert_eq!(kind(Some("make test")), "command");
    }
}
