//! `podspawn connect USER HOST PORT`: ssh's ProxyCommand for `NAME.pod` on a laptop.
//! It finds the server `~/.podspawn/config.yaml` names for NAME, connects, and relays
//! ssh's bytes (`client::relay`). `connect --prepare HOST PORT` is run by ssh first,
//! from the block `setup` wrote: it writes the name's ssh options (its project, its
//! server's host key name) where the block's `Include` reads them.
//!
//! Its stdout belongs to ssh's protocol: nothing but the server's bytes goes there.
//! What goes wrong is one line on stderr saying which name, which server, and what
//! to fix.

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::client::config::{self, ClientConfig};
use crate::client::ssh_config::{self, Target};
use crate::client::{self, ClientError, ClientPaths};
use crate::error::Error;
use crate::project::ProjectName;

pub const COMMAND: Command = Command {
    name: "connect",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn connect [USER] HOST PORT
       podspawn connect --prepare HOST PORT

ssh's ProxyCommand for NAME.pod (podspawn setup writes it into ~/.ssh/config).
Connects to the server ~/.podspawn/config.yaml names for NAME (servers.mappings,
else servers.default; its port, else PORT) and relays ssh's input and output to
it. A HOST that does not end in .pod is dialled as given. USER is not needed (the
seeds' `connect %r %h %p` still works).

--prepare is what ssh runs first for HOST: it writes the ssh options of HOST (its
project PODSPAWN_PROJECT=NAME, the server's port and host key name) to
~/.podspawn/ssh/, which the block's Include reads. It prints nothing unless it
fails.

With --fdpass (and ssh's ProxyUseFdpass, as setup's options have it) the
connection itself is handed to ssh, which then talks to the server directly; a
client that gives pipes instead gets the relay.

Options:
  --prepare      write HOST's ssh options, then exit
  --fdpass       hand the connection to ssh (ProxyUseFdpass) instead of relaying
  --unprepared   (the block's fallback) HOST's options could not be written
  -h, --help     print this help
";

#[derive(Debug, PartialEq, Eq)]
enum ConnectArgs {
    Prepare {
        host: String,
        port: u16,
    },
    Connect {
        host: String,
        port: u16,
        unprepared: bool,
        fdpass: bool,
    },
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<ConnectArgs>, UsageError> {
    const NAME: &str = "connect";
    let (mut prepare, mut unprepared, mut fdpass) = (false, false, false);
    let mut words = Vec::new();
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("prepare") => prepare = true,
            Long("unprepared") => unprepared = true,
            Long("fdpass") => fdpass = true,
            Value(value) => words.push(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let port = |text: &str| {
        text.parse::<u16>()
            .ok()
            .filter(|port| *port > 0)
            .ok_or_else(|| args.error(format!("{text:?} is not a port")))
    };
    match (prepare, words.as_slice()) {
        (true, [host, number]) if !unprepared && !fdpass => Ok(Some(ConnectArgs::Prepare {
            // As ssh was given it: the Host line of its file must match that.
            host: host.to_string(),
            port: port(number)?,
        })),
        (true, _) => Err(args.error("--prepare takes HOST PORT".to_string())),
        (false, [_, host, number] | [host, number]) => Ok(Some(ConnectArgs::Connect {
            host: host.to_ascii_lowercase(),
            port: port(number)?,
            unprepared,
            fdpass,
        })),
        (false, _) => Err(args.error("expected [USER] HOST PORT".to_string())),
    }
}

fn run(args: &mut Args, _: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    let paths = ClientPaths::from_env()?;
    match args {
        ConnectArgs::Prepare { host, port } => prepare(&paths, &host, port),
        ConnectArgs::Connect {
            host,
            port,
            unprepared,
            fdpass,
        } => connect(&paths, &host, port, unprepared, fdpass),
    }
}

/// Where `host` goes: the server, its port, and why (for messages).
struct Route {
    host: String,
    port: u16,
    why: String,
}

/// The route of a `.pod` name, from the client config.
fn route(
    paths: &ClientPaths,
    loaded: Option<&ClientConfig>,
    host: &str,
    project: &ProjectName,
    ssh_port: u16,
) -> Result<Route, ClientError> {
    let Some((server, chosen)) = loaded.and_then(|config| config.server_for(project)) else {
        return Err(ClientError::NoServer {
            host: host.to_string(),
            project: project.to_string(),
            config: paths.config(),
            exists: loaded.is_some(),
        });
    };
    Ok(Route {
        host: server.host.clone(),
        port: server.port_or(ssh_port),
        why: format!("{chosen} in {}, for {host}", paths.config().display()),
    })
}

/// A `.pod` name's project, or why it has none.
fn project_of(host: &str) -> Option<Result<ProjectName, ClientError>> {
    config::project_of(host).map(|parsed| {
        parsed.map_err(|why| ClientError::NotAName {
            host: host.to_string(),
            why,
        })
    })
}

fn connect(
    paths: &ClientPaths,
    host: &str,
    port: u16,
    unprepared: bool,
    fdpass: bool,
) -> Result<Outcome, Error> {
    let route = match project_of(host) {
        None => Route {
            host: host.to_string(),
            port,
            why: "not a .pod name: dialled as given".to_string(),
        },
        Some(project) => {
            let project = project?;
            let loaded = paths.load_config()?;
            let route = route(paths, loaded.as_ref(), host, &project, port)?;
            if unprepared {
                return Err(ClientError::Unprepared {
                    host: host.to_string(),
                }
                .into());
            }
            route
        }
    };
    let socket = client::dial(&route.host, route.port, &route.why)?;
    // A client that does not do ProxyUseFdpass (`-o ProxyUseFdpass=no`, a library
    // reading ~/.ssh/config) gives pipes: then relay, as without --fdpass.
    if fdpass && client::relay::can_pass() {
        client::relay::pass(socket).map_err(|source| ClientError::File {
            path: "stdout (--fdpass needs ssh's ProxyUseFdpass)".into(),
            action: "hand the connection to ssh through",
            source,
        })?;
        return Ok(Outcome::Done);
    }
    match client::relay::relay(socket) {
        Ok(()) => Ok(Outcome::Done),
        // A reset, ssh gone: ssh says it better, if it is still there to say it.
        Err(_) => Ok(Outcome::Exit(crate::error::EXIT_FAILURE)),
    }
}

/// Writes the ssh options of `spelling` (a `.pod` name as ssh was given it) for the
/// block's `Include`. A name that is no project name gets none, silently (the
/// fallback's `connect` says why, once); a name with no server gets options that
/// leave the saying to `connect` alone. The port is decided here, once: the config's,
/// else the one ssh had when it ran this (`-p`), and the file fixes it, so a `Port`
/// read later cannot dial one server under another's host key name.
fn prepare(paths: &ClientPaths, spelling: &str, ssh_port: u16) -> Result<Outcome, Error> {
    let Some(Ok(project)) = project_of(spelling) else {
        return Ok(Outcome::Exit(crate::error::EXIT_FAILURE));
    };
    let host = spelling.to_ascii_lowercase();
    let host = host.as_str();
    let binary = client::own_binary()?;
    let binary = ssh_config::quotable(&binary).map_err(|problem| ClientError::SshConfig {
        path: binary.clone(),
        problem,
    })?;
    // A config that does not parse is connect's to report, as for no server.
    let loaded = paths.load_config().ok().flatten();
    let known_hosts_name;
    let target = match route(paths, loaded.as_ref(), host, &project, ssh_port) {
        Ok(route) => {
            known_hosts_name = config::Server {
                host: route.host,
                port: None,
            }
            .known_hosts_name(route.port);
            Target::Server {
                project: &project,
                port: route.port,
                known_hosts_name: &known_hosts_name,
            }
        }
        Err(_) => Target::Nowhere,
    };
    let text = ssh_config::host_options(spelling, binary, &target);
    let dir = paths.hosts_dir();
    // One file per spelling: two spellings used at once never share a file.
    let file = dir.join(format!("{spelling}{}", ssh_config::HOST_FILE_SUFFIX));
    if client::read_regular(&file, 64 * 1024)
        .is_ok_and(|written| written.as_deref() == Some(text.as_bytes()))
    {
        return Ok(Outcome::Done);
    }
    client::private_dir(&dir)?;
    crate::files::write_atomically(&file, text.as_bytes(), 0o600).map_err(|source| {
        ClientError::File {
            path: file,
            action: "write",
            source,
        }
    })?;
    Ok(Outcome::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(words: &[&str]) -> Result<Option<ConnectArgs>, String> {
        parse(&mut Args::of("connect", words)).map_err(|err| err.to_string())
    }

    #[test]
    fn the_proxy_command_and_the_prepare_step_parse() {
        assert_eq!(
            parsed(&["alice", "API.pod", "22"]).unwrap(),
            Some(ConnectArgs::Connect {
                host: "api.pod".into(),
                port: 22,
                unprepared: false,
                fdpass: false,
            })
        );
        assert_eq!(
            parsed(&["--prepare", "api.pod", "2222"]).unwrap(),
            Some(ConnectArgs::Prepare {
                host: "api.pod".into(),
                port: 2222
            })
        );
        // USER is the seeds' and is not needed.
        assert_eq!(
            parsed(&["--fdpass", "api.pod", "2222"]).unwrap(),
            Some(ConnectArgs::Connect {
                host: "api.pod".into(),
                port: 2222,
                unprepared: false,
                fdpass: true,
            })
        );
        assert!(
            parsed(&["alice", "api.pod"])
                .unwrap_err()
                .contains("is not a port")
        );
        assert!(
            parsed(&["api.pod"])
                .unwrap_err()
                .contains("[USER] HOST PORT")
        );
        assert!(
            parsed(&["alice", "api.pod", "0"])
                .unwrap_err()
                .contains("not a port")
        );
        assert!(parsed(&["--prepare", "a", "b", "c"]).is_err());
        assert_eq!(parsed(&["--help"]).unwrap(), None);
    }
}
