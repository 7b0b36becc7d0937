//! `podspawn list`: the sessions there are, with their live connections, as a table
//! (the tutorial's columns) or as JSON. Read-only: it prunes nothing and destroys
//! nothing; a connection counts only while its spawn process lives.

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::docker::ContainerState;
use crate::error::Error;
use crate::host::Millis;
use crate::privilege;
use crate::session::Listed;
use crate::state::ProjectRow;

pub const COMMAND: Command = Command {
    name: "list",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn list [--projects] [--json]

Shows every session: USER PROJECT CONTAINER STATUS CONNS AGE LIFETIME LEFT, and
SERVICES when a session has companion services (a service whose container is
gone shows `(missing)`, one that stopped `(stopped)`; cleanup makes it again).
CLIENTS when a connection's address is known (from sshd's SSH_CONNECTION).
CONNS counts live connections only. STATUS is running, grace_period (no
connections; destroyed when the grace period ends), or missing/stopped when the
engine no longer has the container (the next spawn or cleanup reconciles it).
--json also gives each session's address and its services' (for ssh -L).

With --projects, shows every project instead: NAME REPO BRANCH COMMIT IMAGE
SESSIONS. A project declared in the config's `projects:` but not added yet shows
`(not added)`; `podspawn update-project NAME` adds it.

Options:
  --projects         the projects instead of the sessions
  --json             one JSON array of objects instead of the table
  -h, --help         print this help
";

/// `list [--projects] [--json]`.
#[derive(Debug, PartialEq, Eq)]
struct ListArgs {
    projects: bool,
    json: bool,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<ListArgs>, UsageError> {
    const NAME: &str = "list";
    let mut json = false;
    let mut projects = false;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("json") => json = true,
            Long("projects") => projects = true,
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    Ok(Some(ListArgs { projects, json }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| list(config, &args))
}

/// One row of the listing; `--json` prints these as they are.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct Line {
    user: String,
    project: String,
    container: String,
    status: &'static str,
    connections: usize,
    #[serde(rename = "age_seconds")]
    age_secs: i64,
    #[serde(rename = "lifetime_left_seconds")]
    lifetime_left_secs: Option<i64>,
    /// Where `ssh -L` reaches the container (none when its user has no account).
    address: Option<String>,
    services: Vec<ServiceLine>,
    /// Where each live connection comes from (`ADDRESS:PORT`).
    clients: Vec<String>,
}

/// One of a session's companion services.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct ServiceLine {
    name: String,
    container: String,
    image: String,
    address: String,
    ports: Vec<u16>,
    status: &'static str,
}

/// One project of `list --projects`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
struct ProjectLine {
    name: String,
    repo: String,
    branch: String,
    /// Empty for a project only declared in the config.
    commit: String,
    image: String,
    sessions: usize,
}

fn list(config: &ServerConfig, args: &ListArgs) -> Result<(), Error> {
    privilege::require_admin("list", config.state_dir())?;
    // No database yet means no sessions; a reader does not create one.
    let mut sessions = if config.state.db_path.as_path().exists() {
        Some(super::sessions(config)?)
    } else {
        None
    };
    if args.projects {
        let (registered, overview) = match &mut sessions {
            Some(sessions) => (sessions.projects()?, sessions.overview()?),
            None => (Vec::new(), Vec::new()),
        };
        let lines = project_lines(config, &registered, &overview);
        if args.json {
            println!("{}", to_json(&lines));
        } else {
            print!("{}", projects_table(&lines));
        }
        return Ok(());
    }
    let listed = match &mut sessions {
        Some(sessions) => sessions.overview()?,
        None => Vec::new(),
    };
    let now = crate::host::now_millis();
    let lines: Vec<Line> = listed
        .iter()
        .map(|listed| {
            let row = &listed.session;
            let address = crate::accounts::uid_of(row.user.as_str()).map(|uid| {
                crate::session::address_of(
                    row,
                    uid,
                    &config.network.pool,
                    &config.network.services_pool,
                )
            });
            line(listed, now, address)
        })
        .collect();
    if args.json {
        println!("{}", to_json(&lines));
    } else {
        print!("{}", to_table(&lines));
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(lines: &[T]) -> String {
    serde_json::to_string(lines).expect("the listing is plain data")
}

/// The registered projects, then those only declared in the config, each with the
/// number of its sessions.
fn project_lines(
    config: &ServerConfig,
    registered: &[ProjectRow],
    overview: &[Listed],
) -> Vec<ProjectLine> {
    let sessions_of = |name: &str| {
        overview
            .iter()
            .filter(|listed| listed.session.project == name)
            .count()
    };
    let mut lines: Vec<ProjectLine> = registered
        .iter()
        .map(|row| ProjectLine {
            name: row.name.to_string(),
            repo: row.repo.clone(),
            branch: row.branch.clone(),
            commit: row.commit.clone(),
            image: row.image.clone(),
            sessions: sessions_of(row.name.as_str()),
        })
        .collect();
    for (key, declared) in &config.projects {
        if registered.iter().any(|row| row.name == key.0) {
            continue;
        }
        lines.push(ProjectLine {
            name: key.0.to_string(),
            repo: declared.repo.clone(),
            branch: declared.branch.clone().unwrap_or_default(),
            commit: String::new(),
            image: String::new(),
            sessions: sessions_of(key.0.as_str()),
        });
    }
    lines
}

fn projects_table(lines: &[ProjectLine]) -> String {
    let header = ["NAME", "REPO", "BRANCH", "COMMIT", "IMAGE", "SESSIONS"];
    let rows = lines.iter().map(|line| {
        let added = !line.commit.is_empty();
        vec![
            line.name.clone(),
            line.repo.clone(),
            if line.branch.is_empty() {
                "-".to_string()
            } else {
                line.branch.clone()
            },
            line.commit.chars().take(12).collect::<String>(),
            if added {
                line.image.clone()
            } else {
                "(not added)".to_string()
            },
            line.sessions.to_string(),
        ]
    });
    table(&header, rows)
}

fn line(listed: &Listed, now: Millis, address: Option<std::net::Ipv4Addr>) -> Line {
    let row = &listed.session;
    let status = match listed.running {
        Some(ContainerState::Missing) => "missing",
        Some(ContainerState::NotRunning) => "stopped",
        _ if row.grace_until.is_some() => "grace_period",
        _ => "running",
    };
    let services = listed
        .services
        .iter()
        .map(|(service, running)| ServiceLine {
            name: service.name.clone(),
            container: service.container.clone(),
            image: service.image.clone(),
            address: service.address.to_string(),
            ports: service.ports.clone(),
            status: match running {
                Some(ContainerState::Missing) => "missing",
                Some(ContainerState::NotRunning) => "stopped",
                _ => "running",
            },
        })
        .collect();
    let seconds = |millis: Millis| millis.max(0) / 1000;
    Line {
        user: row.user.to_string(),
        project: row.project.clone(),
        container: row.container.clone(),
        status,
        connections: listed.live_connections,
        age_secs: seconds(now - row.created_at),
        lifetime_left_secs: row.expires_at.map(|end| seconds(end - now)),
        address: address.map(|address| address.to_string()),
        services,
        clients: listed.clients.clone(),
    }
}

/// The tutorial's columns, and SERVICES when a session has any.
fn to_table(lines: &[Line]) -> String {
    let mut header = vec![
        "USER",
        "PROJECT",
        "CONTAINER",
        "STATUS",
        "CONNS",
        "AGE",
        "LIFETIME LEFT",
    ];
    let with_services = lines.iter().any(|line| !line.services.is_empty());
    if with_services {
        header.push("SERVICES");
    }
    let with_clients = lines.iter().any(|line| !line.clients.is_empty());
    if with_clients {
        header.push("CLIENTS");
    }
    let rows = lines.iter().map(|line| {
        let services: Vec<String> = line
            .services
            .iter()
            .map(|service| match service.status {
                "running" => service.name.clone(),
                status => format!("{}({status})", service.name),
            })
            .collect();
        let mut row = vec![
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
        ];
        if with_services {
            row.push(if services.is_empty() {
                "-".to_string()
            } else {
                services.join(",")
            });
        }
        if with_clients {
            row.push(if line.clients.is_empty() {
                "-".to_string()
            } else {
                line.clients.join(",")
            });
        }
        row
    });
    table(&header, rows)
}

/// Columns padded to their widest cell, two spaces apart, no trailing blanks.
fn table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) -> String {
    let mut all = vec![
        header
            .iter()
            .map(|cell| cell.to_string())
            .collect::<Vec<_>>(),
    ];
    all.extend(rows);
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            all.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in &all {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `45s`, `10m`, `7h50m`, `2d3h`: the two largest units, like the tutorial shows.
pub(super) fn short_duration(secs: i64) -> String {
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
    use crate::state::SessionRow;
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

    fn listed(row: SessionRow, connections: usize, running: Option<ContainerState>) -> Listed {
        Listed {
            session: row,
            live_connections: connections,
            clients: Vec::new(),
            running,
            services: Vec::new(),
        }
    }

    #[test]
    fn status_comes_from_the_engine_and_the_grace_period() {
        let row = session("sarah");
        let now = row.created_at + 600_000;
        let status =
            |row: &SessionRow, running| line(&listed(row.clone(), 0, running), now, None).status;
        assert_eq!(status(&row, Some(ContainerState::Running)), "running");
        let waiting = SessionRow {
            grace_until: Some(now + 10_000),
            ..row.clone()
        };
        assert_eq!(
            status(&waiting, Some(ContainerState::Running)),
            "grace_period"
        );
        assert_eq!(status(&row, Some(ContainerState::Missing)), "missing");
        assert_eq!(status(&row, Some(ContainerState::NotRunning)), "stopped");
        assert_eq!(status(&row, None), "running");
    }

    #[test]
    fn the_table_has_the_tutorial_columns() {
        let row = session("sarah");
        let now = row.created_at + 600_000;
        let table = to_table(&[line(&listed(row, 1, None), now, None)]);
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
            container: "podspawn-\"sa\\rah\n".into(),
            ..session("sarah")
        };
        let now = row.created_at + 5_000;
        let address = Some(std::net::Ipv4Addr::new(10, 214, 62, 146));
        let mut listed = listed(row, 2, None);
        listed.clients = vec!["203.0.113.5:51234".into(), "[2001:db8::1]:40000".into()];
        let json = serde_json::to_string(&[line(&listed, now, address)]).unwrap();
        assert_eq!(
            json,
            "[{\"user\":\"sarah\",\"project\":\"\",\"container\":\"podspawn-\\\"sa\\\\rah\\n\",\"status\":\"running\",\"connections\":2,\"age_seconds\":5,\"lifetime_left_seconds\":null,\"address\":\"10.214.62.146\",\"services\":[],\"clients\":[\"203.0.113.5:51234\",\"[2001:db8::1]:40000\"]}]"
        );
        // The table shows them when any session has one.
        assert!(to_table(&[line(&listed, now, address)]).contains("CLIENTS"));
    }

    #[test]
    fn projects_show_their_image_and_sessions_and_the_declared_ones_too() {
        let config = crate::config::parse(
            "projects:\n  api:\n    repo: github.com/team/api\n  \
             web:\n    repo: github.com/team/web\n    branch: dev\n",
        )
        .unwrap();
        let api = ProjectRow {
            name: crate::project::ProjectName::parse("api").unwrap(),
            repo: "https://github.com/team/api.git".into(),
            branch: "main".into(),
            commit: "0123456789abcdef0123".into(),
            podfile: "podfile.yaml".into(),
            image: "podspawn/api:aaaabbbbcccc".into(),
            dockerfile: String::new(),
            workspace: "/workspace/api".into(),
            session: "{}".into(),
            updated_at: 0,
        };
        let sarah = SessionRow {
            project: "api".into(),
            ..session("sarah")
        };
        let overview = [listed(sarah, 1, None), listed(session("tom"), 1, None)];
        let lines = project_lines(&config, &[api], &overview);
        assert_eq!(
            projects_table(&lines),
            "NAME  REPO                             BRANCH  COMMIT        IMAGE                      SESSIONS\n\
             api   https://github.com/team/api.git  main    0123456789ab  podspawn/api:aaaabbbbcccc  1\n\
             web   github.com/team/web              dev                   (not added)                0\n"
        );
        assert_eq!(
            to_json(&lines[..1]),
            "[{\"name\":\"api\",\"repo\":\"https://github.com/team/api.git\",\"branch\":\"main\",\
             \"commit\":\"0123456789abcdef0123\",\"image\":\"podspawn/api:aaaabbbbcccc\",\"sessions\":1}]"
        );
    }
}
