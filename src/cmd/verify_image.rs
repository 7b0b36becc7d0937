//! `podspawn verify-image IMAGE`: runs the image once and reports what podspawn's
//! users will find in it — a shell, sftp-server (and where), scp, rsync, git, a
//! UTF-8 locale — and what podspawn itself needs (/bin/sh, grep, cat, sleep), with the
//! Debian/Ubuntu package that supplies each missing one.

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::engine::Probe;
use crate::error::Error;
use crate::session::SessionError;

pub const COMMAND: Command = Command {
    name: "verify-image",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn verify-image IMAGE

Runs IMAGE once (no network, no capabilities) and reports what podspawn's users
will find: a shell, sftp-server (and its path), scp, rsync, git and a UTF-8
locale, and what podspawn itself needs (/bin/sh, grep, cat, sleep), naming the
Debian/Ubuntu package for each missing one. Exits 1 when something is missing.

Options:
  -h, --help          print this help
";

/// `verify-image IMAGE`.
#[derive(Debug, PartialEq, Eq)]
struct VerifyImageArgs {
    image: String,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<VerifyImageArgs>, UsageError> {
    const NAME: &str = "verify-image";
    let mut image = None;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Value(value) if image.is_none() => image = Some(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let image = image.ok_or_else(|| args.error("missing IMAGE".to_string()))?;
    if image.starts_with('-') || image.chars().any(char::is_whitespace) {
        return Err(args.error(format!("{image:?} is not an image name")));
    }
    Ok(Some(VerifyImageArgs { image }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| verify(config, &args))
}

/// Prints one `name=value` line per item; an empty value means missing. The
/// configured shell arrives as $1. POSIX sh and busybox only.
const PROBE: &str = r#"found() { for candidate in "$@"; do [ -x "$candidate" ] && { echo "$candidate"; return; }; done; }
onpath() { command -v "$1" 2>/dev/null; }
echo "shell=$(found "$1" /bin/bash /bin/sh)"
echo "configured_shell=$(found "$1")"
echo "sftp-server=$(found /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server /usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server /usr/sbin/sftp-server)"
echo "scp=$(onpath scp)"
echo "rsync=$(onpath rsync)"
echo "git=$(onpath git)"
utf8=$( (locale -a 2>/dev/null; ls /usr/lib/locale 2>/dev/null) | grep -i -m1 -E 'utf-?8')
[ -z "$utf8" ] && [ -e /usr/lib/locale/C.utf8 ] && utf8=C.utf8
echo "utf8=$utf8"
echo "grep=$(onpath grep)"
echo "cat=$(onpath cat)"
echo "sleep=$(onpath sleep)"
"#;

/// (item, what it is for, Debian/Ubuntu package, required by podspawn itself)
const ITEMS: &[(&str, &str, &str, bool)] = &[
    ("shell", "interactive sessions", "bash", true),
    (
        "sftp-server",
        "SFTP, scp's default protocol, VS Code Remote",
        "openssh-sftp-server",
        false,
    ),
    (
        "scp",
        "scp -O (the legacy protocol)",
        "openssh-client",
        false,
    ),
    ("rsync", "rsync over SSH", "rsync", false),
    ("git", "cloning, agent forwarding", "git", false),
    ("utf8", "a UTF-8 locale", "locales", false),
    ("grep", "podspawn's setup of the user", "grep", true),
    ("cat", "podspawn's setup of the user", "coreutils", true),
    ("sleep", "keeping the container alive", "coreutils", true),
];

fn verify(config: &ServerConfig, args: &VerifyImageArgs) -> Result<(), Error> {
    let shell = config.defaults.shell.as_path().display().to_string();
    let Probe {
        status,
        stdout,
        stderr,
    } = super::effects(config)
        .probe(&args.image, PROBE, &[&shell])
        .map_err(SessionError::from)?;
    println!("verify-image {}", args.image);
    if status != 0 && !stdout.contains("shell=") {
        println!(
            "✗ /bin/sh         missing: podspawn runs everything through it ({})",
            stderr.trim()
        );
        return Err(Error::Refused(format!(
            "{} cannot be used: it has no working /bin/sh",
            args.image
        )));
    }
    let value = |key: &str| {
        stdout
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{key}=")))
            .unwrap_or("")
            .trim()
            .to_string()
    };
    let mut missing_required = false;
    let mut missing = 0;
    for (key, purpose, package, required) in ITEMS {
        let found = value(key);
        let label = if *key == "utf8" { "UTF-8 locale" } else { key };
        if found.is_empty() {
            missing += 1;
            missing_required |= required;
            println!("✗ {label:<14} missing, for {purpose} (Debian/Ubuntu package: {package})");
        } else if *key == "shell" && value("configured_shell").is_empty() {
            println!("⚠ {label:<14} {found} (defaults.shell {shell} is missing; {found} is used)");
        } else {
            println!("✓ {label:<14} {found}");
        }
    }
    match (missing_required, missing) {
        (true, _) => Err(Error::Refused(format!(
            "{} lacks what podspawn itself needs",
            args.image
        ))),
        (false, 0) => Ok(()),
        (false, count) => Err(Error::Refused(format!(
            "{} lacks {count} of what sessions use",
            args.image
        ))),
    }
}
