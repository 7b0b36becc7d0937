//! The host's rule that keeps podspawn's networks apart: a packet the host routes
//! from one podspawn network to another is dropped.
//!
//! Docker keeps its networks apart with its DOCKER-ISOLATION chains, reached from
//! the filter table's FORWARD. But each `docker network create` deletes FORWARD's
//! jumps to them (and to DOCKER-USER) and inserts them again, and in between a
//! container reaches another network's containers: measured here (Docker 20.10), 1
//! of 60 connections from one network to a server on another got through while
//! other networks came and went — and podspawn makes networks all the time (every
//! session with services has one). So podspawn's own rule lives where docker never
//! writes: a chain of its own in the mangle table, jumped to from mangle's FORWARD,
//! dropping every routed (not bridged) packet from a podspawn pool to a podspawn
//! pool. With it, 0 of 90 got through under the same churn. Traffic within one network
//! is bridged and untouched; the host's own connections to containers (sshd's
//! forwarding, podspawn's port checks) are not forwarded, so untouched too.
//!
//! Rules are only ever added: a rule of pools the config no longer names may still
//! guard networks made on them, so it stays until the admin removes it (`doctor`
//! names it). The chain is named after the state directory (one per installation),
//! so installations side by side — tests' among them — never edit each other's.
//!
//! The egress policy is a second chain of podspawn's in the same table, jumped to
//! from mangle's PREROUTING, so it sees a packet before Docker's DNAT does (a port
//! the host publishes for another container is the host's address there). From a
//! podspawn pool it drops what opens a connection to any of the host's own addresses
//! (its gateway address on each network among them) but DNS, to link-local addresses
//! (169.254.0.0/16: a cloud's metadata service) and to the ranges the admin denies;
//! replies to connections the host opened (sshd's forwarding, podspawn's port
//! checks) pass. `network.allow_host` and `network.allow_metadata` leave their part
//! out. That chain is podspawn's alone and is rewritten whenever it differs from the
//! config.

use crate::config::ServerConfig;
use crate::system::{self, ToolError};

/// The table podspawn's chain is in.
const TABLE: &str = "mangle";

/// What every rule says of itself in `iptables -S` (no quote in it: iptables would
/// print it escaped).
const COMMENT: &str = "podspawn: no traffic between podspawn networks";

/// podspawn's chain for this installation: `PODSPAWN-` and the installation's name
/// (iptables allows 28 characters).
pub fn chain(config: &ServerConfig) -> String {
    format!("PODSPAWN-{}", config.installation())
}

/// The pairs of pools the rules drop routed packets between: every pair of
/// podspawn's pools, either way.
fn pairs(config: &ServerConfig) -> Vec<(String, String)> {
    let pools = [
        config.network.pool.to_string(),
        config.network.services_pool.to_string(),
    ];
    let mut pairs = Vec::new();
    for from in &pools {
        for to in &pools {
            pairs.push((from.clone(), to.clone()));
        }
    }
    pairs
}

/// The rules of the chain, each as `iptables -A CHAIN` takes it.
pub fn rules(config: &ServerConfig) -> Vec<Vec<String>> {
    pairs(config)
        .iter()
        .map(|(from, to)| {
            [
                "-s",
                from,
                "-d",
                to,
                "-m",
                "physdev",
                "!",
                "--physdev-is-bridged",
                "-m",
                "comment",
                "--comment",
                COMMENT,
                "-j",
                "DROP",
            ]
            .iter()
            .map(|word| word.to_string())
            .collect()
        })
        .collect()
}

/// The jump from mangle's FORWARD to the chain.
fn jump(chain: &str) -> Vec<String> {
    vec!["-j".to_string(), chain.to_string()]
}

/// podspawn's egress chain for this installation (hooked to mangle PREROUTING).
pub fn egress_chain(config: &ServerConfig) -> String {
    format!("{}-OUT", chain(config))
}

/// What every egress rule says of itself.
const EGRESS_COMMENT: &str = "podspawn: egress policy";

/// Cloud metadata services and every other link-local address.
pub const LINK_LOCAL: &str = "169.254.0.0/16";

/// The egress chain's rules, in order, each as `iptables -A CHAIN` takes it. They
/// hold for packets from both pools, and from the build network's bridge (a project
/// build's steps, an image being tried: no pool's addresses, docker picks them).
pub fn egress_rules(config: &ServerConfig) -> Vec<Vec<String>> {
    egress_rules_with(config, &host_resolvers())
}

/// The resolvers Docker's DNS forwards a container's names to, from the container's
/// own network namespace: the host's, from its resolv.conf (systemd-resolved's
/// upstream ones when it names only its local stub). DNS to them always passes — one
/// may be link-local (a cloud's), in a denied range, or the host itself.
pub fn host_resolvers() -> Vec<std::net::Ipv4Addr> {
    let read = |path: &str| -> Vec<std::net::Ipv4Addr> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().strip_prefix("nameserver"))
            .filter_map(|rest| rest.trim().parse::<std::net::Ipv4Addr>().ok())
            .filter(|address| !address.is_loopback())
            .collect()
    };
    let mut found = read("/etc/resolv.conf");
    if found.is_empty() {
        found = read("/run/systemd/resolve/resolv.conf");
    }
    found.sort();
    found.dedup();
    found
}

/// `egress_rules`, for the host resolvers `resolvers`.
pub fn egress_rules_with(
    config: &ServerConfig,
    resolvers: &[std::net::Ipv4Addr],
) -> Vec<Vec<String>> {
    let network = &config.network;
    let resolvers: Vec<String> = resolvers.iter().map(ToString::to_string).collect();
    let pools = [network.pool.to_string(), network.services_pool.to_string()];
    let sources: [[String; 2]; 3] = [
        ["-s".into(), network.pool.to_string()],
        ["-s".into(), network.services_pool.to_string()],
        [
            "-i".into(),
            crate::docker::build_bridge(&config.installation()),
        ],
    ];
    let mut rules: Vec<Vec<&str>> = Vec::new();
    for [flag, from] in &sources {
        // Replies to what the host opened (and only those: a connection a container
        // opened is no reply, and is judged again packet by packet).
        rules.push(vec![
            flag,
            from,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "--ctdir",
            "REPLY",
            "-j",
            "RETURN",
        ]);
    }
    for [flag, from] in &sources {
        for resolver in &resolvers {
            for protocol in ["udp", "tcp"] {
                rules.push(vec![
                    flag, from, "-d", resolver, "-p", protocol, "-m", protocol, "--dport", "53",
                    "-j", "RETURN",
                ]);
            }
        }
        if !network.allow_host {
            for protocol in ["udp", "tcp"] {
                rules.push(vec![
                    flag,
                    from,
                    "-p",
                    protocol,
                    "-m",
                    protocol,
                    "--dport",
                    "53",
                    "-m",
                    "addrtype",
                    "--dst-type",
                    "LOCAL",
                    "-j",
                    "RETURN",
                ]);
            }
            // A socket on 0.0.0.0 also takes broadcasts and multicasts (UDP services:
            // snmpd, mDNS, syslog), and answers them.
            for kind in ["LOCAL", "BROADCAST", "MULTICAST"] {
                rules.push(vec![
                    flag,
                    from,
                    "-m",
                    "addrtype",
                    "--dst-type",
                    kind,
                    "-j",
                    "DROP",
                ]);
            }
        }
        if !network.allow_metadata {
            rules.push(vec![flag, from, "-d", LINK_LOCAL, "-j", "DROP"]);
        }
    }
    let denied: Vec<String> = network.deny.iter().map(ToString::to_string).collect();
    for [flag, from] in &sources {
        for cidr in &denied {
            rules.push(vec![flag, from, "-d", cidr, "-j", "DROP"]);
        }
    }
    // A build's steps and an image being tried reach no session's container (routed
    // between networks, they would meet only Docker's own rules, with their gaps).
    let [flag, from] = &sources[2];
    for pool in &pools {
        rules.push(vec![flag, from, "-d", pool, "-j", "DROP"]);
    }
    rules
        .into_iter()
        .map(|rule| {
            let (matches, verdict) = rule.split_at(rule.len() - 2);
            matches
                .iter()
                .chain(&["-m", "comment", "--comment", EGRESS_COMMENT])
                .chain(verdict)
                .map(|word| word.to_string())
                .collect()
        })
        .collect()
}

/// Whether the egress chain holds exactly `wanted` (as far as `iptables -C` and a
/// count of its rules can tell); `None` when there is no such chain.
fn egress_in_place(chain: &str, wanted: &[Vec<String>]) -> Result<Option<bool>, ToolError> {
    let Some(listed) = listing(chain)? else {
        return Ok(None);
    };
    let count = listed
        .lines()
        .filter(|line| line.starts_with("-A "))
        .count();
    if count != wanted.len() {
        return Ok(Some(false));
    }
    for rule in wanted {
        if !has(chain, rule)? {
            return Ok(Some(false));
        }
    }
    Ok(Some(true))
}

fn iptables(words: &[&str], rule: &[String]) -> Result<String, ToolError> {
    // -w: wait for the xtables lock Docker may hold (bounded by the call's deadline).
    let mut args: Vec<&str> = vec!["-w", "-t", TABLE];
    args.extend(words);
    args.extend(rule.iter().map(String::as_str));
    system::iptables(&args)
}

/// iptables' exit code for "no such chain or rule" (others: no permission, a
/// problem of the tool itself).
const NOT_THERE: Option<i32> = Some(1);

/// The chain's listing (`iptables -S CHAIN`), `None` when there is no such chain.
fn listing(chain: &str) -> Result<Option<String>, ToolError> {
    match iptables(&["-S", chain], &[]) {
        Ok(listed) => Ok(Some(listed)),
        Err(err) if err.code == NOT_THERE => Ok(None),
        Err(err) => Err(err),
    }
}

/// Whether `rule` is in `chain` (`iptables -C`).
fn has(chain: &str, rule: &[String]) -> Result<bool, ToolError> {
    match iptables(&["-C", chain], rule) {
        Ok(_) => Ok(true),
        Err(err) if err.code == NOT_THERE => Ok(false),
        Err(err) => Err(err),
    }
}

/// What the host has of podspawn's rule, for `doctor` and `server-setup --dry-run`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Inspection {
    /// What is missing: the chain, a rule, the jump.
    pub missing: Vec<String>,
    /// Rules of the chain for pools the config no longer names.
    pub stale: Vec<String>,
    /// Other podspawn chains mangle's FORWARD jumps to (another state directory's).
    pub others: Vec<String>,
}

pub fn inspect(config: &ServerConfig) -> Result<Inspection, ToolError> {
    let chain = chain(config);
    let mut found = Inspection::default();
    let forward = iptables(&["-S", "FORWARD"], &[])?;
    found.others = forward
        .lines()
        .filter_map(|line| line.strip_prefix("-A FORWARD -j "))
        .filter(|target| target.starts_with("PODSPAWN-") && *target != chain)
        .map(str::to_string)
        .collect();
    match listing(&chain)? {
        None => found
            .missing
            .push(format!("chain {chain} in the {TABLE} table")),
        Some(listed) => {
            let wanted = pairs(config);
            let there = listed_pairs(&listed);
            for (from, to) in &wanted {
                if !there.contains(&(from.clone(), to.clone())) {
                    found
                        .missing
                        .push(format!("the rule {from} -> {to} in {chain}"));
                }
            }
            found.stale = there
                .into_iter()
                .filter(|pair| !wanted.contains(pair))
                .map(|(from, to)| format!("{from} -> {to}"))
                .collect();
            if !has("FORWARD", &jump(&chain))? {
                found
                    .missing
                    .push(format!("the jump from {TABLE} FORWARD to {chain}"));
            }
        }
    }
    let egress = egress_chain(config);
    let policy = egress_in_place(&egress, &egress_rules(config))?;
    // `iptables -C` of a jump to a chain that does not exist is an error, not "no".
    if policy.is_none() || !has("PREROUTING", &jump(&egress))? {
        found
            .missing
            .push(format!("the jump from {TABLE} PREROUTING to {egress}"));
    }
    match policy {
        None => found.missing.push(format!(
            "the egress policy's chain {egress} in the {TABLE} table"
        )),
        Some(false) => found.missing.push(format!(
            "the egress policy's rules as the config says them, in {egress}"
        )),
        Some(true) => {}
    }
    Ok(found)
}

/// The (source, destination) pairs of the dropping rules for routed packets in
/// `iptables -S CHAIN`'s listing of one chain.
fn listed_pairs(listed: &str) -> Vec<(String, String)> {
    listed
        .lines()
        .filter_map(|line| line.strip_prefix("-A "))
        .filter_map(|line| line.split_once(' ').map(|(_, rule)| rule))
        .filter(|rule| rule.contains("! --physdev-is-bridged") && rule.ends_with("-j DROP"))
        .filter_map(|rule| {
            let words: Vec<&str> = rule.split_whitespace().collect();
            let value = |flag: &str| {
                words
                    .iter()
                    .position(|word| *word == flag)
                    .and_then(|at| words.get(at + 1))
                    .map(|value| value.to_string())
            };
            Some((value("-s")?, value("-d")?))
        })
        .collect()
}

/// Puts the chain, its rules and its jump in place, adding only what is missing;
/// says whether anything was added.
pub fn ensure(config: &ServerConfig) -> Result<bool, ToolError> {
    let chain = chain(config);
    let mut changed = false;
    if listing(&chain)?.is_none() {
        iptables(&["-N", &chain], &[])?;
        changed = true;
    }
    for rule in rules(config) {
        if !has(&chain, &rule)? {
            iptables(&["-A", &chain], &rule)?;
            changed = true;
        }
    }
    if !has("FORWARD", &jump(&chain))? {
        iptables(&["-I", "FORWARD", "1"], &jump(&chain))?;
        changed = true;
    }
    let egress = egress_chain(config);
    let wanted = egress_rules(config);
    // A rewrite left half-done by an earlier run (its stand-in chain) is finished.
    let stand_in = format!("{egress}-NEW");
    let half_done = listing(&stand_in)?.is_some();
    match egress_in_place(&egress, &wanted)? {
        Some(true) => {}
        None => {
            iptables(&["-N", &egress], &[])?;
            for rule in &wanted {
                iptables(&["-A", &egress], rule)?;
            }
            changed = true;
        }
        Some(false) => {
            // Never a moment without a policy: the new rules go in a stand-in chain
            // that applies beside the old one while the old one is rewritten (one
            // an earlier run left is filled anew: it may be half made).
            if half_done {
                iptables(&["-F", &stand_in], &[])?;
            } else {
                iptables(&["-N", &stand_in], &[])?;
            }
            for rule in &wanted {
                iptables(&["-A", &stand_in], rule)?;
            }
            if !has("PREROUTING", &jump(&stand_in))? {
                iptables(&["-I", "PREROUTING", "1"], &jump(&stand_in))?;
            }
            iptables(&["-F", &egress], &[])?;
            for rule in &wanted {
                iptables(&["-A", &egress], rule)?;
            }
            changed = true;
        }
    }
    if !has("PREROUTING", &jump(&egress))? {
        iptables(&["-I", "PREROUTING", "1"], &jump(&egress))?;
        changed = true;
    }
    if half_done || listing(&stand_in)?.is_some() {
        for _ in 0..8 {
            if !has("PREROUTING", &jump(&stand_in))? {
                break;
            }
            iptables(&["-D", "PREROUTING"], &jump(&stand_in))?;
        }
        iptables(&["-F", &stand_in], &[])?;
        iptables(&["-X", &stand_in], &[])?;
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> ServerConfig {
        crate::config::parse(text).unwrap()
    }

    #[test]
    fn the_chain_is_the_installations_and_fits_iptables() {
        let default = chain(&config(""));
        assert!(default.starts_with("PODSPAWN-") && default.len() == 17);
        let moved = chain(&config("state:\n  db_path: /srv/podspawn/state.db\n"));
        assert_ne!(default, moved);
    }

    #[test]
    fn every_pair_of_pools_is_dropped_when_routed_not_when_bridged() {
        let rules = rules(&config(
            "network:\n  pool: 10.1.0.0/16\n  services_pool: 10.2.0.0/16\n",
        ));
        let pairs: Vec<(String, String)> = rules
            .iter()
            .map(|rule| (rule[1].clone(), rule[3].clone()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("10.1.0.0/16".into(), "10.1.0.0/16".into()),
                ("10.1.0.0/16".into(), "10.2.0.0/16".into()),
                ("10.2.0.0/16".into(), "10.1.0.0/16".into()),
                ("10.2.0.0/16".into(), "10.2.0.0/16".into()),
            ]
        );
        for rule in &rules {
            assert_eq!(rule[4..8], ["-m", "physdev", "!", "--physdev-is-bridged"]);
            assert_eq!(rule.last().unwrap(), "DROP");
            assert!(!rule.iter().any(|word| word.contains(['\'', '"', '\\'])));
        }
    }

    #[test]
    fn egress_drops_the_host_but_dns_link_local_and_denied_ranges_after_replies() {
        let text = |config: &ServerConfig| -> Vec<String> {
            egress_rules_with(config, &[])
                .iter()
                .map(|rule| rule.join(" "))
                .collect()
        };
        let default = text(&config(""));
        assert_eq!(default.len(), 23, "{default:#?}");
        // Replies to what the host opened come first, for both pools and the builds.
        assert!(default[0].starts_with(
            "-s 10.214.0.0/16 -m conntrack --ctstate RELATED,ESTABLISHED --ctdir REPLY"
        ));
        assert!(default[1].starts_with("-s 10.215.0.0/16 -m conntrack"));
        let bridge = crate::docker::build_bridge(&config("").installation());
        assert!(default[2].starts_with(&format!("-i {bridge} -m conntrack")));
        assert!(
            bridge.len() <= 15,
            "{bridge} is too long for an interface name"
        );
        for kind in ["BROADCAST", "MULTICAST"] {
            assert!(
                default
                    .iter()
                    .any(|rule| rule.starts_with("-s 10.214.0.0/16")
                        && rule.contains(&format!("--dst-type {kind}"))
                        && rule.ends_with("-j DROP"))
            );
        }
        // The build network's steps meet the same policy, and reach no pool.
        assert_eq!(
            default
                .iter()
                .filter(|rule| rule.starts_with(&format!("-i {bridge} ")))
                .count(),
            9
        );
        assert!(
            default
                .iter()
                .all(|rule| rule.contains("--comment podspawn: egress policy"))
        );
        let position =
            |rules: &[String], needle: &str| rules.iter().position(|rule| rule.contains(needle));
        let dns = position(&default, "--dport 53 -m addrtype --dst-type LOCAL").unwrap();
        let host = position(
            &default,
            "--dst-type LOCAL -m comment --comment podspawn: egress policy -j DROP",
        )
        .unwrap();
        assert!(dns < host, "{default:#?}");
        assert!(position(&default, "-d 169.254.0.0/16").is_some());

        let open = text(&config(
            "network:\n  allow_host: true\n  allow_metadata: true\n",
        ));
        assert_eq!(
            open.len(),
            5,
            "the replies' rules, and the builds kept from the pools: {open:#?}"
        );
        let denied = text(&config(
            "network:\n  allow_host: true\n  allow_metadata: true\n  deny: [192.168.0.0/16]\n",
        ));
        assert_eq!(
            denied[3..],
            [
                "-s 10.214.0.0/16 -d 192.168.0.0/16 -m comment --comment podspawn: egress policy -j DROP".to_string(),
                "-s 10.215.0.0/16 -d 192.168.0.0/16 -m comment --comment podspawn: egress policy -j DROP".to_string(),
                format!("-i {bridge} -d 192.168.0.0/16 -m comment --comment podspawn: egress policy -j DROP"),
                format!("-i {bridge} -d 10.214.0.0/16 -m comment --comment podspawn: egress policy -j DROP"),
                format!("-i {bridge} -d 10.215.0.0/16 -m comment --comment podspawn: egress policy -j DROP"),
            ]
        );
        // The host's resolvers pass, before anything is dropped (one may be
        // link-local, denied, or the host's own).
        let denying = config("network:\n  deny: [169.254.0.0/16]\n");
        let with = egress_rules_with(&denying, &["169.254.169.254".parse().unwrap()]);
        let with: Vec<String> = with.iter().map(|rule| rule.join(" ")).collect();
        let dns = with
            .iter()
            .position(|rule| {
                rule.starts_with("-s 10.214.0.0/16 -d 169.254.169.254 -p udp -m udp --dport 53")
            })
            .unwrap();
        assert!(with[dns].ends_with("-j RETURN"));
        let first_drop = with
            .iter()
            .position(|rule| rule.starts_with("-s 10.214.0.0/16") && rule.ends_with("DROP"))
            .unwrap();
        assert!(dns < first_drop, "{with:#?}");
        assert_eq!(
            egress_chain(&config("")),
            format!("{}-OUT", chain(&config("")))
        );
        assert!(egress_chain(&config("")).len() <= 28);
    }

    #[test]
    fn listed_rules_are_read_back_and_only_routed_drops_count() {
        let listed = "-N PODSPAWN-1\n\
            -A PODSPAWN-1 -s 10.214.0.0/16 -d 10.215.0.0/16 -m physdev ! --physdev-is-bridged -m comment --comment \"podspawn: no traffic between podspawn networks\" -j DROP\n\
            -A PODSPAWN-1 -s 10.9.0.0/16 -d 10.9.0.0/16 -m physdev --physdev-is-bridged -j DROP\n\
            -A PODSPAWN-1 -s 10.8.0.0/16 -d 10.8.0.0/16 -m physdev ! --physdev-is-bridged -j ACCEPT\n";
        assert_eq!(
            listed_pairs(listed),
            [("10.214.0.0/16".to_string(), "10.215.0.0/16".to_string())]
        );
    }
}
