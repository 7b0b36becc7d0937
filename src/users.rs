//! `add-user` and `remove-user`: registering and unregistering a user's keys.
//!
//! Both run as root (or as a caller who can write the key directory) and change only
//! the key store. Every input is checked before anything is written.

use crate::cli::{AddUserArgs, RemoveUserArgs};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::keys::store::KeyStore;
use crate::keys::{UserName, import};
use crate::privilege;

pub fn add_user(config: &ServerConfig, args: &AddUserArgs) -> Result<(), Error> {
    let user = UserName::parse(&args.name)?;
    let store = KeyStore::new(config.auth.key_dir.as_path());
    privilege::require_admin("add-user", store.dir())?;
    let keys = import::collect(&args.sources, &config.auth.github_url)?;
    let outcome = store.add(&user, &keys)?;
    if outcome.already_present > 0 {
        log::info!(
            "{} key(s) already registered for {user}",
            outcome.already_present
        );
    }
    println!("added {} key(s) for {user}", outcome.added);
    Ok(())
}

pub fn remove_user(config: &ServerConfig, args: &RemoveUserArgs) -> Result<(), Error> {
    let user = UserName::parse(&args.name)?;
    let store = KeyStore::new(config.auth.key_dir.as_path());
    privilege::require_admin("remove-user", store.dir())?;
    store.remove(&user)?;
    println!("removed user {user}");
    Ok(())
}
