//! Editing sshd_config for podspawn: pure text in, text out.
//!
//! podspawn adds two marked blocks and never touches a line outside them:
//!
//! - near the top, before any `Include` or `Match` (so no Match block can swallow
//!   them, and sshd's first-value-wins rule makes them podspawn's): the
//!   AuthorizedKeysCommand lines and `AcceptEnv PODSPAWN_PROJECT LANG LC_*`;
//! - at the end, the `Match Group podspawn` block that turns off what would reach
//!   the host, closed by `Match all` so that lines an admin appends later are global
//!   again.
//!
//! Planning removes podspawn's blocks and puts the wanted ones back in their places;
//! when that gives the same text, there is nothing to do. Line endings (CRLF or LF)
//! follow the file's own.

use std::fmt;

const GLOBAL_BEGIN: &str =
    "# podspawn: begin (added by podspawn server-setup; do not edit between these marks)";
const GLOBAL_END: &str = "# podspawn: end";
const MATCH_BEGIN: &str = "# podspawn: begin Match block (added by podspawn server-setup)";
const MATCH_END: &str = "# podspawn: end Match block";

/// What podspawn wants in sshd_config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The AuthorizedKeysCommand value: `<binary> [--config PATH] auth-keys %u %t %k`.
    pub command: String,
    /// The group whose members are podspawn's users.
    pub group: String,
}

impl Wanted {
    fn global_lines(&self) -> Vec<String> {
        vec![
            GLOBAL_BEGIN.to_string(),
            format!("AuthorizedKeysCommand {}", self.command),
            "AuthorizedKeysCommandUser nobody".to_string(),
            "AcceptEnv PODSPAWN_PROJECT LANG LC_*".to_string(),
            GLOBAL_END.to_string(),
        ]
    }

    /// What podspawn's users may not do. Log in any other way than with the keys
    /// podspawn prints (each forced into `podspawn spawn`): not by password or
    /// keyboard-interactive, not by a key or `cert-authority` line in their own
    /// ~/.ssh/authorized_keys, not by a certificate of a CA the host trusts — any of
    /// those would give a shell on the host. And reach the host (or its docker
    /// socket) through Unix-socket forwarding, a tunnel device, ~/.ssh/rc, or a
    /// port they open on the host with -R. (PermitUserEnvironment is not allowed in
    /// a Match block; their home is root's, so they have no ~/.ssh/environment.)
    fn match_lines(&self) -> Vec<String> {
        vec![
            MATCH_BEGIN.to_string(),
            format!("Match Group {}", self.group),
            "    AuthenticationMethods publickey".to_string(),
            "    AuthorizedKeysFile none".to_string(),
            "    TrustedUserCAKeys none".to_string(),
            "    PasswordAuthentication no".to_string(),
            "    KbdInteractiveAuthentication no".to_string(),
            "    AllowStreamLocalForwarding no".to_string(),
            "    AllowTcpForwarding local".to_string(),
            "    PermitTunnel no".to_string(),
            "    PermitUserRC no".to_string(),
            "Match all".to_string(),
            MATCH_END.to_string(),
        ]
    }
}

/// Why podspawn will not edit this file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EditError {
    /// Another AuthorizedKeysCommand is configured: sshd takes only one.
    ForeignCommand { line: usize, value: String },
    /// A podspawn mark without its partner: someone edited between the marks.
    BrokenMarks { line: usize },
}

impl fmt::Display for EditError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            EditError::ForeignCommand { line, value } => write!(
                f,
                "line {line} already sets AuthorizedKeysCommand {value}; sshd takes only one, \
                 so podspawn cannot be added beside it"
            ),
            EditError::BrokenMarks { line } => write!(
                f,
                "line {line} has a podspawn mark without its partner; restore or remove podspawn's lines by hand"
            ),
        }
    }
}

impl std::error::Error for EditError {}

/// The keyword of a config line (lower-cased), if it is not blank or a comment.
fn keyword(line: &str) -> Option<String> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let word = trimmed
        .split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .unwrap_or("");
    Some(word.to_ascii_lowercase())
}

fn value(line: &str) -> String {
    let trimmed = line.trim();
    let rest = trimmed
        .split_once(|c: char| c.is_whitespace() || c == '=')
        .map(|(_, rest)| rest)
        .unwrap_or("");
    rest.trim_start_matches(|c: char| c.is_whitespace() || c == '=')
        .to_string()
}

/// The file's lines without their endings, and the ending to use.
fn split(text: &str) -> (Vec<&str>, &'static str) {
    let ending = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let lines = text
        .split_inclusive('\n')
        .map(|line| line.trim_end_matches('\n').trim_end_matches('\r'))
        .collect();
    (lines, ending)
}

/// Where podspawn's blocks are: (global, match), each as the index range of its
/// lines from begin mark to end mark.
type Blocks = (
    Option<std::ops::Range<usize>>,
    Option<std::ops::Range<usize>>,
);

/// Finds podspawn's blocks; errors on a mark without its partner.
fn find_blocks(lines: &[&str]) -> Result<Blocks, EditError> {
    let (mut global, mut matched) = (None, None);
    let mut open: Option<(usize, &str)> = None;
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        match open {
            Some((start, end)) if trimmed == end => {
                let range = start..index + 1;
                if end == GLOBAL_END {
                    global = Some(range);
                } else {
                    matched = Some(range);
                }
                open = None;
            }
            Some(_) if [GLOBAL_BEGIN, GLOBAL_END, MATCH_BEGIN, MATCH_END].contains(&trimmed) => {
                return Err(EditError::BrokenMarks { line: index + 1 });
            }
            Some(_) => {}
            None if trimmed == GLOBAL_BEGIN && global.is_none() => open = Some((index, GLOBAL_END)),
            None if trimmed == MATCH_BEGIN && matched.is_none() => open = Some((index, MATCH_END)),
            None if [GLOBAL_BEGIN, GLOBAL_END, MATCH_BEGIN, MATCH_END].contains(&trimmed) => {
                return Err(EditError::BrokenMarks { line: index + 1 });
            }
            None => {}
        }
    }
    if let Some((line, _)) = open {
        return Err(EditError::BrokenMarks { line: line + 1 });
    }
    Ok((global, matched))
}

/// The AuthorizedKeysCommand lines of `text` outside podspawn's blocks:
/// (1-based line, value).
pub fn foreign_commands(text: &str) -> Vec<(usize, String)> {
    let (lines, _) = split(text);
    let mut inside = false;
    let mut found = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        let trimmed = line.trim();
        if trimmed == GLOBAL_BEGIN || trimmed == MATCH_BEGIN {
            inside = true;
        } else if trimmed == GLOBAL_END || trimmed == MATCH_END {
            inside = false;
        } else if !inside && keyword(line).as_deref() == Some("authorizedkeyscommand") {
            found.push((index + 1, value(line)));
        }
    }
    found
}

/// The `Include` patterns of `text`, in order.
pub fn includes(text: &str) -> Vec<String> {
    let (lines, _) = split(text);
    lines
        .iter()
        .filter(|line| keyword(line).as_deref() == Some("include"))
        .flat_map(|line| {
            value(line)
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The file as podspawn wants it, or why not. Equal to `text` when nothing is to do.
///
/// Blocks already there are rewritten in place (so a second run, or lines an admin
/// added around them, change nothing); missing ones are added in their places.
pub fn edit(text: &str, wanted: &Wanted) -> Result<String, EditError> {
    if let Some((line, value)) = foreign_commands(text).into_iter().next() {
        return Err(EditError::ForeignCommand { line, value });
    }
    let (lines, ending) = split(text);
    let (global, matched) = find_blocks(&lines)?;
    let mut out: Vec<String> = lines.iter().map(|line| line.to_string()).collect();
    let match_start = match &matched {
        Some(range) => {
            out.splice(range.clone(), wanted.match_lines());
            range.start
        }
        None => {
            while out.last().is_some_and(|line| line.trim().is_empty()) {
                out.pop();
            }
            if !out.is_empty() {
                out.push(String::new());
            }
            let start = out.len();
            out.extend(wanted.match_lines());
            start
        }
    };
    // The global block comes before the Match block, so its indices still hold.
    match global {
        Some(range) => {
            out.splice(range, wanted.global_lines());
        }
        None => {
            // Before the first directive: after the file's opening comments, before
            // any Include or Match.
            let at = out[..match_start]
                .iter()
                .position(|line| keyword(line).is_some())
                .unwrap_or(match_start);
            let mut insert = Vec::new();
            if at > 0 && !out[at - 1].trim().is_empty() {
                insert.push(String::new());
            }
            insert.extend(wanted.global_lines());
            if at < out.len() && !out[at].trim().is_empty() {
                insert.push(String::new());
            }
            out.splice(at..at, insert);
        }
    }
    let mut result = out.join(ending);
    result.push_str(ending);
    Ok(result)
}

/// A small line diff of an edit that only inserts and removes podspawn's blocks:
/// `-` and `+` lines with one line of context, for `server-setup --dry-run`.
pub fn diff(before: &str, after: &str) -> String {
    let (old, _) = split(before);
    let (new, _) = split(after);
    // Longest common subsequence, fine for config-file sizes.
    let (n, m) = (old.len(), new.len());
    let mut table = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            table[i][j] = if old[i] == new[j] {
                table[i + 1][j + 1] + 1
            } else {
                table[i + 1][j].max(table[i][j + 1])
            };
        }
    }
    let mut ops: Vec<(char, &str)> = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && old[i] == new[j] {
            ops.push((' ', old[i]));
            i += 1;
            j += 1;
        } else if j < m && (i == n || table[i][j + 1] >= table[i + 1][j]) {
            ops.push(('+', new[j]));
            j += 1;
        } else {
            ops.push(('-', old[i]));
            i += 1;
        }
    }
    let changed: Vec<bool> = ops.iter().map(|(op, _)| *op != ' ').collect();
    let mut out = String::new();
    let mut skipped = false;
    for (index, (op, line)) in ops.iter().enumerate() {
        let near = changed[index.saturating_sub(1)..(index + 2).min(ops.len())]
            .iter()
            .any(|c| *c);
        if near {
            if skipped {
                out.push_str("@@\n");
                skipped = false;
            }
            out.push_str(&format!("{op}{line}\n"));
        } else {
            skipped = true;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wanted() -> Wanted {
        Wanted {
            command: "/usr/local/bin/podspawn auth-keys %u %t %k".into(),
            group: "podspawn".into(),
        }
    }

    const DEBIAN: &str = "\n# This is the sshd server system-wide configuration file.\n\nInclude /etc/ssh/sshd_config.d/*.conf\n\n#Port 22\nKbdInteractiveAuthentication no\nUsePAM yes\nX11Forwarding yes\nAcceptEnv LANG LC_*\nSubsystem\tsftp\t/usr/lib/openssh/sftp-server\n";

    #[test]
    fn global_lines_go_before_the_first_directive_and_the_match_block_last() {
        let edited = edit(DEBIAN, &wanted()).unwrap();
        let lines: Vec<&str> = edited.lines().collect();
        let command = lines
            .iter()
            .position(|l| l.starts_with("AuthorizedKeysCommand /usr"))
            .unwrap();
        let include = lines.iter().position(|l| l.starts_with("Include")).unwrap();
        assert!(command < include, "{edited}");
        assert!(
            lines[1].starts_with("# This is the sshd"),
            "the header comment stays first:\n{edited}"
        );
        let block = wanted().match_lines();
        let tail: Vec<&str> = lines
            .iter()
            .rev()
            .take(block.len())
            .rev()
            .copied()
            .collect();
        assert_eq!(tail, block, "{edited}");
        // Everything the admin had is still there, in order.
        let original: Vec<&str> = DEBIAN.lines().filter(|l| !l.trim().is_empty()).collect();
        let kept: Vec<&str> = edited.lines().filter(|l| original.contains(l)).collect();
        assert_eq!(kept, original);
    }

    #[test]
    fn editing_twice_changes_nothing() {
        let once = edit(DEBIAN, &wanted()).unwrap();
        assert_eq!(edit(&once, &wanted()).unwrap(), once);
        // Also after an admin added lines after podspawn's block.
        let appended = format!("{once}PermitRootLogin no\n");
        assert_eq!(edit(&appended, &wanted()).unwrap(), appended);
    }

    #[test]
    fn the_contrib_snippet_holds_every_line_server_setup_writes() {
        let snippet = include_str!("../contrib/sshd_config.snippet");
        let wanted = wanted();
        for line in wanted.global_lines().iter().chain(&wanted.match_lines()) {
            if !line.starts_with("# podspawn:") {
                assert!(snippet.lines().any(|l| l == line), "{line:?} missing");
            }
        }
    }

    #[test]
    fn an_older_match_block_is_rewritten_to_the_current_one() {
        // What server-setup wrote before podspawn's users were kept to its keys.
        let older = format!(
            "Port 22\n\n{MATCH_BEGIN}\nMatch Group podspawn\n    AllowStreamLocalForwarding no\n\
             AllowTcpForwarding local\n    PermitTunnel no\n    PermitUserRC no\nMatch all\n{MATCH_END}\n"
        );
        let edited = edit(&older, &wanted()).unwrap();
        for line in [
            "    AuthenticationMethods publickey",
            "    AuthorizedKeysFile none",
            "    TrustedUserCAKeys none",
            "    PasswordAuthentication no",
            "    KbdInteractiveAuthentication no",
        ] {
            assert_eq!(edited.matches(line).count(), 1, "{line}:\n{edited}");
        }
        assert_eq!(edited.matches("Match Group podspawn").count(), 1);
        assert_eq!(edit(&edited, &wanted()).unwrap(), edited);
    }

    #[test]
    fn a_changed_path_replaces_podspawns_blocks_only() {
        let once = edit(DEBIAN, &wanted()).unwrap();
        let moved = Wanted {
            command: "/opt/podspawn --config /srv/p.yaml auth-keys %u %t %k".into(),
            ..wanted()
        };
        let twice = edit(&once, &moved).unwrap();
        assert_eq!(
            twice.matches("AuthorizedKeysCommand ").count(),
            1,
            "{twice}"
        );
        assert!(twice.contains("AuthorizedKeysCommand /opt/podspawn --config /srv/p.yaml"));
        assert_eq!(twice.matches("Match Group podspawn").count(), 1);
        assert_eq!(
            twice.replace(
                "/opt/podspawn --config /srv/p.yaml",
                "/usr/local/bin/podspawn"
            ),
            once
        );
    }

    #[test]
    fn existing_match_blocks_keep_their_lines() {
        let text = "Port 22\nMatch User admin\n    PasswordAuthentication yes\n";
        let edited = edit(text, &wanted()).unwrap();
        let lines: Vec<&str> = edited.lines().collect();
        let command = lines
            .iter()
            .position(|l| l.starts_with("AuthorizedKeysCommand"))
            .unwrap();
        let first_match = lines
            .iter()
            .position(|l| l.starts_with("Match User admin"))
            .unwrap();
        assert!(
            command < first_match,
            "global lines must not land in a Match block:\n{edited}"
        );
        let ours = lines
            .iter()
            .position(|l| l.starts_with("Match Group"))
            .unwrap();
        assert!(ours > first_match);
        assert_eq!(lines[first_match + 1], "    PasswordAuthentication yes");
    }

    #[test]
    fn crlf_files_stay_crlf_and_a_missing_final_newline_is_fine() {
        let crlf = "Port 22\r\nUsePAM yes";
        let edited = edit(crlf, &wanted()).unwrap();
        assert!(
            !edited.replace("\r\n", "").contains('\n'),
            "a bare LF crept in: {edited:?}"
        );
        assert!(edited.contains("UsePAM yes\r\n"));
        assert!(edited.ends_with("# podspawn: end Match block\r\n"));
        assert_eq!(edit(&edited, &wanted()).unwrap(), edited);
        let no_newline = edit("Port 22", &wanted()).unwrap();
        assert!(no_newline.contains("Port 22\n"));
    }

    #[test]
    fn an_empty_file_gets_both_blocks() {
        let edited = edit("", &wanted()).unwrap();
        assert!(edited.starts_with(GLOBAL_BEGIN));
        assert!(edited.ends_with(&format!("{MATCH_END}\n")));
    }

    #[test]
    fn a_foreign_authorized_keys_command_is_refused_with_its_line() {
        let text = "Port 22\n  authorizedkeyscommand=/usr/bin/sss_ssh_authorizedkeys %u\n";
        assert_eq!(
            edit(text, &wanted()),
            Err(EditError::ForeignCommand {
                line: 2,
                value: "/usr/bin/sss_ssh_authorizedkeys %u".into()
            })
        );
        // A commented one is not a setting.
        assert!(edit("#AuthorizedKeysCommand none\n", &wanted()).is_ok());
    }

    #[test]
    fn a_half_removed_block_is_refused() {
        let once = edit("Port 22\n", &wanted()).unwrap();
        let broken = once.replace(GLOBAL_END, "");
        assert!(matches!(
            edit(&broken, &wanted()),
            Err(EditError::BrokenMarks { .. })
        ));
    }

    #[test]
    fn includes_are_listed() {
        assert_eq!(
            includes("Include /etc/ssh/sshd_config.d/*.conf\n#Include /x\ninclude a b\n"),
            ["/etc/ssh/sshd_config.d/*.conf", "a", "b"]
        );
    }

    #[test]
    fn the_diff_shows_only_podspawns_lines_with_context() {
        let edited = edit("Port 22\nUsePAM yes\n", &wanted()).unwrap();
        let diff = diff("Port 22\nUsePAM yes\n", &edited);
        assert!(
            diff.contains("+AuthorizedKeysCommand /usr/local/bin/podspawn auth-keys %u %t %k\n"),
            "{diff}"
        );
        assert!(diff.contains(" Port 22\n"), "{diff}");
        assert!(!diff.lines().any(|line| line.starts_with('-')), "{diff}");
        assert_eq!(diff.matches("+Match Group podspawn").count(), 1);
    }
}
