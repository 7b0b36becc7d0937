//! The audit log (`log.audit_log`): one JSON object per line for every connection
//! and what it ran, every change in the engine with its reason, every build,
//! registration and refusal — what an admin feeds to `jq`, a log shipper or an
//! incident review.
//!
//! Each event is one `write` of one whole line to the file opened with `O_APPEND`,
//! so the lines of many spawn processes at once are never interleaved or torn, and
//! the file is opened again for every event, so logrotate's rename (`create`) needs
//! no signal. Values from users (commands, names) go through the JSON encoder: a
//! command with quotes, newlines or bytes that are not UTF-8 still makes one valid
//! line. An audit log that cannot be written never stops anything: the failure is
//! said once per process in the service log, and the events go there instead.
//!
//! Only root makes the file (`server-setup`, or a root command that finds it
//! missing), `root:docker` 0660: spawn appends as the user with the docker group
//! and never creates it (it would be the user's). A process with the borrowed group
//! writes only to a regular file root owns, checked on the open descriptor.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::config::LogConfig;

/// The mode of the audit log (see the module's text for why the group writes).
pub const FILE_MODE: u32 = 0o660;

/// The most of a user's command an event holds.
const MAX_COMMAND: usize = 4096;

/// Who acts, as the `actor` field says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A connection of this user (`spawn`).
    User(String),
    Keeper,
    Cleanup,
    /// An admin command, by this uid.
    Admin(u32),
}

impl Actor {
    fn name(&self) -> String {
        match self {
            Actor::User(user) => user.clone(),
            Actor::Keeper => "keeper".to_string(),
            Actor::Cleanup => "cleanup".to_string(),
            Actor::Admin(uid) => format!("admin:{uid}"),
        }
    }
}

/// This process's audit log: where, as whom, for which client.
struct Trail {
    path: Option<PathBuf>,
    actor: String,
    /// The client's address and port (`SSH_CONNECTION`), for a connection.
    client: Option<std::net::SocketAddr>,
    /// Under a borrowed group: write only to a file root owns.
    strict: bool,
    /// The file could not be written once already (said once, then quiet).
    failed: AtomicBool,
}

static TRAIL: OnceLock<Trail> = OnceLock::new();

/// Starts this process's audit log; the first call wins. `client`: the
/// `SSH_CONNECTION` of a connection.
pub fn start(config: &LogConfig, actor: Actor, client: Option<&str>) {
    lift_file_size_limit();
    let _ = TRAIL.set(Trail {
        path: config.audit_log.as_ref().map(|path| path.0.clone()),
        actor: actor.name(),
        client: client.and_then(client_of),
        // With the borrowed group, and as root: only a file of root's.
        strict: crate::privilege::has_borrowed_group() || unsafe { libc::geteuid() } == 0,
        failed: AtomicBool::new(false),
    });
}

/// `SSH_CONNECTION`'s first two words: the client's address and port.
pub fn client_of(connection: &str) -> Option<std::net::SocketAddr> {
    let mut words = connection.split_whitespace();
    let address: std::net::IpAddr = words.next()?.parse().ok()?;
    let port = words.next()?.parse().ok()?;
    Some(std::net::SocketAddr::new(address, port))
}

/// One event, built field by field.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    fields: Map<String, Value>,
}

impl Event {
    pub fn new(name: &str) -> Event {
        let mut fields = Map::new();
        fields.insert("event".to_string(), Value::from(name));
        Event { fields }
    }

    /// A field; an empty text is left out.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Event {
        let value = value.into();
        if value != "" {
            self.fields.insert(key.to_string(), value);
        }
        self
    }

    /// A field when there is one.
    pub fn with_some(self, key: &str, value: Option<impl Into<Value>>) -> Event {
        match value {
            Some(value) => self.with(key, value),
            None => self,
        }
    }

    /// A user's command as its bytes allow (not UTF-8: replaced, never dropped),
    /// cut to a size an admin's disk can keep.
    pub fn with_command(self, command: &[u8]) -> Event {
        self.with_text("command", command)
    }

    /// Text a user chose (a command, a project asked for), made safe as `with_command`
    /// makes a command.
    pub fn with_text(self, key: &str, bytes: &[u8]) -> Event {
        let text = String::from_utf8_lossy(bytes);
        let mut cut: String = text.chars().take(MAX_COMMAND).collect();
        if cut.len() < text.len() {
            cut.push_str("…(cut)");
        }
        self.with(key, cut)
    }

    /// The same fields under another event name.
    pub fn renamed(mut self, name: &str) -> Event {
        self.fields.insert("event".to_string(), Value::from(name));
        self
    }

    /// A field, unless the event has it already.
    pub fn or_with(self, key: &str, value: impl Into<Value>) -> Event {
        if self.fields.contains_key(key) {
            self
        } else {
            self.with(key, value)
        }
    }

    /// The line written for this event, by this process, at `time`.
    fn line(&self, trail: &Trail, time: SystemTime) -> String {
        let mut fields = Map::new();
        fields.insert("time".to_string(), Value::from(rfc3339_millis(time)));
        for (key, value) in &self.fields {
            fields.insert(key.clone(), value.clone());
        }
        fields
            .entry("actor")
            .or_insert_with(|| Value::from(trail.actor.clone()));
        fields.insert("pid".to_string(), Value::from(std::process::id()));
        if let Some(client) = &trail.client {
            fields.insert("client".to_string(), Value::from(client.ip().to_string()));
            fields.insert("client_port".to_string(), Value::from(client.port()));
        }
        // `time` and `event` first, for the eye and for `sort`; the rest by name.
        let mut line = String::from("{");
        let first = ["time", "event"];
        let ordered = first
            .iter()
            .filter_map(|key| fields.get_key_value(*key))
            .chain(
                fields
                    .iter()
                    .filter(|(key, _)| !first.contains(&key.as_str())),
            );
        for (index, (key, value)) in ordered.enumerate() {
            if index > 0 {
                line.push(',');
            }
            line.push_str(&Value::from(key.as_str()).to_string());
            line.push(':');
            line.push_str(&value.to_string());
        }
        line.push_str("}\n");
        line
    }
}

/// Writes `event` to this process's audit log, if it has one.
pub fn record(event: Event) {
    let Some(trail) = TRAIL.get() else {
        return;
    };
    let Some(path) = &trail.path else {
        return;
    };
    let line = event.line(trail, SystemTime::now());
    if let Err(err) = append(path, line.as_bytes(), trail.strict) {
        if !trail.failed.swap(true, Ordering::SeqCst) {
            log::warn!(
                "cannot write the audit log {}: {err}; this process's audit events go to this log",
                path.display()
            );
        }
        // At warn: a log level set lower must not lose audit events. (The service
        // log cuts a line at 2 KiB: a long command arrives cut there.)
        log::warn!("audit: {}", line.trim_end());
    }
}

/// One whole line at the end of the file, in one write. A line cut short before
/// (a full disk, a writer killed in the middle) is ended first, so that what it cut
/// takes no other line with it.
fn append(path: &std::path::Path, line: &[u8], strict: bool) -> std::io::Result<()> {
    let open = |create: bool| {
        let mut options = std::fs::OpenOptions::new();
        options
            .read(true)
            .append(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK);
        if create {
            options.create_new(true).mode(FILE_MODE);
        }
        options.open(path)
    };
    let mut file = match open(false) {
        // Only root makes it, and makes it the docker group's.
        Err(err)
            if err.kind() == std::io::ErrorKind::NotFound && unsafe { libc::geteuid() } == 0 =>
        {
            let file = open(true)?;
            give_to_docker(&file);
            file
        }
        opened => opened?,
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if strict && meta.uid() != 0 {
        return Err(std::io::Error::other(format!(
            "owned by uid {}, not root",
            meta.uid()
        )));
    }
    if strict && meta.nlink() != 1 {
        return Err(std::io::Error::other("it has other names (hard links)"));
    }
    // Writers take the file's lock around their write, so one that finds the last
    // line unended knows it was cut short, not being written. A lock held too long
    // (a writer stopped in the middle) is not waited for: the line goes anyway, only
    // without that check.
    let locked = lock_briefly(&file);
    let size = file.metadata()?.len();
    // A file size limit the caller kept (`ulimit -Hf`) would cut the line short.
    if let Some(limit) = file_size_limit()
        && size.saturating_add(line.len() as u64 + 1) > limit
    {
        return Err(std::io::Error::other(format!(
            "the line would pass this process's file size limit ({limit} bytes, RLIMIT_FSIZE)"
        )));
    }
    let mut last = [0u8; 1];
    let cut_short = locked
        && size > 0
        && std::os::unix::fs::FileExt::read_at(&file, &mut last, size - 1)? == 1
        && last[0] != b'\n';
    let mut whole = Vec::with_capacity(line.len() + 1);
    if cut_short {
        whole.push(b'\n');
    }
    whole.extend_from_slice(line);
    let line = whole.as_slice();
    let written = file.write(line)?;
    if written != line.len() {
        return Err(std::io::Error::other(format!(
            "only {written} of {} bytes written (disk full?)",
            line.len()
        )));
    }
    Ok(())
}

/// Takes the file's lock within about 100 ms; false if it could not (released when
/// the file is closed).
fn lock_briefly(file: &std::fs::File) -> bool {
    use std::os::fd::AsRawFd;
    for _ in 0..50 {
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    false
}

/// The most this process may write into a file (RLIMIT_FSIZE), if it is limited.
fn file_size_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    let asked = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) };
    (asked == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur)
}

/// A file size limit the caller set (`ulimit -f`) goes up as far as it may (its hard
/// limit), and a write past one fails instead of killing this process (SIGXFSZ): a
/// caller's limit neither keeps events out of the audit log nor ends a connection
/// or its keeper while they log.
fn lift_file_size_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain system calls on this process's own limits and signals.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_FSIZE, &limit);
        }
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// A file root just made: `root:docker` with its mode, so spawn can append.
fn give_to_docker(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::PermissionsExt;
    if let Ok(Some(docker)) = crate::accounts::group_id("docker") {
        unsafe { libc::fchown(file.as_raw_fd(), 0, docker) };
    }
    let _ = file.set_permissions(std::fs::Permissions::from_mode(FILE_MODE));
}

/// `2026-12-07T19:58:30.123Z`.
pub fn rfc3339_millis(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = crate::logging::utc_timestamp(time);
    format!(
        "{}.{:03}Z",
        seconds.trim_end_matches('Z'),
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn trail(path: Option<PathBuf>) -> Trail {
        Trail {
            path,
            actor: "alice".into(),
            client: client_of("203.0.113.5 51234 10.0.0.1 22"),
            strict: false,
            failed: AtomicBool::new(false),
        }
    }

    #[test]
    fn a_line_is_one_json_object_whatever_the_command_holds() {
        let command = b"echo \"quoted\" 'single'\n\x1b[31mred\xff\xfe done";
        let event = Event::new("session.connect")
            .with("user", "alice")
            .with("project", "")
            .with_command(command);
        let time = UNIX_EPOCH + Duration::from_millis(1_765_137_510_042);
        let line = event.line(&trail(None), time);
        assert!(line.ends_with('\n'));
        assert!(
            line.starts_with(
                "{\"time\":\"2025-12-07T19:58:30.042Z\",\"event\":\"session.connect\","
            )
        );
        assert_eq!(line.matches('\n').count(), 1);
        let parsed: Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(parsed["event"], "session.connect");
        assert_eq!(parsed["time"], "2025-12-07T19:58:30.042Z");
        assert_eq!(parsed["actor"], "alice");
        assert_eq!(parsed["client"], "203.0.113.5");
        assert_eq!(parsed["client_port"], 51234);
        assert!(parsed.get("project").is_none(), "empty fields are left out");
        let said = parsed["command"].as_str().unwrap();
        assert!(said.starts_with("echo \"quoted\" 'single'\n\u{1b}[31mred"));
        assert!(said.contains('\u{fffd}'));
    }

    #[test]
    fn a_long_command_is_cut_and_says_so() {
        let event = Event::new("session.connect").with_command(&[b'x'; 10_000]);
        let command = event.fields["command"].as_str().unwrap();
        assert!(command.ends_with("…(cut)"));
        assert!(command.len() < 4200);
    }

    #[test]
    fn lines_of_many_writers_at_once_stay_whole() {
        let dir = std::env::temp_dir().join(format!("podspawn-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, "").unwrap();
        let writers: Vec<_> = (0..8)
            .map(|writer| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let trail = trail(Some(path.clone()));
                    for n in 0..200 {
                        let event = Event::new("test")
                            .with("writer", writer)
                            .with("n", n)
                            .with("padding", "p".repeat(3000));
                        let line = event.line(&trail, SystemTime::now());
                        append(&path, line.as_bytes(), false).unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1600);
        for line in text.lines() {
            let parsed: Value = serde_json::from_str(line).unwrap();
            assert_eq!(parsed["padding"].as_str().unwrap().len(), 3000);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_line_cut_short_before_takes_no_other_line_with_it() {
        let dir = std::env::temp_dir().join(format!("podspawn-audit-cut-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, "{\"event\":\"whole\"}\n{\"event\":\"cut sh").unwrap();
        let line = Event::new("next").line(&trail(Some(path.clone())), SystemTime::now());
        append(&path, line.as_bytes(), false).unwrap();
        append(&path, line.as_bytes(), false).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[1], "{\"event\":\"cut sh");
        for line in [lines[2], lines[3]] {
            let parsed: Value = serde_json::from_str(line).unwrap();
            assert_eq!(parsed["event"], "next");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_log_with_another_name_is_not_written_where_it_must_be_roots_alone() {
        let dir = std::env::temp_dir().join(format!("podspawn-audit-link-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("audit.jsonl");
        std::fs::write(&path, "").unwrap();
        std::fs::hard_link(&path, dir.join("elsewhere")).unwrap();
        let result = append(&path, b"{}\n", true);
        let written = std::fs::read_to_string(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let err = result.unwrap_err().to_string();
        if unsafe { libc::geteuid() } == 0 {
            assert!(err.contains("hard links"), "{err}");
        }
        assert_eq!(written, "");
    }

    #[test]
    fn only_an_address_and_a_port_are_a_client() {
        assert_eq!(
            client_of("2001:db8::1 40000 2001:db8::2 22")
                .unwrap()
                .to_string(),
            "[2001:db8::1]:40000"
        );
        assert_eq!(client_of("not-an-address 1 2 3"), None);
        assert_eq!(client_of(""), None);
    }
}
