//! `podspawn update-project NAME`: bring a project to the newest commit of its branch
//! and rebuild its image if what goes into it changed. Sessions that run keep their
//! container; the next ones get the new image. A project only declared in the
//! config's `projects:` is set up by its first update.

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::privilege;
use crate::project::{self, ProjectName};

pub const COMMAND: Command = Command {
    name: "update-project",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn update-project NAME

Fetches the newest commit of project NAME's branch, reads its Podfile again and
builds a new image only if what goes into the image changed (base, packages,
on_create, the repo itself). A change of env, shell, on_start or services takes
effect with the next session, no build needed. Running sessions keep their
container until they end. A project declared by hand in the config's projects:
section is cloned and built by its first update.

Options:
  -h, --help         print this help
";

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<String>, UsageError> {
    const NAME: &str = "update-project";
    let mut name = None;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Value(value) if name.is_none() => name = Some(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    name.map(Some)
        .ok_or_else(|| args.error("missing NAME".to_string()))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(name) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| update_project(config, &name))
}

fn update_project(config: &ServerConfig, name: &str) -> Result<(), Error> {
    privilege::require_admin("update-project", config.state_dir())?;
    let name = ProjectName::parse(name).map_err(|err| {
        super::add_project::audit_refusal("project_name", name, &err);
        Error::Refused(err)
    })?;
    let mut sessions = super::sessions(config)?;
    let (registered, replaced) =
        project::update(config, &mut sessions, &name, &mut super::add_project::show).inspect_err(
            |err| {
                if let crate::project::ProjectError::Podfile(_) = err {
                    super::add_project::audit_refusal("podfile", name.as_str(), &err.to_string());
                }
            },
        )?;
    crate::audit::record(
        crate::audit::Event::new("project.update")
            .with("project", name.as_str())
            .with("commit", registered.row.commit.as_str())
            .with("image", registered.row.image.as_str())
            .with("built", registered.built),
    );
    for warning in &registered.warnings {
        eprintln!("warning: {}", crate::logging::one_safe_line(warning));
    }
    let row = &registered.row;
    let short = &row.commit[..row.commit.len().min(12)];
    match (registered.built, replaced) {
        (true, _) => println!(
            "project {name} updated to {short}, image: {} (built)",
            row.image
        ),
        (false, Some(_)) => println!(
            "project {name} updated to {short}, image: {} (was built already)",
            row.image
        ),
        (false, None) => println!(
            "project {name} updated to {short}, image: {} (unchanged, no build)",
            row.image
        ),
    }
    Ok(())
}
