//! Unix accounts on the host: who is calling, and the uid, gid and group a user has.
//!
//! Read straight from /etc/passwd and /etc/group, not through NSS: the installed
//! binary is linked statically, and a static glibc that asks NSS about a name the
//! files do not know loads the host's NSS modules (libnss_systemd, …) and can crash.
//! podspawn's users are local accounts — `add-user` creates them — so the files are
//! the whole truth for them. This module only reads.

use std::fmt;
use std::fs;

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";

/// A host account as podspawn needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// The name of the primary group (the gid as text when it has no name).
    pub group: String,
    /// The home directory sshd changes into before running anything.
    pub home: String,
}

#[derive(Debug)]
pub struct LookupError(String);

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LookupError {}

/// One line of /etc/passwd.
struct Entry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
    home: &'a str,
}

fn passwd_entries(text: &str) -> impl Iterator<Item = Entry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        let _gecos = fields.next();
        let home = fields.next().unwrap_or("");
        // NIS "+"/"-" lines are not accounts of their own.
        (!name.is_empty() && !name.starts_with(['+', '-'])).then_some(Entry {
            name,
            uid,
            gid,
            home,
        })
    })
}

fn read(path: &str) -> Result<String, LookupError> {
    fs::read_to_string(path).map_err(|err| LookupError(format!("cannot read {path}: {err}")))
}

fn account(entry: Entry) -> Result<Account, LookupError> {
    Ok(Account {
        name: entry.name.to_string(),
        uid: entry.uid,
        gid: entry.gid,
        group: group_name(entry.gid)?.unwrap_or_else(|| entry.gid.to_string()),
        home: entry.home.to_string(),
    })
}

/// The account of the process's real uid.
pub fn caller() -> Result<Account, LookupError> {
    let uid = unsafe { libc::getuid() };
    by_uid(uid)?.ok_or_else(|| LookupError(format!("uid {uid} has no account in {PASSWD}")))
}

pub fn by_uid(uid: u32) -> Result<Option<Account>, LookupError> {
    let text = read(PASSWD)?;
    passwd_entries(&text)
        .find(|entry| entry.uid == uid)
        .map(account)
        .transpose()
}

pub fn by_name(name: &str) -> Result<Option<Account>, LookupError> {
    let text = read(PASSWD)?;
    passwd_entries(&text)
        .find(|entry| entry.name == name)
        .map(account)
        .transpose()
}

/// The uid of account `name`, if it exists.
pub fn uid_of(name: &str) -> Option<u32> {
    let text = read(PASSWD).ok()?;
    passwd_entries(&text)
        .find(|entry| entry.name == name)
        .map(|entry| entry.uid)
}

/// The uid of each account among `names` (sorted) that exists, from one read of
/// /etc/passwd (`auth-keys` asks for every registered user's on each key).
pub fn uids_of(names: &[&str]) -> Result<Vec<(String, u32)>, LookupError> {
    let text = read(PASSWD)?;
    Ok(passwd_entries(&text)
        .filter(|entry| names.binary_search(&entry.name).is_ok())
        .map(|entry| (entry.name.to_string(), entry.uid))
        .collect())
}

/// The name of group `gid`, if it has one.
pub fn group_name(gid: u32) -> Result<Option<String>, LookupError> {
    let text = read(GROUP)?;
    Ok(text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let _password = fields.next()?;
        let entry_gid: u32 = fields.next()?.parse().ok()?;
        (entry_gid == gid && !name.is_empty()).then(|| name.to_string())
    }))
}

/// The gid of group `name`, if it exists.
pub fn group_id(name: &str) -> Result<Option<u32>, LookupError> {
    let text = read(GROUP)?;
    Ok(text.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        fields.nth(1)?.parse().ok()
    }))
}

/// The members listed for group `name` in /etc/group (not those for whom it is
/// the primary group), or `None` when there is no such group.
pub fn group_members(name: &str) -> Result<Option<Vec<String>>, LookupError> {
    let text = read(GROUP)?;
    Ok(text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.len() >= 4 && fields[0] == name).then(|| {
            fields[3]
                .split(',')
                .filter(|member| !member.is_empty())
                .map(str::to_string)
                .collect()
        })
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lines_parse_and_odd_ones_are_skipped() {
        let text = "root:x:0:0:root:/root:/bin/bash\n+nis::::::\nbroken\nalice:*:1001:1002::/h:/bin/sh\n:x:5:5::/:/bin/sh\n";
        let entries: Vec<_> = passwd_entries(text)
            .map(|entry| (entry.name, entry.uid, entry.gid, entry.home))
            .collect();
        assert_eq!(
            entries,
            [("root", 0, 0, "/root"), ("alice", 1001, 1002, "/h")]
        );
    }

    #[test]
    fn root_and_the_caller_resolve() {
        let root = by_uid(0).unwrap().expect("uid 0 exists");
        assert_eq!(root.name, "root");
        assert_eq!(root.gid, 0);
        assert_eq!(root.group, "root");
        assert_eq!(by_name("root").unwrap(), Some(root));
        assert_eq!(uid_of("root"), Some(0));
        let me = caller().unwrap();
        assert_eq!(me.uid, unsafe { libc::getuid() });
    }

    #[test]
    fn unknown_accounts_are_none_without_asking_nss() {
        assert_eq!(by_uid(4_000_000_000).unwrap(), None);
        assert_eq!(uid_of("podspawn-no-such-user"), None);
        assert_eq!(by_name("podspawn-no-such-user").unwrap(), None);
        assert_eq!(group_members("podspawn-no-such-group").unwrap(), None);
    }
}
