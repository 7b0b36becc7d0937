//! Networks: each user's containers live on their own bridge network,
//! `podspawn-<user>`, whose subnet and container addresses follow from the user's uid;
//! a session with companion services has a private network of its own,
//! `<container>.net`, whose subnet follows from the uid and the session's slot.
//!
//! Because every address is a pure function of (pool, uid, slot), `auth-keys` can
//! restrict a user's TCP forwarding to exactly those addresses (`permitopen`) without
//! a database or a docker call: `ssh -L 3000:ADDRESS:3000` reaches the user's own
//! containers and services and nothing else — not the host's ports, not another
//! user's containers.
//!
//! `network.pool` (default 10.214.0.0/16) is cut into /28 blocks, one per uid modulo
//! the number of blocks; in a block, .1 is the bridge's gateway and .2 onwards the
//! user's containers, one per session slot. `network.services_pool` (default
//! 10.215.0.0/16) is cut into /25 blocks, one per uid likewise, each holding one /29
//! per session slot: .1 its gateway, .2 the session's container, .3 to .6 its
//! services.

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

/// The private network of the session whose container is `container`. User and
/// project names hold no `.`, so it is never a user's network, and it is unique as
/// the container name is.
pub fn session_network_name(container: &str) -> String {
    format!("{container}.net")
}

/// One user's block of `network.pool`: network, gateway, a container per slot.
const USER_BLOCK: u8 = 28;

/// One user's block of `network.services_pool`: a session network per slot.
const SERVICES_BLOCK: u8 = 25;

/// One session's private network: network, gateway, its container, its services,
/// broadcast.
const SESSION_NETWORK: u8 = 29;

/// How many services a session may have: the addresses of its /29 after the
/// network, the gateway, the session's container and the broadcast.
pub const MAX_SERVICES: usize = 4;

/// An IPv4 range in CIDR form, cut into blocks of `/block`, one per uid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    base: u32,
    prefix: u8,
    block: u8,
}

impl Range {
    fn parse(text: &str, block: u8) -> Result<Range, String> {
        let invalid = || format!("invalid network pool {text:?} (expected e.g. 10.214.0.0/16)");
        let (address, prefix) = text.split_once('/').ok_or_else(invalid)?;
        let address: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if !(8..=block - 4).contains(&prefix) {
            return Err(format!(
                "network pool {text:?} must be between /8 and /{} (each user takes a /{block})",
                block - 4
            ));
        }
        let base = u32::from(address);
        if base & !mask(prefix) != 0 {
            return Err(format!("network pool {text:?} has host bits set"));
        }
        Ok(Range {
            base,
            prefix,
            block,
        })
    }

    fn blocks(&self) -> u32 {
        1 << (self.block - self.prefix)
    }

    /// The first address of the block of the user with this uid.
    fn block_of(&self, uid: u32) -> u32 {
        self.base + ((uid % self.blocks()) << (32 - self.block))
    }

    fn collide(&self, uid: u32, other: u32) -> bool {
        uid != other && uid % self.blocks() == other % self.blocks()
    }

    fn overlaps(&self, other: &Range) -> bool {
        let prefix = self.prefix.min(other.prefix);
        self.base & mask(prefix) == other.base & mask(prefix)
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

/// An IPv4 range an admin names (`network.deny`): `10.0.0.0/8`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub base: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let invalid = || format!("invalid address range {text:?} (expected e.g. 10.0.0.0/8)");
        let (address, prefix) = text.split_once('/').unwrap_or((text, "32"));
        let base: Ipv4Addr = address.parse().map_err(|_| invalid())?;
        // Digits only, as iptables prints them back (no sign, no leading zero).
        let plain = prefix.bytes().all(|b| b.is_ascii_digit())
            && !(prefix.len() > 1 && prefix.starts_with('0'));
        let prefix: u8 = prefix.parse().map_err(|_| invalid())?;
        if !plain || prefix > 32 {
            return Err(invalid());
        }
        if u32::from(base) & !mask(prefix) != 0 {
            return Err(format!("address range {text:?} has host bits set"));
        }
        Ok(Cidr { base, prefix })
    }
}

impl Cidr {
    /// True when the range shares addresses with `text`, a range in CIDR form.
    pub fn overlaps_range(&self, other: &Cidr) -> bool {
        let prefix = self.prefix.min(other.prefix);
        u32::from(self.base) & mask(prefix) == u32::from(other.base) & mask(prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Cidr::parse(&text).map_err(de::Error::custom)
    }
}

/// `network.pool`: users' networks, a /28 per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool(Range);

impl Pool {
    pub fn parse(text: &str) -> Result<Pool, String> {
        Range::parse(text, USER_BLOCK).map(Pool)
    }

    /// The network of the user with this uid (and name).
    pub fn for_user(&self, user: &str, uid: u32) -> Network {
        let subnet = self.0.block_of(uid);
        Network {
            name: format!("{NETWORK_PREFIX}{user}"),
            subnet: Ipv4Addr::from(subnet),
            prefix: USER_BLOCK,
            gateway: Ipv4Addr::from(subnet + 1),
            container: Ipv4Addr::from(subnet + 2),
        }
    }

    /// True when two uids share a block (their networks would overlap).
    pub fn collide(&self, uid: u32, other: u32) -> bool {
        self.0.collide(uid, other)
    }

    /// True when the two pools share addresses.
    pub fn overlaps(&self, services: &ServicesPool) -> bool {
        self.0.overlaps(&services.0)
    }
}

impl Default for Pool {
    fn default() -> Self {
        Pool::parse("10.214.0.0/16").expect("the default pool parses")
    }
}

impl fmt::Display for Pool {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for Pool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Pool::parse(&text).map_err(de::Error::custom)
    }
}

/// `network.services_pool`: the private networks of sessions with services, a /25
/// per user holding a /29 per session slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicesPool(Range);

impl ServicesPool {
    pub fn parse(text: &str) -> Result<ServicesPool, String> {
        Range::parse(text, SERVICES_BLOCK).map(ServicesPool)
    }

    /// The private network of the session in `slot` of the user with this uid, whose
    /// container is `container`.
    pub fn for_session(&self, container: &str, uid: u32, slot: u32) -> Network {
        let slot = slot.min(MAX_SLOTS - 1);
        let subnet = self.0.block_of(uid) + (slot << (32 - SESSION_NETWORK));
        Network {
            name: session_network_name(container),
            subnet: Ipv4Addr::from(subnet),
            prefix: SESSION_NETWORK,
            gateway: Ipv4Addr::from(subnet + 1),
            container: Ipv4Addr::from(subnet + 2),
        }
    }

    /// Every address a session in `slot` may give its container and services.
    pub fn addresses(&self, uid: u32, slot: u32) -> Vec<Ipv4Addr> {
        let network = self.for_session("", uid, slot);
        std::iter::once(network.container)
            .chain((0..MAX_SERVICES).map(|index| network.service(index)))
            .collect()
    }

    /// True when two uids share a block (their sessions' networks would overlap).
    pub fn collide(&self, uid: u32, other: u32) -> bool {
        self.0.collide(uid, other)
    }
}

impl Default for ServicesPool {
    fn default() -> Self {
        ServicesPool::parse("10.215.0.0/16").expect("the default services pool parses")
    }
}

impl fmt::Display for ServicesPool {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<'de> Deserialize<'de> for ServicesPool {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        ServicesPool::parse(&text).map_err(de::Error::custom)
    }
}

/// The first other user (name) whose uid shares `uid`'s block of the user pool, and
/// the first whose uid shares it of the services pool, among `others` (registered
/// users and their uids): those addresses would be both users', so neither may have
/// them. `add-user` refuses such a pair; users registered otherwise (an older
/// podspawn, key files written by hand) are found here.
pub fn sharing<'a>(
    uid: u32,
    others: &'a [(String, u32)],
    pool: &Pool,
    services: &ServicesPool,
) -> (Option<&'a str>, Option<&'a str>) {
    let first = |collide: &dyn Fn(u32) -> bool| {
        others
            .iter()
            .find(|(_, other)| collide(*other))
            .map(|(name, _)| name.as_str())
    };
    (
        first(&|other| pool.collide(uid, other)),
        first(&|other| services.collide(uid, other)),
    )
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    }
}

/// A bridge network podspawn makes: a user's, or a session's private one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The address of the container it is made for: the user's default session's on
    /// a user's network, the session's own on a session's network.
    pub container: Ipv4Addr,
}

/// How many sessions (containers) of one user can have an address on their network:
/// a /28 has 16, less the network, its gateway and broadcast.
pub const MAX_SLOTS: u32 = 13;

impl Network {
    /// On a user's network: the address of the user's container in `slot` (0 is the
    /// default session's, `container`); `slot` is below `MAX_SLOTS`.
    pub fn address(&self, slot: u32) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet) + 2 + slot.min(MAX_SLOTS - 1))
    }

    /// On a session's network: the address of its service number `index` (below
    /// `MAX_SERVICES`).
    pub fn service(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.container) + 1 + index.min(MAX_SERVICES - 1) as u32)
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", self.subnet, self.prefix)
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
        assert_eq!(Pool::parse("192.168.64.0/20").unwrap().0.blocks(), 256);
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
        assert_eq!(pool.0.blocks(), 16);
        assert!(pool.collide(1000, 1016));
        assert!(!pool.collide(1000, 1001));
        assert!(!pool.collide(1000, 1000));
        assert_eq!(
            pool.for_user("a", 1000).subnet,
            pool.for_user("b", 1016).subnet
        );
    }

    #[test]
    fn a_sessions_network_follows_from_uid_and_slot_and_holds_its_services() {
        let pool = ServicesPool::default();
        // 1001 = block 1001 of 512 → 489: 489 * 128 = 62592 = 244 * 256 + 128.
        let default = pool.for_session("podspawn-alice-api", 1001, 0);
        assert_eq!(default.name, "podspawn-alice-api.net");
        assert_eq!(default.cidr(), "10.215.244.128/29");
        assert_eq!(default.gateway, Ipv4Addr::new(10, 215, 244, 129));
        assert_eq!(default.container, Ipv4Addr::new(10, 215, 244, 130));
        assert_eq!(default.service(0), Ipv4Addr::new(10, 215, 244, 131));
        assert_eq!(default.service(3), Ipv4Addr::new(10, 215, 244, 134));
        let third = pool.for_session("x", 1001, 2);
        assert_eq!(third.cidr(), "10.215.244.144/29");
        // The last slot's network is the last /29 of the user's /25 but one.
        let last = pool.for_session("x", 1001, MAX_SLOTS - 1);
        assert_eq!(last.cidr(), "10.215.244.224/29");
        assert_eq!(
            pool.addresses(1001, 2),
            (146..=150)
                .map(|last| Ipv4Addr::new(10, 215, 244, last))
                .collect::<Vec<_>>()
        );
        assert!(pool.collide(1001, 1001 + 512));
        assert!(!pool.collide(1001, 1002));
        for bad in ["10.215.0.0/22", "10.215.0.1/16", "10.215.0.0"] {
            assert!(ServicesPool::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(ServicesPool::parse("10.215.0.0/21").is_ok());
    }

    #[test]
    fn users_who_share_a_block_are_named_for_each_pool() {
        let pool = Pool::default();
        let services = ServicesPool::default();
        let others = [
            ("bob".to_string(), 1002),
            ("carol".to_string(), 1001 + 512),
            ("dave".to_string(), 1001 + 4096),
        ];
        assert_eq!(
            sharing(1001, &others, &pool, &services),
            (Some("dave"), Some("carol"))
        );
        assert_eq!(sharing(1003, &others, &pool, &services), (None, None));
        // A user is never their own neighbour.
        assert_eq!(sharing(1002, &others[..1], &pool, &services), (None, None));
    }
}
