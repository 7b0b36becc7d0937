//! The server configuration: `/etc/podspawn/config.yaml`, moved by `PODSPAWN_CONFIG`.
//!
//! A missing file means every default. Anything else that is wrong — an unknown key, a
//! value of the wrong type, a duration or size that does not parse, a relative path — is
//! an error that names the file, the line and the key, so an admin can fix it in one
//! look. This module only reads; it never creates or edits the file.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::project::ProjectName;
use crate::yaml;

/// Where the server config lives unless `PODSPAWN_CONFIG` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/podspawn/config.yaml";

/// The environment variable that moves the server config (ignored when podspawn runs
/// with a borrowed group; see `privilege`).
pub const PATH_VARIABLE: &str = "PODSPAWN_CONFIG";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub auth: AuthConfig,
    pub docker: DockerConfig,
    pub defaults: Defaults,
    pub session: SessionConfig,
    pub state: StateConfig,
    pub network: NetworkConfig,
    pub services: ServicesConfig,
    pub security: SecurityConfig,
    pub log: LogConfig,
    /// Projects declared by hand: `update-project NAME` clones and builds them
    /// (`add-project` keeps its registrations in the state, never in this file).
    pub projects: BTreeMap<ProjectKey, DeclaredProject>,
    /// The file this was read from (not a key; filled in by `load`).
    #[serde(skip)]
    pub source: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// One file per registered user, named after the user.
    pub key_dir: AbsolutePath,
    /// Where `add-user --github LOGIN` fetches `<github_url>/LOGIN.keys`.
    pub github_url: String,
    /// The group of podspawn's users; sshd's `Match Group` block restricts it.
    pub group: GroupName,
    /// The host home of accounts `add-user` creates: one empty root-owned directory
    /// (they never run anything on the host, but sshd changes into it before the
    /// forced command), outside the state directory they cannot enter.
    pub home_dir: AbsolutePath,
    /// Whether `add-user` creates a missing Unix account (and `remove-user` deletes
    /// the ones it created). Off: accounts are managed elsewhere.
    pub create_accounts: bool,
    /// One file of settings per user who needs other than the server's:
    /// `<user_dir>/<user>.yaml` (see `user_settings`).
    pub user_dir: AbsolutePath,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key_dir: AbsolutePath::from("/etc/podspawn/keys"),
            github_url: "https://github.com".to_string(),
            group: GroupName("podspawn".to_string()),
            home_dir: AbsolutePath::from("/var/lib/podspawn-home"),
            create_accounts: true,
            user_dir: AbsolutePath::from("/etc/podspawn/users"),
        }
    }
}

/// A group name as groupadd takes it and sshd's `Match Group` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupName(pub String);

impl<'de> Deserialize<'de> for GroupName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let valid = !text.is_empty()
            && text.len() <= 32
            && text.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
        if valid {
            Ok(GroupName(text))
        } else {
            Err(de::Error::custom(format!(
                "invalid group name {text:?} (lower-case letters, digits, '_' and '-')"
            )))
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DockerConfig {
    /// The docker-compatible CLI: a name looked up on PATH, or an absolute path.
    #[serde(deserialize_with = "program_name")]
    pub binary: String,
    /// The engine to talk to (`DOCKER_HOST`); unset means the CLI's default.
    pub host: Option<String>,
    /// `DOCKER_CONFIG` for every docker call: a root-owned directory, never a user's
    /// `~/.docker` (which could name credential helpers or CLI plugins to run).
    pub config_dir: AbsolutePath,
    /// The longest one docker call may take (a connection's exec, a build and a pull
    /// have their own ends): an engine that accepts and never answers ends a login
    /// with one line after this, and never holds it.
    #[serde(deserialize_with = "a_second_or_more")]
    pub timeout: ConfigDuration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            binary: "docker".to_string(),
            host: None,
            config_dir: AbsolutePath::from("/etc/podspawn/docker"),
            timeout: ConfigDuration(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Defaults {
    #[serde(deserialize_with = "image_name")]
    pub image: String,
    /// The login shell inside containers (`/bin/sh` where the image lacks it).
    pub shell: AbsolutePath,
    pub cpus: Cpus,
    pub memory: ByteSize,
    /// docker's `--pids-limit`: a fork bomb stays inside its container.
    #[serde(deserialize_with = "positive")]
    pub pids_limit: u32,
    /// The longest a project's image build may take.
    pub build_timeout: ConfigDuration,
    /// The size of the home: a tmpfs, so in memory (and counted in the container's).
    pub home_size: ByteSize,
    /// docker's `--ulimit nofile`: open files per process.
    #[serde(deserialize_with = "positive")]
    pub nofile: u32,
    /// docker's `--ulimit nproc`: processes of the user's uid, counted across the
    /// host (every container of theirs, and their connections); unset, none.
    #[serde(deserialize_with = "some_positive")]
    pub nproc: Option<u32>,
    /// docker's `--storage-opt size=`: each container's writable layer, where the
    /// storage driver has such a limit (overlay2 on xfs with pquota, btrfs, zfs);
    /// elsewhere every container would fail to start (`doctor` says which).
    #[serde(deserialize_with = "some_size")]
    pub disk_size: Option<ByteSize>,
}

fn some_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<ByteSize>, D::Error> {
    ByteSize::deserialize(deserializer).map(Some)
}

/// A duration of at least a second.
fn a_second_or_more<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<ConfigDuration, D::Error> {
    let duration = ConfigDuration::deserialize(deserializer)?;
    if duration.0 < Duration::from_secs(1) {
        return Err(de::Error::custom("must be at least 1s"));
    }
    Ok(duration)
}

/// A count that must be at least 1.
pub(crate) fn positive<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if value == 0 {
        return Err(de::Error::custom("0 is not allowed here (at least 1)"));
    }
    Ok(value)
}

pub(crate) fn some_positive<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u32>, D::Error> {
    positive(deserializer).map(Some)
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            image: "ubuntu:24.04".to_string(),
            shell: AbsolutePath::from("/bin/bash"),
            cpus: Cpus(2.0),
            memory: ByteSize(2 * 1024 * 1024 * 1024),
            pids_limit: 1024,
            build_timeout: ConfigDuration(Duration::from_secs(30 * 60)),
            home_size: ByteSize(1 << 30),
            nofile: 16384,
            nproc: None,
            disk_size: None,
        }
    }
}

/// A project name as a key of `projects:`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ProjectKey(pub ProjectName);

impl<'de> Deserialize<'de> for ProjectKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ProjectName::parse(&text)
            .map(ProjectKey)
            .map_err(de::Error::custom)
    }
}

/// A project an admin wrote into the config by hand.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredProject {
    pub repo: String,
    #[serde(default, deserialize_with = "branch")]
    pub branch: Option<String>,
}

fn branch<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if crate::project::is_branch(&text) {
        Ok(Some(text))
    } else {
        Err(de::Error::custom(format!(
            "{:?} is not a branch name",
            text.escape_debug().to_string()
        )))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionConfig {
    pub grace_period: ConfigDuration,
    pub max_lifetime: ConfigDuration,
    pub mode: SessionMode,
    /// The longest anyone waits for a user's lock (held while that user's container
    /// is created or destroyed) before giving up with a clear line.
    pub lock_timeout: ConfigDuration,
    /// How many sessions (the default one, projects, scratch names) a user may have
    /// at once; each has an address on the user's network, which has 13.
    #[serde(deserialize_with = "sessions_per_user")]
    pub max_per_user: u32,
}

fn sessions_per_user<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if (1..=crate::network::MAX_SLOTS).contains(&value) {
        Ok(value)
    } else {
        Err(de::Error::custom(format!(
            "{value} is not between 1 and {} (the addresses of a user's network)",
            crate::network::MAX_SLOTS
        )))
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            grace_period: ConfigDuration(Duration::from_secs(60)),
            max_lifetime: ConfigDuration(Duration::from_secs(8 * 3600)),
            mode: SessionMode::GracePeriod,
            lock_timeout: ConfigDuration(Duration::from_secs(30)),
            max_per_user: 5,
        }
    }
}

/// What happens to a container when its last connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SessionMode {
    /// Keep it for `grace_period`, then destroy it (the default).
    #[default]
    GracePeriod,
    /// Destroy it at once.
    DestroyOnDisconnect,
    /// Keep it until an admin removes it; `max_lifetime` does not apply.
    Persistent,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateConfig {
    pub db_path: AbsolutePath,
    pub lock_dir: AbsolutePath,
    /// Per-user directories for forwarded ssh-agent sockets, each mounted into that
    /// user's containers at /run/ssh-agent.
    pub agent_dir: AbsolutePath,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            db_path: AbsolutePath::from("/var/lib/podspawn/state.db"),
            lock_dir: AbsolutePath::from("/var/lib/podspawn/locks"),
            agent_dir: AbsolutePath::from("/var/lib/podspawn/agents"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkConfig {
    /// Where per-user networks are cut from: a /28 per user, chosen by uid.
    pub pool: crate::network::Pool,
    /// Where the private networks of sessions with companion services are cut from:
    /// a /25 per user, chosen by uid, a /29 per session slot in it.
    pub services_pool: crate::network::ServicesPool,
    /// Whether containers may open connections to the host's own addresses (its
    /// gateway address on their network among them). Off: only DNS.
    pub allow_host: bool,
    /// Whether containers may reach link-local addresses (169.254.0.0/16: a cloud's
    /// metadata service). Off: never.
    pub allow_metadata: bool,
    /// More destinations containers may never reach (a LAN, a VPN's range).
    pub deny: Vec<crate::network::Cidr>,
}

/// What a container may do beyond the defaults, and what runs it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecurityConfig {
    /// The OCI runtime of session and service containers, as the engine names it
    /// (`runsc` for gVisor, registered in dockerd's daemon.json); unset, the
    /// engine's default.
    pub runtime: Option<RuntimeName>,
    /// A read-only root filesystem; the home, /tmp, /var/tmp, /run and a project's
    /// workspace stay writable.
    pub read_only_root: bool,
    /// Passwordless sudo inside: the capabilities a package manager needs come back
    /// and no-new-privileges goes. Refused unless the runtime is a sandbox or
    /// `sudo_without_sandbox` says the admin means it.
    pub sudo: bool,
    pub sudo_without_sandbox: bool,
}

/// An OCI runtime's name as dockerd knows it (`runc`, `runsc`, `kata`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeName(pub String);

impl RuntimeName {
    /// Whether it runs containers in a sandbox of their own (a user-space kernel or
    /// a VM): gVisor's `runsc` or Kata's, by the names their docs register them as.
    pub fn is_sandbox(&self) -> bool {
        crate::container::is_sandbox(Some(&self.0))
    }
}

impl<'de> Deserialize<'de> for RuntimeName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let valid = !text.is_empty()
            && text.len() <= 64
            && text.starts_with(|c: char| c.is_ascii_alphanumeric())
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if valid {
            Ok(RuntimeName(text))
        } else {
            Err(de::Error::custom(format!(
                "invalid runtime {:?} (a name dockerd knows, e.g. runsc)",
                text.escape_debug().to_string()
            )))
        }
    }
}

/// How a Podfile's companion services run: each is a container of its session, on
/// the session's private network, with these limits and capabilities.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    /// The share of the session's cpus, memory and pids limit its services have
    /// together, in equal parts.
    pub share: Share,
    /// How long a session's first connection waits for its services' ports to accept
    /// connections before it opens the session anyway (saying so on a terminal).
    pub ready_timeout: ConfigDuration,
    /// The capabilities a service keeps; every other one is dropped. The default is
    /// what a database image's start needs: its entrypoint runs as root, makes the
    /// data directory its server's user's and steps down to that user.
    pub capabilities: Vec<Capability>,
    /// Whether services' named volumes outlive their session (one per user, project
    /// and volume, removed with the user or the project). Off: each session's volumes
    /// are its own and go with it.
    pub persist_volumes: bool,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        ServicesConfig {
            share: Share(0.5),
            ready_timeout: ConfigDuration(Duration::from_secs(30)),
            capabilities: ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
                .iter()
                .map(|name| Capability(name.to_string()))
                .collect(),
            persist_volumes: false,
        }
    }
}

/// A share of a limit: a number greater than 0 and at most 1.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share(pub f64);

impl<'de> Deserialize<'de> for Share {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if value.is_finite() && value > 0.0 && value <= 1.0 {
            Ok(Share(value))
        } else {
            Err(de::Error::custom(format!(
                "invalid share {value} (expected a number greater than 0 and at most 1)"
            )))
        }
    }
}

/// The Linux capabilities docker's `--cap-add` knows, without `CAP_`.
const CAPABILITIES: &[&str] = &[
    "AUDIT_CONTROL",
    "AUDIT_READ",
    "AUDIT_WRITE",
    "BLOCK_SUSPEND",
    "BPF",
    "CHECKPOINT_RESTORE",
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "IPC_LOCK",
    "IPC_OWNER",
    "KILL",
    "LEASE",
    "LINUX_IMMUTABLE",
    "MAC_ADMIN",
    "MAC_OVERRIDE",
    "MKNOD",
    "NET_ADMIN",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_RAW",
    "PERFMON",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYSLOG",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_CHROOT",
    "SYS_MODULE",
    "SYS_NICE",
    "SYS_PACCT",
    "SYS_PTRACE",
    "SYS_RAWIO",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "WAKE_ALARM",
];

/// A Linux capability by its name without `CAP_` (`CHOWN`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capability(pub String);

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let name = text.strip_prefix("CAP_").unwrap_or(&text);
        if CAPABILITIES.contains(&name) {
            Ok(Capability(name.to_string()))
        } else {
            Err(de::Error::custom(format!(
                "{:?} is not a capability (e.g. CHOWN, SETUID)",
                text.escape_debug().to_string()
            )))
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Where `auth-keys` and `spawn` log; unset means syslog (they must never log to
    /// the SSH user's terminal, and `auth-keys` runs as `nobody`).
    pub file: Option<AbsolutePath>,
    pub level: LogLevel,
    /// The JSON-lines audit log; unset means none.
    pub audit_log: Option<AbsolutePath>,
}

/// `docker.binary`: a bare name (looked up on podspawn's fixed PATH) or an absolute
/// path; a relative path would mean something else in every caller's directory.
fn program_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    let plain = !text.is_empty() && !text.chars().any(|c| c.is_whitespace() || c.is_control());
    let bare = !text.contains('/') && !text.starts_with('-');
    if plain && (bare || text.starts_with('/')) {
        Ok(text)
    } else {
        Err(de::Error::custom(format!(
            "invalid program {text:?} (expected a name such as docker, or an absolute path)"
        )))
    }
}

/// An image reference as docker takes it; one starting with `-` would be read as an
/// option of `docker run`.
fn image_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::container::check_image(&text).map_err(de::Error::custom)?;
    Ok(text)
}

/// `log.level`: one of `off`, `error`, `warn`, `info` (default), `debug`, `trace`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLevel(pub log::LevelFilter);

impl Default for LogLevel {
    fn default() -> Self {
        LogLevel(log::LevelFilter::Info)
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "off" => Ok(LogLevel(log::LevelFilter::Off)),
            "error" => Ok(LogLevel(log::LevelFilter::Error)),
            "warn" => Ok(LogLevel(log::LevelFilter::Warn)),
            "info" => Ok(LogLevel(log::LevelFilter::Info)),
            "debug" => Ok(LogLevel(log::LevelFilter::Debug)),
            "trace" => Ok(LogLevel(log::LevelFilter::Trace)),
            _ => Err(de::Error::custom(format!(
                "invalid log level {text:?} (expected off, error, warn, info, debug or trace)"
            ))),
        }
    }
}

/// A path that must be absolute: sshd runs podspawn from `/`, so a relative path would
/// mean something different to every caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsolutePath(pub PathBuf);

impl AbsolutePath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl From<&str> for AbsolutePath {
    fn from(path: &str) -> Self {
        AbsolutePath(PathBuf::from(path))
    }
}

impl<'de> Deserialize<'de> for AbsolutePath {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if !text.starts_with('/') {
            return Err(de::Error::custom(format!("path {text:?} must be absolute")));
        }
        // Paths reach docker's --mount (comma-separated) and colon-separated lists.
        if text.contains([',', ':', '\n']) {
            return Err(de::Error::custom(format!(
                "path {text:?} must not contain ',', ':' or a newline"
            )));
        }
        Ok(AbsolutePath(PathBuf::from(text)))
    }
}

/// A duration written as one or more `<number><unit>` parts: `90s`, `5m`, `8h`,
/// `1h30m`, `2d`. A bare number is refused: `60` could mean seconds or minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl ConfigDuration {
    pub fn parse(text: &str) -> Result<Duration, String> {
        let invalid = || format!("invalid duration {text:?} (expected e.g. 90s, 5m, 8h or 1h30m)");
        if text.is_empty() {
            return Err(invalid());
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(invalid());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            let unit_seconds = match rest.as_bytes().get(digits) {
                Some(b's') => 1,
                Some(b'm') => 60,
                Some(b'h') => 3600,
                Some(b'd') => 86400,
                _ => return Err(invalid()),
            };
            total = number
                .checked_mul(unit_seconds)
                .and_then(|seconds| total.checked_add(seconds))
                .ok_or_else(invalid)?;
            rest = &rest[digits + 1..];
        }
        Ok(Duration::from_secs(total))
    }
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ConfigDuration::parse(&text)
            .map(ConfigDuration)
            .map_err(de::Error::custom)
    }
}

/// A memory size as docker takes it: `<number><unit>` with unit `k`, `m` or `g`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(text: &str) -> Result<u64, String> {
        let invalid = || format!("invalid size {text:?} (expected e.g. 512m or 2g)");
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits + 1 != text.len() {
            return Err(invalid());
        }
        let number: u64 = text[..digits].parse().map_err(|_| invalid())?;
        let unit: u64 = match text.as_bytes()[digits].to_ascii_lowercase() {
            b'k' => 1 << 10,
            b'm' => 1 << 20,
            b'g' => 1 << 30,
            _ => return Err(invalid()),
        };
        match number.checked_mul(unit) {
            Some(0) => Err(format!("size {text:?} must be greater than zero")),
            Some(bytes) => Ok(bytes),
            None => Err(invalid()),
        }
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ByteSize::parse(&text)
            .map(ByteSize)
            .map_err(de::Error::custom)
    }
}

/// A CPU limit as docker's `--cpus` takes it: a positive number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cpus(pub f64);

impl<'de> Deserialize<'de> for Cpus {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = f64::deserialize(deserializer)?;
        if value.is_finite() && value > 0.0 {
            Ok(Cpus(value))
        } else {
            Err(de::Error::custom(format!(
                "invalid cpus {value} (expected a number greater than zero)"
            )))
        }
    }
}

/// Finds and reads the server config; `ignored` says what override was not used (to
/// be logged once logging is set up).
///
/// `--config PATH`, else `PODSPAWN_CONFIG`, names another file. A process running with
/// a borrowed (setgid) group runs in its caller's environment and with its caller's
/// arguments, so it trusts neither as given:
///
/// - `PODSPAWN_CONFIG` is ignored (sshd's forced command passes `--config`);
/// - the file it reads, named by `--config` or the default, must be one only root
///   could have written — the file and every directory above it owned by root and
///   not writable by group or others (sshd's rule for its own commands) — and it is
///   checked on the very descriptor it is read from, so a symlink swapped between a
///   check and a read cannot win;
/// - an override that is missing, or holds nothing but comments, is refused rather
///   than meaning "all defaults" (it would drop the admin's engine, limits and log).
pub fn load(borrowed_group: bool, flag: Option<&Path>) -> Loaded {
    let from_env = std::env::var_os(PATH_VARIABLE).filter(|path| !path.is_empty());
    let (path, overridden, ignored) = match (flag, from_env) {
        (Some(path), _) => (path.to_path_buf(), true, None),
        (None, Some(path)) if borrowed_group => (
            PathBuf::from(DEFAULT_PATH),
            false,
            Some(format!(
                "ignored {PATH_VARIABLE}={}: under the setgid group only --config is honoured",
                Path::new(&path).display()
            )),
        ),
        (None, Some(path)) => (PathBuf::from(path), true, None),
        (None, None) => (PathBuf::from(DEFAULT_PATH), false, None),
    };
    let result = if borrowed_group {
        load_trusted(&path, overridden)
    } else {
        load_path(&path)
    };
    Loaded { result, ignored }
}

/// The outcome of `load`.
pub struct Loaded {
    pub result: Result<ServerConfig, ConfigError>,
    /// An override that was ignored, and why.
    pub ignored: Option<String>,
}

impl ServerConfig {
    /// The directory of the state database, shared by root and the docker group.
    pub fn state_dir(&self) -> &Path {
        let db = self.state.db_path.as_path();
        db.parent().unwrap_or(db)
    }

    /// This installation's name on the engine: 8 hex digits of a hash of the state
    /// directory. Everything it makes carries it (label `podspawn.installation`), and
    /// it lists, so reconciles, only what does: a second installation on the engine
    /// (another state directory) keeps its own. Its iptables chain is named by it too.
    pub fn installation(&self) -> String {
        let digest = crate::sha256::hex(self.state_dir().as_os_str().as_encoded_bytes());
        digest[..8].to_string()
    }

    /// The directory of podspawn's, private to root and the docker group, that holds
    /// `auth.home_dir`, if one does: sshd could not enter that home for podspawn's
    /// users and would say so on every session's stderr.
    pub fn private_dir_holding_home(&self) -> Option<&Path> {
        let home = self.auth.home_dir.as_path();
        [
            self.state_dir(),
            self.state.lock_dir.as_path(),
            self.state.agent_dir.as_path(),
        ]
        .into_iter()
        .find(|dir| home.starts_with(dir))
    }

    /// The file this config came from, if it is not the default: what processes
    /// podspawn starts (the keeper) or has sshd start (the forced command) must be told.
    pub fn moved(&self) -> Option<&Path> {
        (self.source.as_os_str() != DEFAULT_PATH).then_some(self.source.as_path())
    }
}

/// Reads the config at `path`; a file that does not exist means every default.
pub fn load_path(path: &Path) -> Result<ServerConfig, ConfigError> {
    match std::fs::read(path) {
        Ok(bytes) => from_bytes(path, &bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(ServerConfig {
            source: path.to_path_buf(),
            ..ServerConfig::default()
        }),
        Err(source) => Err(ConfigError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// The bytes of `path` if root alone could have written it (see `read_root_only`);
/// `None` when there is no such file.
pub(crate) fn read_trusted(path: &Path) -> Result<Option<Vec<u8>>, String> {
    match std::fs::canonicalize(path) {
        Ok(canonical) => read_root_only(&canonical).map(Some),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err.to_string()),
    }
}

/// Under a borrowed group: reads `path` only if root alone could have written it,
/// checking the open descriptor itself (see `load`).
fn load_trusted(path: &Path, overridden: bool) -> Result<ServerConfig, ConfigError> {
    let untrusted = |reason: String| ConfigError::Untrusted {
        path: path.to_path_buf(),
        reason,
    };
    let canonical = match std::fs::canonicalize(path) {
        Ok(canonical) => canonical,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound && !overridden => {
            return load_path(path);
        }
        Err(err) => return Err(untrusted(err.to_string())),
    };
    let bytes = read_root_only(&canonical).map_err(untrusted)?;
    let config = from_bytes(&canonical, &bytes)?;
    if overridden && !yaml::has_content(&String::from_utf8_lossy(&bytes)) {
        return Err(untrusted(
            "it holds no settings; an override must say what it overrides".to_string(),
        ));
    }
    Ok(config)
}

/// The bytes of `canonical` (a path without symlinks), read from a descriptor whose
/// file, and every directory above it, only root can write. The path is opened first
/// and the checks are made on what was opened: the file by `fstat`, the directories
/// on the path, and then the path must still name the opened file.
fn read_root_only(canonical: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let only_root = |what: &Path, meta: &std::fs::Metadata| {
        if meta.uid() != 0 {
            Err(format!("{} is not owned by root", what.display()))
        } else if meta.mode() & 0o022 != 0 {
            Err(format!("{} is writable by group or others", what.display()))
        } else {
            Ok(())
        }
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        // A FIFO must not hang the login; it is refused below as not a file.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(canonical)
        .map_err(|err| format!("{}: {err}", canonical.display()))?;
    let opened = file.metadata().map_err(|err| err.to_string())?;
    if !opened.is_file() {
        return Err(format!("{} is not a regular file", canonical.display()));
    }
    only_root(canonical, &opened)?;
    for dir in canonical.ancestors().skip(1) {
        let meta =
            std::fs::symlink_metadata(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
        only_root(dir, &meta)?;
    }
    let named = std::fs::symlink_metadata(canonical).map_err(|err| err.to_string())?;
    if (named.dev(), named.ino()) != (opened.dev(), opened.ino()) {
        return Err(format!("{} changed while it was read", canonical.display()));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .map_err(|err| format!("{}: {err}", canonical.display()))?;
    Ok(bytes)
}

fn from_bytes(path: &Path, bytes: &[u8]) -> Result<ServerConfig, ConfigError> {
    let text = std::str::from_utf8(bytes).map_err(|_| ConfigError::Invalid {
        path: path.to_path_buf(),
        line: None,
        message: "file is not valid UTF-8".to_string(),
    })?;
    let mut config = parse(text).map_err(|(line, message)| ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        message,
    })?;
    config.source = path.to_path_buf();
    Ok(config)
}

/// The config `server-setup` writes when there is none: every key, commented out,
/// at its default value.
pub const COMMENTED_DEFAULT: &str = "\
# podspawn server configuration. Every key is optional; each line below shows
# the default. Durations: 90s, 5m, 8h, 1h30m. Sizes: 512m, 2g. Paths: absolute.
#
#auth:
#  key_dir: /etc/podspawn/keys        # one file per user: <key_dir>/<user>
#  github_url: https://github.com     # add-user --github fetches <github_url>/LOGIN.keys
#  group: podspawn                    # podspawn's users; sshd's Match Group block
#  home_dir: /var/lib/podspawn-home   # the (empty, root's) host home of created accounts
#  create_accounts: true              # add-user makes missing Unix accounts
#  user_dir: /etc/podspawn/users      # <user>.yaml: one user's own image, limits, runtime...
#docker:
#  binary: docker                     # or podman, or an absolute path
#  config_dir: /etc/podspawn/docker   # DOCKER_CONFIG for every docker call
#  timeout: 60s                       # the longest one docker call may take (not an exec)
#  # host: unix:///var/run/docker.sock  (DOCKER_HOST; unset = the CLI's default)
#defaults:
#  image: ubuntu:24.04
#  shell: /bin/bash                   # /bin/sh where the image has no such shell
#  cpus: 2
#  memory: 2g
#  pids_limit: 1024
#  build_timeout: 30m                 # a project's image build is ended after this
#  home_size: 1g                      # the home is a tmpfs: in memory, counted in memory
#  nofile: 16384                      # open files per process (ulimit -n; at most dockerd's own)
#  # nproc: 4096  (ulimit -u: processes of the user's uid, all their containers; unset = none)
#  # disk_size: 10g  (each container's disk, where the storage driver can: see doctor)
#session:
#  grace_period: 60s
#  max_lifetime: 8h
#  mode: grace-period                 # grace-period | destroy-on-disconnect | persistent
#  lock_timeout: 30s                  # a login gives up waiting for its user's lock after this
#  max_per_user: 5                    # sessions (default, projects, scratch) per user, 1-13
#state:
#  db_path: /var/lib/podspawn/state.db
#  lock_dir: /var/lib/podspawn/locks
#  agent_dir: /var/lib/podspawn/agents
#network:
#  pool: 10.214.0.0/16                # a /28 per user, by uid
#  services_pool: 10.215.0.0/16       # sessions with services: a /25 per user, a /29 per session
#  allow_host: false                  # containers may reach the host's own addresses (DNS always)
#  allow_metadata: false              # containers may reach 169.254.0.0/16 (cloud metadata)
#  deny: []                           # more ranges containers never reach, e.g. [192.168.0.0/16]
#services:                            # a Podfile's companion services
#  share: 0.5                         # their share (together) of the session's cpus, memory, pids
#  ready_timeout: 30s                 # a new session waits this long for their ports
#  capabilities: [CHOWN, DAC_OVERRIDE, FOWNER, SETGID, SETUID]  # all others are dropped
#  persist_volumes: false             # true: their named volumes outlive the session
#security:
#  # runtime: runsc  (the engine's OCI runtime for containers; unset = its default, runc)
#  read_only_root: false              # true: / read-only; home, /tmp, /var/tmp, /run writable
#  sudo: false                        # passwordless sudo inside (needs a sandbox runtime, or:)
#  sudo_without_sandbox: false        # allow sudo with the host's kernel shared (runc)
#log:
#  level: info                        # off | error | warn | info | debug | trace
#  # file: /var/log/podspawn/podspawn.log  (unset = syslog)
#  # audit_log: unset = no audit log; this file sets one below
#
# Projects: `podspawn add-project NAME --repo REPO` registers one in the state
# database (podspawn never rewrites this file). A project may also be declared
# here by hand; `podspawn update-project NAME` then clones, builds and adds it:
# projects:
#   api:
#     repo: github.com/company/node-api
#     branch: main                   # optional; default: the repo's default branch

# The audit log: one JSON object per connection, command, engine change, build,
# registration and refusal (see podspawn's README). Remove these lines for none.
log:
  audit_log: /var/log/podspawn/audit.jsonl
";

/// Why the config could not be used.
#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    Invalid {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
    /// Under a borrowed group, a file that someone other than root could have written
    /// (or an override that cannot be used).
    Untrusted { path: PathBuf, reason: String },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ConfigError::Read { path, source } => {
                write!(f, "cannot read config {}: {source}", path.display())
            }
            ConfigError::Invalid {
                path,
                line: Some(line),
                message,
            } => write!(f, "config {}, line {line}: {message}", path.display()),
            ConfigError::Invalid {
                path,
                line: None,
                message,
            } => write!(f, "config {}: {message}", path.display()),
            ConfigError::Untrusted { path, reason } => write!(
                f,
                "refusing config {}: {reason} (podspawn reads only a config that only root can write)",
                path.display()
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Why `sudo: true` is refused where it is.
pub const SUDO_NEEDS_SANDBOX: &str = "sudo: root inside a container that shares the host's kernel \
     needs a sandboxing runtime (security.runtime: runsc) or security.sudo_without_sandbox: true";

/// Why `sudo: true` is refused with a read-only root.
pub const SUDO_NEEDS_WRITABLE_ROOT: &str = "read_only_root: a package manager (what sudo is \
     for) writes /usr, /var and /etc; use either read_only_root or sudo";

/// Parses config text; an error comes back as (line, message naming the key).
pub(crate) fn parse(text: &str) -> Result<ServerConfig, (Option<usize>, String)> {
    // A file of nothing but comments is an empty document, which serde_yaml would
    // refuse for a struct; it means "all defaults".
    if !yaml::has_content(text) {
        return Ok(ServerConfig::default());
    }
    let config: ServerConfig = yaml::from_str(text)?;
    let security = &config.security;
    if security.sudo
        && !security.sudo_without_sandbox
        && !security
            .runtime
            .as_ref()
            .is_some_and(RuntimeName::is_sandbox)
    {
        let line = text
            .lines()
            .position(|line| line.trim_start().starts_with("sudo:"))
            .map(|index| index + 1);
        return Err((line, format!("security.{SUDO_NEEDS_SANDBOX}")));
    }
    if security.sudo && security.read_only_root {
        let line = text
            .lines()
            .position(|line| line.trim_start().starts_with("read_only_root:"))
            .map(|index| index + 1);
        return Err((line, format!("security.{SUDO_NEEDS_WRITABLE_ROOT}")));
    }
    let network = &config.network;
    for denied in &network.deny {
        let pools = [network.pool.to_string(), network.services_pool.to_string()];
        let overlapped = pools.iter().find(|pool| {
            crate::network::Cidr::parse(pool).is_ok_and(|pool| pool.overlaps_range(denied))
        });
        if let Some(pool) = overlapped {
            let line = text
                .lines()
                .position(|line| line.contains(&denied.base.to_string()))
                .map(|index| index + 1);
            return Err((
                line,
                format!(
                    "network.deny: {denied} overlaps podspawn's pool {pool}: containers could \
                     no longer reach their own services"
                ),
            ));
        }
    }
    if network.pool.overlaps(&network.services_pool) {
        let line = text
            .lines()
            .position(|line| line.trim_start().starts_with("services_pool:"))
            .or_else(|| {
                text.lines()
                    .position(|line| line.trim_start().starts_with("pool:"))
            })
            .map(|index| index + 1);
        return Err((
            line,
            format!(
                "network.services_pool: {} overlaps network.pool {}; give each its own range",
                network.services_pool, network.pool
            ),
        ));
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> (Option<usize>, String) {
        parse(text).expect_err("config should be refused")
    }

    #[test]
    fn declared_projects_are_checked_like_add_projects_arguments() {
        let config =
            parse("projects:\n  api:\n    repo: github.com/a/api\n    branch: main\n").unwrap();
        assert_eq!(config.projects.len(), 1);
        let (line, message) =
            parse_err("projects:\n  api:\n    repo: x\n    branch: --upload-pack=evil\n");
        assert_eq!(line, Some(4));
        assert!(message.contains("not a branch name"), "{message}");
        let (_, message) = parse_err("projects:\n  Api_1:\n    repo: x\n");
        assert!(message.contains("projects"), "{message}");
        let (_, message) = parse_err("projects:\n  api:\n    repo: x\n    tag: v1\n");
        assert!(message.contains("unknown key"), "{message}");
    }

    #[test]
    fn empty_and_comment_only_files_mean_all_defaults() {
        for text in ["", "\n", "# nothing here\n\n  # still nothing\n", "---\n"] {
            let config = parse(text).unwrap();
            assert_eq!(
                config.auth.key_dir.as_path(),
                Path::new("/etc/podspawn/keys")
            );
            assert_eq!(config.session.mode, SessionMode::GracePeriod);
        }
    }

    #[test]
    fn the_two_pools_may_not_overlap() {
        let (line, message) =
            parse_err("network:\n  pool: 10.0.0.0/16\n  services_pool: 10.0.128.0/17\n");
        assert_eq!(line, Some(3));
        assert!(
            message
                .contains("network.services_pool: 10.0.128.0/17 overlaps network.pool 10.0.0.0/16"),
            "{message}"
        );
        let (line, _) = parse_err("network:\n  pool: 10.215.0.0/16\n");
        assert_eq!(line, Some(2));
        assert!(parse("network:\n  pool: 10.0.0.0/16\n  services_pool: 10.1.0.0/16\n").is_ok());
    }

    #[test]
    fn the_commented_default_config_is_the_defaults() {
        // As written, it is every default, and an audit log.
        let written = parse(COMMENTED_DEFAULT).unwrap();
        assert_eq!(written.auth.group, GroupName("podspawn".into()));
        assert_eq!(
            written.log.audit_log,
            Some(AbsolutePath::from("/var/log/podspawn/audit.jsonl"))
        );
        // Uncommented, it must parse to exactly the defaults.
        let uncommented: String = COMMENTED_DEFAULT
            .lines()
            .filter(|line| {
                line.starts_with('#')
                    && !line.starts_with("# ")
                    && !line.starts_with("#  #")
                    && *line != "#"
            })
            .map(|line| format!("{}\n", &line[1..]))
            .collect();
        let config = parse(&uncommented).unwrap_or_else(|err| panic!("{err:?}\n{uncommented}"));
        let defaults = ServerConfig::default();
        assert_eq!(format!("{:?}", config), format!("{:?}", defaults));
    }

    #[test]
    fn the_example_in_contrib_parses() {
        let config = parse(include_str!("../contrib/config.example.yaml")).unwrap();
        assert_eq!(config.session.grace_period.0, Duration::from_secs(300));
        assert_eq!(config.defaults.cpus, Cpus(1.5));
        assert_eq!(config.services.share, Share(0.5));
    }

    #[test]
    fn defaults_match_the_documented_values() {
        let config = ServerConfig::default();
        assert_eq!(config.network.services_pool.to_string(), "10.215.0.0/16");
        assert_eq!(config.services.ready_timeout.0, Duration::from_secs(30));
        let capabilities: Vec<&str> = config
            .services
            .capabilities
            .iter()
            .map(|capability| capability.0.as_str())
            .collect();
        assert_eq!(
            capabilities,
            ["CHOWN", "DAC_OVERRIDE", "FOWNER", "SETGID", "SETUID"]
        );
        assert!(!config.services.persist_volumes);
        assert_eq!(config.docker.binary, "docker");
        assert_eq!(config.docker.host, None);
        assert_eq!(config.defaults.shell, AbsolutePath::from("/bin/bash"));
        assert_eq!(config.defaults.cpus, Cpus(2.0));
        assert_eq!(config.defaults.memory, ByteSize(2 << 30));
        assert_eq!(config.session.grace_period.0, Duration::from_secs(60));
        assert_eq!(config.session.max_lifetime.0, Duration::from_secs(8 * 3600));
        assert_eq!(
            config.state.db_path.as_path(),
            Path::new("/var/lib/podspawn/state.db")
        );
        assert_eq!(
            config.state.lock_dir.as_path(),
            Path::new("/var/lib/podspawn/locks")
        );
        assert_eq!(config.log.level, LogLevel(log::LevelFilter::Info));
        assert_eq!(config.log.file, None);
    }

    #[test]
    fn every_documented_key_is_read() {
        let text = "\
auth:
  key_dir: /srv/keys
  github_url: http://127.0.0.1:8080
  group: devs
  home_dir: /srv/home
docker:
  binary: /usr/bin/podman
  host: unix:///run/podman.sock
defaults:
  image: debian:bookworm
  shell: /bin/zsh
  cpus: 1.5
  memory: 512m
session:
  grace_period: 90s
  max_lifetime: 1h30m
  mode: destroy-on-disconnect
state:
  db_path: /srv/state.db
  lock_dir: /srv/locks
  agent_dir: /srv/agents
network:
  pool: 10.99.0.0/20
log:
  file: /var/log/podspawn.log
  level: debug
  audit_log: /var/log/podspawn-audit.jsonl
";
        let config = parse(text).unwrap();
        assert_eq!(config.auth.key_dir.as_path(), Path::new("/srv/keys"));
        assert_eq!(config.auth.github_url, "http://127.0.0.1:8080");
        assert_eq!(config.auth.group, GroupName("devs".into()));
        assert_eq!(config.auth.home_dir.as_path(), Path::new("/srv/home"));
        assert_eq!(config.docker.binary, "/usr/bin/podman");
        assert_eq!(
            config.docker.host.as_deref(),
            Some("unix:///run/podman.sock")
        );
        assert_eq!(config.defaults.image, "debian:bookworm");
        assert_eq!(config.defaults.shell, AbsolutePath::from("/bin/zsh"));
        assert_eq!(config.defaults.cpus, Cpus(1.5));
        assert_eq!(config.defaults.memory, ByteSize(512 << 20));
        assert_eq!(config.session.grace_period.0, Duration::from_secs(90));
        assert_eq!(config.session.max_lifetime.0, Duration::from_secs(5400));
        assert_eq!(config.session.mode, SessionMode::DestroyOnDisconnect);
        assert_eq!(config.state.db_path.as_path(), Path::new("/srv/state.db"));
        assert_eq!(config.state.lock_dir.as_path(), Path::new("/srv/locks"));
        assert_eq!(config.state.agent_dir.as_path(), Path::new("/srv/agents"));
        assert_eq!(config.network.pool.to_string(), "10.99.0.0/20");
        assert_eq!(
            config.log.file,
            Some(AbsolutePath::from("/var/log/podspawn.log"))
        );
        assert_eq!(config.log.level, LogLevel(log::LevelFilter::Debug));
        assert_eq!(
            config.log.audit_log,
            Some(AbsolutePath::from("/var/log/podspawn-audit.jsonl"))
        );
    }

    #[test]
    fn hardening_keys_are_read_and_checked() {
        let config = parse(
            "defaults:\n  home_size: 256m\n  nofile: 4096\n  nproc: 2048\n\
             network:\n  allow_host: true\n  allow_metadata: true\n  deny: [192.168.0.0/16, 10.9.9.9]\n\
             security:\n  runtime: runsc\n  sudo: true\n",
        )
        .unwrap();
        assert!(
            parse("security:\n  read_only_root: true\n")
                .unwrap()
                .security
                .read_only_root
        );
        assert_eq!(config.defaults.home_size, ByteSize(256 << 20));
        assert_eq!(
            (config.defaults.nofile, config.defaults.nproc),
            (4096, Some(2048))
        );
        assert!(config.network.allow_host && config.network.allow_metadata);
        let denied: Vec<String> = config
            .network
            .deny
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(denied, ["192.168.0.0/16", "10.9.9.9/32"]);
        assert_eq!(config.security.runtime, Some(RuntimeName("runsc".into())));
        assert!(config.security.sudo);
        let defaults = ServerConfig::default();
        assert!(!defaults.network.allow_host && !defaults.network.allow_metadata);
        assert_eq!(defaults.defaults.nproc, None);
        assert_eq!(
            defaults.auth.user_dir,
            AbsolutePath::from("/etc/podspawn/users")
        );

        for (text, line, needle) in [
            ("network:\n  deny:\n    - 10.0.0.1/8\n", 3, "host bits"),
            (
                "network:\n  deny: [10.0.0.0/33]\n",
                2,
                "invalid address range",
            ),
            (
                "network:\n  deny: [example.com]\n",
                2,
                "invalid address range",
            ),
            (
                "network:\n  deny: [10.0.0.0/8]\n",
                2,
                "overlaps podspawn's pool 10.214.0.0/16",
            ),
            ("defaults:\n  nofile: 0\n", 2, "at least 1"),
            ("docker:\n  timeout: 0s\n", 2, "at least 1s"),
            ("defaults:\n  pids_limit: 0\n", 2, "at least 1"),
            (
                "security:\n  runtime: '--privileged'\n",
                2,
                "invalid runtime",
            ),
            (
                "security:\n  read_only_root: true\n  sudo: true\n",
                3,
                "needs a sandboxing runtime",
            ),
            (
                "security:\n  runtime: runc\n  sudo: true\n",
                3,
                "security.sudo",
            ),
            (
                "security:\n  runtime: runsc\n  read_only_root: true\n  sudo: true\n",
                3,
                "use either read_only_root or sudo",
            ),
        ] {
            let (got, message) = parse_err(text);
            assert_eq!(got, Some(line), "{text:?}: {message}");
            assert!(message.contains(needle), "{text:?}: {message}");
        }
        assert!(parse("security:\n  sudo: true\n  sudo_without_sandbox: true\n").is_ok());
        assert!(parse("security:\n  runtime: kata-qemu\n  sudo: true\n").is_ok());
    }

    #[test]
    fn the_default_home_is_outside_the_directories_users_cannot_enter() {
        let config = ServerConfig::default();
        assert_eq!(config.private_dir_holding_home(), None);
        let inside = parse("auth:\n  home_dir: /var/lib/podspawn/home\n").unwrap();
        assert_eq!(
            inside.private_dir_holding_home(),
            Some(Path::new("/var/lib/podspawn"))
        );
        // A sibling whose name merely starts the same is outside.
        let beside = parse(
            "auth:\n  home_dir: /var/lib/podspawn-home\nstate:\n  lock_dir: /var/lib/podspawn-h\n",
        )
        .unwrap();
        assert_eq!(beside.private_dir_holding_home(), None);
    }

    #[test]
    fn a_partial_section_keeps_the_other_defaults() {
        let config = parse("session:\n  mode: persistent\n").unwrap();
        assert_eq!(config.session.mode, SessionMode::Persistent);
        assert_eq!(config.session.grace_period.0, Duration::from_secs(60));
    }

    #[test]
    fn unknown_keys_are_named_with_their_line() {
        let (line, message) = parse_err("auth:\n  key_dir: /k\n  keydir: /x\n");
        assert_eq!(line, Some(3));
        assert!(message.contains("auth"), "{message}");
        assert!(message.contains("keydir"), "{message}");

        let (line, message) = parse_err("session:\n  mode: persistent\nsesion: {}\n");
        assert_eq!(line, Some(3));
        assert!(message.contains("sesion"), "{message}");
    }

    #[test]
    fn bad_values_name_the_key_and_line() {
        let cases = [
            (
                "session:\n  grace_period: 5x\n",
                "session.grace_period",
                "5x",
            ),
            (
                "session:\n  max_lifetime: 60\n",
                "session.max_lifetime",
                "60",
            ),
            ("defaults:\n  memory: 2gb\n", "defaults.memory", "2gb"),
            ("defaults:\n  cpus: -1\n", "defaults.cpus", "-1"),
            ("session:\n  mode: forever\n", "session.mode", "forever"),
            ("log:\n  level: loud\n", "log.level", "loud"),
            (
                "defaults:\n  image: --privileged\n",
                "defaults.image",
                "invalid image \"--privileged\"",
            ),
            (
                "defaults:\n  image: \"a b\"\n",
                "defaults.image",
                "invalid image",
            ),
            (
                "docker:\n  binary: bin/docker\n",
                "docker.binary",
                "invalid program \"bin/docker\"",
            ),
            (
                "docker:\n  binary: -docker\n",
                "docker.binary",
                "invalid program",
            ),
            (
                "docker:\n  binary: \"\"\n",
                "docker.binary",
                "invalid program",
            ),
            ("state:\n  db_path: state.db\n", "state.db_path", "state.db"),
            (
                "state:\n  agent_dir: /a,b\n",
                "state.agent_dir",
                "must not contain",
            ),
            (
                "network:\n  pool: 10.0.0.0/30\n",
                "network.pool",
                "between /8 and /24",
            ),
            (
                "network:\n  services_pool: 10.0.0.0/24\n",
                "network.services_pool",
                "between /8 and /21",
            ),
            (
                "services:\n  share: 1.5\n",
                "services.share",
                "invalid share",
            ),
            ("services:\n  share: 0\n", "services.share", "invalid share"),
            (
                "services:\n  capabilities: [CHOWN, ALL]\n",
                "services.capabilities",
                "\"ALL\" is not a capability",
            ),
            (
                "services:\n  ready_timeout: 30\n",
                "services.ready_timeout",
                "invalid duration",
            ),
            ("auth:\n  key_dir: [a, b]\n", "auth.key_dir", "sequence"),
            ("log: {}\nauth: [1]\n", "auth", "expected a mapping of keys"),
        ];
        for (text, key, detail) in cases {
            let (line, message) = parse_err(text);
            assert_eq!(line, Some(2), "{text:?}: {message}");
            assert!(message.contains(key), "{text:?}: {message}");
            assert!(message.contains(detail), "{text:?}: {message}");
        }
    }

    #[test]
    fn durations_parse_strictly() {
        let ok = [
            ("90s", 90),
            ("5m", 300),
            ("8h", 28800),
            ("1h30m", 5400),
            ("2d", 172800),
            ("0s", 0),
        ];
        for (text, seconds) in ok {
            assert_eq!(
                ConfigDuration::parse(text),
                Ok(Duration::from_secs(seconds))
            );
        }
        for text in [
            "",
            "90",
            "s",
            "5 m",
            "-5m",
            "1.5h",
            "5M",
            "5min",
            "m5",
            "99999999999999999999s",
            "1h 30m",
        ] {
            assert!(ConfigDuration::parse(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn sizes_parse_strictly() {
        assert_eq!(ByteSize::parse("512m"), Ok(512 << 20));
        assert_eq!(ByteSize::parse("2g"), Ok(2 << 30));
        assert_eq!(ByteSize::parse("2G"), Ok(2 << 30));
        assert_eq!(ByteSize::parse("64k"), Ok(64 << 10));
        for text in ["", "2", "g", "2gb", "1.5g", "0m", "-1g", "2 g", "2t"] {
            assert!(ByteSize::parse(text).is_err(), "{text:?} accepted");
        }
    }

    #[test]
    fn only_a_file_only_root_can_write_is_read_under_a_borrowed_group() {
        // /etc/passwd: root's, in root's /etc, on every machine.
        let bytes = read_root_only(Path::new("/etc/passwd")).unwrap();
        assert!(bytes.starts_with(b"root:"));

        let dir = std::env::temp_dir().join(format!("podspawn-trust-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let open_dir = dir.join("open");
        std::fs::create_dir_all(&open_dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let file = open_dir.join("config.yaml");
        std::fs::write(&file, "session:\n  mode: persistent\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reason = read_root_only(&file).unwrap_err();
        assert!(reason.contains(&open_dir.display().to_string()), "{reason}");

        // A link of anyone's is followed once, to a file that is then checked itself:
        // pointed at a root file, that file is what is read (and it is no config).
        let link = open_dir.join("link.yaml");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        match load_trusted(&link, true) {
            Err(ConfigError::Invalid { path, .. }) => assert_eq!(path, Path::new("/etc/passwd")),
            other => panic!("{:?}", other.map(|config| config.source)),
        }
        assert!(matches!(
            load_trusted(&file, true),
            Err(ConfigError::Untrusted { .. })
        ));
        // A missing override is refused; a missing default means every default.
        let missing = dir.join("missing.yaml");
        assert!(matches!(
            load_trusted(&missing, true),
            Err(ConfigError::Untrusted { .. })
        ));
        assert_eq!(load_trusted(&missing, false).unwrap().source, missing);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn load_names_the_file_and_missing_file_is_defaults() {
        let dir = std::env::temp_dir().join(format!("podspawn-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("absent.yaml");
        assert_eq!(load_path(&missing).unwrap().source, missing);

        let bad = dir.join("bad.yaml");
        std::fs::write(&bad, "session:\n  grace_period: soon\n").unwrap();
        let message = load_path(&bad).unwrap_err().to_string();
        assert!(message.contains(&bad.display().to_string()), "{message}");
        assert!(message.contains("line 2"), "{message}");
        assert!(message.contains("session.grace_period"), "{message}");

        let not_a_file = dir.join("a-directory");
        std::fs::create_dir_all(&not_a_file).unwrap();
        assert!(matches!(
            load_path(&not_a_file),
            Err(ConfigError::Read { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
