//! `add-user` and `remove-user`: registering and unregistering a user.
//!
//! Both run as root (or as a caller who can write the key directory) and check every
//! input before anything is written.

use crate::accounts;
use crate::cli::{AddUserArgs, RemoveUserArgs};
use crate::config::ServerConfig;
use crate::docker::Docker;
use crate::engine::admin_sessions;
use crate::error::Error;
use crate::keys::store::{KeyStore, StoreError};
use crate::keys::{UserName, import};
use crate::lock::Locks;
use crate::privilege;
use crate::session::SessionError;
use crate::system;

pub fn add_user(config: &ServerConfig, args: &AddUserArgs) -> Result<(), Error> {
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
            if let Err(err) = Docker::new(&config.docker).create_network(&network, user.as_str()) {
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

/// Two users whose uids share a network slot would get overlapping networks.
fn refuse_network_collision(
    config: &ServerConfig,
    store: &KeyStore,
    user: &UserName,
    uid: u32,
) -> Result<(), Error> {
    let pool = config.network.pool;
    for other in store.users()? {
        if other == *user {
            continue;
        }
        if let Some(other_uid) = accounts::uid_of(other.as_str())
            && pool.collide(uid, other_uid)
        {
            return Err(Error::Refused(format!(
                "{user} (uid {uid}) and {other} (uid {other_uid}) would share a network in \
                     network.pool {pool}; give it a larger range"
            )));
        }
    }
    Ok(())
}

/// Deletes the user's keys; with `--force`, destroys their sessions too. Without
/// it, a user with sessions is refused: their containers would live on unowned.
///
/// The keys go first: from then on no new connection gets in (spawn asks again under
/// the user's lock), so none can slip a new container in behind the destruction.
pub fn remove_user(config: &ServerConfig, args: &RemoveUserArgs) -> Result<(), Error> {
    let user = UserName::parse(&args.name)?;
    let store = KeyStore::new(config.auth.key_dir.as_path());
    privilege::require_admin("remove-user", store.dir())?;
    // Under the user's lock from here on: a connection is either all the way in (its
    // session is counted and destroyed) or finds the keys gone.
    let held = Locks::configured(config)
        .acquire(&user)
        .map_err(SessionError::from)?;
    let mut sessions = if config.state.db_path.as_path().exists() {
        Some(admin_sessions(config)?)
    } else {
        None
    };
    let count = match &sessions {
        Some(sessions) => sessions.sessions_of(&held)?.len(),
        None => 0,
    };
    if count > 0 && !args.force {
        return Err(Error::NotPermitted(format!(
            "{user} has {count} session(s); use --force to destroy them and remove {user}"
        )));
    }
    match store.remove(&user) {
        Ok(()) => {}
        // The keys were gone already; the sessions are what is left to remove.
        Err(StoreError::NotRegistered { .. }) if count > 0 => {}
        Err(err) => return Err(err.into()),
    }
    let destroyed = match sessions.as_mut() {
        Some(sessions) if count > 0 => sessions.destroy_user(&held).map_err(|err| {
            Error::Refused(format!(
                "{user}'s keys are removed (no new login gets in), but not their sessions: \
                 {err}; run remove-user --force again"
            ))
        })?,
        _ => 0,
    };
    // The keepers of those sessions now see them gone and exit: they must get the
    // lock to see it, before the account below can be deleted.
    drop(held);
    let network = crate::network::network_name(&user);
    if let Err(err) = Docker::new(&config.docker).remove_network(&network) {
        log::warn!("network {network} not removed: {err}");
    }
    if store.created_accounts()?.contains(&user) {
        delete_account(&store, &user)?;
    }
    let agent_dir = config.state.agent_dir.as_path().join(user.as_str());
    if agent_dir.exists()
        && let Err(err) = std::fs::remove_dir_all(&agent_dir)
    {
        log::warn!("cannot remove {}: {err}", agent_dir.display());
    }
    println!("removed user {user} ({destroyed} session(s) destroyed)");
    Ok(())
}

/// Deletes an account podspawn created. Its last processes (a keeper noticing that
/// its session is gone) may take a moment to exit; userdel refuses until then.
fn delete_account(store: &KeyStore, user: &UserName) -> Result<(), Error> {
    let mut last = None;
    for _ in 0..30 {
        if accounts::uid_of(user.as_str()).is_none() {
            // Deleted by hand already.
            store.set_created_account(user, false)?;
            return Ok(());
        }
        match system::userdel(user.as_str()) {
            Ok(()) => {
                store.set_created_account(user, false)?;
                log::info!("deleted the Unix account {user}, which podspawn had created");
                return Ok(());
            }
            Err(err) => last = Some(err),
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    Err(Error::Refused(format!(
        "{user}'s keys are removed, but not the account: {}",
        last.expect("userdel was tried")
    )))
}
