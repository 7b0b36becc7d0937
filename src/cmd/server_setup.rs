//! `podspawn server-setup`: turn this host's sshd and file system into a podspawn
//! server, in a way no admin regrets.
//!
//! - sshd_config: `sshd -t` must pass before anything changes; a foreign
//!   AuthorizedKeysCommand (in the file or a file it includes) stops everything; the
//!   file is backed up to `<file>.podspawn.bak`, edited (see `sshd_config`), checked
//!   with `sshd -t` again and restored byte for byte if sshd refuses it, then sshd is
//!   reloaded (not restarted: open sessions stay).
//! - the group of podspawn's users, and the directories with their owners and modes:
//!   keys root's 0755, state, locks and agents root:docker 2770, nothing
//!   world-writable; the state database; a commented default config;
//! - the host's rule that keeps podspawn's networks apart (see `isolation`).
//!
//! A second run changes nothing and says so; `--dry-run` prints what it would do.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::accounts;
use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::{COMMENTED_DEFAULT, ServerConfig};
use crate::error::Error;
use crate::isolation;
use crate::keys::store::KeyStore;
use crate::keys::{SpawnCommand, UserName};
use crate::privilege;
use crate::sshd_config::{self, Wanted};
use crate::state::{DB_FILE_MODE, State};
use crate::system;

pub const COMMAND: Command = Command {
    name: "server-setup",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn server-setup [--sshd-config PATH] [--dry-run] [--no-reload]

Makes this host a podspawn server. It checks sshd_config with `sshd -t` first and
refuses if sshd already has another AuthorizedKeysCommand; backs the file up to
PATH.podspawn.bak; adds podspawn's lines (AuthorizedKeysCommand, AcceptEnv
PODSPAWN_PROJECT LANG LC_*) before any Include or Match, and at the end a Match
Group block that stops podspawn's users from reaching the host (Unix-socket,
tunnel and remote forwarding, ~/.ssh/rc); checks again with `sshd -t`, restoring
the original if sshd refuses; and reloads sshd (open sessions stay). Then it
creates the podspawn group, the key, state, lock and agent directories with their
owners and modes, the state database and a commented default config, and adds
the host's rule that keeps podspawn's networks apart (iptables, mangle table: a
packet routed from one podspawn network to another is dropped).

Running it again changes nothing and says so.

Options:
  --sshd-config PATH  edit this file instead of /etc/ssh/sshd_config
  --dry-run           print what would change, change nothing
  --no-reload         do not reload sshd afterwards
  -h, --help          print this help
";

/// `server-setup [--sshd-config PATH] [--dry-run] [--no-reload]`.
#[derive(Debug, PartialEq, Eq)]
struct ServerSetupArgs {
    sshd_config: PathBuf,
    dry_run: bool,
    no_reload: bool,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<ServerSetupArgs>, UsageError> {
    const NAME: &str = "server-setup";
    let mut parsed = ServerSetupArgs {
        sshd_config: PathBuf::from("/etc/ssh/sshd_config"),
        dry_run: false,
        no_reload: false,
    };
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("sshd-config") => parsed.sshd_config = PathBuf::from(args.value_os()?),
            Long("dry-run") => parsed.dry_run = true,
            Long("no-reload") => parsed.no_reload = true,
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    Ok(Some(parsed))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| setup(config, &args))
}

/// A directory podspawn needs, with its owner group and mode.
struct Dir {
    path: PathBuf,
    /// The group owning it (its owner is root); `None` for root's own group.
    group: Option<u32>,
    mode: u32,
}

fn setup(config: &ServerConfig, args: &ServerSetupArgs) -> Result<(), Error> {
    if !args.dry_run && !privilege::is_root() {
        return Err(Error::NotPermitted(
            "server-setup must run as root (--dry-run shows what it would do)".to_string(),
        ));
    }
    let sshd_path = &args.sshd_config;
    let original =
        fs::read_to_string(sshd_path).map_err(|err| io_refusal(sshd_path, "read", err))?;
    let wanted = Wanted {
        command: auth_keys_command(config)?,
        group: config.auth.group.0.clone(),
    };
    refuse_foreign_commands_in_includes(sshd_path, &original)?;
    if let Some(private) = config.private_dir_holding_home() {
        return Err(Error::Refused(format!(
            "auth.home_dir {} is inside {}, which podspawn's users cannot enter: sshd would \
             print \"Could not chdir to home directory\" on every session; choose a directory \
             outside it",
            config.auth.home_dir.as_path().display(),
            private.display()
        )));
    }
    if !args.dry_run
        && system::ensure_privsep_dir()
            .map_err(|err| io_refusal(Path::new("/run/sshd"), "create", err))?
    {
        println!("created /run/sshd (sshd's privilege separation directory)");
    }
    system::sshd_test(sshd_path).map_err(|err| {
        Error::Refused(format!(
            "sshd rejects {} as it is, before any change: {}; fix that first",
            sshd_path.display(),
            err.detail
        ))
    })?;
    let edited = sshd_config::edit(&original, &wanted)
        .map_err(|err| Error::Refused(format!("{}: {err}", sshd_path.display())))?;
    let docker_gid = group_id("docker")?.ok_or_else(|| {
        Error::Refused("there is no docker group: install Docker first".to_string())
    })?;
    // The audit log of the config this run writes, if it writes one.
    let audit_log = if config.source.exists() {
        config
            .log
            .audit_log
            .as_ref()
            .map(|path| path.as_path().to_path_buf())
    } else {
        crate::config::parse(COMMENTED_DEFAULT)
            .ok()
            .and_then(|default| default.log.audit_log)
            .map(|path| path.as_path().to_path_buf())
    };
    let dirs = directories(config, docker_gid, audit_log.as_deref());
    let mut changed = false;

    if args.dry_run {
        if edited != original {
            println!("would change {}:", sshd_path.display());
            print!("{}", sshd_config::diff(&original, &edited));
        }
        if group_id(&config.auth.group.0)?.is_none() {
            println!("would create group {}", config.auth.group.0);
        }
        for dir in &dirs {
            if let Some(what) = dir_change(dir)? {
                println!("would {what}");
            }
        }
        if !config.state.db_path.as_path().exists() {
            println!("would create {}", config.state.db_path.as_path().display());
        }
        if let Some(path) = audit_log.as_ref().filter(|path| !path.exists()) {
            println!("would make the audit log {}", path.display());
        }
        for (user, home) in homes_to_move(config)? {
            println!(
                "would move the home of {user} from {home} to {}",
                config.auth.home_dir.as_path().display()
            );
        }
        if !config.source.exists() {
            println!(
                "would write a commented default config to {}",
                config.source.display()
            );
        }
        match isolation::inspect(config) {
            Ok(found) if found.missing.is_empty() => {}
            Ok(found) => println!("would add {}", found.missing.join(", ")),
            Err(err) => println!(
                "would add the rules that keep podspawn's networks apart (cannot look now: {})",
                err.detail
            ),
        }
        return Ok(());
    }

    if edited != original {
        apply_sshd_config(sshd_path, &original, &edited)?;
        changed = true;
        if args.no_reload {
            println!("not reloading sshd (--no-reload)");
        } else {
            match system::reload_sshd(sshd_path) {
                Ok(done) => println!("{done}"),
                // The file is right and checked; only the reload is left to the admin.
                Err(err) => println!(
                    "could not reload sshd ({}); reload it to apply the change",
                    err.detail
                ),
            }
        }
    } else {
        println!("{} already set up", sshd_path.display());
    }

    if group_id(&config.auth.group.0)?.is_none() {
        system::groupadd(&config.auth.group.0).map_err(|err| Error::Refused(err.to_string()))?;
        println!("created group {}", config.auth.group.0);
        changed = true;
    }
    for dir in &dirs {
        if let Some(what) = dir_change(dir)? {
            make_dir(dir)?;
            println!("{what}");
            changed = true;
        }
    }
    changed |= create_database(config, docker_gid)?;
    if let Some(path) = &audit_log {
        changed |= create_audit_log(path, docker_gid)?;
    }
    changed |= move_homes(config)?;
    if !config.source.exists() {
        write_default_config(&config.source)?;
        println!(
            "wrote a commented default config to {}",
            config.source.display()
        );
        changed = true;
    }
    let isolated = isolation::ensure(config).map_err(|err| {
        Error::Refused(format!(
            "cannot add the rule that keeps podspawn's networks apart: {err} (Docker's own \
             lets packets through while networks are made)"
        ))
    })?;
    if isolated {
        println!(
            "added the rule that keeps podspawn's networks apart (iptables -t mangle, chain {})",
            isolation::chain(config)
        );
        changed = true;
    }
    if changed {
        println!("server-setup complete");
    } else {
        println!("server-setup complete: nothing to change");
    }
    Ok(())
}

/// What sshd should run: this binary, naming the config when it is not the default.
fn auth_keys_command(config: &ServerConfig) -> Result<String, Error> {
    let binary = std::env::current_exe()
        .map_err(|err| Error::Refused(format!("cannot find the podspawn binary: {err}")))?;
    let prefix = SpawnCommand::new(&binary, config.moved()).map_err(Error::Refused)?;
    Ok(format!("{} auth-keys %u %t %k", prefix.as_str()))
}

fn io_refusal(path: &Path, action: &str, err: io::Error) -> Error {
    Error::Refused(format!("cannot {action} {}: {err}", path.display()))
}

/// sshd takes the first AuthorizedKeysCommand it reads, included files too.
fn refuse_foreign_commands_in_includes(sshd_path: &Path, text: &str) -> Result<(), Error> {
    let base = sshd_path.parent().unwrap_or(Path::new("/etc/ssh"));
    for pattern in sshd_config::includes(text) {
        let pattern = if pattern.starts_with('/') {
            PathBuf::from(pattern)
        } else {
            // sshd resolves relative includes against /etc/ssh; for a staged file,
            // against its own directory.
            base.join(pattern)
        };
        for file in expand_glob(&pattern) {
            let Ok(included) = fs::read_to_string(&file) else {
                continue;
            };
            if let Some((line, value)) = sshd_config::foreign_commands(&included).into_iter().next()
            {
                return Err(Error::Refused(format!(
                    "{}, line {line} (included by {}) already sets AuthorizedKeysCommand {value}; \
                     sshd takes only one, so podspawn cannot be added beside it",
                    file.display(),
                    sshd_path.display()
                )));
            }
        }
    }
    Ok(())
}

/// The files a `*`/`?` pattern in its last component names (sshd's Include globs).
fn expand_glob(pattern: &Path) -> Vec<PathBuf> {
    let name = pattern
        .file_name()
        .and_then(|name| name.to_str())
        .unwrap_or("");
    if !name.contains(['*', '?']) {
        return vec![pattern.to_path_buf()];
    }
    let dir = pattern.parent().unwrap_or(Path::new("/"));
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|file| wildcard(name, file))
        })
        .map(|entry| entry.path())
        .collect();
    found.sort();
    found
}

fn wildcard(pattern: &str, text: &str) -> bool {
    match pattern.chars().next() {
        None => text.is_empty(),
        Some('*') => (0..=text.len())
            .filter(|at| text.is_char_boundary(*at))
            .any(|at| wildcard(&pattern[1..], &text[at..])),
        Some('?') => text
            .chars()
            .next()
            .is_some_and(|c| wildcard(&pattern[1..], &text[c.len_utf8()..])),
        Some(c) => text.starts_with(c) && wildcard(&pattern[c.len_utf8()..], &text[c.len_utf8()..]),
    }
}

/// Backup, atomic write, `sshd -t`, and the exact original back if sshd refuses.
fn apply_sshd_config(path: &Path, original: &str, edited: &str) -> Result<(), Error> {
    let backup = PathBuf::from(format!("{}.podspawn.bak", path.display()));
    let meta = fs::metadata(path).map_err(|err| io_refusal(path, "read", err))?;
    crate::files::write_atomically(&backup, original.as_bytes(), meta.mode() & 0o7777)
        .map_err(|err| io_refusal(&backup, "write", err))?;
    println!("backed up {} to {}", path.display(), backup.display());
    crate::files::write_atomically(path, edited.as_bytes(), meta.mode() & 0o7777)
        .map_err(|err| io_refusal(path, "write", err))?;
    if let Err(err) = system::sshd_test(path) {
        crate::files::write_atomically(path, original.as_bytes(), meta.mode() & 0o7777)
            .map_err(|restore| io_refusal(path, "restore (the backup is next to it)", restore))?;
        return Err(Error::Refused(format!(
            "sshd rejected the edited {} ({}); the original is restored",
            path.display(),
            err.detail
        )));
    }
    println!("appended AuthorizedKeysCommand to {}", path.display());
    Ok(())
}

fn group_id(name: &str) -> Result<Option<u32>, Error> {
    accounts::group_id(name).map_err(|err| Error::Refused(err.to_string()))
}

/// podspawn's directories, with the owners and modes of the privilege model.
fn directories(config: &ServerConfig, docker_gid: u32, audit_log: Option<&Path>) -> Vec<Dir> {
    let shared = |path: &Path| Dir {
        path: path.to_path_buf(),
        group: Some(docker_gid),
        mode: 0o2770,
    };
    let root_only = |path: &Path| Dir {
        path: path.to_path_buf(),
        group: None,
        mode: 0o755,
    };
    let state_dir = config.state_dir();
    let mut dirs = vec![
        root_only(config.auth.key_dir.as_path()),
        shared(state_dir),
        shared(config.state.lock_dir.as_path()),
        shared(config.state.agent_dir.as_path()),
        root_only(config.auth.home_dir.as_path()),
        root_only(config.docker.config_dir.as_path()),
    ];
    let logs = [
        config.log.file.as_ref().map(|file| file.as_path()),
        audit_log,
    ];
    for parent in logs.into_iter().flatten().filter_map(Path::parent) {
        if !dirs.iter().any(|dir| dir.path == parent) {
            dirs.push(shared(parent));
        }
    }
    dirs
}

/// The audit log, `root:docker` 0660 (spawn appends as the user with the docker
/// group, and never makes it: it would be the user's); true if it changed it.
fn create_audit_log(path: &Path, docker_gid: u32) -> Result<bool, Error> {
    use std::os::unix::fs::OpenOptionsExt;
    let mode = crate::audit::FILE_MODE;
    let file = fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|err| io_refusal(path, "create", err))?;
    let meta = file
        .metadata()
        .map_err(|err| io_refusal(path, "inspect", err))?;
    // A file that was there already becomes the audit log only if it is a plain file
    // of root's: anyone else could still hold it open, and a second name (a typo for
    // another log) would open that one to the docker group.
    if !meta.is_file() || meta.uid() != 0 || meta.nlink() != 1 {
        return Err(Error::Refused(format!(
            "log.audit_log {} is there already and is not a plain file of root's (uid {}, \
             {} name(s)); move it away or name another file",
            path.display(),
            meta.uid(),
            meta.nlink()
        )));
    }
    if meta.uid() == 0 && meta.gid() == docker_gid && meta.mode() & 0o7777 == mode {
        return Ok(false);
    }
    std::os::unix::fs::fchown(&file, Some(0), Some(docker_gid))
        .map_err(|err| io_refusal(path, "chown", err))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|err| io_refusal(path, "chmod", err))?;
    println!(
        "made the audit log {} (root:docker {mode:o})",
        path.display()
    );
    Ok(true)
}

/// What `make_dir` would do to `dir`, or `None` if it is right already. Only
/// directories that are podspawn's own (missing ones, or with "podspawn" in the
/// path) are ever changed: a state directory configured as /var/lib must not get
/// mode 2770.
fn dir_change(dir: &Dir) -> Result<Option<String>, Error> {
    let wanted = format!(
        "{}:{} {:o}",
        "root",
        dir.group
            .map_or("root".to_string(), |gid| accounts::group_name(gid)
                .ok()
                .flatten()
                .unwrap_or(gid.to_string())),
        dir.mode
    );
    match fs::symlink_metadata(&dir.path) {
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            Ok(Some(format!("created {} ({wanted})", dir.path.display())))
        }
        Err(err) => Err(io_refusal(&dir.path, "inspect", err)),
        Ok(meta) if !meta.is_dir() => Err(Error::Refused(format!(
            "{} should be a directory, and is not",
            dir.path.display()
        ))),
        Ok(meta) => {
            let right = meta.uid() == 0
                && meta.gid() == dir.group.unwrap_or(0)
                && meta.mode() & 0o7777 == dir.mode;
            if right {
                Ok(None)
            } else if dir.path.to_string_lossy().contains("podspawn") {
                Ok(Some(format!("set {} to {wanted}", dir.path.display())))
            } else {
                log::warn!(
                    "{} is not podspawn's own; leaving it as it is (podspawn wants {wanted})",
                    dir.path.display()
                );
                Ok(None)
            }
        }
    }
}

/// Accounts podspawn created whose home is not `auth.home_dir` (made by an older
/// podspawn inside the state directory, or before the admin moved it): (user, home).
pub fn homes_to_move(config: &ServerConfig) -> Result<Vec<(UserName, String)>, Error> {
    let store = KeyStore::new(config.auth.key_dir.as_path());
    let wanted = config.auth.home_dir.as_path();
    let mut found = Vec::new();
    for user in store.created_accounts()? {
        let account =
            accounts::by_name(user.as_str()).map_err(|err| Error::Refused(err.to_string()))?;
        if let Some(account) = account
            && Path::new(&account.home) != wanted
        {
            found.push((user, account.home));
        }
    }
    Ok(found)
}

/// Moves created accounts' homes to `auth.home_dir`; true if any moved. usermod
/// refuses while the account runs a process (a session's keeper): that one is
/// said, and moves on a later run.
fn move_homes(config: &ServerConfig) -> Result<bool, Error> {
    let home = config.auth.home_dir.as_path();
    let mut moved = false;
    for (user, old) in homes_to_move(config)? {
        match system::set_home(user.as_str(), home) {
            Ok(()) => {
                println!("moved the home of {user} from {old} to {}", home.display());
                moved = true;
            }
            Err(err) => println!(
                "could not move the home of {user} from {old} now ({}); run server-setup \
                 again when {user} has no session",
                err.detail
            ),
        }
    }
    Ok(moved)
}

fn make_dir(dir: &Dir) -> Result<(), Error> {
    fs::create_dir_all(&dir.path).map_err(|err| io_refusal(&dir.path, "create", err))?;
    std::os::unix::fs::chown(&dir.path, Some(0), Some(dir.group.unwrap_or(0)))
        .map_err(|err| io_refusal(&dir.path, "chown", err))?;
    fs::set_permissions(&dir.path, fs::Permissions::from_mode(dir.mode))
        .map_err(|err| io_refusal(&dir.path, "chmod", err))
}

/// Creates (or migrates) the state database, root:docker 0660. True if it was new.
fn create_database(config: &ServerConfig, docker_gid: u32) -> Result<bool, Error> {
    let path = config.state.db_path.as_path();
    let new = !path.exists();
    State::open(path).map_err(crate::session::SessionError::from)?;
    let meta = fs::metadata(path).map_err(|err| io_refusal(path, "inspect", err))?;
    if meta.uid() != 0 || meta.gid() != docker_gid || meta.mode() & 0o777 != DB_FILE_MODE {
        std::os::unix::fs::chown(path, Some(0), Some(docker_gid))
            .map_err(|err| io_refusal(path, "chown", err))?;
        fs::set_permissions(path, fs::Permissions::from_mode(DB_FILE_MODE))
            .map_err(|err| io_refusal(path, "chmod", err))?;
        if !new {
            println!("set {} to root:docker {DB_FILE_MODE:o}", path.display());
            return Ok(true);
        }
    }
    if new {
        println!("created {}", path.display());
    }
    Ok(new)
}

fn write_default_config(path: &Path) -> Result<(), Error> {
    if let Some(parent) = path.parent()
        && !parent.exists()
    {
        fs::create_dir_all(parent).map_err(|err| io_refusal(parent, "create", err))?;
        fs::set_permissions(parent, fs::Permissions::from_mode(0o755))
            .map_err(|err| io_refusal(parent, "chmod", err))?;
    }
    crate::files::write_atomically(path, COMMENTED_DEFAULT.as_bytes(), 0o644)
        .map_err(|err| io_refusal(path, "write", err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn include_globs_match_like_sshds() {
        assert!(wildcard("*.conf", "50-cloud-init.conf"));
        assert!(!wildcard("*.conf", "50-cloud-init.conf.bak"));
        assert!(wildcard("a?c", "abc"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("?", ""));
    }
}
