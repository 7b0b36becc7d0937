//! `podspawn remove-user NAME [--force]`: unregister a user — their keys, their
//! sessions (with `--force`), their network and agent directory, and the Unix account
//! if podspawn created it.

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::accounts;
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::keys::UserName;
use crate::keys::store::{KeyStore, StoreError};
use crate::lock::Locks;
use crate::privilege;
use crate::session::{self, SessionError};
use crate::system;

pub const COMMAND: Command = Command {
    name: "remove-user",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn remove-user NAME [--force]

Deletes NAME's keys from the key store. From then on sshd gets no keys for NAME
from podspawn and falls through to its normal authentication. If NAME still has
sessions, it refuses unless --force is given.

Options:
  --force            destroy NAME's containers first (their connections end)
  -h, --help         print this help
";

#[derive(Debug, PartialEq, Eq)]
struct RemoveUserArgs {
    name: String,
    /// Destroy the user's sessions first.
    force: bool,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<RemoveUserArgs>, UsageError> {
    const NAME: &str = "remove-user";
    let mut name = None;
    let mut force = false;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("force") => force = true,
            Value(value) if name.is_none() => name = Some(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let name = name.ok_or_else(|| args.error("missing NAME".to_string()))?;
    Ok(Some(RemoveUserArgs { name, force }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| remove_user(config, &args))
}

/// Deletes the user's keys; with `--force`, destroys their sessions too. Without
/// it, a user with sessions is refused: their containers would live on unowned.
///
/// The keys go first: from then on no new connection gets in (spawn asks again under
/// the user's lock), so none can slip a new container in behind the destruction.
fn remove_user(config: &ServerConfig, args: &RemoveUserArgs) -> Result<(), Error> {
    let user = UserName::parse(&args.name)?;
    let store = KeyStore::new(config.auth.key_dir.as_path());
    privilege::require_admin("remove-user", store.dir())?;
    // Under the user's lock from here on: a connection is either all the way in (its
    // session is counted and destroyed) or finds the keys gone.
    let held = Locks::configured(config)
        .acquire(&user)
        .map_err(SessionError::from)?;
    // No database yet means no sessions; a removal does not create one.
    let mut sessions = if config.state.db_path.as_path().exists() {
        Some(super::sessions(config)?)
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
    let (destroyed, network) = match sessions.as_mut() {
        Some(sessions) => sessions.remove_user(&held).map_err(|err| {
            Error::Refused(format!(
                "{user}'s keys are removed (no new login gets in), but not their sessions: \
                 {err}; run remove-user --force again"
            ))
        })?,
        None => (
            0,
            session::remove_user_network(&mut super::effects(config), &user),
        ),
    };
    // Volumes kept across the user's sessions go with the user.
    if let Some(sessions) = sessions
        .as_mut()
        .filter(|_| config.services.persist_volumes)
    {
        let kept = sessions.remove_kept_volumes(
            |volume| volume.user == user.as_str(),
            session::Reason::UserRemoved,
        );
        log::info!("removed {kept} kept volume(s) of {user}");
    }
    // The keepers of those sessions now see them gone and exit: they must get the
    // lock to see it, before the account below can be deleted.
    drop(held);
    if network.is_err() {
        // Said by the session layer already; `cleanup` removes it later.
        log::warn!("{user}'s network stays until the next cleanup");
    }
    if store.created_accounts()?.contains(&user) {
        delete_account(&store, &user)?;
    }
    for agent_dir in crate::agent::dirs_of(config.state.agent_dir.as_path(), &user) {
        if let Err(err) = std::fs::remove_dir_all(&agent_dir) {
            log::warn!("cannot remove {}: {err}", agent_dir.display());
        }
    }
    println!("removed user {user} ({destroyed} session(s) destroyed)");
    crate::audit::record(
        crate::audit::Event::new("user.remove")
            .with("user", user.as_str())
            .with("sessions_destroyed", destroyed),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_user_takes_a_name_and_force() {
        let parse_words = |words: &[&str]| parse(&mut Args::of("remove-user", words));
        assert_eq!(
            parse_words(&["--force", "alice"]),
            Ok(Some(RemoveUserArgs {
                name: "alice".into(),
                force: true
            }))
        );
        let err = parse_words(&["-f", "alice"]).unwrap_err().to_string();
        assert!(err.starts_with("remove-user: unknown option '-f'"), "{err}");
        assert!(
            parse_words(&[])
                .unwrap_err()
                .to_string()
                .contains("missing NAME")
        );
    }
}
