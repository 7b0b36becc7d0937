//! What the laptop's ssh reads from podspawn: the block `podspawn setup` puts into
//! `~/.ssh/config`, and the small file `connect --prepare` writes for each `.pod`
//! name. Pure text in, text out; `cmd::setup` and `cmd::connect` do the files.
//!
//! Why two parts (measured with the OpenSSH 9.2 client): the project travels as
//! `PODSPAWN_PROJECT`, but `SetEnv` expands no `%` tokens, so one `Host *.pod` block
//! cannot say which name was asked for. A `Match … exec` command does get the name,
//! and an `Include` placed after it inside that `Match` is read after the command ran.
//! So the command (`connect --prepare '%n' %p`) writes `Host NAME.pod` with its
//! `SetEnv`, the server's `HostKeyAlias`, its port and the `ProxyCommand`, and ssh
//! includes it at once: every name works the first time, a project or a scratch
//! environment. What those files say is literal — the name as checked, the port as
//! decided — so no `%` token of ssh's reaches a shell from them.
//!
//! The block goes first in the file (ssh takes the first value it finds for an
//! option) and ends with `Host *`, so whatever followed it in the file applies to
//! every host as before. Host keys stay checked: every name of one server shares
//! that server's known_hosts entry through `HostKeyAlias`.

use std::path::Path;

use crate::project::ProjectName;

/// The first line of the block, found again by `--remove` and by a second `setup`.
pub const BEGIN: &str =
    "# >>> podspawn: written by `podspawn setup`; `podspawn setup --remove` takes it out >>>";
/// The block's last line.
pub const END: &str = "# <<< podspawn <<<";
/// In the block when `setup` made the file: `--remove` then deletes it again.
pub const MADE: &str = "# podspawn setup made this file: --remove deletes it";

/// The per-name files' suffix, which the block's `Include` matches.
pub const HOST_FILE_SUFFIX: &str = ".conf";

/// `path` as a word ssh's config and a POSIX shell both read back unchanged inside
/// quotes; a path that could end a quoted word, start a `%` token or a comment is
/// refused (setup then says so rather than write something ssh would misread).
pub fn quotable(path: &Path) -> Result<&str, String> {
    let text = path
        .to_str()
        .ok_or_else(|| format!("{} is not UTF-8", path.display()))?;
    if !path.is_absolute() {
        return Err(format!("{text} is not an absolute path"));
    }
    match text
        .chars()
        .find(|&c| c.is_control() || matches!(c, '\'' | '"' | '\\' | '%' | '$' | '`' | '#'))
    {
        Some(bad) => Err(format!(
            "{text} holds {:?}, which ssh's config cannot carry safely",
            bad.escape_debug().to_string()
        )),
        None => Ok(text),
    }
}

/// The block for `~/.ssh/config`: `binary` is the podspawn ssh runs, `hosts_dir`
/// where `connect --prepare` writes the per-name files; `made`: setup made the file.
///
/// Names holding a `'` are left out: ssh puts `%n` into shell commands, and that
/// word is single-quoted. (OpenSSH from 9.6, and Debian's 9.2, refuse such names
/// on the command line already.) The second `Match`'s `ProxyCommand` is used only
/// when the name's file did not apply (it is no podspawn name, or could not be
/// written): that `connect` can only fail, and says why. (Nothing else may go in that
/// `Match`: it applies to every `.pod` name, and a name's file sets only the options
/// it has, so a `LogLevel QUIET` there would silence ssh for every name.)
pub fn block(binary: &Path, hosts_dir: &Path, made: bool) -> Result<String, String> {
    let binary = quotable(binary)?;
    let hosts = quotable(hosts_dir)?;
    if let Some(glob) = hosts.chars().find(|c| matches!(c, '*' | '?' | '[' | ']')) {
        return Err(format!(
            "{hosts} holds '{glob}', which ssh's Include would take for a pattern"
        ));
    }
    let made = if made {
        format!("{MADE}\n")
    } else {
        String::new()
    };
    Ok(format!(
        "{BEGIN}\n\
         {made}\
         # ssh NAME.pod: project NAME, on the server ~/.podspawn/config.yaml names for it.\n\
         Match host \"*.pod,!*'*\" exec \"'{binary}' connect --prepare '%n' %p\"\n\
         \x20   Include \"{hosts}/*{HOST_FILE_SUFFIX}\"\n\
         Match host \"*.pod,!*'*\"\n\
         \x20   ProxyCommand '{binary}' connect --unprepared '%n' %p\n\
         Host *\n\
         {END}\n"
    ))
}

/// How `text` changes to hold `block`.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// It holds this very block already.
    Unchanged,
    /// The block, first, before the text as it was.
    Inserted(String),
    /// An older block (another binary's path, an older podspawn's) replaced in place.
    Replaced(String),
}

/// Where podspawn's block is in `text`: the byte range of its lines, newline included.
fn find(text: &str) -> Result<Option<std::ops::Range<usize>>, String> {
    let mut begin = None;
    let mut offset = 0;
    for (number, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        if bare == BEGIN {
            if begin.is_some() {
                return Err(format!(
                    "line {}: a second podspawn block begins before the first ends",
                    number + 1
                ));
            }
            begin = Some(offset);
        } else if bare == END {
            match begin {
                Some(start) => return Ok(Some(start..offset + line.len())),
                None => {
                    return Err(format!(
                        "line {}: podspawn's end line without its begin line",
                        number + 1
                    ));
                }
            }
        }
        offset += line.len();
    }
    match begin {
        Some(_) => Err("podspawn's begin line without its end line".to_string()),
        None => Ok(None),
    }
}

/// `text` with `block`: the same, an older block replaced, or the block put first.
/// Nothing outside the block's own lines changes.
pub fn add(text: &str, block: &str) -> Result<Added, String> {
    match find(text)? {
        Some(range) if &text[range.clone()] == block => Ok(Added::Unchanged),
        Some(range) => {
            let mut replaced = String::with_capacity(text.len() + block.len());
            replaced.push_str(&text[..range.start]);
            replaced.push_str(block);
            replaced.push_str(&text[range.end..]);
            Ok(Added::Replaced(replaced))
        }
        None => Ok(Added::Inserted(format!("{block}{text}"))),
    }
}

/// Whether `text` holds a block that says `setup` made the file.
pub fn made_by_setup(text: &str) -> Result<bool, String> {
    Ok(find(text)?.is_some_and(|range| {
        text[range]
            .lines()
            .any(|line| line.trim_end_matches('\r') == MADE)
    }))
}

/// What is left when the block comes out.
#[derive(Debug, PartialEq, Eq)]
pub struct Removed {
    /// Exactly what was there before `add` put the block first.
    pub rest: String,
    /// `setup` made the file (so with nothing left, it goes).
    pub made: bool,
}

/// `text` without podspawn's block; `None` when there is no block.
pub fn remove(text: &str) -> Result<Option<Removed>, String> {
    let made = made_by_setup(text)?;
    Ok(find(text)?.map(|range| {
        let mut rest = String::with_capacity(text.len());
        rest.push_str(&text[..range.start]);
        rest.push_str(&text[range.end..]);
        Removed { rest, made }
    }))
}

/// Where a `.pod` name's connection goes, as `connect --prepare` found it.
pub enum Target<'a> {
    /// Project `project` on the server whose host key ssh keeps as
    /// `known_hosts_name`, dialled on `port`.
    Server {
        project: &'a ProjectName,
        port: u16,
        known_hosts_name: &'a str,
    },
    /// No server for the name: only `connect` runs, and says so in one line, which
    /// is all the user sees (ssh's own lines about the closed connection would only
    /// repeat it).
    Nowhere,
}

/// The file ssh includes for `spelling`, a `.pod` name as ssh was given it (checked
/// by the caller: letters, digits, '-' and one '.'), which ssh's `Host` compares
/// case by case. `connect` hands ssh the connection itself (`ProxyUseFdpass`), so
/// no process of podspawn's stays between ssh and the server.
pub fn host_options(spelling: &str, binary: &str, target: &Target) -> String {
    let name = spelling.to_ascii_lowercase();
    let port = match target {
        Target::Server { port, .. } => *port,
        Target::Nowhere => crate::client::config::SSH_PORT,
    };
    let mut text = format!(
        "# written by `podspawn connect --prepare` on each use of {spelling}: \
         edit ~/.podspawn/config.yaml instead\n\
         Host {spelling}\n\
         \x20   ProxyCommand '{binary}' connect --fdpass {name} {port}\n\
         \x20   ProxyUseFdpass yes\n"
    );
    match target {
        Target::Server {
            project,
            known_hosts_name,
            ..
        } => text.push_str(&format!(
            "    Port {port}\n    HostKeyAlias {known_hosts_name}\n    SetEnv PODSPAWN_PROJECT={project}\n"
        )),
        Target::Nowhere => text.push_str("    LogLevel QUIET\n"),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn our_block() -> String {
        block(
            Path::new("/home/sarah/.local/bin/podspawn"),
            Path::new("/home/sarah/.podspawn/ssh"),
            false,
        )
        .unwrap()
    }

    #[test]
    fn the_block_quotes_every_word_ssh_hands_to_a_shell() {
        let block = our_block();
        assert!(block.starts_with(BEGIN));
        assert!(block.ends_with(&format!("Host *\n{END}\n")));
        assert!(
            block
                .contains("exec \"'/home/sarah/.local/bin/podspawn' connect --prepare '%n' %p\"\n")
        );
        assert!(block.contains("    Include \"/home/sarah/.podspawn/ssh/*.conf\"\n"));
        assert!(block.contains(
            "Match host \"*.pod,!*'*\"\n    ProxyCommand '/home/sarah/.local/bin/podspawn' \
             connect --unprepared '%n' %p\nHost *\n"
        ));
        // %n and %p are the only tokens, and %n is always quoted.
        assert_eq!(block.matches('%').count(), 4);
        assert_eq!(block.matches("'%n'").count(), 2);
        assert!(!block.contains("StrictHostKeyChecking"));
    }

    #[test]
    fn paths_ssh_could_misread_are_refused() {
        for path in [
            "relative/podspawn",
            "/home/o'brien/podspawn",
            "/home/x\"y/podspawn",
            "/opt/100%/podspawn",
            "/opt/a\\b",
            "/opt/$HOME",
            "/opt/a#b",
            "/opt/a\nb",
        ] {
            assert!(
                block(Path::new(path), Path::new("/h/.podspawn/ssh"), false).is_err(),
                "{path:?}"
            );
        }
        // A pattern in the Include's directory would take in other files.
        for home in ["/home/a*", "/home/a?", "/home/a[1]"] {
            let hosts = format!("{home}/.podspawn/ssh");
            assert!(block(Path::new("/bin/podspawn"), Path::new(&hosts), false).is_err());
        }
        assert!(quotable(Path::new("/Users/Sarah Smith/bin/podspawn")).is_ok());
    }

    #[test]
    fn the_block_goes_first_once_and_comes_out_to_the_very_bytes() {
        let block = our_block();
        for before in [
            "",
            "ServerAliveInterval 60\nHost work\n  User me\n",
            "# no newline at the end\nHost x",
            "Host a\r\n  User b\r\n",
        ] {
            let Added::Inserted(with) = add(before, &block).unwrap() else {
                panic!("not inserted into {before:?}");
            };
            assert!(with.starts_with(&block));
            assert!(with.ends_with(before));
            assert_eq!(add(&with, &block).unwrap(), Added::Unchanged);
            let removed = remove(&with).unwrap().unwrap();
            assert_eq!((removed.rest.as_str(), removed.made), (before, false));
            assert_eq!(remove(before).unwrap(), None);
        }
    }

    #[test]
    fn an_older_block_is_replaced_where_it_is_and_nothing_else_moves() {
        let old = block(
            Path::new("/usr/local/bin/podspawn"),
            Path::new("/h/ssh"),
            false,
        )
        .unwrap();
        let text = format!("# mine\n{old}Host z\n  Port 2\n");
        let Added::Replaced(new) = add(&text, &our_block()).unwrap() else {
            panic!("not replaced");
        };
        assert_eq!(new, format!("# mine\n{}Host z\n  Port 2\n", our_block()));
    }

    #[test]
    fn a_file_setup_made_says_so_and_goes_when_nothing_else_is_in_it() {
        let made = block(Path::new("/bin/podspawn"), Path::new("/h/ssh"), true).unwrap();
        let Added::Inserted(text) = add("", &made).unwrap() else {
            panic!("not inserted");
        };
        assert!(made_by_setup(&text).unwrap());
        assert!(!made_by_setup(&our_block()).unwrap());
        assert_eq!(
            remove(&text).unwrap(),
            Some(Removed {
                rest: String::new(),
                made: true
            })
        );
    }

    #[test]
    fn a_broken_block_is_an_error_not_a_guess() {
        let block = our_block();
        let begin_only = format!("{BEGIN}\nHost x\n");
        let end_only = format!("Host x\n{END}\n");
        let twice = format!("{BEGIN}\n{block}");
        for text in [begin_only, end_only, twice] {
            assert!(add(&text, &block).is_err(), "{text}");
            assert!(remove(&text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_names_file_sets_its_project_and_the_servers_key_name() {
        let project = ProjectName::parse("api").unwrap();
        let text = host_options(
            "API.pod",
            "/bin/podspawn",
            &Target::Server {
                project: &project,
                port: 2222,
                known_hosts_name: "[127.0.0.1]:2222",
            },
        );
        // ssh's Host compares the spelling it was given; the rest is literal.
        assert!(text.contains("\nHost API.pod\n"), "{text}");
        assert!(text.contains(
            "    ProxyCommand '/bin/podspawn' connect --fdpass api.pod 2222\n    ProxyUseFdpass yes\n"
        ));
        assert!(text.contains("    Port 2222\n    HostKeyAlias [127.0.0.1]:2222\n"));
        assert!(text.ends_with("    SetEnv PODSPAWN_PROJECT=api\n"));
        assert!(!text.contains('%'));
        let nowhere = host_options("x.pod", "/bin/podspawn", &Target::Nowhere);
        assert!(nowhere.ends_with("    LogLevel QUIET\n"));
        assert!(!nowhere.contains("SetEnv"));
    }
}
