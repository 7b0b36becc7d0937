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
                "not connecting to {host}: podspawn's options for it (its project, its server's \
                 host key name) did not reach ssh; `podspawn doctor` finds out why"
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

/// `~/.ssh/config` as podspawn reads and edits it: the file a link there points to
/// (dotfiles kept in a repo stay where they are), its text if it exists, its mode.
pub struct SshConfigFile {
    pub path: PathBuf,
    pub original: Option<String>,
    pub mode: u32,
}

impl SshConfigFile {
    /// The most an ssh config podspawn edits may hold.
    const MAX_SIZE: u64 = 1 << 20;

    pub fn read(paths: &ClientPaths) -> Result<SshConfigFile, ClientError> {
        use std::os::unix::fs::MetadataExt;
        let named = paths.ssh_config();
        let path = match std::fs::symlink_metadata(&named) {
            Ok(meta) if meta.file_type().is_symlink() => {
                std::fs::canonicalize(&named).map_err(|source| ClientError::File {
                    path: named.clone(),
                    action: "follow the link",
                    source,
                })?
            }
            _ => named,
        };
        let unreadable = |problem: String| ClientError::SshConfig {
            path: path.clone(),
            problem,
        };
        let Some(bytes) = read_regular(&path, Self::MAX_SIZE)
            .map_err(|err| unreadable(format!("cannot be read: {err}")))?
        else {
            // ssh refuses a config others can write.
            return Ok(SshConfigFile {
                path,
                original: None,
                mode: 0o600,
            });
        };
        let mode = std::fs::metadata(&path)
            .map(|meta| meta.mode() & 0o7777)
            .map_err(|err| unreadable(format!("cannot be read: {err}")))?;
        let original = String::from_utf8(bytes).map_err(|_| {
            unreadable("is not UTF-8 text; podspawn edits only text it can read back".to_string())
        })?;
        Ok(SshConfigFile {
            path,
            original: Some(original),
            mode,
        })
    }
}

/// Refuses to write into a home that is not the caller's: `sudo podspawn setup`
/// with the user's `HOME` kept would leave them a `~/.ssh/config` owned by root,
/// which their ssh then cannot read at all.
pub fn refuse_another_users_home(paths: &ClientPaths) -> Result<(), ClientError> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&paths.home)
        .map_err(|source| ClientError::File {
            path: paths.home.clone(),
            action: "read",
            source,
        })?
        .uid();
    let caller = unsafe { libc::geteuid() };
    if owner == caller {
        return Ok(());
    }
    Err(ClientError::SshConfig {
        path: paths.home.clone(),
        problem: format!(
            "is uid {owner}'s home, and this runs as uid {caller} (sudo keeping HOME?): \
             run podspawn setup as the home's own user"
        ),
    })
}

/// This podspawn's path as the developer reaches it, for ssh's config to run: the
/// link on PATH they ran (`~/.local/bin/podspawn`, a package manager's link to a
/// versioned file) rather than the file behind it, which an upgrade replaces.
pub fn own_binary() -> Result<PathBuf, ClientError> {
    use std::os::unix::fs::MetadataExt;
    let running = std::env::current_exe().map_err(|source| ClientError::File {
        path: PathBuf::from("/proc/self/exe"),
        action: "find",
        source,
    })?;
    let same = |path: &Path| match (std::fs::metadata(path), std::fs::metadata(&running)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    let invoked = std::env::args_os().next().map(PathBuf::from);
    let found = invoked.and_then(|invoked| {
        if invoked.is_absolute() {
            return Some(invoked);
        }
        if invoked.components().count() != 1 {
            return None;
        }
        std::env::split_paths(&std::env::var_os("PATH")?)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(&invoked))
            .find(|candidate| candidate.is_file())
    });
    Ok(found.filter(|path| same(path)).unwrap_or(running))
}

/// The bytes of the regular file at `path` (a link to one is followed), `None` when
/// there is none. Anything else — a FIFO that would block ssh with it, a device — or
/// a file larger than `limit` is an error, found on the open file itself.
pub fn read_regular(path: &Path, limit: u64) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    if meta.len() > limit {
        return Err(io::Error::other(format!(
            "larger than {} KiB",
            limit / 1024
        )));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes)?;
    Ok(Some(bytes))
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
