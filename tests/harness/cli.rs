//! The command line as an admin meets it: help, version, and mistakes.

use crate::support::TestEnv;

/// The subcommands that work today; `--help` must list exactly these.
const COMMANDS: &[&str] = &[
    "server-setup",
    "add-user",
    "remove-user",
    "add-project",
    "update-project",
    "remove-project",
    "list",
    "status",
    "stop",
    "cleanup",
    "doctor",
    "verify-image",
    "auth-keys",
    "spawn",
    "setup",
    "connect",
    "version",
    "help",
];

#[test]
fn help_lists_every_working_command_and_each_has_its_own_help() {
    let env = TestEnv::new();
    for words in [&["--help"][..], &["-h"], &["help"], &[]] {
        let run = env.podspawn(words);
        run.assert_success().assert_stderr("");
        let listed: Vec<String> = run
            .stdout()
            .lines()
            .filter(|line| line.starts_with("  ") && !line.starts_with("   "))
            .filter_map(|line| line.split_whitespace().next().map(str::to_string))
            .collect();
        if listed != COMMANDS {
            run.fail(&format!("listed {listed:?}, expected {COMMANDS:?}"));
        }
    }
    for command in COMMANDS {
        let run = env.podspawn(&[command, "--help"]);
        run.assert_success().assert_stderr("");
        if !run.stdout().starts_with("Usage: podspawn") && *command != "help" {
            run.fail("help does not start with a usage line");
        }
        env.podspawn(&["help", command])
            .assert_success()
            .assert_stdout(&run.stdout());
    }
}

#[test]
fn version_names_the_release_and_the_commit() {
    let env = TestEnv::new();
    for words in [&["version"][..], &["--version"]] {
        let run = env.podspawn(words);
        run.assert_success().assert_stderr("");
        let stdout = run.stdout();
        let line = stdout
            .strip_suffix('\n')
            .unwrap_or_else(|| run.fail("no newline"));
        let rest = line
            .strip_prefix(&format!("podspawn {} (", env!("CARGO_PKG_VERSION")))
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| run.fail("not 'podspawn X.Y.Z (commit)'"));
        let is_commit = rest.len() >= 7 && rest.chars().all(|c| c.is_ascii_hexdigit());
        if !(is_commit || rest == "unknown") {
            run.fail("the commit is neither a short hash nor \"unknown\"");
        }
    }
}

#[test]
fn unknown_commands_and_flags_get_one_line_and_exit_2() {
    let env = TestEnv::new();
    let cases: &[(&[&str], &str)] = &[
        (&["frobnicate"], "unknown command 'frobnicate'"),
        (&["add-usr", "alice"], "did you mean 'add-user'?"),
        (&["--frob"], "unknown option '--frob'"),
        (
            &["add-user", "alice", "--kye", "x"],
            "add-user: unknown option '--kye'",
        ),
        (
            &["remove-user", "--frob", "alice"],
            "remove-user: unknown option '--frob'",
        ),
        (&["version", "--short"], "version: unknown option '--short'"),
        (&["add-user", "alice"], "add-user: give at least one --key"),
        (&["add-user", "--key", "x"], "add-user: missing NAME"),
        (&["remove-user"], "remove-user: missing NAME"),
        (&["help", "nope"], "unknown command 'nope'"),
        (&["auth-keys"], "auth-keys: expected USER or USER TYPE KEY"),
    ];
    for (words, needle) in cases {
        let run = env.podspawn(words);
        run.assert_one_line_error(2, needle)
            .assert_stderr_contains("--help");
    }
    assert!(env.calls().is_empty());
    assert_eq!(std::fs::read_dir(env.key_dir()).unwrap().count(), 0);
}
