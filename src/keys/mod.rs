//! User names and SSH public keys: what podspawn accepts, and the authorized_keys lines
//! it hands to sshd.
//!
//! Everything here is pure: validation and rendering, no files. A name or key that gets
//! past these checks is safe to put in a path, in a shell word (sshd runs forced
//! commands through the user's shell) and in an authorized_keys line.

pub mod import;
pub mod store;

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;

/// A user name podspawn will use in paths, container names and forced commands.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

/// The longest user name accepted (useradd's limit on Debian).
pub const MAX_USER_NAME: usize = 32;

impl UserName {
    /// Accepts a conservative Unix name: a lower-case letter or `_`, then lower-case
    /// letters, digits, `_` and `-`, at most 32 in all. No dots (so no `..`), no
    /// slashes, no spaces, no upper case, no leading `-`. `root` is refused too: its
    /// logins must never be routed into a container.
    pub fn parse(name: &str) -> Result<UserName, NameError> {
        let shown = || name.escape_debug().to_string();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.chars().count() > MAX_USER_NAME {
            return Err(NameError::TooLong(name.chars().count()));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(NameError::BadCharacter(shown(), bad));
        }
        if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
            return Err(NameError::BadStart(shown()));
        }
        if name == "root" {
            return Err(NameError::Root);
        }
        Ok(UserName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NameError {
    Empty,
    TooLong(usize),
    BadCharacter(String, char),
    BadStart(String),
    Root,
}

impl fmt::Display for NameError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            NameError::Empty => write!(f, "user name is empty"),
            NameError::TooLong(length) => write!(
                f,
                "user name is {length} characters long; the limit is {MAX_USER_NAME}"
            ),
            NameError::BadCharacter(name, bad) => write!(
                f,
                "user name \"{name}\" contains {:?}; use lower-case letters, digits, '_' and '-'",
                bad
            ),
            NameError::BadStart(name) => write!(
                f,
                "user name \"{name}\" must start with a lower-case letter or '_'"
            ),
            NameError::Root => write!(f, "user name \"root\" cannot be a podspawn user"),
        }
    }
}

impl std::error::Error for NameError {}

/// The key types OpenSSH accepts in authorized_keys (DSA is left out: OpenSSH no
/// longer accepts it by default).
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// The longest key line accepted; a 16384-bit RSA key is about 2,800 characters.
const MAX_KEY_LINE: usize = 16 * 1024;

/// One public key: type, base64 body and an optional comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    kind: String,
    body: String,
    blob: Vec<u8>,
    comment: Option<String>,
}

impl PublicKey {
    /// Parses one line in `authorized_keys` / `.pub` format without options.
    pub fn parse(line: &str) -> Result<PublicKey, KeyError> {
        let line = line.trim_matches(|c: char| c == ' ' || c == '\t' || c == '\r' || c == '\n');
        if line.is_empty() {
            return Err(KeyError::Empty);
        }
        if line.len() > MAX_KEY_LINE {
            return Err(KeyError::TooLong(line.len()));
        }
        if line.starts_with("-----BEGIN") {
            return Err(KeyError::PrivateKey);
        }
        let (kind, rest) = line.split_once([' ', '\t']).unwrap_or((line, ""));
        if !KEY_TYPES.contains(&kind) {
            // `no-pty ssh-ed25519 AAAA…` or `command="…" ssh-rsa …`: options first.
            let has_key_later = rest
                .split([' ', '\t'])
                .any(|field| KEY_TYPES.contains(&field));
            if has_key_later || kind.contains('=') || kind.contains(',') {
                return Err(KeyError::HasOptions);
            }
            return Err(KeyError::UnknownType(kind.escape_debug().to_string()));
        }
        let rest = rest.trim_start_matches([' ', '\t']);
        let (body, comment) = rest.split_once([' ', '\t']).unwrap_or((rest, ""));
        let comment = comment.trim_matches([' ', '\t']);
        if body.is_empty() {
            return Err(KeyError::NoBody);
        }
        let blob = base64_decode(body).ok_or(KeyError::BadBase64)?;
        match blob_key_type(&blob) {
            Some(inner) if inner == kind.as_bytes() => {}
            Some(inner) => {
                return Err(KeyError::TypeMismatch {
                    line_says: kind.to_string(),
                    key_is: String::from_utf8_lossy(inner).escape_debug().to_string(),
                });
            }
            None => return Err(KeyError::BadBlob),
        }
        if comment.chars().any(char::is_control) {
            return Err(KeyError::ControlCharacters);
        }
        Ok(PublicKey {
            kind: kind.to_string(),
            body: body.to_string(),
            blob,
            comment: (!comment.is_empty()).then(|| comment.to_string()),
        })
    }

    /// True when both are the same key, whatever their comments say.
    pub fn same_key(&self, other: &PublicKey) -> bool {
        self.blob == other.blob
    }

    /// True when this is the key sshd offers as `%k` (its base64 body).
    pub fn matches_offered(&self, offered_body: &str) -> bool {
        base64_decode(offered_body).is_some_and(|blob| blob == self.blob)
    }

    /// The key in its canonical one-line form: `type body [comment]`.
    pub fn to_line(&self) -> String {
        match &self.comment {
            Some(comment) => format!("{} {} {}", self.kind, self.body, comment),
            None => format!("{} {}", self.kind, self.body),
        }
    }

    /// The authorized_keys line sshd gets for this key: the key wrapped in a forced
    /// `spawn` command, `restrict`ed, with only podspawn's options re-enabled. TCP
    /// forwarding is enabled only towards `forward_to`, the addresses the user's
    /// containers may hold (`permitopen` also bounds `-D`); with none, not at all.
    pub fn authorized_line(
        &self,
        spawn: &SpawnCommand,
        user: &UserName,
        forward_to: &[Ipv4Addr],
    ) -> String {
        let forwarding = if forward_to.is_empty() {
            "X11-forwarding".to_string()
        } else {
            // Written in place: sshd runs this for every key offered, and a line may
            // name dozens of addresses.
            use std::fmt::Write;
            let mut options = String::with_capacity(32 + 32 * forward_to.len());
            options.push_str("port-forwarding,X11-forwarding");
            for address in forward_to {
                let _ = write!(options, ",permitopen=\"{address}:*\"");
            }
            options
        };
        format!(
            "command=\"{} spawn --user {user}\",restrict,pty,agent-forwarding,{forwarding} {}",
            spawn.0,
            self.to_line()
        )
    }
}

/// Why a key line was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    Empty,
    TooLong(usize),
    PrivateKey,
    HasOptions,
    UnknownType(String),
    NoBody,
    BadBase64,
    BadBlob,
    TypeMismatch { line_says: String, key_is: String },
    ControlCharacters,
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            KeyError::Empty => write!(f, "the key is empty"),
            KeyError::TooLong(length) => {
                write!(
                    f,
                    "the key line is {length} bytes; the limit is {MAX_KEY_LINE}"
                )
            }
            KeyError::PrivateKey => {
                write!(
                    f,
                    "this is a private key; give the public one (the .pub file)"
                )
            }
            KeyError::HasOptions => write!(
                f,
                "the key line carries authorized_keys options; give the bare key \
                 (podspawn adds its own options)"
            ),
            KeyError::UnknownType(kind) => write!(
                f,
                "unknown key type \"{kind}\" (expected one of {})",
                KEY_TYPES.join(", ")
            ),
            KeyError::NoBody => write!(f, "the key has a type but no base64 body"),
            KeyError::BadBase64 => write!(f, "the key body is not valid base64"),
            KeyError::BadBlob => write!(f, "the key body does not hold an SSH public key"),
            KeyError::TypeMismatch { line_says, key_is } => write!(
                f,
                "the line says {line_says} but the key body is a {key_is} key"
            ),
            KeyError::ControlCharacters => write!(f, "the key comment contains control characters"),
        }
    }
}

impl std::error::Error for KeyError {}

/// The start of the forced command: the podspawn binary's absolute path, and
/// `--config PATH` when the server config is not at its default place.
///
/// sshd runs a forced command through the user's shell, so each path must be one
/// shell word that needs no quoting, and must not break out of `command="…"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnCommand(String);

impl SpawnCommand {
    pub fn new(binary: &Path, config: Option<&Path>) -> Result<SpawnCommand, String> {
        let binary = binary
            .to_str()
            .ok_or("the podspawn path is not valid UTF-8")?;
        // After an upgrade replaced the binary, /proc/self/exe of a running old one
        // ends in " (deleted)"; the path itself is still the one to run.
        let binary = binary.strip_suffix(" (deleted)").unwrap_or(binary);
        let mut command = plain_path("podspawn path", binary)?.to_string();
        if let Some(config) = config {
            let config = config
                .to_str()
                .ok_or("the config path is not valid UTF-8")?;
            command = format!("{command} --config {}", plain_path("config path", config)?);
        }
        Ok(SpawnCommand(command))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `path`, if it is absolute and needs no shell quoting.
fn plain_path<'a>(what: &str, path: &'a str) -> Result<&'a str, String> {
    if !path.starts_with('/') {
        return Err(format!("the {what} {path:?} is not absolute"));
    }
    if let Some(bad) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-' | '+')))
    {
        return Err(format!(
            "the {what} {path:?} contains {bad:?}, which cannot go into a forced command; \
             use a plain path such as /usr/local/bin/podspawn"
        ));
    }
    Ok(path)
}

/// The key type named inside a key blob (its first SSH string).
fn blob_key_type(blob: &[u8]) -> Option<&[u8]> {
    let length = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let kind = blob.get(4..4usize.checked_add(length)?)?;
    // A type name alone is not a key: something must follow it.
    (blob.len() > 4 + length).then_some(kind)
}

/// Standard base64 with `=` padding, as OpenSSH writes it; anything else is refused.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    fn value(byte: u8) -> Option<u32> {
        match byte {
            b'A'..=b'Z' => Some(u32::from(byte - b'A')),
            b'a'..=b'z' => Some(u32::from(byte - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(byte - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes = text.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return None;
    }
    let padding = bytes.iter().rev().take_while(|&&b| b == b'=').count();
    if padding > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let last_chunk = bytes.len() / 4 - 1;
    for (index, chunk) in bytes.chunks(4).enumerate() {
        let pad_here = if index == last_chunk { padding } else { 0 };
        let mut group: u32 = 0;
        for (position, &byte) in chunk.iter().enumerate() {
            let sextet = if position >= 4 - pad_here {
                0
            } else {
                value(byte)?
            };
            group = (group << 6) | sextet;
        }
        let decoded = [(group >> 16) as u8, (group >> 8) as u8, group as u8];
        out.extend_from_slice(&decoded[..3 - pad_here]);
    }
    Some(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Public keys made with ssh-keygen for these tests (the sk- one assembled by
    /// hand in the same wire format, since making one needs a FIDO token).
    pub const ED25519: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMNNt3bM09dqR+/DvKQyiVrHR8IJJibdSYGgZnFLKgx/ alice@laptop";
    pub const ED25519_OTHER: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIM6ChpQjGRPmIDcxl+jhYV0I5egsFIH0sMe5WArnLVSD";
    pub const ECDSA: &str = "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTYAAAAIbmlzdHAyNTYAAABBBGuk26OGgTnkw95Znl3hknkkHyj4X77sbUjxYLz2Phtq/XkXcQPwy4gGu5WaQGgh53C3+5zMNCVIZKkoqehc7Js= bob@desk";
    pub const SK_ED25519: &str = "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29tAAAAIGn1aVYSxRjH/zMzAiLoQSceJjptKRFItluipYz65s6PAAAABHNzaDo= yubikey";

    #[test]
    fn reasonable_names_are_accepted() {
        for name in ["alice", "_svc", "bob-2", "a", "deploy_bot", &"a".repeat(32)] {
            assert_eq!(UserName::parse(name).unwrap().as_str(), name);
        }
    }

    #[test]
    fn hostile_names_are_refused_with_a_reason() {
        let cases: &[(&str, &str)] = &[
            ("", "empty"),
            ("../etc", "contains '.'"),
            ("root/x", "contains '/'"),
            ("-o", "must start"),
            ("9lives", "must start"),
            ("Alice", "contains 'A'"),
            ("al ice", "contains ' '"),
            ("alice\n", "contains '\\n'"),
            ("ålice", "contains 'å'"),
            ("a.b", "contains '.'"),
            ("..", "contains '.'"),
            ("root", "root"),
        ];
        for (name, reason) in cases {
            let message = UserName::parse(name).unwrap_err().to_string();
            assert!(message.contains(reason), "{name:?}: {message}");
        }
        let long = "a".repeat(200);
        let message = UserName::parse(&long).unwrap_err().to_string();
        assert!(message.contains("200 characters"), "{message}");
        assert!(
            !message.contains(&long),
            "the whole name need not be echoed"
        );
    }

    #[test]
    fn known_key_types_parse_with_and_without_comment() {
        for line in [ED25519, ED25519_OTHER, ECDSA, SK_ED25519] {
            let key = PublicKey::parse(line).unwrap_or_else(|err| panic!("{line}: {err}"));
            assert_eq!(key.to_line(), line);
        }
        let key = PublicKey::parse(ED25519).unwrap();
        assert_eq!(key.kind, "ssh-ed25519");
        assert_eq!(key.comment.as_deref(), Some("alice@laptop"));
        assert_eq!(PublicKey::parse(ED25519_OTHER).unwrap().comment, None);
    }

    #[test]
    fn whitespace_and_crlf_are_normalised() {
        let messy = ED25519.replacen(' ', "\t  ", 1) + "\r\n";
        let key = PublicKey::parse(&messy).unwrap();
        assert_eq!(key.to_line(), ED25519);
        let spaced_comment = format!("{ED25519_OTHER}   two words ");
        assert_eq!(
            PublicKey::parse(&spaced_comment)
                .unwrap()
                .comment
                .as_deref(),
            Some("two words")
        );
    }

    #[test]
    fn bad_key_lines_are_refused_with_a_reason() {
        let body = ED25519.split(' ').nth(1).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty"),
            (format!("no-pty {ED25519}"), "options"),
            (format!("command=\"/bin/sh\" {ED25519}"), "options"),
            (
                format!("from=\"10.0.0.1\",no-agent-forwarding {ED25519}"),
                "options",
            ),
            (format!("environment=\"A=B\" {ED25519}"), "options"),
            (format!("ssh-dss {body}"), "unknown key type"),
            ("hello world".to_string(), "unknown key type"),
            ("ssh-ed25519".to_string(), "no base64 body"),
            ("ssh-ed25519 AAAA!!!!".to_string(), "base64"),
            ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE".to_string(), "base64"),
            (format!("ssh-rsa {body}"), "ssh-ed25519 key"),
            (
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5".to_string(),
                "does not hold",
            ),
            ("ssh-ed25519 AAAA".to_string(), "does not hold"),
            (format!("{ED25519_OTHER} evil\u{1b}[2J"), "control"),
            (
                "-----BEGIN OPENSSH PRIVATE KEY-----".to_string(),
                "private key",
            ),
            (format!("ssh-ed25519 {}", "A".repeat(20000)), "limit"),
        ];
        for (line, reason) in cases {
            let message = PublicKey::parse(&line).unwrap_err().to_string();
            assert!(message.contains(reason), "{line:?}: {message}");
        }
    }

    #[test]
    fn same_key_ignores_comments_and_offered_keys_match_by_body() {
        let with = PublicKey::parse(ED25519).unwrap();
        let without = PublicKey::parse(ED25519.rsplit_once(' ').unwrap().0).unwrap();
        let other = PublicKey::parse(ED25519_OTHER).unwrap();
        assert!(with.same_key(&without));
        assert!(!with.same_key(&other));
        let body = ED25519.split(' ').nth(1).unwrap();
        assert!(with.matches_offered(body));
        assert!(!other.matches_offered(body));
        assert!(!with.matches_offered("not base64"));
    }

    #[test]
    fn authorized_line_wraps_the_key_in_the_forced_command() {
        let spawn = SpawnCommand::new(Path::new("/usr/local/bin/podspawn"), None).unwrap();
        let user = UserName::parse("alice").unwrap();
        let key = PublicKey::parse(ED25519).unwrap();
        assert_eq!(
            key.authorized_line(
                &spawn,
                &user,
                &[
                    Ipv4Addr::new(10, 214, 62, 146),
                    Ipv4Addr::new(10, 214, 62, 147)
                ]
            ),
            format!(
                "command=\"/usr/local/bin/podspawn spawn --user alice\",restrict,pty,\
                 agent-forwarding,port-forwarding,X11-forwarding,\
                 permitopen=\"10.214.62.146:*\",permitopen=\"10.214.62.147:*\" {ED25519}"
            )
        );
        // Without the user's address, no TCP forwarding at all.
        assert_eq!(
            key.authorized_line(&spawn, &user, &[]),
            format!(
                "command=\"/usr/local/bin/podspawn spawn --user alice\",restrict,pty,\
                 agent-forwarding,X11-forwarding {ED25519}"
            )
        );
    }

    #[test]
    fn spawn_command_refuses_paths_a_shell_or_sshd_would_misread() {
        assert!(SpawnCommand::new(Path::new("/opt/pod spawn/podspawn"), None).is_err());
        assert!(SpawnCommand::new(Path::new("/opt/\"x/podspawn"), None).is_err());
        assert!(SpawnCommand::new(Path::new("/opt/$(x)/podspawn"), None).is_err());
        assert!(SpawnCommand::new(Path::new("relative/podspawn"), None).is_err());
        let upgraded =
            SpawnCommand::new(Path::new("/usr/local/bin/podspawn (deleted)"), None).unwrap();
        assert_eq!(
            upgraded,
            SpawnCommand::new(Path::new("/usr/local/bin/podspawn"), None).unwrap()
        );
    }

    #[test]
    fn base64_round_trips_and_refuses_junk() {
        assert_eq!(base64_decode("aGVsbG8="), Some(b"hello".to_vec()));
        assert_eq!(base64_decode("aGVsbA=="), Some(b"hell".to_vec()));
        assert_eq!(base64_decode("aGVs"), Some(b"hel".to_vec()));
        for junk in ["", "aGVsbG8", "aGV=bG8=", "a===", "aGVs\n", "aGVs bG8="] {
            assert_eq!(base64_decode(junk), None, "{junk:?}");
        }
    }
}
