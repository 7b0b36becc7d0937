//! Agent forwarding into containers.
//!
//! sshd's forwarded agent socket lives in the host's /tmp and changes with every
//! connection, while a container's mounts are fixed when it is created. So each
//! session has one directory (mode 0700, the user's) mounted into its container at
//! /run/ssh-agent: `<state.agent_dir>/<user>` for the default session,
//! `<state.agent_dir>/<user>+<project>` for a project or scratch one (neither name
//! can hold a `+`). Each connection that has an agent puts a socket in its session's
//! directory, `agent-<pid>.sock`, and relays it to sshd's `SSH_AUTH_SOCK` for as long
//! as the connection lasts. Only the user (and root) can reach either end, and only
//! the session the agent was forwarded to sees it: a project's image is its
//! authors', and must not use an agent forwarded to another session.

use std::fs;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::container::AGENT_MOUNT;
use crate::keys::UserName;

/// The directory of `user`'s sessions of `project` (empty: the default session).
pub fn session_dir_name(user: &UserName, project: &str) -> String {
    if project.is_empty() {
        user.to_string()
    } else {
        format!("{user}+{project}")
    }
}

/// The agent directory of `user`'s session of `project`, created if missing;
/// refused if it is not a directory of the caller's that only they can enter.
pub fn session_dir(root: &Path, user: &UserName, project: &str) -> io::Result<PathBuf> {
    if !root.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o770)
            .create(root)?;
        // Shared by every user's spawn (through the docker group), like the state dir.
        fs::set_permissions(root, fs::Permissions::from_mode(0o2770))?;
    }
    let dir = root.join(session_dir_name(user, project));
    match fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?,
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(err),
    }
    let meta = fs::symlink_metadata(&dir)?;
    let caller = unsafe { libc::getuid() };
    if !meta.is_dir() || meta.uid() != caller || meta.mode() & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "{} is not a private directory of uid {caller}",
            dir.display()
        )));
    }
    Ok(dir)
}

/// Every agent directory of `user`'s sessions there is.
pub fn dirs_of(root: &Path, user: &UserName) -> Vec<PathBuf> {
    let sessions = format!("{user}+");
    fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            name == user.as_str() || name.starts_with(&sessions)
        })
        .map(|entry| entry.path())
        .collect()
}

/// One connection's agent socket, relayed to sshd's agent until dropped.
pub struct Relay {
    host_path: PathBuf,
    container_path: String,
}

impl Relay {
    /// Listens on `<dir>/agent-<pid>.sock` and relays every client to `upstream`.
    pub fn start(dir: &Path, upstream: PathBuf) -> io::Result<Relay> {
        let name = format!("agent-{}.sock", std::process::id());
        let host_path = dir.join(&name);
        let _ = fs::remove_file(&host_path);
        let listener = UnixListener::bind(&host_path)?;
        fs::set_permissions(&host_path, fs::Permissions::from_mode(0o600))?;
        std::thread::spawn(move || {
            // `upstream` comes from the caller's environment, and a setgid install
            // runs with the docker group: connect only with the caller's own group,
            // or SSH_AUTH_SOCK=/var/run/docker.sock would hand the container the
            // engine — and the agent, asking the peer's credentials, must see the
            // caller's group too. This thread (and those it starts) gives the
            // docker group up for good; the rest of spawn keeps it.
            if let Err(err) = crate::privilege::drop_borrowed_group_in_this_thread() {
                log::error!("no agent relay: cannot drop the setgid group: {err}");
                return;
            }
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                match UnixStream::connect(&upstream) {
                    Ok(agent) => relay(client, agent),
                    Err(err) => log::warn!(
                        "cannot reach the forwarded agent {}: {err}",
                        upstream.display()
                    ),
                }
            }
        });
        Ok(Relay {
            host_path,
            container_path: format!("{AGENT_MOUNT}/{name}"),
        })
    }

    /// `SSH_AUTH_SOCK` inside the container.
    pub fn container_path(&self) -> &str {
        &self.container_path
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.host_path);
    }
}

/// Copies both ways between two sockets, each direction in its own thread.
fn relay(client: UnixStream, agent: UnixStream) {
    let (Ok(client_back), Ok(agent_back)) = (client.try_clone(), agent.try_clone()) else {
        return;
    };
    std::thread::spawn(move || copy(client, agent));
    std::thread::spawn(move || copy(agent_back, client_back));
}

fn copy(mut from: UnixStream, mut to: UnixStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_relay_passes_bytes_both_ways_and_the_dir_is_private() {
        let root = std::env::temp_dir().join(format!("podspawn-agent-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let alice = UserName::parse("alice").unwrap();
        let dir = session_dir(&root, &alice, "").unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        assert_eq!(
            session_dir(&root, &alice, "").unwrap(),
            dir,
            "a second call reuses it"
        );

        // A stand-in agent that answers each request with its reverse.
        let upstream = root.join("upstream.sock");
        let agent = UnixListener::bind(&upstream).unwrap();
        std::thread::spawn(move || {
            for stream in agent.incoming() {
                let mut stream = stream.unwrap();
                let mut request = [0u8; 5];
                stream.read_exact(&mut request).unwrap();
                request.reverse();
                stream.write_all(&request).unwrap();
            }
        });
        let relay = Relay::start(&dir, upstream).unwrap();
        assert!(relay.container_path().starts_with("/run/ssh-agent/agent-"));
        let socket = dir.join(relay.container_path().rsplit('/').next().unwrap());
        assert_eq!(fs::metadata(&socket).unwrap().mode() & 0o777, 0o600);
        for _ in 0..2 {
            let mut client = UnixStream::connect(&socket).unwrap();
            client.write_all(b"hello").unwrap();
            let mut answer = [0u8; 5];
            client.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, b"olleh");
        }
        drop(relay);
        assert!(!socket.exists(), "the socket goes with the connection");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_dir_others_can_enter_is_refused() {
        let root = std::env::temp_dir().join(format!("podspawn-agent-open-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let bob = UserName::parse("bob").unwrap();
        let dir = session_dir(&root, &bob, "").unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert!(session_dir(&root, &bob, "").is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn each_session_has_its_own_dir_and_all_of_a_users_are_found() {
        let root =
            std::env::temp_dir().join(format!("podspawn-agent-sessions-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let bob = UserName::parse("bob").unwrap();
        let default = session_dir(&root, &bob, "").unwrap();
        let api = session_dir(&root, &bob, "api").unwrap();
        assert_eq!(default, root.join("bob"));
        assert_eq!(api, root.join("bob+api"));
        // bob-dev's are not bob's.
        let bob_dev = UserName::parse("bob-dev").unwrap();
        session_dir(&root, &bob_dev, "").unwrap();
        let mut found = dirs_of(&root, &bob);
        found.sort();
        assert_eq!(found, [default, api]);
        fs::remove_dir_all(&root).unwrap();
    }
}
