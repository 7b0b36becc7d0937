//! `podspawn list`: the sessions there are, with their live connections, as a table
//! (the tutorial's columns) or as JSON. Read-only: it prunes nothing and destroys
//! nothing; a connection counts only while its spawn process lives.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::docker::Docker;
use crate::error::Error;
use crate::privilege;
use crate::process;
use crate::session::SessionError;
use crate::state::{SessionRow, State};

pub const COMMAND: Command = Command {
    name: "list",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn list [--json]

Shows every session: USER PROJECT CONTAINER STATUS CONNS AGE LIFETIME LEFT.
CONNS counts live connections only. STATUS is running, grace_period (no
connections; destroyed when the grace period ends), or missing/stopped when the
engine no longer has the container (the next spawn or cleanup reconciles it).

Options:
  --json             one JSON array of objects instead of the table
  -h, --help         print this help
";

/// `list [--json]`.
#[derive(Debug, PartialEq, Eq)]
struct ListArgs {
    json: bool,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<ListArgs>, UsageError> {
    const NAME: &str = "list";
    let mut json = false;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("json") => json = true,
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    Ok(Some(ListArgs { json }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| list(config, &args))
}

/// One row of the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    user: String,
    project: String,
    container: String,
    status: &'static str,
    connections: usize,
    age_secs: i64,
    lifetime_left_secs: Option<i64>,
}

fn list(config: &ServerConfig, args: &ListArgs) -> Result<(), Error> {
    let db_path = config.state.db_path.as_path();
    let state_dir = config.state_dir();
    privilege::require_admin("list", state_dir)?;
    // No database yet means no sessions; a reader does not create one.
    let (rows, state) = if db_path.exists() {
        let state = State::open(db_path).map_err(SessionError::from)?;
        (state.sessions().map_err(SessionError::from)?, Some(state))
    } else {
        (Vec::new(), None)
    };
    // One look at the engine, to tell a session whose container is gone.
    let running: Option<BTreeMap<String, bool>> = if rows.is_empty() {
        Some(BTreeMap::new())
    } else {
        match Docker::new(&config.docker).list_managed() {
            Ok(containers) => Some(
                containers
                    .into_iter()
                    .map(|c| (c.name, c.running))
                    .collect(),
            ),
            Err(err) => {
                log::warn!("cannot ask the engine ({err}); statuses are from the state database");
                None
            }
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.as_secs() as i64)
        .unwrap_or(0);
    let mut lines = Vec::new();
    for (row, state) in rows.iter().zip(std::iter::repeat(state.as_ref()).flatten()) {
        let connections = state
            .connections(&row.user, &row.project)
            .map_err(SessionError::from)?
            .iter()
            .filter(|connection| process::is_alive(&connection.process))
            .count();
        lines.push(line(row, connections, running.as_ref(), now));
    }
    if args.json {
        println!("{}", to_json(&lines));
    } else {
        print!("{}", to_table(&lines));
    }
    Ok(())
}

fn line(
    row: &SessionRow,
    connections: usize,
    running: Option<&BTreeMap<String, bool>>,
    now: i64,
) -> Line {
    let status = match running.map(|running| running.get(&row.container)) {
        Some(None) => "missing",
        Some(Some(false)) => "stopped",
        _ if row.grace_until.is_some() => "grace_period",
        _ => "running",
    };
    Line {
        user: row.user.clone(),
        project: row.project.clone(),
        container: row.container.clone(),
        status,
        connections,
        age_secs: (now - row.created_at).max(0),
        lifetime_left_secs: row.expires_at.map(|end| (end - now).max(0)),
    }
}

fn to_table(lines: &[Line]) -> String {
    let mut rows = vec![[
        "USER".to_string(),
        "PROJECT".to_string(),
        "CONTAINER".to_string(),
        "STATUS".to_string(),
        "CONNS".to_string(),
        "AGE".to_string(),
        "LIFETIME LEFT".to_string(),
    ]];
    for line in lines {
        rows.push([
            line.user.clone(),
            if line.project.is_empty() {
                "(default)".to_string()
            } else {
                line.project.clone()
            },
            line.container.clone(),
            line.status.to_string(),
            line.connections.to_string(),
            short_duration(line.age_secs),
            line.lifetime_left_secs
                .map_or("-".to_string(), short_duration),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(column, (cell, width))| {
                if column == 6 {
                    cell.clone()
                } else {
                    format!("{cell:<width$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn to_json(lines: &[Line]) -> String {
    let items: Vec<String> = lines
        .iter()
        .map(|line| {
            format!(
                "{{\"user\":{},\"project\":{},\"container\":{},\"status\":{},\"connections\":{},\"age_seconds\":{},\"lifetime_left_seconds\":{}}}",
                json_string(&line.user),
                json_string(&line.project),
                json_string(&line.container),
                json_string(line.status),
                line.connections,
                line.age_secs,
                line.lifetime_left_secs.map_or("null".to_string(), |secs| secs.to_string()),
            )
        })
        .collect();
    format!("[{}]", items.join(","))
}

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `45s`, `10m`, `7h50m`, `2d3h`: the two largest units, like the tutorial shows.
fn short_duration(secs: i64) -> String {
    let (days, hours, minutes, seconds) = (
        secs / 86400,
        secs % 86400 / 3600,
        secs % 3600 / 60,
        secs % 60,
    );
    match (days, hours, minutes) {
        (0, 0, 0) => format!("{seconds}s"),
        (0, 0, _) => format!("{minutes}m"),
        (0, _, 0) => format!("{hours}h"),
        (0, _, _) => format!("{hours}h{minutes}m"),
        (_, 0, _) => format!("{days}d"),
        _ => format!("{days}d{hours}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::session;

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(45), "45s");
        assert_eq!(short_duration(600), "10m");
        assert_eq!(short_duration(3600), "1h");
        assert_eq!(short_duration(7 * 3600 + 50 * 60), "7h50m");
        assert_eq!(short_duration(2 * 86400 + 3 * 3600), "2d3h");
        assert_eq!(short_duration(86400 + 59), "1d");
    }

    #[test]
    fn status_comes_from_the_engine_and_the_grace_period() {
        let now = 1000 + 600;
        let row = session("sarah");
        let engine: BTreeMap<String, bool> = [("podspawn-sarah".to_string(), true)].into();
        assert_eq!(line(&row, 1, Some(&engine), now).status, "running");
        let waiting = SessionRow {
            grace_until: Some(now + 10),
            ..row.clone()
        };
        assert_eq!(line(&waiting, 0, Some(&engine), now).status, "grace_period");
        assert_eq!(line(&row, 0, Some(&BTreeMap::new()), now).status, "missing");
        let stopped: BTreeMap<String, bool> = [("podspawn-sarah".to_string(), false)].into();
        assert_eq!(line(&row, 0, Some(&stopped), now).status, "stopped");
        assert_eq!(line(&row, 0, None, now).status, "running");
    }

    #[test]
    fn the_table_has_the_tutorial_columns() {
        let row = session("sarah");
        let now = row.created_at + 600;
        let table = to_table(&[line(&row, 1, None, now)]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "USER   PROJECT    CONTAINER       STATUS   CONNS  AGE  LIFETIME LEFT"
        );
        assert_eq!(
            lines[1],
            "sarah  (default)  podspawn-sarah  running  1      10m  7h50m"
        );
    }

    #[test]
    fn json_is_one_array_of_objects() {
        let row = SessionRow {
            expires_at: None,
            ..session("sa\"rah")
        };
        let json = to_json(&[line(&row, 2, None, row.created_at + 5)]);
        assert_eq!(
            json,
            "[{\"user\":\"sa\\\"rah\",\"project\":\"\",\"container\":\"podspawn-sa\\\"rah\",\"status\":\"running\",\"connections\":2,\"age_seconds\":5,\"lifetime_left_seconds\":null}]"
        );
        assert_eq!(to_json(&[]), "[]");
    }
}
