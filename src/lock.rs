//! Per-user locks: `<lock_dir>/<user>.lock`, held with `flock`.
//!
//! Every decision about a user's sessions (create, reattach, release, destroy) is made
//! while holding that user's lock, so two first connections at the same instant make
//! one container, and a keeper never destroys a container a connection is joining.
//! The kernel drops the lock when its holder dies, however it dies.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::keys::UserName;

/// Lock files and the lock directory are shared by root and the docker group.
const LOCK_FILE_MODE: u32 = 0o660;
const LOCK_DIR_MODE: u32 = 0o770;

#[derive(Debug)]
pub struct LockError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl LockError {
    /// Another process held the lock for longer than the wait allowed.
    pub fn timed_out(&self) -> bool {
        self.source.kind() == io::ErrorKind::TimedOut
    }
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "cannot lock {}: {}", self.path.display(), self.source)
    }
}

impl std::error::Error for LockError {}

/// Where the user locks are, and how long anyone waits for one.
#[derive(Debug, Clone)]
pub struct Locks {
    dir: PathBuf,
    /// A holder that never lets go (a stopped process, a hung engine call) must not
    /// pile up every later login of that user behind it.
    patience: Duration,
}

impl Locks {
    /// The locks as the server config places and times them.
    pub fn configured(config: &crate::config::ServerConfig) -> Locks {
        Locks::new(
            config.state.lock_dir.as_path(),
            config.session.lock_timeout.0,
        )
    }

    pub fn new(dir: &Path, patience: Duration) -> Locks {
        Locks {
            dir: dir.to_path_buf(),
            patience,
        }
    }

    /// Waits for `user`'s lock, at most the configured patience.
    pub fn acquire(&self, user: &UserName) -> Result<UserLock, LockError> {
        UserLock::acquire(&self.dir, user, self.patience)
    }

    /// Waits for the lock called `name` (`project.<name>`: a user name never has a
    /// dot), at most `patience`.
    pub fn acquire_named(&self, name: &str, patience: Duration) -> Result<NamedLock, LockError> {
        let file = lock_file(&self.dir, name, patience)?;
        Ok(NamedLock { _file: file })
    }
}

/// A held user lock; released when dropped.
#[derive(Debug)]
pub struct UserLock {
    _file: File,
    user: UserName,
}

impl UserLock {
    /// Whose lock this is.
    pub fn user(&self) -> &UserName {
        &self.user
    }
}

/// The longest pause between two tries for a held lock.
const MAX_PAUSE: Duration = Duration::from_millis(25);

impl UserLock {
    pub fn acquire(
        lock_dir: &Path,
        user: &UserName,
        patience: Duration,
    ) -> Result<UserLock, LockError> {
        Ok(UserLock {
            _file: lock_file(lock_dir, user.as_str(), patience)?,
            user: user.clone(),
        })
    }
}

/// A held lock that is not a user's (a project's build lock); released when dropped.
#[derive(Debug)]
pub struct NamedLock {
    _file: File,
}

/// Takes the lock `<lock_dir>/<name>.lock`, waiting at most `patience`.
fn lock_file(lock_dir: &Path, name: &str, patience: Duration) -> Result<File, LockError> {
    let path = lock_dir.join(format!("{name}.lock"));
    let error = |source| LockError {
        path: path.clone(),
        source,
    };
    if !lock_dir.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(LOCK_DIR_MODE)
            .create(lock_dir)
            .map_err(error)?;
        // Every user's spawn creates its lock file here: say the mode explicitly,
        // whatever the umask.
        fs::set_permissions(lock_dir, fs::Permissions::from_mode(LOCK_DIR_MODE)).map_err(error)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(LOCK_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(error)?;
    // Whoever creates the file sets its mode explicitly (the umask may be tighter);
    // a file someone else created is theirs to keep.
    let _ = file.set_permissions(fs::Permissions::from_mode(LOCK_FILE_MODE));
    // flock has no timeout of its own: try without blocking, and pause a little
    // longer each time, up to the deadline.
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(1);
    loop {
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(file);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EWOULDBLOCK) => {}
            Some(libc::EINTR) => continue,
            _ => return Err(error(err)),
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(error(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "held by another process for more than {}s",
                    patience.as_secs()
                ),
            )));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn the_lock_excludes_other_holders_until_dropped() {
        let dir = std::env::temp_dir().join(format!("podspawn-lock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let alice = UserName::parse("alice").unwrap();
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        std::thread::scope(|scope| {
            for _ in 0..8 {
                let (dir, alice, inside, most) = (&dir, &alice, inside.clone(), most.clone());
                scope.spawn(move || {
                    let _lock = UserLock::acquire(dir, alice, Duration::from_secs(10)).unwrap();
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(5));
                    inside.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(most.load(Ordering::SeqCst), 1);
        let mode = fs::metadata(dir.join("alice.lock"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, LOCK_FILE_MODE);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_lock_held_too_long_is_given_up_on_time() {
        let dir = std::env::temp_dir().join(format!("podspawn-lock-held-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let alice = UserLock::acquire(&dir, &UserName::parse("alice").unwrap(), Duration::ZERO);
        let held = alice.unwrap();
        let started = Instant::now();
        let err = UserLock::acquire(
            &dir,
            &UserName::parse("alice").unwrap(),
            Duration::from_millis(300),
        )
        .unwrap_err();
        let waited = started.elapsed();
        assert!(err.timed_out(), "{err}");
        assert!(
            waited >= Duration::from_millis(300) && waited < Duration::from_secs(2),
            "{waited:?}"
        );
        drop(held);
        UserLock::acquire(&dir, &UserName::parse("alice").unwrap(), Duration::ZERO).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
