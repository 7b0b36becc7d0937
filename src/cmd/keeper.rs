//! `podspawn keeper`: one per session, started by the `spawn` that created the
//! container (or by a later one that found it dead), detached from every SSH
//! connection. It lives exactly as long as the session: every second it prunes
//! connections whose process is gone, starts or cancels the grace period, and
//! destroys the container when grace or max lifetime is over. This is what makes a
//! `kill -9`ed spawn harmless with no cron and no daemon.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::accounts;
use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::keys::UserName;
use crate::keys::store::KeyStore;
use crate::process;
use crate::session::{SessionError, Tick};

pub const COMMAND: Command = Command {
    name: "keeper",
    usage: USAGE,
    listed: false,
    keeps_group: true,
    run,
};

const USAGE: &str = "\
Usage: podspawn keeper --user NAME [--project NAME]

Started by spawn, one per session, detached from every connection: it ends the
session's container when its grace period or max lifetime is over. Not for
running by hand.
";

/// `keeper --user NAME [--project NAME]`: started by spawn, not by people.
#[derive(Debug, PartialEq, Eq)]
struct KeeperArgs {
    user: String,
    /// Empty for the user's default environment.
    project: String,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<KeeperArgs>, UsageError> {
    const NAME: &str = "keeper";
    let mut user = None;
    let mut project = String::new();
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("user") => user = Some(args.value()?),
            Long("project") => project = args.value()?,
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let user = user.ok_or_else(|| args.error("missing --user NAME".to_string()))?;
    Ok(Some(KeeperArgs { user, project }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    let config = super::service_config(context, "keeper")?;
    crate::audit::start(&config.log, crate::audit::Actor::Keeper, None);
    if let Err(err) = keep(&config, &args) {
        log::error!("keeper of {}: {err}", args.user);
        return Err(err);
    }
    Ok(Outcome::Done)
}

/// After an engine failure, how long to wait before trying again.
const RETRY: Duration = Duration::from_secs(5);

fn keep(config: &ServerConfig, args: &KeeperArgs) -> Result<(), Error> {
    let user = UserName::parse(&args.user)?;
    // The keeper keeps the borrowed group and takes the user's lock: only the user
    // (or root) may run it, or anyone could sit on someone else's lock.
    let caller = accounts::caller().map_err(|err| Error::NotPermitted(err.to_string()))?;
    if caller.uid != 0 && caller.name != user.as_str() {
        return Err(Error::NotPermitted(format!(
            "keeper --user {user} was run by {}",
            caller.name
        )));
    }
    // Nor does it touch the state for anyone who is not a podspawn user.
    let store = KeyStore::new(config.auth.key_dir.as_path());
    if !store.is_registered(&user)? {
        return Err(Error::NotPermitted(format!("{user} is not registered")));
    }
    if crate::privilege::has_borrowed_group() {
        crate::privilege::check_shared_dirs(config).map_err(Error::Refused)?;
    }
    // A project's or scratch session's name, as spawn checked it.
    if !args.project.is_empty() {
        crate::project::ProjectName::parse(&args.project)
            .map_err(|err| Error::Refused(format!("keeper --project: {err}")))?;
    }
    let project = args.project.clone();
    let db_path = config.state.db_path.as_path();
    let alarm = Alarm::listen().map_err(|err| Error::Refused(format!("keeper: {err}")))?;
    let mut sessions = super::sessions(config)?;
    let database = file_identity(db_path);
    let me = process::current();
    log::debug!("keeper of {user} {project:?} started");
    loop {
        // The state was moved or deleted under us (reinstall, or a test tree going
        // away): whatever session this was, it is not ours to keep any more.
        if file_identity(db_path) != database {
            log::warn!("keeper of {user}: {} changed; stopping", db_path.display());
            return Ok(());
        }
        match sessions.keeper_tick(&user, &project, &me) {
            Ok(Tick::Stop) => return Ok(()),
            Ok(Tick::Sleep(pause)) => alarm.sleep(pause),
            Err(SessionError::Lock(err)) if err.timed_out() => {
                log::warn!(
                    "keeper of {user}: {err}; trying again in {}s",
                    RETRY.as_secs()
                );
                std::thread::sleep(RETRY);
            }
            Err(SessionError::Docker(err)) => {
                log::error!(
                    "keeper of {user}: {err}; trying again in {}s",
                    RETRY.as_secs()
                );
                std::thread::sleep(RETRY);
            }
            Err(err) => return Err(Error::Session(err)),
        }
    }
}

/// A sleep that the wake signal ends early: the connection that ended a session's
/// last connection wakes its keeper to destroy the container now, not at its next
/// tick, and never makes the user wait for it.
struct Alarm {
    read: UnixStream,
}

impl Alarm {
    fn listen() -> std::io::Result<Alarm> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        signal_hook::low_level::pipe::register(crate::host::WAKE_SIGNAL, write)?;
        Ok(Alarm { read })
    }

    fn sleep(&self, pause: Duration) {
        let mut fds = [libc::pollfd {
            fd: self.read.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let millis = pause.as_millis().min(i32::MAX as u128) as i32;
        // Woken or not, the next look decides; an interrupted poll is a short sleep.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, millis) };
        let mut buffer = [0u8; 64];
        while matches!((&self.read).read(&mut buffer), Ok(n) if n > 0) {}
    }
}

fn file_identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path)
        .ok()
        .map(|meta| (meta.dev(), meta.ino()))
}
