//! `podspawn add-project NAME --repo URL [--branch B]`: register a project — clone
//! its repo, read its Podfile, build its image — all or nothing.

use std::io::Write;

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::audit::Event;
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::error::Error;
use crate::privilege;
use crate::project::{self, ProjectError, ProjectName};

pub const COMMAND: Command = Command {
    name: "add-project",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn add-project NAME --repo REPO [--branch BRANCH]

Registers project NAME: clones REPO on this host, reads its Podfile
(.podspawn/podfile.yaml, podfile.yaml, .devcontainer/devcontainer.json or
.devcontainer.json), builds its image and records it. On any failure nothing is
registered and nothing is left behind. Then `ssh USER@NAME.pod` (or a client
sending PODSPAWN_PROJECT=NAME) lands in podspawn-USER-NAME.

REPO is github.com/ORG/REPO, an https or ssh git URL, or a local path.

Options:
  --repo REPO        the git repository
  --branch BRANCH    the branch to follow (default: the repo's default branch)
  -h, --help         print this help
";

#[derive(Debug, PartialEq, Eq)]
struct AddProjectArgs {
    name: String,
    repo: String,
    branch: Option<String>,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<AddProjectArgs>, UsageError> {
    const NAME: &str = "add-project";
    let mut name = None;
    let mut repo = None;
    let mut branch = None;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("repo") => repo = Some(args.value()?),
            Long("branch") => branch = Some(args.value()?),
            Value(value) if name.is_none() => name = Some(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let name = name.ok_or_else(|| args.error("missing NAME".to_string()))?;
    let repo = repo.ok_or_else(|| args.error("missing --repo REPO".to_string()))?;
    if let Some(branch) = &branch
        && !project::is_branch(branch)
    {
        return Err(args.error(format!("{branch:?} is not a branch name")));
    }
    Ok(Some(AddProjectArgs { name, repo, branch }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| add_project(config, &args))
}

fn add_project(config: &ServerConfig, args: &AddProjectArgs) -> Result<(), Error> {
    privilege::require_admin("add-project", config.state_dir())?;
    let name = ProjectName::parse(&args.name).map_err(|err| {
        audit_refusal("project_name", &args.name, &err);
        Error::Refused(err)
    })?;
    let repo = project::normalize_repo(&args.repo).map_err(|err| {
        audit_refusal("repo", &args.name, &err);
        Error::Refused(err)
    })?;
    let mut sessions = super::sessions(config)?;
    println!("Building project {name} from {repo}...");
    let registered = project::add(
        config,
        &mut sessions,
        &name,
        &repo,
        args.branch.as_deref(),
        &mut show,
    )
    .inspect_err(|err| {
        if let ProjectError::Podfile(_) = err {
            audit_refusal("podfile", name.as_str(), &err.to_string());
        }
    })?;
    crate::audit::record(
        Event::new("project.add")
            .with("project", name.as_str())
            .with("repo", repo.as_str())
            .with("commit", registered.row.commit.as_str())
            .with("image", registered.row.image.as_str()),
    );
    for warning in &registered.warnings {
        eprintln!("warning: {}", crate::logging::one_safe_line(warning));
    }
    println!("project {name} registered, image: {}", registered.row.image);
    Ok(())
}

/// A registration refused by policy, for the audit log.
pub fn audit_refusal(reason: &str, project: &str, error: &str) {
    crate::audit::record(
        Event::new("refused")
            .with("reason", reason)
            .with("project", project)
            .with("error", error),
    );
}

/// Shows a part of a progress line at once.
pub fn show(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_project_needs_a_name_and_a_repo() {
        let parse_words = |words: &[&str]| parse(&mut Args::of("add-project", words));
        assert_eq!(
            parse_words(&["api", "--repo", "github.com/a/b", "--branch", "main"]),
            Ok(Some(AddProjectArgs {
                name: "api".into(),
                repo: "github.com/a/b".into(),
                branch: Some("main".into())
            }))
        );
        assert!(
            parse_words(&["api"])
                .unwrap_err()
                .to_string()
                .contains("--repo")
        );
        assert!(
            parse_words(&["--repo", "x"])
                .unwrap_err()
                .to_string()
                .contains("NAME")
        );
        for bad in ["--upload-pack=x", "a..b", "/abs", "a b"] {
            assert!(
                parse_words(&["api", "--repo", "r", "--branch", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
