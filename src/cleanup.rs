//! `podspawn cleanup`: one pass that does what every keeper does (in case one is not
//! running) and reconciles the state with the engine — rows whose container is gone
//! are dropped, podspawn's containers with no row are removed. `--daemon` repeats it
//! for systemd. Nothing depends on it: it only makes reclamation faster.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::cli::CleanupArgs;
use crate::config::ServerConfig;
use crate::docker::Docker;
use crate::engine::{DockerEngine, SystemHost};
use crate::error::Error;
use crate::privilege;
use crate::session::{Sessions, Sweep};

pub fn run(config: &ServerConfig, args: &CleanupArgs) -> Result<(), Error> {
    let db_path = config.state.db_path.as_path();
    let state_dir = db_path.parent().unwrap_or(db_path);
    privilege::require_admin("cleanup", state_dir)?;
    let engine = DockerEngine::new(Docker::new(&config.docker), 0);
    let mut sessions = Sessions::open(
        engine,
        SystemHost::new(None),
        db_path,
        config.state.lock_dir.as_path(),
    )?;
    let Some(interval) = args.daemon_interval else {
        let sweep = sessions.cleanup()?;
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
        match sessions.cleanup() {
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

fn summary(sweep: &Sweep) -> String {
    format!(
        "grace_expired={} lifetime_expired={} orphans_removed={} rows_dropped={}",
        sweep.grace_expired, sweep.lifetime_expired, sweep.orphans_removed, sweep.rows_dropped
    )
}
