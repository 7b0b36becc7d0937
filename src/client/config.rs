//! The laptop's config, `~/.podspawn/config.yaml`: which server each `NAME.pod`
//! goes to.
//!
//! ```yaml
//! servers:
//!   default: devbox.company.com       # every NAME.pod without a mapping of its own
//!   mappings:
//!     api.pod: gpu.company.com:2222   # or `api:`
//! ```
//!
//! Strict like the server's: an unknown key, a wrong type, or a server that is not a
//! plain `host[:port]` is an error naming the file, the line and the key. A server's
//! name ends up in ssh's configuration (`HostKeyAlias`) and on `connect`'s command
//! line, so anything that could read as an option or leave a quoted word (a leading
//! `-`, spaces, quotes, `%`, `\`, control characters) is refused here, before any
//! of it is written.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer};

use crate::config::ConfigError;
use crate::project::ProjectName;
use crate::yaml;

/// Where the client config is, below the home directory.
pub const RELATIVE_PATH: &str = ".podspawn/config.yaml";

/// The port ssh dials when nothing names another.
pub const SSH_PORT: u16 = 22;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    pub servers: Servers,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Servers {
    /// Where every `NAME.pod` without a mapping goes.
    pub default: Option<Server>,
    /// `NAME` (written `NAME` or `NAME.pod`) → its server.
    #[serde(deserialize_with = "mappings")]
    pub mappings: BTreeMap<ProjectName, Server>,
}

/// A server as the config names it: a host name or address, and maybe a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: Option<u16>,
}

/// Which key of the config chose a server (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chosen {
    Default,
    Mapping(ProjectName),
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            Chosen::Default => f.write_str("servers.default"),
            Chosen::Mapping(name) => write!(f, "servers.mappings.{name}"),
        }
    }
}

impl ClientConfig {
    /// The server for project `name`: its mapping, else the default.
    pub fn server_for(&self, name: &ProjectName) -> Option<(&Server, Chosen)> {
        match self.servers.mappings.get(name) {
            Some(server) => Some((server, Chosen::Mapping(name.clone()))),
            None => self
                .servers
                .default
                .as_ref()
                .map(|server| (server, Chosen::Default)),
        }
    }

    /// Every server the config names, each once.
    pub fn all_servers(&self) -> Vec<(&Server, Chosen)> {
        let mut all: Vec<(&Server, Chosen)> = Vec::new();
        let named = self
            .servers
            .default
            .iter()
            .map(|server| (server, Chosen::Default))
            .chain(
                self.servers
                    .mappings
                    .iter()
                    .map(|(name, server)| (server, Chosen::Mapping(name.clone()))),
            );
        for (server, chosen) in named {
            if !all.iter().any(|(known, _)| *known == server) {
                all.push((server, chosen));
            }
        }
        all
    }
}

/// The most a client config may hold; it names a few servers.
const MAX_SIZE: u64 = 64 * 1024;

/// The client config under `home`; `None` when there is no file. It is read on every
/// `ssh NAME.pod`, so something that is not a regular file (a FIFO would block ssh)
/// or is larger than a config can be is refused, not read.
pub fn load(home: &Path) -> Result<Option<ClientConfig>, ConfigError> {
    let path = home.join(RELATIVE_PATH);
    match super::read_regular(&path, MAX_SIZE) {
        Ok(None) => Ok(None),
        Ok(Some(bytes)) => parse(&path, &bytes).map(Some),
        Err(source) => Err(ConfigError::Read { path, source }),
    }
}

pub fn parse(path: &Path, bytes: &[u8]) -> Result<ClientConfig, ConfigError> {
    let invalid = |line: Option<usize>, message: String| ConfigError::Invalid {
        path: PathBuf::from(path),
        line,
        message,
    };
    let text =
        std::str::from_utf8(bytes).map_err(|_| invalid(None, "not UTF-8 text".to_string()))?;
    if !yaml::has_content(text) {
        return Ok(ClientConfig::default());
    }
    yaml::from_str(text).map_err(|(line, message)| invalid(line, message))
}

impl Server {
    pub fn parse(text: &str) -> Result<Server, String> {
        let refuse = |why: String| {
            Err(format!(
                "{:?} is not a server: {why} (write HOST or HOST:PORT)",
                text.escape_debug().to_string()
            ))
        };
        if text.is_empty() {
            return refuse("it is empty".to_string());
        }
        if text.starts_with('-') {
            return refuse("it would read as an option".to_string());
        }
        let (host, port) = if let Some(rest) = text.strip_prefix('[') {
            // [IPv6] or [IPv6]:PORT
            let Some((address, after)) = rest.split_once(']') else {
                return refuse("'[' without ']'".to_string());
            };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return refuse(format!("{after:?} after ']'")),
                },
            };
            (address, port)
        } else if text.matches(':').count() > 1 {
            // A bare IPv6 address: no port (that needs the brackets).
            (text, None)
        } else {
            match text.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (text, None),
            }
        };
        if let Some(bad) = host
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
        {
            return refuse(format!(
                "it holds '{}' (only letters, digits, '.', '-', '_', and ':' in an IPv6 address)",
                bad.escape_debug()
            ));
        }
        if host.is_empty() || host.starts_with(['-', '.']) {
            return refuse("the host name is not one".to_string());
        }
        if host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err() {
            return refuse("':' outside an IPv6 address".to_string());
        }
        let port = match port {
            None => None,
            // Digits only, as written: no sign, no leading zero.
            Some(port) => match port.parse::<u16>() {
                Ok(number) if number > 0 && number.to_string() == port => Some(number),
                _ => return refuse(format!("{port:?} is not a port (1-65535)")),
            },
        };
        Ok(Server {
            host: host.to_string(),
            port,
        })
    }

    /// The port to dial: the config's, else the one ssh would have used.
    pub fn port_or(&self, ssh_port: u16) -> u16 {
        self.port.unwrap_or(ssh_port)
    }

    /// The name ssh keeps this server's host key under in known_hosts when dialled
    /// on `port` directly (`HOST`, or `[HOST]:PORT` off port 22): every `.pod` name of
    /// the server shares it, and so does a plain `ssh` to the server.
    pub fn known_hosts_name(&self, port: u16) -> String {
        if port == SSH_PORT {
            self.host.clone()
        } else {
            format!("[{}]:{port}", self.host)
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (self.port, self.host.contains(':')) {
            (None, _) => f.write_str(&self.host),
            (Some(port), false) => write!(f, "{}:{port}", self.host),
            (Some(port), true) => write!(f, "[{}]:{port}", self.host),
        }
    }
}

impl<'de> Deserialize<'de> for Server {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Server::parse(&text).map_err(de::Error::custom)
    }
}

/// A `.pod` name's project: `api.pod` (or `API.Pod`: host names are not case
/// sensitive) → `api`; `None` for a name that does not end in `.pod`.
pub fn project_of(pod_name: &str) -> Option<Result<ProjectName, String>> {
    let lower = pod_name.to_ascii_lowercase();
    let name = lower.strip_suffix(".pod")?;
    Some(ProjectName::parse(name))
}

/// `mappings:` keys are `NAME` or `NAME.pod`; two spellings of one name are an error.
fn mappings<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<BTreeMap<ProjectName, Server>, D::Error> {
    let written = BTreeMap::<String, Server>::deserialize(deserializer)?;
    let mut mapped = BTreeMap::new();
    for (key, server) in written {
        let name = match project_of(&key) {
            Some(name) => name,
            None => ProjectName::parse(&key),
        }
        .map_err(de::Error::custom)?;
        if mapped.insert(name.clone(), server).is_some() {
            return Err(de::Error::custom(format!(
                "{name} is mapped twice (as {name} and {name}.pod)"
            )));
        }
    }
    Ok(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(text: &str) -> Result<Server, String> {
        Server::parse(text)
    }

    #[test]
    fn servers_are_hosts_with_an_optional_port() {
        assert_eq!(
            server("devbox.company.com").unwrap(),
            Server {
                host: "devbox.company.com".into(),
                port: None
            }
        );
        assert_eq!(server("127.0.0.1:2222").unwrap().port, Some(2222));
        assert_eq!(server("[::1]:2222").unwrap().host, "::1");
        assert_eq!(server("::1").unwrap().port, None);
        assert_eq!(server("[fe80::1]").unwrap().to_string(), "fe80::1");
        assert_eq!(server("[::1]:22").unwrap().to_string(), "[::1]:22");
        assert_eq!(server("box_1.lan:22").unwrap().to_string(), "box_1.lan:22");
    }

    #[test]
    fn what_could_break_out_of_ssh_config_is_refused_with_its_reason() {
        for (text, reason) in [
            ("", "empty"),
            ("-oProxyCommand=x", "option"),
            ("dev box", "' '"),
            ("dev'box", "'\\''"),
            ("dev\"box", "'\\\"'"),
            ("dev%hbox", "'%'"),
            ("dev\\box", "'\\\\'"),
            ("dev\nbox", "'\\n'"),
            ("dev$(id)", "'$'"),
            ("host:0", "not a port"),
            ("host:65536", "not a port"),
            ("host:+22", "not a port"),
            ("host:022", "not a port"),
            ("host:", "not a port"),
            ("[::1", "without ']'"),
            ("[::1]x", "after ']'"),
            ("a:b:c", "IPv6"),
            (".hidden", "not one"),
        ] {
            let err = server(text).unwrap_err();
            assert!(err.contains(reason), "{text:?}: {err}");
            assert!(err.contains("HOST:PORT"), "{err}");
        }
    }

    #[test]
    fn known_hosts_names_follow_ssh() {
        let plain = server("devbox").unwrap();
        assert_eq!(plain.known_hosts_name(22), "devbox");
        assert_eq!(plain.known_hosts_name(2222), "[devbox]:2222");
        assert_eq!(server("::1").unwrap().known_hosts_name(22), "::1");
        assert_eq!(server("::1").unwrap().known_hosts_name(8022), "[::1]:8022");
    }

    fn parsed(text: &str) -> Result<ClientConfig, String> {
        parse(Path::new("/home/u/.podspawn/config.yaml"), text.as_bytes())
            .map_err(|err| err.to_string())
    }

    #[test]
    fn mappings_take_names_with_or_without_pod_and_win_over_the_default() {
        let config = parsed(
            "servers:\n  default: devbox:2200\n  mappings:\n    api.pod: gpu\n    ml: '[::1]:22'\n",
        )
        .unwrap();
        let name = |text: &str| ProjectName::parse(text).unwrap();
        let (api, chosen) = config.server_for(&name("api")).unwrap();
        assert_eq!(
            (api.host.as_str(), chosen.to_string()),
            ("gpu", "servers.mappings.api".into())
        );
        let (work, chosen) = config.server_for(&name("work")).unwrap();
        assert_eq!(
            (work.to_string(), chosen),
            ("devbox:2200".into(), Chosen::Default)
        );
        assert_eq!(config.all_servers().len(), 3);
        assert!(parsed("").unwrap().server_for(&name("api")).is_none());
    }

    #[test]
    fn bad_config_names_the_file_the_line_and_the_key() {
        for (text, expected) in [
            (
                "servers:\n  defualt: x\n",
                "config /home/u/.podspawn/config.yaml, line 2: servers.defualt: unknown key",
            ),
            (
                "servers:\n  default: devbox\n  mappings:\n    api: 'a b'\n",
                "line 4: servers.mappings.api: \"a b\" is not a server",
            ),
            (
                "servers:\n  mappings:\n    API: x\n",
                "is not a project name",
            ),
            (
                "servers:\n  mappings:\n    api: x\n    api.pod: y\n",
                "api is mapped twice",
            ),
            ("server: x\n", "line 1: server: unknown key"),
            ("servers:\n  default: [a]\n", "servers.default"),
        ] {
            let err = parsed(text).unwrap_err();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn a_config_that_is_no_regular_file_is_refused_without_blocking() {
        let home = std::env::temp_dir().join(format!("podspawn-client-{}", std::process::id()));
        std::fs::create_dir_all(home.join(".podspawn")).unwrap();
        assert!(load(&home).unwrap().is_none());
        let fifo =
            std::ffi::CString::new(home.join(RELATIVE_PATH).to_str().unwrap().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let err = load(&home).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        assert!(err.contains(RELATIVE_PATH), "{err}");
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn only_pod_names_have_projects() {
        assert_eq!(project_of("api.pod").unwrap().unwrap().as_str(), "api");
        assert_eq!(project_of("API.pod").unwrap().unwrap().as_str(), "api");
        assert_eq!(project_of("Api.POD").unwrap().unwrap().as_str(), "api");
        assert!(project_of("a.b.pod").unwrap().is_err());
        assert!(project_of("devbox.company.com").is_none());
    }
}
