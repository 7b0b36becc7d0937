//! `podspawn verify-image IMAGE`: runs the image once and reports what podspawn's
//! users will find in it — a shell, sftp-server (and where), scp, rsync, git, a
//! UTF-8 locale — and what podspawn itself needs (/bin/sh, grep, cat, sleep), with the
//! Debian/Ubuntu package that supplies each missing one.
//!
//! `verify-image --service IMAGE` instead starts the image as a Podfile's companion
//! service would run — every capability dropped but `services.capabilities`, no new
//! privileges, a service's limits — and reports whether it keeps running, which of
//! its ports accept connections and how soon, and the volumes it declares.

use std::time::Duration;

use lexopt::prelude::*;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::engine::Probe;
use crate::error::Error;
use crate::session::SessionError;
use crate::user_settings::UserSettings;

pub const COMMAND: Command = Command {
    name: "verify-image",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn verify-image IMAGE
       podspawn verify-image --service [--port N]... [--env NAME=VALUE]... IMAGE

Runs IMAGE once (no network, no capabilities) and reports what podspawn's users
will find: a shell, sftp-server (and its path), scp, rsync, git and a UTF-8
locale, and what podspawn itself needs (/bin/sh, grep, cat, sleep), naming the
Debian/Ubuntu package for each missing one. Exits 1 when something is missing.

With --service, starts IMAGE as a Podfile's companion service runs (every
capability dropped but services.capabilities, no new privileges, a service's
share of the limits, no published port) and reports whether it keeps running,
which ports accept connections within services.ready_timeout (the --port ones,
else those the image exposes) and the volumes it declares; then removes it.
Exits 1 when it stops or a port does not answer.

Options:
  --service           try IMAGE as a companion service
  --port N            a port the service must answer on (with --service)
  --env NAME=VALUE    its environment, as the Podfile would give it (with --service)
  -h, --help          print this help
";

/// `verify-image [--service [--port N]... [--env NAME=VALUE]...] IMAGE`.
#[derive(Debug, PartialEq, Eq)]
struct VerifyImageArgs {
    image: String,
    /// `Some` with --service.
    service: Option<ServiceArgs>,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct ServiceArgs {
    ports: Vec<u16>,
    env: Vec<(String, String)>,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<VerifyImageArgs>, UsageError> {
    const NAME: &str = "verify-image";
    let mut image = None;
    let mut service = false;
    let mut options = ServiceArgs::default();
    let mut first_option = None;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("service") => service = true,
            Long("port") => {
                first_option.get_or_insert("--port");
                let value = args.value()?;
                let port = value
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port > 0)
                    .ok_or_else(|| args.error(format!("--port: {value:?} is not a port")))?;
                options.ports.push(port);
            }
            Long("env") => {
                first_option.get_or_insert("--env");
                let value = args.value()?;
                let (name, value) = value
                    .split_once('=')
                    .filter(|(name, _)| crate::podfile::EnvName::parse(name).is_ok())
                    .ok_or_else(|| args.error(format!("--env: {value:?} is not NAME=VALUE")))?;
                options.env.push((name.to_string(), value.to_string()));
            }
            Value(value) if image.is_none() => image = Some(args.text(value)?),
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    let image = image.ok_or_else(|| args.error("missing IMAGE".to_string()))?;
    if crate::container::check_image(&image).is_err() {
        return Err(args.error(format!("{image:?} is not an image name")));
    }
    if let (false, Some(option)) = (service, first_option) {
        return Err(args.error(format!("{option} goes with --service")));
    }
    Ok(Some(VerifyImageArgs {
        image,
        service: service.then_some(options),
    }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    super::admin(context, |config| match &args.service {
        Some(service) => verify_service(config, &args.image, service),
        None => verify(config, &args),
    })
}

/// `verify-image --service`: the image tried as a session's service would run.
fn verify_service(config: &ServerConfig, image: &str, args: &ServiceArgs) -> Result<(), Error> {
    let settings = super::spawn::settings(config, &UserSettings::default());
    // What a session's only service would get of its limits.
    let limits = &settings.services.limits;
    let (cpus, memory_bytes, pids_limit) =
        limits.of_session(settings.cpus, settings.memory_bytes, settings.pids_limit, 1);
    let spec = crate::container::ServiceSpec {
        container: format!("podspawn.probe.{}", std::process::id()),
        name: "probe".to_string(),
        image: image.to_string(),
        user: String::new(),
        project: String::new(),
        // Nobody's: cleanup removes it if this command never does, once its time
        // (the wait, and a minute) is up.
        session_id: crate::session::probe_label(
            crate::host::now_millis()
                + (settings.services.ready_timeout.unwrap_or_default() + Duration::from_secs(60))
                    .as_millis() as i64,
        ),
        // podspawn's network for what is no session's: under the egress policy.
        network: crate::docker::build_network(&config.installation()),
        address: std::net::Ipv4Addr::UNSPECIFIED,
        ports: args.ports.clone(),
        env: args.env.clone(),
        volumes: Vec::new(),
        command: None,
        cpus,
        memory_bytes,
        pids_limit,
        capabilities: limits.capabilities.clone(),
        runtime: settings.hardening.runtime.clone(),
        ipv6_off: settings.hardening.ipv6_off,
    };
    let timeout = settings
        .services
        .ready_timeout
        .ok_or_else(|| {
            Error::Refused(
                "the engine is not on this host (docker.host): its containers' ports cannot be tried from here"
                    .to_string(),
            )
        })?;
    println!("verify-image --service {image}");
    let check = crate::session::check_service(
        &mut super::effects(config),
        spec.clone(),
        timeout,
        config.defaults.build_timeout.0,
    )
    .map_err(SessionError::from)?;
    let capabilities = match spec.capabilities.as_slice() {
        [] => "no capability".to_string(),
        kept => format!("capabilities {}", kept.join(" ")),
    };
    let hardening = format!(
        "{capabilities}, no new privileges, {} cpus, {} MiB, {} pids",
        spec.cpus,
        spec.memory_bytes >> 20,
        spec.pids_limit
    );
    let mut failed = 0;
    match &check.end {
        Some(end) if end.running => println!("✓ keeps running as a service ({hardening})"),
        end => {
            failed += 1;
            let code = end
                .as_ref()
                .and_then(|end| end.exit_code)
                .map_or("?".to_string(), |code| code.to_string());
            println!("✗ stopped (exit {code}) as a service ({hardening})");
        }
    }
    if check.ports.is_empty() {
        println!("⚠ no port to try: the image exposes none (give --port)");
    }
    for (port, answered) in &check.ports {
        match answered {
            Some(after) => println!(
                "✓ port {port:<9} accepts connections after {:.1}s",
                after.as_secs_f64()
            ),
            None if check.end.as_ref().is_some_and(|end| end.running) => {
                failed += 1;
                println!(
                    "✗ port {port:<9} no answer within {}s (services.ready_timeout)",
                    timeout.as_secs()
                );
            }
            None => println!("✗ port {port:<9} no answer: the service stopped"),
        }
    }
    for volume in &check.config.volumes {
        println!(
            "⚠ volume {volume}: declared by the image; a session gets an anonymous one \
             (removed with it) unless the Podfile names a volume there"
        );
    }
    if !check.logs.is_empty() {
        println!("  its last lines:");
        for line in check.logs.lines() {
            println!("    {}", crate::logging::one_safe_line(line));
        }
    }
    if failed > 0 {
        return Err(Error::Refused(format!(
            "{image} did not run as a service should"
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_words(words: &[&str]) -> Result<Option<VerifyImageArgs>, UsageError> {
        parse(&mut Args::of("verify-image", words))
    }

    #[test]
    fn a_service_is_tried_with_its_ports_and_env_and_only_then() {
        assert_eq!(
            parse_words(&["ubuntu:24.04"]),
            Ok(Some(VerifyImageArgs {
                image: "ubuntu:24.04".into(),
                service: None
            }))
        );
        assert_eq!(
            parse_words(&[
                "--service",
                "--port",
                "5432",
                "--env",
                "POSTGRES_PASSWORD=a=b",
                "postgres:16"
            ]),
            Ok(Some(VerifyImageArgs {
                image: "postgres:16".into(),
                service: Some(ServiceArgs {
                    ports: vec![5432],
                    env: vec![("POSTGRES_PASSWORD".into(), "a=b".into())],
                })
            }))
        );
        for (words, error) in [
            (&["--port", "1", "x"][..], "--port goes with --service"),
            (&["--env", "A=1", "x"], "--env goes with --service"),
            (&["--service", "--port", "99999", "x"], "is not a port"),
            (&["--service", "--env", "=x", "x"], "is not NAME=VALUE"),
            (
                &["--service", "--env", "PODSPAWN_USER=x", "x"],
                "is not NAME=VALUE",
            ),
            (&["--service", "--", "-x"], "is not an image name"),
            (&["--service"], "missing IMAGE"),
        ] {
            let err = parse_words(words).unwrap_err().to_string();
            assert!(err.contains(error), "{words:?}: {err}");
        }
    }
}
