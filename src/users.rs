//! `add-user` and `remove-user`: registering and unregistering a user.
//!
//! Both run as root (or as a caller who can write the key directory) and check every
//! input before anything is written.

use crate::accounts;
use crate::cli::{AddUserArgs, RemoveUserArgs};
use crate::config::ServerConfig;
use crate::docker::Docker;
use crate::engine::{DockerEngine, SystemHost};
use crate::error::Error;
use crate::keys::store::{KeyStore, StoreError};
use crate::keys::{UserName, import};
use crate::privilege;
use crate::session::Sessions;

pub fn add_user(config: &ServerConfig, args: &AddUserArgs) -> Result<(), Error> {
    let user = UserName::parse(&args.name)?;
    let store = KeyStore::new(config.auth.key_dir.as_path());
    privilege::require_admin("add-user", store.dir())?;
    let uid = accounts::uid_of(user.as_str());
    if let Some(uid) = uid {
        refuse_network_collision(config, &store, &user, uid)?;
    }
    let keys = import::collect(&args.sources, &config.auth.github_url)?;
    let outcome = store.add(&user, &keys)?;
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
    println!("added {} key(s) for {user}", outcome.added);
    Ok(())
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

/// Deletes the user's keys; with `--force`, destroys their sessions first. Without
/// it, a user with sessions is refused: their containers would live on unowned.
pub fn remove_user(config: &ServerConfig, args: &RemoveUserArgs) -> Result<(), Error> {
    let user = UserName::parse(&args.name)?;
    let store = KeyStore::new(config.auth.key_dir.as_path());
    privilege::require_admin("remove-user", store.dir())?;
    let db_path = config.state.db_path.as_path();
    let mut destroyed = 0;
    if db_path.exists() {
        let engine = DockerEngine::new(Docker::new(&config.docker), 0);
        let mut sessions = Sessions::open(
            engine,
            SystemHost::new(None),
            db_path,
            config.state.lock_dir.as_path(),
        )?;
        let count = sessions
            .state()
            .sessions()
            .map_err(crate::session::SessionError::from)?
            .iter()
            .filter(|session| session.user == user.as_str())
            .count();
        if count > 0 && !args.force {
            return Err(Error::NotPermitted(format!(
                "{user} has {count} session(s); use --force to destroy them and remove {user}"
            )));
        }
        if count > 0 {
            destroyed = sessions.destroy_user(&user)?;
        }
    }
    match store.remove(&user) {
        Ok(()) => {}
        // The keys were gone already; the sessions were what was left to remove.
        Err(StoreError::NotRegistered { .. }) if destroyed > 0 => {}
        Err(err) => return Err(err.into()),
    }
    let network = crate::network::network_name(&user);
    if let Err(err) = Docker::new(&config.docker).remove_network(&network) {
        log::warn!("network {network} not removed: {err}");
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
