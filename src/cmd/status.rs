//! `podspawn status [--json | --prometheus]`: how loaded this server is, read from
//! the state and one question to the engine — for an admin's eye, a script, or
//! node_exporter's textfile collector run from a timer. Nothing runs in between:
//! there is no daemon to ask.

use std::fmt::Write as _;

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::docker::ContainerState;
use crate::error::Error;
use crate::host::Millis;
use crate::privilege;
use crate::session::Listed;

pub const COMMAND: Command = Command {
    name: "status",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn status [--json | --prometheus]

Shows this server's load: sessions (connected, in their grace period, idle,
missing), live connections, companion services, users, the oldest session, and
when the next grace period and max lifetime end.

--prometheus prints Prometheus' text format (gauges with HELP and TYPE), for
node_exporter's textfile collector, from a timer or cron every minute (see
contrib/cron.d/podspawn-status and contrib/systemd/podspawn-status.*).

Options:
  --json         one JSON object instead
  --prometheus   Prometheus' text format instead
  -h, --help     print this help
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Text,
    Json,
    Prometheus,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<Format>, UsageError> {
    const NAME: &str = "status";
    let mut format = Format::Text;
    while let Some(arg) = args.next()? {
        let wanted = match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("json") => Format::Json,
            Long("prometheus") => Format::Prometheus,
            other => return Err(Args::unexpected(NAME, &other)),
        };
        if format != Format::Text && format != wanted {
            return Err(args.error("--json and --prometheus exclude each other".to_string()));
        }
        format = wanted;
    }
    Ok(Some(format))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(format) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| status(config, format))
}

/// The figures `status` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
struct Summary {
    sessions: usize,
    /// Sessions with live connections.
    sessions_connected: usize,
    sessions_in_grace_period: usize,
    /// No connection and no grace period (persistent mode, or between a disconnect
    /// and its keeper's look).
    sessions_idle: usize,
    /// Whose container the engine no longer runs (the next spawn or cleanup heals).
    sessions_missing: usize,
    connections: usize,
    services: usize,
    services_running: usize,
    /// Services whose container the engine has stopped or does not have.
    services_not_running: usize,
    /// Users with at least one session.
    users: usize,
    oldest_session_seconds: Option<i64>,
    next_grace_end_seconds: Option<i64>,
    next_lifetime_end_seconds: Option<i64>,
    engine_up: bool,
}

impl Summary {
    fn of(listed: &[Listed], now: Millis, engine_up: bool) -> Summary {
        let seconds = |millis: Millis| millis.max(0) / 1000;
        let mut summary = Summary {
            sessions: listed.len(),
            engine_up,
            ..Summary::default()
        };
        let mut users: Vec<&str> = Vec::new();
        for one in listed {
            let row = &one.session;
            let missing = matches!(
                one.running,
                Some(ContainerState::Missing | ContainerState::NotRunning)
            );
            if missing {
                summary.sessions_missing += 1;
            } else if one.live_connections > 0 {
                summary.sessions_connected += 1;
            } else if row.grace_until.is_some() {
                summary.sessions_in_grace_period += 1;
            } else {
                summary.sessions_idle += 1;
            }
            summary.connections += one.live_connections;
            summary.services += one.services.len();
            for (_, running) in &one.services {
                match running {
                    Some(ContainerState::Running) => summary.services_running += 1,
                    Some(_) => summary.services_not_running += 1,
                    // The engine did not say: neither.
                    None => {}
                }
            }
            if !users.contains(&row.user.as_str()) {
                users.push(row.user.as_str());
            }
            let age = seconds(now - row.created_at);
            summary.oldest_session_seconds = summary.oldest_session_seconds.max(Some(age));
            let soonest = |current: Option<i64>, at: Option<Millis>| match (current, at) {
                (current, None) => current,
                (None, Some(at)) => Some(seconds(at - now)),
                (Some(current), Some(at)) => Some(current.min(seconds(at - now))),
            };
            summary.next_grace_end_seconds =
                soonest(summary.next_grace_end_seconds, row.grace_until);
            summary.next_lifetime_end_seconds =
                soonest(summary.next_lifetime_end_seconds, row.expires_at);
        }
        summary.users = users.len();
        summary
    }

    fn text(&self) -> String {
        let duration =
            |seconds: Option<i64>| seconds.map_or("-".to_string(), super::list::short_duration);
        let mut text = String::new();
        let _ = writeln!(
            text,
            "sessions        {} ({} connected, {} in grace period, {} idle, {} missing)",
            self.sessions,
            self.sessions_connected,
            self.sessions_in_grace_period,
            self.sessions_idle,
            self.sessions_missing
        );
        let _ = writeln!(text, "connections     {}", self.connections);
        let _ = writeln!(
            text,
            "services        {} ({} running)",
            self.services, self.services_running
        );
        let _ = writeln!(text, "users           {}", self.users);
        let _ = writeln!(
            text,
            "oldest session  {}",
            duration(self.oldest_session_seconds)
        );
        let _ = writeln!(
            text,
            "next grace end  {}",
            duration(self.next_grace_end_seconds)
        );
        let _ = writeln!(
            text,
            "next lifetime   {}",
            duration(self.next_lifetime_end_seconds)
        );
        let _ = writeln!(
            text,
            "engine          {}",
            if self.engine_up {
                "answers"
            } else {
                "does not answer"
            }
        );
        text
    }

    /// Prometheus' text exposition format: each metric's HELP and TYPE, then its
    /// samples. A figure that does not apply (no session: no oldest one) is left out.
    fn prometheus(&self) -> String {
        let mut text = String::new();
        let mut gauge = |name: &str, help: &str, samples: &[(&str, i64)]| {
            if samples.is_empty() {
                return;
            }
            let _ = writeln!(text, "# HELP podspawn_{name} {help}");
            let _ = writeln!(text, "# TYPE podspawn_{name} gauge");
            for (labels, value) in samples {
                let _ = writeln!(text, "podspawn_{name}{labels} {value}");
            }
        };
        let count = |n: usize| n as i64;
        gauge(
            "sessions",
            "Sessions (one container each), by state.",
            &[
                ("{state=\"connected\"}", count(self.sessions_connected)),
                (
                    "{state=\"grace_period\"}",
                    count(self.sessions_in_grace_period),
                ),
                ("{state=\"idle\"}", count(self.sessions_idle)),
                ("{state=\"missing\"}", count(self.sessions_missing)),
            ],
        );
        gauge(
            "connections",
            "Live SSH connections into sessions.",
            &[("", count(self.connections))],
        );
        gauge(
            "services",
            "Companion services of sessions, by state.",
            &[
                ("{state=\"running\"}", count(self.services_running)),
                ("{state=\"not_running\"}", count(self.services_not_running)),
            ],
        );
        gauge(
            "users",
            "Users with at least one session.",
            &[("", count(self.users))],
        );
        let optional =
            |value: Option<i64>| value.map(|value| vec![("", value)]).unwrap_or_default();
        gauge(
            "oldest_session_seconds",
            "Age of the oldest session.",
            &optional(self.oldest_session_seconds),
        );
        gauge(
            "next_grace_end_seconds",
            "Seconds until the next grace period ends.",
            &optional(self.next_grace_end_seconds),
        );
        gauge(
            "next_lifetime_end_seconds",
            "Seconds until the next session reaches its max lifetime.",
            &optional(self.next_lifetime_end_seconds),
        );
        gauge(
            "engine_up",
            "Whether the container engine answered.",
            &[("", i64::from(self.engine_up))],
        );
        text
    }
}

fn status(config: &ServerConfig, format: Format) -> Result<(), Error> {
    privilege::require_admin("status", config.state_dir())?;
    // No database yet means no sessions; a reader does not create one.
    let (listed, engine_up) = if config.state.db_path.as_path().exists() {
        let mut sessions = super::sessions(config)?;
        let listed = sessions.overview()?;
        let engine_up = sessions.engine_answers();
        (listed, engine_up)
    } else {
        let mut effects = super::effects(config);
        (Vec::new(), effects.engine_answers())
    };
    let summary = Summary::of(&listed, crate::host::now_millis(), engine_up);
    let text = match format {
        Format::Text => summary.text(),
        Format::Json => format!(
            "{}\n",
            serde_json::to_string(&summary).expect("the summary is plain data")
        ),
        Format::Prometheus => summary.prometheus(),
    };
    print!("{text}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::container::ServiceSpec;
    use crate::state::SessionRow;

    fn session(user: &str, project: &str, created_at: Millis) -> SessionRow {
        SessionRow {
            project: project.into(),
            created_at,
            expires_at: Some(created_at + 8 * 3_600_000),
            grace_until: None,
            ..crate::state::tests::session(user)
        }
    }

    fn service() -> ServiceSpec {
        ServiceSpec {
            container: "podspawn-alice-api.db".into(),
            name: "db".into(),
            image: "postgres".into(),
            user: "alice".into(),
            project: "api".into(),
            session_id: "s1".into(),
            network: "podspawn-alice-api.net".into(),
            address: std::net::Ipv4Addr::new(10, 215, 0, 3),
            ports: vec![5432],
            env: Vec::new(),
            volumes: Vec::new(),
            command: None,
            cpus: 0.5,
            memory_bytes: 1 << 28,
            pids_limit: 64,
            capabilities: Vec::new(),
            runtime: None,
            ipv6_off: false,
        }
    }

    fn listed(row: SessionRow, live: usize, running: Option<ContainerState>) -> Listed {
        Listed {
            session: row,
            live_connections: live,
            clients: Vec::new(),
            running,
            services: Vec::new(),
        }
    }

    fn summary() -> Summary {
        let now = 10_000_000;
        let mut graced = session("bob", "", now - 60_000);
        graced.grace_until = Some(now + 30_000);
        let mut with_service = listed(
            session("alice", "api", now - 7_200_000),
            2,
            Some(ContainerState::Running),
        );
        with_service.services = vec![
            (service(), Some(ContainerState::Running)),
            (service(), Some(ContainerState::Missing)),
        ];
        let listed = vec![
            with_service,
            listed(
                session("alice", "", now - 1_000),
                1,
                Some(ContainerState::Running),
            ),
            listed(graced, 0, Some(ContainerState::Running)),
            listed(
                session("carol", "", now - 5_000),
                0,
                Some(ContainerState::Missing),
            ),
        ];
        Summary::of(&listed, now, true)
    }

    #[test]
    fn the_figures_add_up() {
        let summary = summary();
        assert_eq!(
            (
                summary.sessions,
                summary.sessions_connected,
                summary.sessions_in_grace_period,
                summary.sessions_idle,
                summary.sessions_missing
            ),
            (4, 2, 1, 0, 1)
        );
        assert_eq!((summary.connections, summary.users), (3, 3));
        assert_eq!((summary.services, summary.services_running), (2, 1));
        assert_eq!(summary.oldest_session_seconds, Some(7200));
        assert_eq!(summary.next_grace_end_seconds, Some(30));
        assert!(summary.text().starts_with(
            "sessions        4 (2 connected, 1 in grace period, 0 idle, 1 missing)\n"
        ));
        let empty = Summary::of(&[], 0, false);
        assert_eq!(empty.oldest_session_seconds, None);
        assert!(!empty.prometheus().contains("oldest_session"));
    }

    /// The rules of Prometheus' text format (what `promtool check metrics` checks
    /// too, in the harness): HELP and TYPE once before a metric's samples, names of
    /// [a-zA-Z_:][a-zA-Z0-9_:]*, values that are numbers, no series twice.
    #[test]
    fn the_prometheus_text_keeps_the_formats_rules() {
        let text = summary().prometheus();
        let mut seen_series = std::collections::BTreeSet::new();
        let mut described = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!described.contains(&name.to_string()), "{name} twice");
                described.push(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                assert_eq!(rest, format!("{} gauge", described.last().unwrap()));
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert_eq!(Some(&name.to_string()), described.last(), "{line}");
            assert!(name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_'));
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            );
            value.parse::<f64>().unwrap();
            assert!(seen_series.insert(series.to_string()), "{series} twice");
        }
        assert!(text.contains("podspawn_sessions{state=\"grace_period\"} 1\n"));
        assert!(text.contains("podspawn_engine_up 1\n"));
    }
}
