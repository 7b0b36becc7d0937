//! `podspawn cleanup`: one pass that does what every keeper does (in case one is not
//! running) and reconciles the state with the engine — rows whose container is gone
//! are dropped, missing services of running sessions are made again, podspawn's
//! containers, networks and volumes that no row owns are removed. `--daemon` repeats it
//! for systemd. Nothing depends on it: it only makes reclamation faster. It also puts
//! back the rule that keeps podspawn's networks apart (`isolation`), which a reboot or
//! a firewall reload takes away.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::engine::DockerEngine;
use crate::error::Error;
use crate::host::SystemHost;
use crate::privilege;
use crate::session::{Sessions, Sweep};

pub const COMMAND: Command = Command {
    name: "cleanup",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn cleanup [--daemon [--interval DURATION] | --rules]

One pass: destroys sessions whose grace period or max lifetime is over (with
their services, network and volumes), drops sessions whose container is gone,
makes a running session's missing services again, and removes podspawn's
containers, networks and volumes that no session owns. Puts back the rule that
keeps podspawn's networks apart if a reboot or a firewall reload took it away.
Prints one summary line. Safe to run while users connect, and never needed for
correctness: each session's keeper does the same for its own session.

Options:
  --daemon           repeat forever (for a systemd service); stops on SIGTERM
  --interval D       time between passes with --daemon (default 60s)
  --rules            only put podspawn's iptables rules in place (networks apart,
                     egress policy); needs no engine: for a unit before docker's
  -h, --help         print this help
";

/// `cleanup [--daemon [--interval DURATION]]`.
#[derive(Debug, PartialEq, Eq)]
struct CleanupArgs {
    /// With `--daemon`: the time between passes.
    daemon_interval: Option<Duration>,
    /// `--rules`: the iptables rules only.
    rules_only: bool,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<CleanupArgs>, UsageError> {
    const NAME: &str = "cleanup";
    let mut daemon = false;
    let mut interval = None;
    let mut rules_only = false;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("daemon") => daemon = true,
            Long("rules") => rules_only = true,
            Long("interval") => {
                let value = args.value()?;
                let parsed = crate::config::ConfigDuration::parse(&value)
                    .map_err(|err| args.error(format!("--interval: {err}")))?;
                if parsed.is_zero() {
                    return Err(args.error("--interval must be more than 0s".to_string()));
                }
                interval = Some(parsed);
            }
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    if interval.is_some() && !daemon {
        return Err(args.error("--interval goes with --daemon".to_string()));
    }
    if rules_only && daemon {
        return Err(args.error("--rules does not go with --daemon".to_string()));
    }
    let daemon_interval = daemon.then(|| interval.unwrap_or(Duration::from_secs(60)));
    Ok(Some(CleanupArgs {
        daemon_interval,
        rules_only,
    }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin_as(context, crate::audit::Actor::Cleanup, |config| {
        cleanup(config, &args)
    })
}

fn cleanup(config: &ServerConfig, args: &CleanupArgs) -> Result<(), Error> {
    privilege::require_admin("cleanup", config.state_dir())?;
    if args.rules_only {
        // At boot, before the engine starts any container.
        let changed = crate::isolation::ensure(config).map_err(|err| {
            Error::NotPermitted(format!(
                "cannot put podspawn's iptables rules in place: {err}"
            ))
        })?;
        println!(
            "podspawn's iptables rules are in place (mangle, chains {} and {}){}",
            crate::isolation::chain(config),
            crate::isolation::egress_chain(config),
            if changed {
                "; some were missing or out of date and were put right"
            } else {
                ""
            }
        );
        return Ok(());
    }
    let mut sessions = super::sessions(config)?;
    let Some(interval) = args.daemon_interval else {
        if let Some(put_back) = keep_networks_apart(config) {
            println!("{put_back}");
        }
        let sweep = pass(&mut sessions, config.services.persist_volumes)?;
        println!("cleanup pass complete: {}", summary(&sweep));
        return Ok(());
    };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [libc::SIGTERM, libc::SIGINT] {
        signal_hook::flag::register(signal, stop.clone())
            .map_err(|err| Error::NotPermitted(format!("cannot handle signals: {err}")))?;
    }
    log::info!("cleanup daemon started interval={}s", interval.as_secs());
    while !stop.load(Ordering::SeqCst) {
        if let Some(put_back) = keep_networks_apart(config) {
            log::warn!("{put_back}");
        }
        match pass(&mut sessions, config.services.persist_volumes) {
            Ok(sweep) if sweep == Sweep::default() => {
                log::debug!("cleanup pass complete: nothing to do")
            }
            Ok(sweep) => log::info!("cleanup pass complete {}", summary(&sweep)),
            // The engine may be restarting; the next pass will try again.
            Err(err) => log::error!("cleanup pass failed: {err}"),
        }
        let next = Instant::now() + interval;
        while !stop.load(Ordering::SeqCst) && Instant::now() < next {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    log::info!("cleanup daemon stopped");
    Ok(())
}

/// Puts back the rule that keeps podspawn's networks apart, if it was gone; what it
/// did, if anything. Failing to is logged: the pass goes on.
fn keep_networks_apart(config: &ServerConfig) -> Option<String> {
    match crate::isolation::ensure(config) {
        Ok(true) => Some(format!(
            "put back the rule that keeps podspawn's networks apart (iptables -t mangle, chain {})",
            crate::isolation::chain(config)
        )),
        Ok(false) => None,
        Err(err) => {
            log::error!("cannot put back the rule that keeps podspawn's networks apart: {err}");
            None
        }
    }
}

/// Sessions first (with their services), then the networks of users who are no
/// longer registered (a network is kept while its user is, so a login needs no extra
/// docker call) and of sessions that are gone, services' volumes nothing keeps, and
/// replaced images.
fn pass(
    sessions: &mut Sessions<DockerEngine, SystemHost>,
    keep_volumes: bool,
) -> Result<Sweep, Error> {
    let mut sweep = sessions.cleanup()?;
    sweep.networks_removed = sessions.remove_unused_networks()?;
    sweep.volumes_removed = sessions.remove_unused_volumes(keep_volumes)?;
    sweep.images_removed = sessions.remove_replaced_images()?;
    Ok(sweep)
}

fn summary(sweep: &Sweep) -> String {
    format!(
        "grace_expired={} lifetime_expired={} orphans_removed={} rows_dropped={} \
         services_restarted={} networks_removed={} volumes_removed={} images_removed={}",
        sweep.grace_expired,
        sweep.lifetime_expired,
        sweep.orphans_removed,
        sweep.rows_dropped,
        sweep.services_restarted,
        sweep.networks_removed,
        sweep.volumes_removed,
        sweep.images_removed
    )
}
