//! One user's settings where they differ from the server's: `<auth.user_dir>/<user>.yaml`.
//!
//! The file is root's, read like the server config (under the borrowed group, only
//! one only root could have written, checked on the descriptor it is read from) and
//! validated as strictly: an unknown key or a bad value names the file, the line and
//! the key. A user with no file has the server's settings.
//!
//! Precedence, for each setting: what the project's Podfile says (image, shell, env),
//! then this file, then the server config.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::config::{
    AbsolutePath, ByteSize, ConfigError, Cpus, RuntimeName, ServerConfig, SessionMode,
};
use crate::keys::UserName;
use crate::podfile::{EnvName, EnvValue};
use crate::yaml;

/// What one user's file may set; what it leaves out is the server's.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UserSettings {
    #[serde(deserialize_with = "image_name")]
    pub image: Option<String>,
    pub shell: Option<AbsolutePath>,
    pub cpus: Option<Cpus>,
    pub memory: Option<ByteSize>,
    #[serde(deserialize_with = "crate::config::some_positive")]
    pub pids_limit: Option<u32>,
    pub home_size: Option<ByteSize>,
    pub mode: Option<SessionMode>,
    /// `session.max_per_user` for this user.
    #[serde(deserialize_with = "max_sessions")]
    pub max_sessions: Option<u32>,
    /// Variables every session of theirs has (a project's Podfile wins over these).
    pub env: BTreeMap<EnvName, EnvValue>,
    pub runtime: Option<RuntimeName>,
    pub sudo: Option<bool>,
}

fn image_name<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::container::check_image(&text).map_err(de::Error::custom)?;
    Ok(Some(text))
}

fn max_sessions<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    let value = u32::deserialize(deserializer)?;
    if (1..=crate::network::MAX_SLOTS).contains(&value) {
        Ok(Some(value))
    } else {
        Err(de::Error::custom(format!(
            "{value} is not between 1 and {} (the addresses of a user's network)",
            crate::network::MAX_SLOTS
        )))
    }
}

/// The file of `user`'s settings.
pub fn path(config: &ServerConfig, user: &UserName) -> PathBuf {
    config.auth.user_dir.as_path().join(format!("{user}.yaml"))
}

/// `user`'s settings: none when they have no file. Under the borrowed group the file
/// must be one only root could have written.
pub fn load(
    config: &ServerConfig,
    user: &UserName,
    borrowed_group: bool,
) -> Result<UserSettings, ConfigError> {
    let path = path(config, user);
    let bytes = if borrowed_group {
        match crate::config::read_trusted(&path) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return Ok(UserSettings::default()),
            Err(reason) => return Err(ConfigError::Untrusted { path, reason }),
        }
    } else {
        match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(UserSettings::default());
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        }
    };
    from_bytes(config, &path, &bytes)
}

/// Every user file in `auth.user_dir` with what is wrong with it, for `doctor`.
pub fn check_all(config: &ServerConfig) -> Vec<(PathBuf, Result<(), ConfigError>)> {
    use std::os::unix::fs::MetadataExt;
    let dir = config.auth.user_dir.as_path();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    // spawn looks for every user's file, as the user: a directory they cannot
    // search refuses them all, file or not.
    for above in dir.ancestors() {
        if let Ok(meta) = std::fs::metadata(above)
            && !reachable(&meta, 0o001, 0o010)
        {
            let reason = format!(
                "{} is mode {:04o}: spawn runs as the user and cannot look in it, so every \
                 user's login is refused",
                above.display(),
                meta.mode() & 0o7777
            );
            return vec![(
                dir.to_path_buf(),
                Err(ConfigError::Untrusted {
                    path: dir.to_path_buf(),
                    reason,
                }),
            )];
        }
    }
    let mut found: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    found.sort();
    found
        .into_iter()
        .map(|path| {
            let stem = path.file_stem().unwrap_or_default().to_string_lossy();
            let checked = match UserName::parse(&stem) {
                Err(err) => Err(ConfigError::Invalid {
                    path: path.clone(),
                    line: None,
                    message: format!("the file's name is no user's: {err}"),
                }),
                Ok(user) => readable_as_spawn_reads_it(&path)
                    .and_then(|()| load(config, &user, false).map(|_| ())),
            };
            (path, checked)
        })
        .collect()
}

/// Whether spawn, running as a user with the docker group borrowed, has the access
/// `others` (the mode bit for everyone) or `group` (for the file's group, when it is
/// docker's) grant.
fn reachable(meta: &std::fs::Metadata, others: u32, group: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let docker = crate::accounts::group_id("docker").ok().flatten();
    meta.mode() & others != 0 || (Some(meta.gid()) == docker && meta.mode() & group != 0)
}

/// What spawn, running as the user under the borrowed group, demands of the file:
/// root's alone to write (checked as spawn checks it), and readable by the user (by
/// others: spawn is not root).
fn readable_as_spawn_reads_it(path: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::MetadataExt;
    let untrusted = |reason: String| ConfigError::Untrusted {
        path: path.to_path_buf(),
        reason,
    };
    crate::config::read_trusted(path).map_err(untrusted)?;
    let meta = std::fs::metadata(path).map_err(|err| untrusted(err.to_string()))?;
    if !reachable(&meta, 0o004, 0o040) {
        return Err(untrusted(format!(
            "mode {:04o}: spawn runs as the user and cannot read it (0644)",
            meta.mode() & 0o7777
        )));
    }
    for dir in path.ancestors().skip(1) {
        let meta = std::fs::metadata(dir).map_err(|err| untrusted(err.to_string()))?;
        if !reachable(&meta, 0o001, 0o010) {
            return Err(untrusted(format!(
                "{} is mode {:04o}: spawn runs as the user and cannot reach the file",
                dir.display(),
                meta.mode() & 0o7777
            )));
        }
    }
    Ok(())
}

fn from_bytes(
    config: &ServerConfig,
    path: &Path,
    bytes: &[u8],
) -> Result<UserSettings, ConfigError> {
    let invalid = |line: Option<usize>, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        line,
        message,
    };
    let text = std::str::from_utf8(bytes)
        .map_err(|_| invalid(None, "file is not valid UTF-8".to_string()))?;
    let settings = parse(text).map_err(|(line, message)| invalid(line, message))?;
    if let Err(message) = check_sudo(config, &settings) {
        let line = text
            .lines()
            .position(|line| line.trim_start().starts_with("sudo:"))
            .or_else(|| {
                text.lines()
                    .position(|line| line.trim_start().starts_with("runtime:"))
            })
            .map(|index| index + 1);
        return Err(invalid(line, message));
    }
    Ok(settings)
}

pub(crate) fn parse(text: &str) -> Result<UserSettings, (Option<usize>, String)> {
    if !yaml::has_content(text) {
        return Ok(UserSettings::default());
    }
    yaml::from_str(text)
}

/// Sudo for this user only where the server allows it: under a sandboxing runtime
/// (theirs or the server's), or where the admin said `sudo_without_sandbox`.
fn check_sudo(config: &ServerConfig, settings: &UserSettings) -> Result<(), String> {
    let security = &config.security;
    let sudo = settings.sudo.unwrap_or(security.sudo);
    let runtime = settings.runtime.as_ref().or(security.runtime.as_ref());
    if sudo && !security.sudo_without_sandbox && !runtime.is_some_and(RuntimeName::is_sandbox) {
        return Err(crate::config::SUDO_NEEDS_SANDBOX.to_string());
    }
    if sudo && security.read_only_root {
        return Err(format!(
            "sudo: the server's security.{}",
            crate::config::SUDO_NEEDS_WRITABLE_ROOT
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> ServerConfig {
        crate::config::parse(text).unwrap()
    }

    fn load_text(config: &ServerConfig, text: &str) -> Result<UserSettings, ConfigError> {
        from_bytes(
            config,
            Path::new("/etc/podspawn/users/alice.yaml"),
            text.as_bytes(),
        )
    }

    #[test]
    fn every_key_is_read() {
        let settings = load_text(
            &server("security:\n  runtime: runsc\n"),
            "image: debian:bookworm\nshell: /bin/zsh\ncpus: 0.5\nmemory: 512m\n\
             pids_limit: 100\nhome_size: 64m\nmode: persistent\nmax_sessions: 2\n\
             env:\n  EDITOR: vim\nruntime: runsc\nsudo: true\n",
        )
        .unwrap();
        assert_eq!(settings.image.as_deref(), Some("debian:bookworm"));
        assert_eq!(settings.shell, Some(AbsolutePath::from("/bin/zsh")));
        assert_eq!(settings.cpus, Some(Cpus(0.5)));
        assert_eq!(settings.memory, Some(ByteSize(512 << 20)));
        assert_eq!(settings.pids_limit, Some(100));
        assert_eq!(settings.home_size, Some(ByteSize(64 << 20)));
        assert_eq!(settings.mode, Some(SessionMode::Persistent));
        assert_eq!(settings.max_sessions, Some(2));
        assert_eq!(settings.env.len(), 1);
        assert_eq!(settings.runtime, Some(RuntimeName("runsc".into())));
        assert_eq!(settings.sudo, Some(true));
    }

    #[test]
    fn bad_values_name_the_file_the_line_and_the_key() {
        let config = ServerConfig::default();
        for (text, line, needle) in [
            ("cpus: 1\nmemroy: 2g\n", 2, "memroy"),
            ("image: -v\n", 1, "invalid image"),
            ("max_sessions: 14\n", 1, "not between 1 and 13"),
            ("env:\n  PODSPAWN_USER: x\n", 2, "podspawn's to set"),
            ("runtime: 'run c'\n", 1, "invalid runtime"),
            ("memory: 2\n", 1, "invalid size"),
        ] {
            let err = load_text(&config, text).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!(
                    "config /etc/podspawn/users/alice.yaml, line {line}: "
                )),
                "{text:?}: {err}"
            );
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }

    #[test]
    fn sudo_needs_a_sandbox_or_the_admins_word() {
        let plain = ServerConfig::default();
        let err = load_text(&plain, "cpus: 1\nsudo: true\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: "), "{err}");
        assert!(err.contains("sandbox"), "{err}");
        // The user's own runtime, or the server's, is a sandbox: allowed.
        assert!(load_text(&plain, "sudo: true\nruntime: runsc\n").is_ok());
        let sandboxed = server("security:\n  runtime: runsc\n");
        assert!(load_text(&sandboxed, "sudo: true\n").is_ok());
        // A user taken out of the server's sandbox loses the server's sudo.
        let sudo_server = server("security:\n  runtime: runsc\n  sudo: true\n");
        assert!(load_text(&sudo_server, "runtime: runc\n").is_err());
        let trusting = server("security:\n  sudo_without_sandbox: true\n");
        assert!(load_text(&trusting, "sudo: true\n").is_ok());
    }

    #[test]
    fn no_file_and_an_empty_file_mean_the_servers_settings() {
        let dir = std::env::temp_dir().join(format!("podspawn-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = server(&format!("auth:\n  user_dir: {}\n", dir.display()));
        let alice = UserName::parse("alice").unwrap();
        assert_eq!(
            load(&config, &alice, false).unwrap(),
            UserSettings::default()
        );
        std::fs::write(path(&config, &alice), "# nothing\n").unwrap();
        assert_eq!(
            load(&config, &alice, false).unwrap(),
            UserSettings::default()
        );
        std::fs::write(path(&config, &alice), "cpus: 0\n").unwrap();
        let checked = check_all(&config);
        assert_eq!(checked.len(), 1);
        assert!(checked[0].1.is_err());
        // A directory the users cannot search refuses them all: said once, for it.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let checked = check_all(&config);
        assert_eq!(checked.len(), 1);
        assert_eq!(checked[0].0, dir);
        let said = checked[0].1.as_ref().unwrap_err().to_string();
        assert!(said.contains("every user's login is refused"), "{said}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
