//! Per-user networks: each user's containers live on their own bridge network,
//! `podspawn-<user>`, whose subnet and container address follow from the user's uid.
//!
//! Because the address is a pure function of (pool, uid), `auth-keys` can restrict a
//! user's TCP forwarding to exactly that address (`permitopen="ADDRESS:*"`) without a
//! database or a docker call: `ssh -L 3000:ADDRESS:3000` reaches the user's container
//! and nothing else — not the host's ports, not another user's containers.
//!
//! The pool (`network.pool`, default 10.214.0.0/16) is cut into /28 slots, one per uid
//! modulo the number of slots; in a slot, .1 is the bridge's gateway and .2 the user's
//! container.

use std::fmt;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::keys::UserName;
use serde::de::{self, Deserializer};

/// A user's network is named `podspawn-<user>`.
const NETWORK_PREFIX: &str = "podspawn-";

pub fn network_name(user: &UserName) -> String {
    format!("{NETWORK_PREFIX}{user}")
}

/// Addresses in one user's slot: network, gateway, container, room for services.
const SLOT_PREFIX: u8 = 28;

/// An IPv4 pool in CIDR form, e.g. `10.214.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    base: u32,
    prefix: u8,
}

impl Pool {
    pub fn parse(text: &str) -> Result<Pool, String> {
        let invalid = || format!("invalid network pool {text:?} (expected e.g. 10.214.0.0/16)");
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if !(8..=24).contains(&prefix) {
            return Err(format!(
                "network pool {text:?} must be between /8 and /24 (each user takes a /{SLOT_PREFIX})"
            ));
        }
        let base = u32::from(address);
        if base & !mask(prefix) != 0 {
            return Err(format!("network pool {text:?} has host bits set"));
        }
        Ok(Pool { base, prefix })
    }

    fn slots(&self) -> u32 {
        1 << (SLOT_PREFIX - self.prefix)
    }

    /// The network of the user with this uid (and name).
    pub fn for_user(&self, user: &str, uid: u32) -> UserNetwork {
        let slot = uid % self.slots();
        let subnet = self.base + (slot << (32 - SLOT_PREFIX));
        UserNetwork {
            name: format!("{NETWORK_PREFIX}{user}"),
            subnet: Ipv4Addr::from(subnet),
            gateway: Ipv4Addr::from(subnet + 1),
            container: Ipv4Addr::from(subnet + 2),
        }
    }

    /// True when two uids share a slot (their networks would overlap).
    pub fn collide(&self, uid: u32, other: u32) -> bool {
        uid != other && uid % self.slots() == other % self.slots()
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::parse("10.214.0.0/16").expect("the default pool parses")
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Pool::parse(&text).map_err(de::Error::custom)
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// One user's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserNetwork {
    pub name: String,
    pub subnet: Ipv4Addr,
    pub gateway: Ipv4Addr,
    /// The address of the user's default container.
    pub container: Ipv4Addr,
}

/// How many sessions (containers) of one user can have an address on their network:
/// a /28 has 16, less the network, its gateway and broadcast.
pub const MAX_SLOTS: u32 = 13;

impl UserNetwork {
    /// The address of the user's container in `slot` (0 is the default session's,
    /// `container`); `slot` is below `MAX_SLOTS`.
    pub fn address(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 2 + slot.min(MAX_SLOTS - 1))
    }

    pub fn cidr(&self) -> String {
        format!("{}/{SLOT_PREFIX}", self.subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_parse_strictly() {
        assert_eq!(
            Pool::parse("10.214.0.0/16").unwrap().to_string(),
            "10.214.0.0/16"
        );
        assert_eq!(Pool::parse("192.168.64.0/20").unwrap().slots(), 256);
        for bad in [
            "10.214.0.0",
            "10.214.0.1/16",
            "10.214.0.0/30",
            "10.0.0.0/4",
            "x/16",
            "10.214.0.0/x",
        ] {
            assert!(Pool::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_uid_maps_to_one_slot_with_fixed_addresses() {
        let pool = Pool::default();
        let alice = pool.for_user("alice", 1001);
        assert_eq!(alice.name, "podspawn-alice");
        // 1001 = slot 1001 of 4096: 1001 * 16 = 16016 = 62 * 256 + 144.
        assert_eq!(alice.cidr(), "10.214.62.144/28");
        assert_eq!(alice.gateway, Ipv4Addr::new(10, 214, 62, 145));
        assert_eq!(alice.container, Ipv4Addr::new(10, 214, 62, 146));
        assert_eq!(pool.for_user("alice", 1001), alice, "the same every time");
        assert_ne!(pool.for_user("bob", 1002).subnet, alice.subnet);
    }

    #[test]
    fn uids_a_pool_apart_collide() {
        let pool = Pool::parse("10.214.0.0/24").unwrap();
        assert_eq!(pool.slots(), 16);
        assert!(pool.collide(1000, 1016));
        assert!(!pool.collide(1000, 1001));
        assert!(!pool.collide(1000, 1000));
        assert_eq!(
            pool.for_user("a", 1000).subnet,
            pool.for_user("b", 1016).subnet
        );
    }
}
