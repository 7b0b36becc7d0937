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
//! The chain is named after the state directory (one per installation), so that
//! installations side by side — tests' among them — never edit each other's.

use crate::config::ServerConfig;
use crate::system::{self, ToolError};

/// The table podspawn's chain is in.
const TABLE: &str = "mangle";

/// What every rule says of itself in `iptables -S`.
const COMMENT: &str = "podspawn: no traffic between podspawn's networks";

/// podspawn's chain for this installation: `PODSPAWN-` and 8 hex digits of a hash of
/// the state directory (iptables allows 28 characters).
pub fn chain(config: &ServerConfig) -> String {
    let digest = crate::sha256::hex(config.state_dir().as_os_str().as_encoded_bytes());
    format!("PODSPAWN-{}", &digest[..8])
}

/// The rules of the chain, each as `iptables -A CHAIN` takes it: every pair of
/// podspawn's pools, either way.
pub fn rules(config: &ServerConfig) -> Vec<Vec<String>> {
    let pools = [
        config.network.pool.to_string(),
        config.network.services_pool.to_string(),
    ];
    let mut rules = Vec::new();
    for from in &pools {
        for to in &pools {
            rules.push(
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
                .collect(),
            );
        }
    }
    rules
}

/// The jump from mangle's FORWARD to the chain.
fn jump(chain: &str) -> Vec<String> {
    vec!["-j".to_string(), chain.to_string()]
}

fn iptables(words: &[&str], rule: &[String]) -> Result<String, ToolError> {
    // -w: wait for the xtables lock Docker may hold (bounded by the call's deadline).
    let mut args: Vec<&str> = vec!["-w", "-t", TABLE];
    args.extend(words);
    args.extend(rule.iter().map(String::as_str));
    system::iptables(&args)
}

/// Whether `rule` is in `chain` (`iptables -C`: exit 1 when it is not).
fn has(chain: &str, rule: &[String]) -> Result<bool, ToolError> {
    match iptables(&["-C", chain], rule) {
        Ok(_) => Ok(true),
        Err(err) if err.code == Some(1) => Ok(false),
        Err(err) => Err(err),
    }
}

/// What is missing of the chain, its rules and its jump (empty: all there).
pub fn missing(config: &ServerConfig) -> Result<Vec<String>, ToolError> {
    let chain = chain(config);
    if iptables(&["-S", &chain], &[]).is_err() {
        return Ok(vec![format!("chain {chain} in the {TABLE} table")]);
    }
    let mut missing = Vec::new();
    for rule in rules(config) {
        if !has(&chain, &rule)? {
            missing.push(format!("rule {} in {chain}", rule[..4].join(" ")));
        }
    }
    if !has("FORWARD", &jump(&chain))? {
        missing.push(format!("the jump from {TABLE} FORWARD to {chain}"));
    }
    Ok(missing)
}

/// Puts the chain, its rules and its jump in place, adding only what is missing and
/// removing rules of pools the config no longer has (so no moment is without them);
/// says whether anything changed.
pub fn ensure(config: &ServerConfig) -> Result<bool, ToolError> {
    let chain = chain(config);
    let mut changed = false;
    if iptables(&["-S", &chain], &[]).is_err() {
        iptables(&["-N", &chain], &[])?;
        changed = true;
    }
    let wanted = rules(config);
    for rule in &wanted {
        if !has(&chain, rule)? {
            iptables(&["-A", &chain], rule)?;
            changed = true;
        }
    }
    // Rules of pools the config had before: `iptables -S CHAIN` lists them as
    // `-A CHAIN …`, the same words `-D CHAIN` takes.
    let listed = iptables(&["-S", &chain], &[])?;
    let prefix = format!("-A {chain} ");
    for line in listed.lines() {
        let Some(rule) = line.strip_prefix(&prefix) else {
            continue;
        };
        let words = split_rule(rule);
        if !wanted.iter().any(|wanted| same_rule(wanted, &words)) {
            iptables(&["-D", &chain], &words)?;
            changed = true;
        }
    }
    if !has("FORWARD", &jump(&chain))? {
        iptables(&["-I", "FORWARD", "1"], &jump(&chain))?;
        changed = true;
    }
    Ok(changed)
}

/// One rule as `iptables -S` prints it, back into words (its only quoted word is the
/// comment).
fn split_rule(rule: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut rest = rule.trim();
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('"') {
            let end = quoted.find('"').unwrap_or(quoted.len());
            words.push(quoted[..end].to_string());
            rest = quoted.get(end + 1..).unwrap_or("").trim_start();
        } else {
            let end = rest.find(' ').unwrap_or(rest.len());
            words.push(rest[..end].to_string());
            rest = rest[end..].trim_start();
        }
    }
    words
}

/// Whether a listed rule is a wanted one (iptables lists `-s` with its mask, and
/// its matches in its own order; the addresses and the target are what matter).
fn same_rule(wanted: &[String], listed: &[String]) -> bool {
    let value = |words: &[String], flag: &str| {
        words
            .iter()
            .position(|word| word == flag)
            .and_then(|at| words.get(at + 1))
            .cloned()
    };
    ["-s", "-d", "-j"]
        .iter()
        .all(|flag| value(wanted, flag) == value(listed, flag))
        && listed.iter().any(|word| word == "--physdev-is-bridged")
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
        }
    }

    #[test]
    fn listed_rules_are_read_back_and_recognised() {
        let wanted = rules(&config(""));
        let listed = split_rule(
            "-s 10.214.0.0/16 -d 10.215.0.0/16 -m physdev ! --physdev-is-bridged -m comment \
             --comment \"podspawn: no traffic between podspawn's networks\" -j DROP",
        );
        assert_eq!(listed[11], COMMENT);
        assert!(same_rule(&wanted[1], &listed));
        assert!(!same_rule(&wanted[0], &listed));
        let old_pool =
            split_rule("-s 10.9.0.0/16 -d 10.215.0.0/16 -m physdev ! --physdev-is-bridged -j DROP");
        assert!(!wanted.iter().any(|rule| same_rule(rule, &old_pool)));
    }
}
