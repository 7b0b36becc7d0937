//! `podspawn stop USER[@PROJECT]`: an admin ends one session now, without removing
//! the user — its connections are told (each says so to its user when its program
//! ends), then its container, services, network and volumes go.

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::audit::{self, Event};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::keys::UserName;
use crate::privilege;
use crate::project::ProjectName;

pub const COMMAND: Command = Command {
    name: "stop",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn stop USER[@PROJECT]

Ends USER's session now: the default one, or PROJECT's (a project or scratch
environment). Each of its connections ends with `podspawn: an admin ended this
session` on its user's terminal; the container, its companion services, network
and volumes go. The user stays registered and may connect again.

Options:
  -h, --help   print this help
";

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<(String, String)>, UsageError> {
    const NAME: &str = "stop";
    let mut target = None;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Value(value) if target.is_none() => target = Some(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let target = target.ok_or_else(|| args.error("missing USER[@PROJECT]".to_string()))?;
    Ok(Some(match target.split_once('@') {
        Some((user, project)) => (user.to_string(), project.to_string()),
        None => (target, String::new()),
    }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some((user, project)) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| stop(config, &user, &project))
}

fn stop(config: &ServerConfig, user: &str, project: &str) -> Result<(), Error> {
    privilege::require_admin("stop", config.state_dir())?;
    let user = UserName::parse(user)?;
    if !project.is_empty() {
        ProjectName::parse(project).map_err(Error::Refused)?;
    }
    let mut sessions = super::sessions(config)?;
    let (session, connections) = sessions.stop(&user, project).inspect_err(|err| {
        audit::record(
            Event::new("session.stop")
                .with("user", user.as_str())
                .with("project", project)
                .with("error", err.to_string()),
        );
    })?;
    println!(
        "stopped {} ({connections} connection(s) ended)",
        session.container
    );
    audit::record(
        Event::new("session.stop")
            .with("user", user.as_str())
            .with("project", project)
            .with("session", session.session_id.as_str())
            .with("container", session.container.as_str())
            .with("connections", connections),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_named_user_and_maybe_project() {
        let parsed = |words: &[&str]| parse(&mut Args::of("stop", words));
        assert_eq!(
            parsed(&["alice"]).unwrap(),
            Some(("alice".to_string(), String::new()))
        );
        assert_eq!(
            parsed(&["alice@api"]).unwrap(),
            Some(("alice".to_string(), "api".to_string()))
        );
        assert!(parsed(&[]).is_err());
        assert!(parsed(&["alice", "bob"]).is_err());
    }
}
