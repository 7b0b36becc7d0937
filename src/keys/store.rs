//! The key store: one file per registered user, `<key_dir>/<user>`, in authorized_keys
//! format (one bare key per line).
//!
//! Readers (`auth-keys`, as `nobody`) trust a file only when nobody but its owner —
//! root or the caller — can write it or its directory, as sshd's StrictModes does.
//! Writers hold an exclusive `flock` on the key directory, keep every existing line,
//! and replace the file atomically (temporary file, fsync, rename, fsync of the
//! directory), so a reader sees the old file or the new one, never half of one.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{KeyError, PublicKey, UserName};

/// Mode of a user's key file: root writes it, `nobody` (sshd's command user) reads it.
pub const KEY_FILE_MODE: u32 = 0o644;
/// Mode of the key directory.
pub const KEY_DIR_MODE: u32 = 0o755;
/// The list of accounts podspawn created, beside the key files (no user name starts
/// with '.', so it is never taken for one).
const CREATED_ACCOUNTS: &str = ".created-accounts";
/// A key file larger than this is refused: nobody has a megabyte of public keys.
const MAX_KEY_FILE: u64 = 1024 * 1024;

pub struct KeyStore {
    dir: PathBuf,
}

/// A user's key file as read: its keys, and the lines that were not keys.
#[derive(Debug)]
pub struct KeyFile {
    pub keys: Vec<PublicKey>,
    /// (1-based line number, why) for each line that was skipped.
    pub skipped: Vec<(usize, KeyError)>,
}

/// What `add` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddOutcome {
    pub added: usize,
    pub already_present: usize,
}

#[derive(Debug)]
pub enum StoreError {
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    NotAFile(PathBuf),
    TooLarge(PathBuf),
    Unsafe {
        path: PathBuf,
        reason: String,
    },
    NotRegistered {
        user: UserName,
        path: PathBuf,
    },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            StoreError::Io {
                path,
                action,
                source,
            } => write!(f, "cannot {action} {}: {source}", path.display()),
            StoreError::NotAFile(path) => {
                write!(f, "{} is not a regular file", path.display())
            }
            StoreError::TooLarge(path) => write!(
                f,
                "{} is larger than {} bytes; it cannot be a key file",
                path.display(),
                MAX_KEY_FILE
            ),
            StoreError::Unsafe { path, reason } => {
                write!(f, "refusing to trust {}: {reason}", path.display())
            }
            StoreError::NotRegistered { user, path } => write!(
                f,
                "user {user} is not registered (there is no {})",
                path.display()
            ),
        }
    }
}

impl std::error::Error for StoreError {}

fn io_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> StoreError {
    let path = path.to_path_buf();
    move |source| StoreError::Io {
        path,
        action,
        source,
    }
}

impl KeyStore {
    pub fn new(dir: &Path) -> KeyStore {
        KeyStore {
            dir: dir.to_path_buf(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, user: &UserName) -> PathBuf {
        self.dir.join(user.as_str())
    }

    /// The user's keys, or `None` when the user has no key file (not registered).
    pub fn read(&self, user: &UserName) -> Result<Option<KeyFile>, StoreError> {
        match fs::metadata(&self.dir) {
            Ok(meta) => check_owner_and_mode(&self.dir, &meta)?,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(io_error(&self.dir, "read")(err)),
        }
        let path = self.path(user);
        let Some(text) = read_trusted(&path)? else {
            return Ok(None);
        };
        Ok(Some(parse_key_file(&text)))
    }

    /// Whether `user` has at least one usable key: what makes a podspawn user.
    pub fn is_registered(&self, user: &UserName) -> Result<bool, StoreError> {
        Ok(self.read(user)?.is_some_and(|file| !file.keys.is_empty()))
    }

    /// Adds the keys the user does not have yet, keeping every line already there.
    pub fn add(&self, user: &UserName, keys: &[PublicKey]) -> Result<AddOutcome, StoreError> {
        self.create_dir()?;
        let _lock = DirLock::exclusive(&self.dir)?;
        let path = self.path(user);
        let existing = read_trusted(&path)?.unwrap_or_default();
        let mut known: Vec<PublicKey> = parse_key_file(&existing).keys;
        let mut new_lines = String::new();
        let mut outcome = AddOutcome {
            added: 0,
            already_present: 0,
        };
        for key in keys {
            if known.iter().any(|old| old.same_key(key)) {
                outcome.already_present += 1;
                continue;
            }
            new_lines.push_str(&key.to_line());
            new_lines.push('\n');
            known.push(key.clone());
            outcome.added += 1;
        }
        if outcome.added > 0 {
            let mut content = existing;
            if !content.is_empty() && !content.ends_with('\n') {
                content.push('\n');
            }
            content.push_str(&new_lines);
            self.replace(user, &content)?;
        }
        Ok(outcome)
    }

    /// Every registered user (a file in the key directory named like a user).
    pub fn users(&self) -> Result<Vec<UserName>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(err) => return Err(io_error(&self.dir, "read")(err)),
        };
        let mut users: Vec<UserName> = entries
            .filter_map(|entry| {
                entry
                    .ok()?
                    .file_name()
                    .to_str()
                    .and_then(|name| UserName::parse(name).ok())
            })
            .collect();
        users.sort();
        Ok(users)
    }

    /// The accounts podspawn created (so `remove-user` deletes only those).
    pub fn created_accounts(&self) -> Result<Vec<UserName>, StoreError> {
        let path = self.dir.join(CREATED_ACCOUNTS);
        let text = read_trusted(&path)?.unwrap_or_default();
        Ok(text
            .lines()
            .filter_map(|line| UserName::parse(line.trim()).ok())
            .collect())
    }

    /// Records (`true`) or forgets (`false`) that podspawn created `user`'s account.
    pub fn set_created_account(&self, user: &UserName, created: bool) -> Result<(), StoreError> {
        self.create_dir()?;
        let _lock = DirLock::exclusive(&self.dir)?;
        let mut users = self.created_accounts()?;
        users.retain(|other| other != user);
        if created {
            users.push(user.clone());
        }
        let text: String = users.iter().map(|user| format!("{user}\n")).collect();
        self.write_file(CREATED_ACCOUNTS, &text)
    }

    /// Deletes the user's key file; after this, sshd gets no keys for them.
    pub fn remove(&self, user: &UserName) -> Result<(), StoreError> {
        let path = self.path(user);
        if !self.dir.exists() {
            return Err(StoreError::NotRegistered {
                user: user.clone(),
                path,
            });
        }
        let _lock = DirLock::exclusive(&self.dir)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Err(StoreError::NotRegistered {
                user: user.clone(),
                path,
            }),
            Err(err) => Err(io_error(&path, "remove")(err)),
        }
    }

    fn create_dir(&self) -> Result<(), StoreError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(KEY_DIR_MODE)
            .create(&self.dir)
            .map_err(io_error(&self.dir, "create"))?;
        // The mode given to mkdir is filtered by the umask; say it explicitly.
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(KEY_DIR_MODE))
            .map_err(io_error(&self.dir, "set the mode of"))
    }

    /// Writes `content` as the user's key file, atomically.
    fn replace(&self, user: &UserName, content: &str) -> Result<(), StoreError> {
        self.write_file(user.as_str(), content)
    }

    /// Writes `content` as `<dir>/<name>`, atomically (the lock is the caller's).
    fn write_file(&self, name: &str, content: &str) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        // User names never start with '.', so no reader takes this for a user's file.
        let temporary = self.dir.join(format!(".{name}.new"));
        let write = || -> io::Result<()> {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(KEY_FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temporary)?;
            file.set_permissions(fs::Permissions::from_mode(KEY_FILE_MODE))?;
            file.write_all(content.as_bytes())?;
            file.sync_all()
        };
        if let Err(err) = write() {
            let _ = fs::remove_file(&temporary);
            return Err(io_error(&temporary, "write")(err));
        }
        fs::rename(&temporary, &path).map_err(|err| {
            let _ = fs::remove_file(&temporary);
            io_error(&path, "replace")(err)
        })?;
        sync_dir(&self.dir)
    }
}

/// Reads a key file if it exists and may be trusted: a regular file (not a link, not a
/// FIFO that would block sshd), no larger than a key file can be, and writable only by
/// root or the caller.
fn read_trusted(path: &Path) -> Result<Option<String>, StoreError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path);
    let file: File = match file {
        Ok(file) => file,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(err) if err.raw_os_error() == Some(libc::ELOOP) => {
            return Err(StoreError::Unsafe {
                path: path.to_path_buf(),
                reason: "it is a symbolic link".to_string(),
            });
        }
        Err(err) => return Err(io_error(path, "read")(err)),
    };
    let meta = file.metadata().map_err(io_error(path, "read"))?;
    if !meta.file_type().is_file() {
        return Err(StoreError::NotAFile(path.to_path_buf()));
    }
    check_owner_and_mode(path, &meta)?;
    if meta.len() > MAX_KEY_FILE {
        return Err(StoreError::TooLarge(path.to_path_buf()));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io_error(path, "read"))?;
    // A line that is not UTF-8 is not a key; keep the others readable.
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Refuses a file or directory that someone other than root or the caller could have
/// written: such a file could hold anybody's keys. Under a borrowed (setgid) group the
/// caller is the SSH user, whose own files prove nothing: only root's count then.
fn check_owner_and_mode(path: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
    let caller = unsafe { libc::geteuid() };
    let caller_counts = !crate::privilege::has_borrowed_group();
    if meta.uid() != 0 && !(caller_counts && meta.uid() == caller) {
        return Err(StoreError::Unsafe {
            path: path.to_path_buf(),
            reason: format!("it is owned by uid {}, not root", meta.uid()),
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(StoreError::Unsafe {
            path: path.to_path_buf(),
            reason: format!(
                "it is writable by group or others (mode {:o})",
                meta.mode() & 0o7777
            ),
        });
    }
    Ok(())
}

/// Parses a key file; blank lines and `#` comments are not keys and are not reported.
pub fn parse_key_file(text: &str) -> KeyFile {
    let mut file = KeyFile {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        match PublicKey::parse(trimmed) {
            Ok(key) => file.keys.push(key),
            Err(err) => file.skipped.push((index + 1, err)),
        }
    }
    file
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|handle| handle.sync_all())
        .map_err(io_error(dir, "sync"))
}

/// An exclusive `flock` on a directory, held until dropped (the kernel drops it if
/// the process dies), so two admins adding keys at once cannot lose one another's.
struct DirLock {
    _held: File,
}

impl DirLock {
    fn exclusive(dir: &Path) -> Result<DirLock, StoreError> {
        let handle = File::open(dir).map_err(io_error(dir, "open"))?;
        use std::os::fd::AsRawFd;
        loop {
            if unsafe { libc::flock(handle.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(DirLock { _held: handle });
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(io_error(dir, "lock")(err));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{ECDSA, ED25519, ED25519_OTHER};

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let path =
                std::env::temp_dir().join(format!("podspawn-store-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn alice() -> UserName {
        UserName::parse("alice").unwrap()
    }

    fn key(line: &str) -> PublicKey {
        PublicKey::parse(line).unwrap()
    }

    #[test]
    fn add_creates_the_directory_and_file_with_explicit_modes() {
        let temp = TempDir::new("modes");
        let store = KeyStore::new(&temp.0.join("etc/keys"));
        let outcome = store.add(&alice(), &[key(ED25519)]).unwrap();
        assert_eq!(
            outcome,
            AddOutcome {
                added: 1,
                already_present: 0
            }
        );
        let dir_mode = fs::metadata(store.dir()).unwrap().mode() & 0o7777;
        let file_mode = fs::metadata(store.path(&alice())).unwrap().mode() & 0o7777;
        assert_eq!((dir_mode, file_mode), (KEY_DIR_MODE, KEY_FILE_MODE));
        assert_eq!(
            fs::read_to_string(store.path(&alice())).unwrap(),
            format!("{ED25519}\n")
        );
    }

    #[test]
    fn adding_a_key_twice_stores_it_once() {
        let temp = TempDir::new("twice");
        let store = KeyStore::new(&temp.0);
        store.add(&alice(), &[key(ED25519)]).unwrap();
        let without_comment = key(ED25519.rsplit_once(' ').unwrap().0);
        let outcome = store
            .add(
                &alice(),
                &[without_comment, key(ED25519_OTHER), key(ED25519_OTHER)],
            )
            .unwrap();
        assert_eq!(
            outcome,
            AddOutcome {
                added: 1,
                already_present: 2
            }
        );
        let keys = store.read(&alice()).unwrap().unwrap().keys;
        assert_eq!(keys.len(), 2);
    }

    #[test]
    fn add_keeps_hand_written_lines_and_a_missing_final_newline() {
        let temp = TempDir::new("keep");
        let store = KeyStore::new(&temp.0);
        let original = format!("# alice's keys\n{ED25519}\nnot a key");
        fs::write(store.path(&alice()), &original).unwrap();
        store.add(&alice(), &[key(ECDSA)]).unwrap();
        assert_eq!(
            fs::read_to_string(store.path(&alice())).unwrap(),
            format!("{original}\n{ECDSA}\n")
        );
        assert!(!temp.0.join(".alice.new").exists());
    }

    #[test]
    fn read_skips_bad_lines_and_keeps_the_good_ones() {
        let temp = TempDir::new("skip");
        let store = KeyStore::new(&temp.0);
        let text =
            format!("{ED25519}\n\n# comment\nno-pty {ECDSA}\ngarbage\r\n{ED25519_OTHER}\r\n");
        fs::write(store.path(&alice()), text).unwrap();
        fs::set_permissions(store.path(&alice()), fs::Permissions::from_mode(0o644)).unwrap();
        let file = store.read(&alice()).unwrap().unwrap();
        assert_eq!(file.keys.len(), 2);
        let lines: Vec<usize> = file.skipped.iter().map(|(line, _)| *line).collect();
        assert_eq!(lines, vec![4, 5]);
        assert_eq!(file.skipped[0].1, KeyError::HasOptions);
    }

    #[test]
    fn read_of_an_unregistered_user_or_missing_dir_is_none() {
        let temp = TempDir::new("none");
        assert!(KeyStore::new(&temp.0).read(&alice()).unwrap().is_none());
        let missing = KeyStore::new(&temp.0.join("absent"));
        assert!(missing.read(&alice()).unwrap().is_none());
    }

    #[test]
    fn read_refuses_files_others_could_have_written() {
        let temp = TempDir::new("unsafe");
        let store = KeyStore::new(&temp.0);
        fs::write(store.path(&alice()), format!("{ED25519}\n")).unwrap();
        fs::set_permissions(store.path(&alice()), fs::Permissions::from_mode(0o666)).unwrap();
        let err = store.read(&alice()).unwrap_err();
        assert!(
            err.to_string().contains("writable by group or others"),
            "{err}"
        );

        fs::set_permissions(store.path(&alice()), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(&temp.0, fs::Permissions::from_mode(0o777)).unwrap();
        let err = store.read(&alice()).unwrap_err();
        assert!(
            err.to_string().contains(&temp.0.display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn read_refuses_links_directories_and_fifos() {
        let temp = TempDir::new("kinds");
        let store = KeyStore::new(&temp.0);
        fs::write(temp.0.join("real"), format!("{ED25519}\n")).unwrap();
        std::os::unix::fs::symlink(temp.0.join("real"), store.path(&alice())).unwrap();
        assert!(matches!(
            store.read(&alice()),
            Err(StoreError::Unsafe { .. })
        ));

        let bob = UserName::parse("bob").unwrap();
        fs::create_dir(store.path(&bob)).unwrap();
        assert!(matches!(store.read(&bob), Err(StoreError::NotAFile(_))));

        let carol = UserName::parse("carol").unwrap();
        let fifo = std::ffi::CString::new(store.path(&carol).to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        assert!(matches!(store.read(&carol), Err(StoreError::NotAFile(_))));
    }

    #[test]
    fn remove_deletes_the_file_and_says_when_there_was_none() {
        let temp = TempDir::new("remove");
        let store = KeyStore::new(&temp.0);
        store.add(&alice(), &[key(ED25519)]).unwrap();
        assert_eq!(store.users().unwrap(), [alice()]);
        store.set_created_account(&alice(), true).unwrap();
        assert_eq!(store.created_accounts().unwrap(), [alice()]);
        assert_eq!(
            store.users().unwrap(),
            [alice()],
            "the record is not a user"
        );
        store.set_created_account(&alice(), false).unwrap();
        assert!(store.created_accounts().unwrap().is_empty());
        store.remove(&alice()).unwrap();
        assert!(store.read(&alice()).unwrap().is_none());
        assert!(store.users().unwrap().is_empty());
        let err = store.remove(&alice()).unwrap_err();
        assert!(matches!(err, StoreError::NotRegistered { .. }), "{err}");
    }
}
