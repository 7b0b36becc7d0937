//! The laptop side: where a `.pod` name goes (`config`), what ssh reads from
//! podspawn (`ssh_config`), and how `connect` reaches a server and carries ssh's
//! bytes (`relay`). Everything here runs as the developer, on their own files under
//! `$HOME`; nothing needs root, the setgid group or an engine.

pub mod config;
pub mod relay;
pub mod ssh_config;

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::ConfigError;

/// How long `connect` tries one address of a server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How many of a name's addresses `connect` tries.
const MAX_ADDRESSES: usize = 3;
/// How long resolving a server's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The developer's files podspawn reads and writes, all under their home.
#[derive(Debug, Clone)]
pub struct ClientPaths {
    pub home: PathBuf,
}

impl ClientPaths {
    /// From `$HOME`, as the developer's other tools find it.
    pub fn from_env() -> Result<ClientPaths, ClientError> {
        match std::env::var_os("HOME").map(PathBuf::from) {
            Some(home) if home.is_absolute() => Ok(ClientPaths { home }),
            _ => Err(ClientError::NoHome),
        }
    }

    /// `~/.podspawn/config.yaml`.
    pub fn config(&self) -> PathBuf {
        self.home.join(config::RELATIVE_PATH)
    }

    /// `~/.podspawn`, private.
    pub fn own_dir(&self) -> PathBuf {
        self.home.join(".podspawn")
    }

    /// Where `connect --prepare` writes each name's ssh options.
    pub fn hosts_dir(&self) -> PathBuf {
        self.own_dir().join("ssh")
    }

    /// `~/.ssh`.
    pub fn ssh_dir(&self) -> PathBuf {
        self.home.join(".ssh")
    }

    /// `~/.ssh/config`.
    pub fn ssh_config(&self) -> PathBuf {
        self.ssh_dir().join("config")
    }

    /// The client config: `None` when there is none.
    pub fn load_config(&self) -> Result<Option<config::ClientConfig>, ClientError> {
        config::load(&self.home).map_err(ClientError::Config)
    }
}

/// What stopped a client command; one line each.
#[derive(Debug)]
pub enum ClientError {
    NoHome,
    Config(ConfigError),
    /// `HOST` ends in `.pod` but names no project.
    NotAName {
        host: String,
        why: String,
    },
    /// No server for a `.pod` name.
    NoServer {
        host: String,
        project: String,
        config: PathBuf,
        exists: bool,
    },
    /// The options of a `.pod` name did not reach ssh (the name's file could not be
    /// written): connecting would land in the default environment instead.
    Unprepared {
        host: String,
    },
    Resolve {
        server: String,
        why: String,
        detail: String,
    },
    Unreachable {
        server: String,
        why: String,
        detail: String,
    },
    /// `~/.ssh/config` as it is cannot be edited safely.
    SshConfig {
        path: PathBuf,
        problem: String,
    },
    File {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ClientError::NoHome => f.write_str("HOME is not set to an absolute path"),
            ClientError::Config(err) => err.fmt(f),
            ClientError::NotAName { host, why } => {
                write!(f, "{host} is no podspawn name: {why}")
            }
            ClientError::NoServer {
                host,
                project,
                config,
                exists: true,
            } => write!(
                f,
                "no server for {host}: set servers.default (or servers.mappings.{project}) in {}",
                config.display()
            ),
            ClientError::NoServer {
                host,
                config,
                exists: false,
                ..
            } => write!(
                f,
                "no server for {host}: {} does not exist; write `servers: {{default: HOST}}` there",
                config.display()
            ),
            ClientError::Unprepared { host } => write!(
                f,
                "not connecting to {host}: ssh could not be given its project and host key name \
                 (see the line above; `podspawn doctor` checks the set-up)"
            ),
            ClientError::Resolve {
                server,
                why,
                detail,
            } => write!(f, "cannot resolve {server} ({why}): {detail}"),
            ClientError::Unreachable {
                server,
                why,
                detail,
            } => write!(f, "cannot reach {server} ({why}): {detail}"),
            ClientError::SshConfig { path, problem } => {
                write!(f, "{}: {problem}", path.display())
            }
            ClientError::File {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ClientError {}

/// A TCP connection to `host`:`port`, through the system's own resolver for a name
/// (`getent ahosts`: a statically linked podspawn must not load the host's NSS
/// modules itself), trying each address for `CONNECT_TIMEOUT`. `why` says where
/// the server came from, for the error.
pub fn dial(host: &str, port: u16, why: &str) -> Result<TcpStream, ClientError> {
    let shown = config::Server {
        host: host.to_string(),
        port: Some(port),
    }
    .to_string();
    let literal = host.parse::<IpAddr>().ok();
    let addresses: Vec<IpAddr> = match literal {
        Some(address) => vec![address],
        None => crate::system::resolve_host(host, RESOLVE_TIMEOUT).map_err(|detail| {
            ClientError::Resolve {
                server: host.to_string(),
                why: why.to_string(),
                detail,
            }
        })?,
    };
    let mut last = String::from("no address");
    for address in addresses.into_iter().take(MAX_ADDRESSES) {
        match TcpStream::connect_timeout(&SocketAddr::new(address, port), CONNECT_TIMEOUT) {
            Ok(stream) => return Ok(stream),
            Err(err) if literal.is_some() => last = plain_io(&err),
            Err(err) => last = format!("{address}: {}", plain_io(&err)),
        }
    }
    Err(ClientError::Unreachable {
        server: shown,
        why: why.to_string(),
        detail: last,
    })
}

/// An I/O error's words without Rust's "(os error N)".
fn plain_io(err: &io::Error) -> String {
    let text = err.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Makes `dir` (and its parent under home) private if podspawn creates it.
pub fn private_dir(dir: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| ClientError::File {
            path: dir.to_path_buf(),
            action: "create",
            source,
        })
}
