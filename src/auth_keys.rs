//! `auth-keys USER [TYPE KEY]`: sshd's AuthorizedKeysCommand, run as `nobody` for
//! every key a client offers.
//!
//! It must be fast, and it must never get in the way of a login it does not own: for
//! an unknown user or on any problem at all it prints nothing and exits 0, so sshd
//! falls through to its normal authentication. It reads the config and one key file;
//! it never opens the database, runs docker or touches the network, and it writes
//! nothing to stdout but key lines (problems go to the service log).

use std::io::Write;

use crate::accounts;
use crate::cli::AuthKeysArgs;
use crate::config::ServerConfig;
use crate::keys::store::KeyStore;
use crate::keys::{SpawnCommand, UserName};

/// The authorized_keys lines for `args.user`, or nothing.
pub fn run(config: &ServerConfig, args: &AuthKeysArgs) {
    let lines = authorized_lines(config, args);
    if !lines.is_empty() {
        // One write: sshd reads the keys whole or not at all.
        let mut stdout = std::io::stdout().lock();
        if let Err(err) = stdout
            .write_all(lines.as_bytes())
            .and_then(|()| stdout.flush())
        {
            log::warn!("cannot write keys for {} to sshd: {err}", args.user);
        }
    }
}

fn authorized_lines(config: &ServerConfig, args: &AuthKeysArgs) -> String {
    let user = match UserName::parse(&args.user) {
        Ok(user) => user,
        Err(err) => {
            // Every login attempt with any name reaches us; this is not a problem.
            log::debug!("not a podspawn user: {err}");
            return String::new();
        }
    };
    let store = KeyStore::new(config.auth.key_dir.as_path());
    let file = match store.read(&user) {
        Ok(Some(file)) => file,
        Ok(None) => {
            log::debug!("{user} is not registered; sshd falls through");
            return String::new();
        }
        Err(err) => {
            log::error!("no keys for {user}: {err}");
            return String::new();
        }
    };
    for (line, err) in &file.skipped {
        log::warn!(
            "{}, line {line}: skipped: {err}",
            store.path(&user).display()
        );
    }
    let offered = |key: &&crate::keys::PublicKey| {
        args.offered
            .as_ref()
            .is_none_or(|offered| key.matches_offered(&offered.body))
    };
    let keys: Vec<_> = file.keys.iter().filter(offered).collect();
    if keys.is_empty() {
        return String::new();
    }
    let spawn = match std::env::current_exe()
        .map_err(|err| format!("cannot find the podspawn binary: {err}"))
        .and_then(|path| SpawnCommand::new(&path, config.moved()))
    {
        Ok(spawn) => spawn,
        Err(err) => {
            log::error!("no keys for {user}: {err}");
            return String::new();
        }
    };
    // Forwarding may reach the user's own container and nothing else.
    let forward_to = match accounts::uid_of(user.as_str()) {
        Some(uid) => Some(config.network.pool.for_user(user.as_str(), uid).container),
        None => {
            log::warn!("{user} has no Unix account; their keys allow no port forwarding");
            None
        }
    };
    let mut lines = String::new();
    for key in keys {
        lines.push_str(&key.authorized_line(&spawn, &user, forward_to));
        lines.push('\n');
    }
    lines
}
