//! Where podspawn's log lines go.
//!
//! Admin commands log to stderr (levels as env_logger takes them: `log.level`, or
//! `PODSPAWN_LOG`). `auth-keys` and `spawn` never log to stderr or stdout — stdout is
//! sshd's key list or the user's session, stderr is the user's terminal — but to
//! `log.file`, or to syslog when no file is configured or it cannot be opened (as
//! `nobody`, `auth-keys` usually cannot). Nothing is opened until there is a line to
//! write: sshd runs `auth-keys` for every key offered, and its start must stay tiny.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::LogConfig;

/// Mode of a log file podspawn creates (the directory decides who may reach it).
const LOG_FILE_MODE: u32 = 0o660;
/// syslog's socket; messages go to facility `auth`.
const SYSLOG_SOCKET: &str = "/dev/log";
const SYSLOG_FACILITY_AUTH: u8 = 4;

/// The longest message a service log line holds; the rest is cut (a user's command
/// is in some lines, and must not fill the admin's disk).
const MAX_MESSAGE: usize = 2048;

/// One line per record whatever the message holds: control characters (a user's
/// command may carry terminal escapes for the admin's terminal) are written as
/// escapes, and a long message is cut.
pub fn one_safe_line(message: &str) -> String {
    let mut line = String::with_capacity(message.len().min(MAX_MESSAGE) + 16);
    for c in message.chars() {
        if line.len() >= MAX_MESSAGE {
            line.push_str("…(cut)");
            break;
        }
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
    }
    line
}

/// Admin commands: `LEVEL message` on stderr.
pub fn init_admin(level: LevelFilter) {
    let mut builder = env_logger::Builder::new();
    builder
        .filter_level(level)
        .parse_env(env_logger::Env::new().filter("PODSPAWN_LOG"))
        .format(|out, record| writeln!(out, "{} {}", record.level(), record.args()))
        .target(env_logger::Target::Stderr);
    let _ = builder.try_init();
}

/// `auth-keys` and `spawn`: the log file or syslog, never the terminal.
pub fn init_service(config: &LogConfig, command: &'static str) {
    let logger = ServiceLogger {
        level: config.level.0,
        file: config.file.as_ref().map(|path| path.0.clone()),
        command,
        sink: Mutex::new(None),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(config.level.0);
    }
}

struct ServiceLogger {
    level: LevelFilter,
    file: Option<PathBuf>,
    command: &'static str,
    /// Opened on the first line; `Sink::Nowhere` when nothing could be opened.
    sink: Mutex<Option<Sink>>,
}

enum Sink {
    File(File),
    Syslog(UnixDatagram),
    Nowhere,
}

impl ServiceLogger {
    fn open(&self) -> Sink {
        if let Some(path) = &self.file {
            let file = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(LOG_FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .open(path);
            if let Ok(file) = file {
                // Created just now by this process: give it its mode whatever the
                // umask, so the next user's spawn can append too.
                if file.metadata().is_ok_and(|meta| {
                    use std::os::unix::fs::MetadataExt;
                    meta.len() == 0 && meta.uid() == unsafe { libc::geteuid() }
                }) {
                    use std::os::unix::fs::PermissionsExt;
                    let _ = file.set_permissions(std::fs::Permissions::from_mode(LOG_FILE_MODE));
                }
                return Sink::File(file);
            }
        }
        match UnixDatagram::unbound().and_then(|socket| {
            socket.connect(SYSLOG_SOCKET)?;
            Ok(socket)
        }) {
            Ok(socket) => Sink::Syslog(socket),
            Err(_) => Sink::Nowhere,
        }
    }
}

impl Log for ServiceLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        let sink = sink.get_or_insert_with(|| self.open());
        let pid = std::process::id();
        let message = one_safe_line(&record.args().to_string());
        match sink {
            Sink::File(file) => {
                let line = format!(
                    "{} podspawn[{pid}] {} {} {message}\n",
                    utc_timestamp(SystemTime::now()),
                    self.command,
                    record.level()
                );
                let _ = file.write_all(line.as_bytes());
            }
            Sink::Syslog(socket) => {
                let priority = SYSLOG_FACILITY_AUTH * 8 + syslog_severity(record.level());
                let line = format!(
                    "<{priority}>podspawn[{pid}]: {} {}: {message}",
                    self.command,
                    record.level()
                );
                let _ = socket.send(line.as_bytes());
            }
            Sink::Nowhere => {}
        }
    }

    fn flush(&self) {}
}

fn syslog_severity(level: Level) -> u8 {
    match level {
        Level::Error => 3,
        Level::Warn => 4,
        Level::Info => 6,
        Level::Debug | Level::Trace => 7,
    }
}

/// `2026-11-23T12:00:00Z`, without a date crate.
pub fn utc_timestamp(time: SystemTime) -> String {
    let seconds = time
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs())
        .unwrap_or(0);
    let (days, rest) = (seconds / 86400, seconds % 86400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_is_one_line_without_control_characters_and_bounded() {
        assert_eq!(
            one_safe_line("a\nb\r\x1b[2Jc\td"),
            "a\\nb\\r\\u{1b}[2Jc\\td"
        );
        assert_eq!(one_safe_line("é ok"), "é ok");
        let long = one_safe_line(&"x".repeat(10_000));
        assert!(
            long.len() < MAX_MESSAGE + 16 && long.ends_with("…(cut)"),
            "{}",
            long.len()
        );
    }
    use std::time::Duration;

    #[test]
    fn timestamps_are_utc_iso_8601() {
        let at = |seconds| utc_timestamp(UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_795_478_399), "2026-11-23T23:59:59Z");
        assert_eq!(at(4_107_542_400), "2100-03-01T00:00:00Z");
    }
}
