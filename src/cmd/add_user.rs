//! `podspawn add-user NAME`: register a user's SSH keys, creating their Unix account
//! when it is missing. Runs as root (or as a caller who can write the key directory)
//! and checks every key before anything is written.

use lexopt::prelude::*;
use std::path::PathBuf;

use super::{Command, Context, Outcome};
use crate::accounts;
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::keys::import::KeySource;
use crate::keys::store::KeyStore;
use crate::keys::{UserName, import};
use crate::privilege;
use crate::session;
use crate::system;

pub const COMMAND: Command = Command {
    name: "add-user",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn add-user NAME [--key KEY]... [--key-file PATH]... [--github LOGIN]...

Registers SSH public keys for NAME in the key store (auth.key_dir/NAME). Keys
already registered are not added twice. Every key is checked before anything is
written: one bad key and nothing changes.

Options:
  --key KEY          a public key line, e.g. \"ssh-ed25519 AAAA... sarah@laptop\"
  --key-file PATH    a .pub or authorized_keys-style file (one key per line)
  --github LOGIN     the public keys of GitHub user LOGIN (fetched once with curl;
                     authentication never touches the network)
  -h, --help         print this help

Key lines must be bare keys: podspawn adds its own authorized_keys options.
";

#[derive(Debug, PartialEq, Eq)]
struct AddUserArgs {
    name: String,
    sources: Vec<KeySource>,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<AddUserArgs>, UsageError> {
    const NAME: &str = "add-user";
    let mut name = None;
    let mut sources = Vec::new();
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("key") => sources.push(KeySource::Literal(args.value()?)),
            Long("key-file") => sources.push(KeySource::File(PathBuf::from(args.value_os()?))),
            Long("github") => sources.push(KeySource::GitHub(args.value()?)),
            Value(value) if name.is_none() => name = Some(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let name = name.ok_or_else(|| args.error("missing NAME".to_string()))?;
    if sources.is_empty() {
        return Err(args.error("give at least one --key, --key-file or --github".to_string()));
    }
    Ok(Some(AddUserArgs { name, sources }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| add_user(config, &args))
}

fn add_user(config: &ServerConfig, args: &AddUserArgs) -> Result<(), Error> {
    let user = UserName::parse(&args.name)?;
    let store = KeyStore::new(config.auth.key_dir.as_path());
    privilege::require_admin("add-user", store.dir())?;
    // Every key is read and checked before anything changes.
    let keys = import::collect(&args.sources, &config.auth.github_url)?;
    let account = ensure_account(config, &store, &user)?;
    let created = account == Account::Created;
    let uid = accounts::uid_of(user.as_str());
    let result = uid
        .map_or(Ok(()), |uid| {
            refuse_network_collision(config, &store, &user, uid)
        })
        .and_then(|()| store.add(&user, &keys).map_err(Error::from));
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(err) => {
            // Nothing half-done: an account made for this registration goes again.
            if created {
                let _ = system::userdel(user.as_str());
                let _ = store.set_created_account(&user, false);
            }
            return Err(err);
        }
    };
    if outcome.already_present > 0 {
        log::info!(
            "{} key(s) already registered for {user}",
            outcome.already_present
        );
    }
    match uid {
        // The user's network, made now so a first login needs no extra docker call;
        // if the engine is away, the first login makes it.
        Some(uid) => {
            let network = config.network.pool.for_user(user.as_str(), uid);
            if let Err(err) =
                session::add_user_network(&mut super::effects(config), &user, &network)
            {
                log::warn!(
                    "network {} not created now ({err}); the first login will",
                    network.name
                );
            }
        }
        None => log::warn!("{user} has no Unix account yet; create one before they log in"),
    }
    if account == Account::ExistingInGroup {
        println!(
            "{user} is an existing account: from now on it logs in over SSH only with podspawn's \
             keys, into its container (its password and its own ~/.ssh/authorized_keys no longer \
             let it in)"
        );
    }
    println!("added {} key(s) for {user}", outcome.added);
    crate::audit::record(
        crate::audit::Event::new("user.add")
            .with("user", user.as_str())
            .with("keys_added", outcome.added)
            .with("account_created", created),
    );
    Ok(())
}

/// What `ensure_account` found or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Account {
    /// Made now, for this registration.
    Created,
    /// There already, and (now) in podspawn's group: sshd's Match block holds it to
    /// podspawn's keys.
    ExistingInGroup,
    /// Not in podspawn's group (no group yet, not root), or no account at all.
    Other,
}

/// Makes sure `user` has a Unix account in podspawn's group: creates it when it is
/// missing (and `auth.create_accounts` is on), recording that podspawn made it.
fn ensure_account(
    config: &ServerConfig,
    store: &KeyStore,
    user: &UserName,
) -> Result<Account, Error> {
    let group = config.auth.group.0.as_str();
    let group_exists = accounts::group_members(group).ok().flatten();
    match accounts::by_name(user.as_str()).map_err(|err| Error::Refused(err.to_string()))? {
        Some(account) if account.uid == 0 => Err(Error::Refused(format!(
            "{user} has uid 0: a root account cannot be a podspawn user"
        ))),
        Some(_) => match group_exists {
            Some(members) if members.iter().any(|member| member == user.as_str()) => {
                Ok(Account::ExistingInGroup)
            }
            Some(_) if privilege::is_root() => {
                system::add_to_group(user.as_str(), group)
                    .map_err(|err| Error::Refused(err.to_string()))?;
                log::info!("added the account {user} to group {group}");
                Ok(Account::ExistingInGroup)
            }
            Some(_) => Ok(Account::Other),
            None => {
                log::warn!("group {group} does not exist; run podspawn server-setup");
                Ok(Account::Other)
            }
        },
        None if !config.auth.create_accounts => Ok(Account::Other),
        None => {
            if !privilege::is_root() {
                return Err(Error::NotPermitted(format!(
                    "{user} has no Unix account, and creating one needs root"
                )));
            }
            if group_exists.is_none() {
                return Err(Error::Refused(format!(
                    "group {group} does not exist; run podspawn server-setup first"
                )));
            }
            system::useradd(user.as_str(), config.auth.home_dir.as_path(), group)
                .map_err(|err| Error::Refused(err.to_string()))?;
            if let Err(err) = store.set_created_account(user, true) {
                let _ = system::userdel(user.as_str());
                return Err(err.into());
            }
            log::info!(
                "created the Unix account {user} (key login only, shell /bin/sh, group {group})"
            );
            Ok(Account::Created)
        }
    }
}

/// Two users whose uids share a block of either pool would get overlapping networks.
fn refuse_network_collision(
    config: &ServerConfig,
    store: &KeyStore,
    user: &UserName,
    uid: u32,
) -> Result<(), Error> {
    let (pool, services_pool) = (&config.network.pool, &config.network.services_pool);
    let others = crate::host::other_users(store, user);
    let (network, services) = crate::network::sharing(uid, &others, pool, services_pool);
    let (other, shared) = match (network, services) {
        (Some(other), _) => (other, format!("network.pool {pool}")),
        (None, Some(other)) => (other, format!("network.services_pool {services_pool}")),
        (None, None) => return Ok(()),
    };
    let other_uid = others
        .iter()
        .find(|(name, _)| name == other)
        .map_or(0, |(_, uid)| *uid);
    Err(Error::Refused(format!(
        "{user} (uid {uid}) and {other} (uid {other_uid}) would share a network in \
         {shared}; give it a larger range"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Option<AddUserArgs>, UsageError> {
        parse(&mut Args::of("add-user", words))
    }

    #[test]
    fn add_user_collects_sources_in_order() {
        assert_eq!(
            parse_words(&[
                "sarah",
                "--github",
                "sarahcodes",
                "--key=ssh-ed25519 AAAA x",
                "--key-file",
                "/tmp/k.pub",
            ]),
            Ok(Some(AddUserArgs {
                name: "sarah".into(),
                sources: vec![
                    KeySource::GitHub("sarahcodes".into()),
                    KeySource::Literal("ssh-ed25519 AAAA x".into()),
                    KeySource::File("/tmp/k.pub".into()),
                ],
            }))
        );
    }

    #[test]
    fn add_user_needs_a_name_and_a_key_source() {
        let message = |words: &[&str]| parse_words(words).unwrap_err().to_string();
        assert!(message(&["--key", "k"]).contains("missing NAME"));
        assert!(message(&["alice"]).contains("--key"));
        assert!(message(&["alice", "--key"]).contains("--key"));
        assert!(message(&["alice", "bob", "--key", "k"]).contains("unexpected argument"));
        assert_eq!(
            message(&["alice", "--kye", "x"]),
            "add-user: unknown option '--kye'; see 'podspawn add-user --help'"
        );
    }
}
