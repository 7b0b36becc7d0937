//! Who is running podspawn, and what that lets it do.
//!
//! Admin commands change root-owned files; they run as root, or — for tests and
//! staged trees — as a caller who can already write what they would change. This
//! module only asks the kernel; it never changes identity.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::Error;

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// True when podspawn runs with a group it borrowed from its setgid bit. Such a
/// process runs in its caller's environment and must trust nothing in it.
pub fn has_borrowed_group() -> bool {
    unsafe { libc::getegid() != libc::getgid() }
}

/// Sets the real, effective and saved gid to the real one, and checks that it held.
/// Before any thread starts: glibc applies it to every thread.
pub fn drop_borrowed_group() -> std::io::Result<()> {
    let real = unsafe { libc::getgid() };
    if unsafe { libc::setresgid(real, real, real) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let (mut rgid, mut egid, mut sgid) = (0, 0, 0);
    if unsafe { libc::getresgid(&mut rgid, &mut egid, &mut sgid) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if (rgid, egid, sgid) != (real, real, real) {
        return Err(std::io::Error::other(format!(
            "gids are still {rgid}/{egid}/{sgid}"
        )));
    }
    Ok(())
}

/// Gives up the borrowed group in the calling thread only, for good (the raw system
/// call: glibc's wrapper would change every thread). For a thread that talks to
/// something of the caller's, which must see the caller's own group, not docker's.
pub fn drop_borrowed_group_in_this_thread() -> std::io::Result<()> {
    let real = unsafe { libc::getgid() };
    let result = unsafe { libc::syscall(libc::SYS_setresgid, real, real, real) };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Under a borrowed group, the directories spawn and the keeper write in (state,
/// locks, agents) must be root's and closed to others: spawn never creates them
/// (`server-setup` does), so none can be one the caller made, or one the caller
/// could swap entries in.
pub fn check_shared_dirs(config: &crate::config::ServerConfig) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for dir in [
        config.state_dir(),
        config.state.lock_dir.as_path(),
        config.state.agent_dir.as_path(),
    ] {
        let meta = std::fs::symlink_metadata(dir)
            .map_err(|err| format!("{}: {err} (run podspawn server-setup)", dir.display()))?;
        if !meta.is_dir() || meta.uid() != 0 || meta.mode() & 0o007 != 0 {
            return Err(format!(
                "{} is not a directory of root's closed to others (run podspawn server-setup)",
                dir.display()
            ));
        }
    }
    Ok(())
}

/// Refuses `command` unless the caller is root or can write `dir` (or, when `dir`
/// does not exist yet, the nearest directory above it that does).
pub fn require_admin(command: &str, dir: &Path) -> Result<(), Error> {
    if is_root() {
        return Ok(());
    }
    let existing = dir.ancestors().find(|path| path.exists()).unwrap_or(dir);
    if writable_by_caller(existing) {
        return Ok(());
    }
    Err(Error::NotPermitted(format!(
        "{command} must run as root ({} is not writable by you)",
        existing.display()
    )))
}

fn writable_by_caller(path: &Path) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // access() checks with the real ids: a setgid binary's borrowed group does not
    // count, which is what we want.
    unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
}
