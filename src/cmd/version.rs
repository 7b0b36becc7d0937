//! `podspawn version`: the release and the commit it was built from.

use super::{Command, Context, Outcome};
use crate::cli::{self, Args};
use crate::error::Error;

pub const COMMAND: Command = Command {
    name: "version",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn version

Prints the version and the commit it was built from.
";

fn run(args: &mut Args, _: &Context) -> Result<Outcome, Error> {
    if args.nothing_but_help()? {
        return Ok(Outcome::Print(USAGE.into()));
    }
    Ok(Outcome::Print(format!("{}\n", cli::version_line()).into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_takes_no_arguments() {
        let err = run(
            &mut Args::of("version", &["extra"]),
            &Context { config: None },
        )
        .err()
        .unwrap();
        assert!(
            err.to_string().contains("version: unexpected argument"),
            "{err}"
        );
    }
}
