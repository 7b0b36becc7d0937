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
