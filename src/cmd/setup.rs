//! `podspawn setup [--remove]`: on a laptop, makes `ssh USER@NAME.pod` go to the
//! server `~/.podspawn/config.yaml` names, into project NAME — by putting a marked
//! block first in `~/.ssh/config` (what it says: `client::ssh_config`).
//!
//! The edit is the kind an admin would make by hand, done carefully: the file's
//! bytes are backed up first, the new file replaces the old in one rename, ssh is
//! asked to read it (and the old one comes back if it cannot), a second run changes
//! nothing, and `--remove` leaves exactly the bytes that were there before.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::client::ssh_config::{self, Added};
use crate::client::{self, ClientError, ClientPaths, SshConfigFile};
use crate::error::Error;
use crate::system;

/// A line for the terminal; one that cannot be written (`setup | head -1`) is
/// dropped, never a panic after the file was already changed.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub const COMMAND: Command = Command {
    name: "setup",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn setup [--remove]

Sets up this machine's ssh client so that `ssh USER@NAME.pod` reaches project
NAME (or a scratch environment NAME) on the server ~/.podspawn/config.yaml names:

  servers:
    default: devbox.company.com        # HOST or HOST:PORT
    mappings:
      api.pod: gpu.company.com:2222    # NAME.pod (or NAME) to its own server

It puts a marked block first in ~/.ssh/config (backed up to
~/.ssh/config.podspawn.bak first) that runs `podspawn connect` for *.pod names.
Host keys stay checked: all names of one server share its known_hosts entry.
Running it again changes nothing; --remove takes the block out again.

Options:
  --remove     take podspawn's block out of ~/.ssh/config
  -h, --help   print this help
";

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<bool>, UsageError> {
    const NAME: &str = "setup";
    let mut remove = false;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("remove") => remove = true,
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    Ok(Some(remove))
}

fn run(args: &mut Args, _: &Context) -> Result<Outcome, Error> {
    let Some(remove) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    let paths = ClientPaths::from_env()?;
    if remove {
        take_out(&paths)?;
    } else {
        set_up(&paths)?;
    }
    Ok(Outcome::Done)
}

fn file_error(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> ClientError {
    let path = path.to_path_buf();
    move |source| ClientError::File {
        path,
        action,
        source,
    }
}

fn set_up(paths: &ClientPaths) -> Result<(), Error> {
    client::refuse_another_users_home(paths)?;
    let binary = client::own_binary()?;
    let ssh_dir = paths.ssh_dir();
    if !ssh_dir.exists() {
        client::private_dir(&ssh_dir)?;
        say!("made {} (mode 0700, as ssh wants it)", ssh_dir.display());
    }
    let file = SshConfigFile::read(paths)?;
    let text = file.original.clone().unwrap_or_default();
    let problem = |problem: String| ClientError::SshConfig {
        path: file.path.clone(),
        problem,
    };
    let made = file.original.is_none() || ssh_config::made_by_setup(&text).map_err(problem)?;
    let block = ssh_config::block(&binary, &paths.hosts_dir(), made).map_err(|problem| {
        ClientError::SshConfig {
            path: binary.clone(),
            problem,
        }
    })?;
    let added = ssh_config::add(&text, &block).map_err(problem)?;
    let (edited, verb) = match &added {
        Added::Unchanged => {
            say!(
                "{} already has podspawn's block; nothing changed",
                file.path.display()
            );
            client::private_dir(&paths.hosts_dir())?;
            next_steps(paths);
            return Ok(());
        }
        Added::Inserted(edited) => (edited.clone(), "added podspawn's block to"),
        Added::Replaced(edited) => (edited.clone(), "updated podspawn's block in"),
    };
    if file.original.is_some() {
        checked_by_ssh(&file.path, "as it is, before any change")?;
    }
    client::private_dir(&paths.hosts_dir())?;
    // The first backup is of the file as it was before podspawn; a later one that
    // only replaces an older block keeps it.
    let backup = backup_path(&file.path);
    let keep_backup = matches!(added, Added::Replaced(_)) && backup.exists();
    if let (Some(original), false) = (&file.original, keep_backup) {
        crate::files::write_atomically(&backup, original.as_bytes(), 0o600)
            .map_err(file_error(&backup, "write"))?;
    }
    crate::files::write_atomically(&file.path, edited.as_bytes(), file.mode)
        .map_err(file_error(&file.path, "write"))?;
    if let Err(err) = checked_by_ssh(&file.path, "with podspawn's block") {
        restore(&file)?;
        return Err(err.into());
    }
    match file.original {
        Some(_) => say!(
            "{verb} {} (backup: {})",
            file.path.display(),
            backup.display()
        ),
        None => say!("{verb} {} (a new file)", file.path.display()),
    }
    say!(
        "ssh NAME.pod now runs {} connect for every NAME.pod",
        binary.display()
    );
    next_steps(paths);
    Ok(())
}

fn backup_path(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.podspawn.bak", path.display()))
}

/// ssh reads `path`, or the error says what it said. No ssh client: nothing to ask.
fn checked_by_ssh(path: &Path, when: &str) -> Result<(), ClientError> {
    match system::ssh_reads(path) {
        Ok(true) => Ok(()),
        Ok(false) => {
            say!("(no ssh client found to check {} with)", path.display());
            Ok(())
        }
        Err(err) => Err(ClientError::SshConfig {
            path: path.to_path_buf(),
            problem: format!("ssh cannot read it {when}: {}", err.detail),
        }),
    }
}

/// The file exactly as it was (or gone again, if setup made it).
fn restore(file: &SshConfigFile) -> Result<(), ClientError> {
    match &file.original {
        Some(original) => {
            crate::files::write_atomically(&file.path, original.as_bytes(), file.mode)
                .map_err(file_error(&file.path, "restore (the backup is beside it)"))
        }
        None => fs::remove_file(&file.path).map_err(file_error(&file.path, "remove")),
    }
}

/// What to do next, from what the client config says so far.
fn next_steps(paths: &ClientPaths) {
    let config = paths.config();
    match paths.load_config() {
        Ok(Some(loaded)) if !loaded.all_servers().is_empty() => {
            let servers: Vec<String> = loaded
                .all_servers()
                .iter()
                .map(|(server, chosen)| format!("{chosen}: {server}"))
                .collect();
            say!("{} names {}", config.display(), servers.join(", "));
            say!("next: ssh USER@NAME.pod (ssh USER@work.pod, say)");
        }
        Ok(_) => {
            say!("next: name your server in {}:", config.display());
            say!("    servers:\n      default: devbox.company.com    # HOST or HOST:PORT");
            say!("then: ssh USER@NAME.pod (ssh USER@work.pod, say)");
        }
        Err(err) => say!("next: fix {err}"),
    }
}

fn take_out(paths: &ClientPaths) -> Result<(), Error> {
    client::refuse_another_users_home(paths)?;
    let file = SshConfigFile::read(paths)?;
    let removed = match &file.original {
        None => None,
        Some(text) => ssh_config::remove(text).map_err(|problem| ClientError::SshConfig {
            path: file.path.clone(),
            problem,
        })?,
    };
    match removed {
        None => say!(
            "{} has no podspawn block; nothing changed",
            file.path.display()
        ),
        Some(removed) if removed.made && removed.rest.is_empty() => {
            fs::remove_file(&file.path).map_err(file_error(&file.path, "remove"))?;
            say!(
                "removed {} (podspawn setup had made it)",
                file.path.display()
            );
        }
        Some(removed) => {
            crate::files::write_atomically(&file.path, removed.rest.as_bytes(), file.mode)
                .map_err(file_error(&file.path, "write"))?;
            say!("removed podspawn's block from {}", file.path.display());
        }
    }
    remove_host_files(&paths.hosts_dir())?;
    Ok(())
}

/// The per-name files `connect --prepare` wrote, and their directory if that
/// leaves it empty; anything else there stays.
fn remove_host_files(dir: &Path) -> Result<(), ClientError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(file_error(dir, "read")(err)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name
            .to_str()
            .is_some_and(|name| name.ends_with(ssh_config::HOST_FILE_SUFFIX))
        {
            fs::remove_file(entry.path()).map_err(file_error(&entry.path(), "remove"))?;
        }
    }
    let _ = fs::remove_dir(dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setup_takes_only_remove() {
        assert_eq!(parse(&mut Args::of("setup", &[])).unwrap(), Some(false));
        assert_eq!(
            parse(&mut Args::of("setup", &["--remove"])).unwrap(),
            Some(true)
        );
        assert!(parse(&mut Args::of("setup", &["x"])).is_err());
    }
}
