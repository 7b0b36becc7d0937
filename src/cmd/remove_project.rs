//! `podspawn remove-project NAME [--force]`: forget a project — its checkout, its
//! images — refusing while sessions of it run, unless `--force` ends them.

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::privilege;
use crate::project::{self, ProjectName};

pub const COMMAND: Command = Command {
    name: "remove-project",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn remove-project NAME [--force]

Removes project NAME: its registration, its checkout on this host and its images.
If users have sessions of it, it refuses unless --force is given.

Options:
  --force            end every user's session of NAME first
  -h, --help         print this help
";

#[derive(Debug, PartialEq, Eq)]
struct RemoveProjectArgs {
    name: String,
    force: bool,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<RemoveProjectArgs>, UsageError> {
    const NAME: &str = "remove-project";
    let mut name = None;
    let mut force = false;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("force") => force = true,
            Value(value) if name.is_none() => name = Some(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let name = name.ok_or_else(|| args.error("missing NAME".to_string()))?;
    Ok(Some(RemoveProjectArgs { name, force }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| remove_project(config, &args))
}

fn remove_project(config: &ServerConfig, args: &RemoveProjectArgs) -> Result<(), Error> {
    privilege::require_admin("remove-project", config.state_dir())?;
    let name = ProjectName::parse(&args.name).map_err(Error::Refused)?;
    let mut sessions = super::sessions(config)?;
    let destroyed = project::remove(config, &mut sessions, &name, args.force)?;
    println!("removed project {name} ({destroyed} session(s) destroyed)");
    crate::audit::record(
        crate::audit::Event::new("project.remove")
            .with("project", name.as_str())
            .with("sessions_destroyed", destroyed),
    );
    Ok(())
}
