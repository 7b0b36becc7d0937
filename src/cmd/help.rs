//! `podspawn help [COMMAND]`: the overview, or one subcommand's help.

use lexopt::prelude::*;

use super::{Command, Context, OVERVIEW, Outcome};
use crate::cli::{self, Args};
use crate::error::Error;

pub const COMMAND: Command = Command {
    name: "help",
    usage: OVERVIEW,
    listed: true,
    keeps_group: false,
    run,
};

fn run(args: &mut Args, _: &Context) -> Result<Outcome, Error> {
    const NAME: &str = "help";
    let asked = match args.next()? {
        None | Some(Short('h') | Long("help")) => return Ok(Outcome::Print(OVERVIEW.into())),
        Some(Value(value)) => value,
        Some(other) => return Err(Args::unexpected(NAME, &other).into()),
    };
    let asked = args.text(asked)?;
    match super::find(&asked).filter(|command| command.listed) {
        Some(command) => Ok(Outcome::Print(command.usage.into())),
        None => {
            let mut err = cli::unknown_command(&asked, super::listed());
            err.command = Some(NAME);
            Err(err.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn help(words: &[&str]) -> Result<String, Error> {
        match run(&mut Args::of("help", words), &Context { config: None })? {
            Outcome::Print(text) => Ok(text.into_owned()),
            _ => panic!("help printed nothing"),
        }
    }

    #[test]
    fn help_names_the_overview_or_a_listed_command() {
        assert_eq!(help(&[]).unwrap(), OVERVIEW);
        assert_eq!(
            help(&["list"]).unwrap(),
            super::super::find("list").unwrap().usage
        );
        let err = help(&["keeper"]).unwrap_err().to_string();
        assert!(err.contains("unknown command 'keeper'"), "{err}");
        let err = help(&["add-usr"]).unwrap_err().to_string();
        assert!(err.contains("did you mean 'add-user'?"), "{err}");
    }
}
