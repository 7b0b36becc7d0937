//! `auth-keys USER [TYPE KEY]`: sshd's AuthorizedKeysCommand, run as `nobody` for
//! every key a client offers.
//!
//! It must be fast, and it must never get in the way of a login it does not own: for
//! an unknown user or on any problem at all it prints nothing and exits 0, so sshd
//! falls through to its normal authentication. It reads the config and one key file;
//! it never opens the database, runs docker or touches the network, and it writes
//! nothing to stdout but key lines (problems go to the service log).

use std::io::Write;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::keys::store::KeyStore;
use crate::keys::{SpawnCommand, UserName};

pub const COMMAND: Command = Command {
    name: "auth-keys",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn auth-keys USER [TYPE KEY]

Prints USER's registered keys in authorized_keys format, each wrapped in a forced
`podspawn spawn --user USER` command. sshd runs it, as `nobody`, through

  AuthorizedKeysCommand /usr/local/bin/podspawn auth-keys %u %t %k
  AuthorizedKeysCommandUser nobody

With TYPE and KEY (the key the client offered) only that key is printed. For a user
podspawn does not know, or on any problem, it prints nothing and exits 0, so sshd
falls through to its normal authentication. It reads only the key store: no
database, no docker, no network. Problems go to log.file or syslog.
";

/// `auth-keys USER [TYPE KEY]`, as sshd's `AuthorizedKeysCommand ... %u %t %k`.
#[derive(Debug, PartialEq, Eq)]
struct AuthKeysArgs {
    /// Not yet validated: sshd passes whatever name the client sent.
    user: String,
    /// The body of the key the client offered (`%k` of `%t %k`), when sshd passes
    /// it (the body names its type too).
    offered: Option<String>,
}

/// sshd's arguments are taken as they come, never as options, so a client's user
/// name like `--help` or `-o` is just an unknown user. `None`: help.
fn parse(args: &mut Args) -> Result<Option<AuthKeysArgs>, UsageError> {
    let words: Vec<String> = args
        .rest()?
        .into_iter()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    match words.as_slice() {
        [only] if only == "--help" || only == "-h" => Ok(None),
        [user] => Ok(Some(AuthKeysArgs {
            user: user.clone(),
            offered: None,
        })),
        [user, _kind, body] => Ok(Some(AuthKeysArgs {
            user: user.clone(),
            offered: Some(body.clone()),
        })),
        _ => Err(args.error(format!(
            "expected USER or USER TYPE KEY, got {} argument(s)",
            words.len()
        ))),
    }
}

/// auth-keys has no failure: whatever goes wrong, sshd gets no keys and falls through
/// to its own authentication, and the reason goes to the service log.
fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    std::panic::set_hook(Box::new(|info| {
        log::error!("auth-keys failed: {info}");
        std::process::exit(0);
    }));
    if let Ok(config) = super::service_config(context, "auth-keys") {
        print_keys(&config, &args);
    }
    Ok(Outcome::Done)
}

/// The authorized_keys lines for `args.user`, or nothing.
fn print_keys(config: &ServerConfig, args: &AuthKeysArgs) {
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
            .is_none_or(|offered| key.matches_offered(offered))
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
    // Forwarding may reach the user's own containers (one address per session slot,
    // and on the private network of a session with services, its container's and
    // its services') and nothing else. Slot 0 is the default session's, which has
    // no services (only a project's has).
    // Addresses another registered user's uid would be given too are neither's.
    let (uid, others) = crate::host::registered_uids(&store, &user);
    let forward_to: Vec<_> = match uid {
        Some(uid) => {
            let pool = &config.network.pool;
            let services = &config.network.services_pool;
            let (shares_network, shares_services) =
                crate::network::sharing(uid, &others, pool, services);
            let slots = 0..config.session.max_per_user;
            let mut addresses = Vec::new();
            match shares_network {
                None => {
                    let network = pool.for_user(user.as_str(), uid);
                    addresses.extend(slots.clone().map(|slot| network.address(slot)));
                }
                Some(other) => log::warn!(
                    "{user} and {other} share a block of network.pool {pool}: no forwarding to it"
                ),
            }
            match shares_services {
                None => {
                    addresses.extend(slots.skip(1).flat_map(|slot| services.addresses(uid, slot)))
                }
                Some(other) => log::warn!(
                    "{user} and {other} share a block of network.services_pool {services}: \
                     no forwarding to it"
                ),
            }
            addresses
        }
        None => {
            log::warn!("{user} has no Unix account; their keys allow no port forwarding");
            Vec::new()
        }
    };
    let mut lines = String::new();
    for key in keys {
        lines.push_str(&key.authorized_line(&spawn, &user, &forward_to));
        lines.push('\n');
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Option<AuthKeysArgs>, UsageError> {
        parse(&mut Args::of("auth-keys", words))
    }

    #[test]
    fn auth_keys_takes_its_arguments_literally() {
        assert_eq!(
            parse_words(&["-o"]),
            Ok(Some(AuthKeysArgs {
                user: "-o".into(),
                offered: None
            }))
        );
        let with_key = parse_words(&["--help", "ssh-ed25519", "AAAA"])
            .unwrap()
            .unwrap();
        assert_eq!(with_key.user, "--help");
        assert_eq!(with_key.offered.as_deref(), Some("AAAA"));
        assert_eq!(parse_words(&["--help"]), Ok(None));
        assert!(parse_words(&[]).is_err());
        assert!(parse_words(&["a", "b"]).is_err());
    }
}
