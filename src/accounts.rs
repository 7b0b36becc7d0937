//! Unix accounts on the host: who is calling, and the uid, gid and group a user has.
//!
//! Lookups go through libc (`getpwuid_r` and friends), so they see whatever the host's
//! NSS sees. This module only reads; it never creates or changes an account.

use std::ffi::{CStr, CString};
use std::fmt;

/// A host account as podspawn needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The name of the primary group (the gid as text when it has no name).
    pub group: String,
}

#[derive(Debug)]
pub struct LookupError(String);

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LookupError {}

/// The account of the process's real uid.
pub fn caller() -> Result<Account, LookupError> {
    let uid = unsafe { libc::getuid() };
    by_uid(uid)?.ok_or_else(|| LookupError(format!("uid {uid} has no account")))
}

pub fn by_uid(uid: u32) -> Result<Option<Account>, LookupError> {
    lookup_passwd(&|entry, buffer: &mut Vec<libc::c_char>, result| unsafe {
        libc::getpwuid_r(uid, entry, buffer.as_mut_ptr(), buffer.len(), result)
    })
}

/// The uid of account `name`, if it exists.
pub fn uid_of(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    lookup_passwd(&|entry, buffer: &mut Vec<libc::c_char>, result| unsafe {
        libc::getpwnam_r(
            name.as_ptr(),
            entry,
            buffer.as_mut_ptr(),
            buffer.len(),
            result,
        )
    })
    .ok()
    .flatten()
    .map(|account| account.uid)
}

type PasswdCall<'a> =
    dyn Fn(*mut libc::passwd, &mut Vec<libc::c_char>, *mut *mut libc::passwd) -> libc::c_int + 'a;

fn lookup_passwd(call: &PasswdCall) -> Result<Option<Account>, LookupError> {
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];
    loop {
        let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let status = call(&mut entry, &mut buffer, &mut result);
        if status == libc::ERANGE && buffer.len() < 1 << 20 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if status != 0 {
            return Err(LookupError(format!(
                "account lookup failed: {}",
                std::io::Error::from_raw_os_error(status)
            )));
        }
        if result.is_null() {
            return Ok(None);
        }
        let name = unsafe { CStr::from_ptr(entry.pw_name) }
            .to_string_lossy()
            .into_owned();
        let gid = entry.pw_gid;
        return Ok(Some(Account {
            name,
            uid: entry.pw_uid,
            gid,
            group: group_name(gid)?.unwrap_or_else(|| gid.to_string()),
        }));
    }
}

/// The name of group `gid`, if it has one.
pub fn group_name(gid: u32) -> Result<Option<String>, LookupError> {
    let mut buffer: Vec<libc::c_char> = vec![0; 1024];
    loop {
        let mut entry: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let status = unsafe {
            libc::getgrgid_r(
                gid,
                &mut entry,
                buffer.as_mut_ptr(),
                buffer.len(),
                &mut result,
            )
        };
        if status == libc::ERANGE && buffer.len() < 1 << 22 {
            buffer.resize(buffer.len() * 2, 0);
            continue;
        }
        if status != 0 {
            return Err(LookupError(format!(
                "group lookup failed: {}",
                std::io::Error::from_raw_os_error(status)
            )));
        }
        if result.is_null() {
            return Ok(None);
        }
        let name = unsafe { CStr::from_ptr(entry.gr_name) };
        return Ok(Some(name.to_string_lossy().into_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_and_the_caller_resolve() {
        let root = by_uid(0).unwrap().expect("uid 0 exists");
        assert_eq!(root.name, "root");
        assert_eq!(root.gid, 0);
        assert_eq!(uid_of("root"), Some(0));
        let me = caller().unwrap();
        assert_eq!(me.uid, unsafe { libc::getuid() });
    }

    #[test]
    fn unknown_accounts_are_none() {
        assert_eq!(by_uid(4_000_000_000).unwrap(), None);
        assert_eq!(uid_of("podspawn-no-such-user"), None);
    }
}
