//! `podspawn doctor`: checks this host the way podspawn needs it and says, for each
//! thing that is wrong, how to fix it. ✓ fine, ✗ broken (the exit code is 1 if
//! anything is), ⚠ works but weakens the privilege model, ℹ for information.
//!
//! A server is checked here; a laptop (no server config, or `--client`) in `client`.

mod client;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use lexopt::prelude::*;
use std::path::PathBuf;

use super::{Command, Context, Outcome};
use crate::cli::{Args, UsageError};
use crate::config::ServerConfig;
use crate::engine::Engine;
use crate::error::Error;
use crate::keys::store::KeyStore;
use crate::sshd_config;
use crate::state::State;
use crate::system;

pub const COMMAND: Command = Command {
    name: "doctor",
    usage: USAGE,
    listed: true,
    keeps_group: false,
    run,
};

const USAGE: &str = "\
Usage: podspawn doctor [--sshd-config PATH] [--client | --server]

Checks this host: sshd_config has podspawn's AuthorizedKeysCommand and sshd -t
accepts it; the binary is root:docker 2755; the key, state, lock and agent
directories have their owners and modes; the engine answers and has the default
image; the state database is intact; no podspawn user is in the docker group;
a cleanup timer or cron job is there (optional). Each problem comes with its fix.
Exits 1 when anything is wrong.

On a laptop (no server config; or --client) it checks the client side instead:
the ssh client, podspawn's block in ~/.ssh/config, ~/.podspawn/config.yaml, and
that each server it names answers.

Options:
  --sshd-config PATH  check this file instead of /etc/ssh/sshd_config
  --client            check the laptop side, whatever this host has
  --server            check the server side, even with no server config
  -h, --help          print this help
";

/// `doctor [--sshd-config PATH] [--client | --server]`.
#[derive(Debug, PartialEq, Eq)]
struct DoctorArgs {
    sshd_config: PathBuf,
    /// `Some(true)`: the client side; `Some(false)`: the server's; `None`: as found.
    client: Option<bool>,
}

/// `None`: help.
fn parse(args: &mut Args) -> Result<Option<DoctorArgs>, UsageError> {
    const NAME: &str = "doctor";
    let mut sshd_config = PathBuf::from("/etc/ssh/sshd_config");
    let mut client = None;
    while let Some(arg) = args.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(None),
            Long("sshd-config") => sshd_config = PathBuf::from(args.value_os()?),
            Long("client") if client != Some(false) => client = Some(true),
            Long("server") if client != Some(true) => client = Some(false),
            Long("client") | Long("server") => {
                return Err(args.error("--client and --server exclude each other".to_string()));
            }
            other => return Err(Args::unexpected(NAME, &other)),
        }
    }
    Ok(Some(DoctorArgs {
        sshd_config,
        client,
    }))
}

fn run(args: &mut Args, context: &Context) -> Result<Outcome, Error> {
    let Some(args) = parse(args)? else {
        return Ok(Outcome::Print(USAGE.into()));
    };
    if args.client == Some(true) {
        return client::doctor(None).map(|()| Outcome::Done);
    }
    super::admin(context, |config| {
        if args.client.is_none() && !config.source.exists() {
            return client::doctor(Some(&config.source));
        }
        doctor(config, &args)
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Good,
    Bad,
    Warn,
    Info,
}

#[derive(Default)]
struct Report {
    bad: usize,
}

impl Report {
    fn line(&mut self, mark: Mark, text: &str, fix: Option<String>) {
        let symbol = match mark {
            Mark::Good => "✓",
            Mark::Bad => "✗",
            Mark::Warn => "⚠",
            Mark::Info => "ℹ",
        };
        match fix {
            Some(fix) => println!("{symbol} {text}\n    fix: {fix}"),
            None => println!("{symbol} {text}"),
        }
        if mark == Mark::Bad {
            self.bad += 1;
        }
    }
}

fn doctor(config: &ServerConfig, args: &DoctorArgs) -> Result<(), Error> {
    let mut report = Report { bad: 0 };
    check_sshd(&mut report, &args.sshd_config);
    check_sshd_for_users(&mut report, &args.sshd_config, config);
    check_binary(&mut report);
    check_directories(&mut report, config);
    check_homes(&mut report, config);
    check_proc(&mut report);
    check_engine(&mut report, config);
    check_database(&mut report, config);
    check_projects(&mut report, config);
    check_docker_members(&mut report, config);
    check_networks(&mut report, config);
    check_isolation(&mut report, config);
    check_sandbox(&mut report, config);
    check_user_settings(&mut report, config);
    check_cleanup(&mut report);
    if report.bad > 0 {
        return Err(Error::Refused(format!("{} problem(s) found", report.bad)));
    }
    Ok(())
}

fn check_sshd(report: &mut Report, path: &Path) {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            report.line(
                Mark::Bad,
                &format!("cannot read {}: {err}", path.display()),
                Some("run podspawn doctor as root, or pass --sshd-config".into()),
            );
            return;
        }
    };
    let commands = sshd_config::foreign_commands(&text);
    let ours = text.lines().any(|line| {
        let line = line.trim();
        line.starts_with("AuthorizedKeysCommand ") && line.contains("auth-keys %u")
    });
    if ours && commands.is_empty() {
        report.line(
            Mark::Good,
            &format!("{} has podspawn's AuthorizedKeysCommand", path.display()),
            None,
        );
    } else if let Some((line, value)) = commands.first() {
        report.line(
            Mark::Bad,
            &format!(
                "{}, line {line}: another AuthorizedKeysCommand ({value})",
                path.display()
            ),
            Some("podspawn needs to be sshd's only AuthorizedKeysCommand".into()),
        );
    } else {
        report.line(
            Mark::Bad,
            &format!("{} does not ask podspawn for keys", path.display()),
            Some("sudo podspawn server-setup".into()),
        );
    }
    match system::sshd_test(path) {
        Ok(()) => report.line(Mark::Good, "sshd -t accepts it", None),
        Err(err) => report.line(
            Mark::Bad,
            &format!("sshd -t rejects it: {}", err.detail),
            Some(format!("fix {}", path.display())),
        ),
    }
}

fn check_binary(report: &mut Report) {
    let Ok(binary) = std::env::current_exe() else {
        report.line(Mark::Bad, "cannot find the podspawn binary", None);
        return;
    };
    let Ok(meta) = fs::metadata(&binary) else {
        report.line(
            Mark::Bad,
            &format!("cannot inspect {}", binary.display()),
            None,
        );
        return;
    };
    let docker = crate::accounts::group_id("docker").ok().flatten();
    let right = meta.uid() == 0 && Some(meta.gid()) == docker && meta.mode() & 0o7777 == 0o2755;
    let shown = format!(
        "{} is uid {} gid {} mode {:o}",
        binary.display(),
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    );
    if right {
        report.line(
            Mark::Good,
            &format!("{} is root:docker 2755", binary.display()),
            None,
        );
    } else {
        report.line(
            Mark::Bad,
            &format!("{shown}; podspawn's privilege model wants root:docker 2755"),
            Some(format!(
                "sudo chown root:docker {0} && sudo chmod 2755 {0}",
                binary.display()
            )),
        );
    }
}

fn check_directories(report: &mut Report, config: &ServerConfig) {
    let docker = crate::accounts::group_id("docker").ok().flatten();
    let wanted: [(&Path, Option<u32>, u32); 5] = [
        (config.auth.key_dir.as_path(), Some(0), 0o755),
        (config.state_dir(), docker, 0o2770),
        (config.state.lock_dir.as_path(), docker, 0o2770),
        (config.state.agent_dir.as_path(), docker, 0o2770),
        (config.auth.home_dir.as_path(), Some(0), 0o755),
    ];
    for (path, group, mode) in wanted {
        match fs::metadata(path) {
            Ok(meta)
                if meta.uid() == 0 && Some(meta.gid()) == group && meta.mode() & 0o7777 == mode =>
            {
                report.line(
                    Mark::Good,
                    &format!("{} is as it should be ({mode:o})", path.display()),
                    None,
                )
            }
            Ok(meta) => report.line(
                Mark::Bad,
                &format!(
                    "{} is uid {} gid {} mode {:o}, not root:{} {mode:o}",
                    path.display(),
                    meta.uid(),
                    meta.gid(),
                    meta.mode() & 0o7777,
                    if group == Some(0) { "root" } else { "docker" }
                ),
                Some("sudo podspawn server-setup".into()),
            ),
            Err(err) => report.line(
                Mark::Bad,
                &format!("{}: {err}", path.display()),
                Some("sudo podspawn server-setup".into()),
            ),
        }
    }
}

/// What sshd must apply to podspawn's users, as `sshd -T` prints it: the login is
/// podspawn's key (forced into spawn) and nothing else, and nothing reaches the
/// host. An earlier `Match` block of the admin's can override podspawn's, so the
/// effective settings are asked of sshd for one registered user.
const EFFECTIVE_FOR_USERS: &[(&str, &str)] = &[
    ("authenticationmethods", "publickey"),
    ("authorizedkeysfile", "none"),
    ("trustedusercakeys", "none"),
    ("passwordauthentication", "no"),
    ("kbdinteractiveauthentication", "no"),
    ("allowstreamlocalforwarding", "no"),
    ("permittunnel", "no"),
    ("permituserrc", "no"),
];

fn check_sshd_for_users(report: &mut Report, path: &Path, config: &ServerConfig) {
    let store = KeyStore::new(config.auth.key_dir.as_path());
    let group = config.auth.group.0.as_str();
    let members = crate::accounts::group_members(group)
        .ok()
        .flatten()
        .unwrap_or_default();
    let Some(user) = store
        .users()
        .unwrap_or_default()
        .into_iter()
        .find(|user| members.iter().any(|member| member == user.as_str()))
    else {
        report.line(
            Mark::Info,
            &format!("no registered user in group {group} yet to check sshd's settings for"),
            None,
        );
        return;
    };
    let settings = match system::sshd_settings_for(path, user.as_str()) {
        Ok(settings) => settings,
        Err(err) => {
            report.line(
                Mark::Bad,
                &format!("sshd -T for {user} fails: {}", err.detail),
                Some(format!("fix {}", path.display())),
            );
            return;
        }
    };
    let wrong: Vec<String> = EFFECTIVE_FOR_USERS
        .iter()
        .filter(|(key, value)| settings.get(*key).map(String::as_str) != Some(*value))
        .map(|(key, value)| {
            let found = settings.get(*key).map_or("(unset)", String::as_str);
            format!("{key} is {found}, not {value}")
        })
        .collect();
    if wrong.is_empty() {
        report.line(
            Mark::Good,
            &format!("sshd holds podspawn's users (checked for {user}) to podspawn's keys"),
            None,
        );
    } else {
        report.line(
            Mark::Bad,
            &format!(
                "for podspawn's users (checked for {user}), sshd has {}: they may log in or \
                 reach the host another way",
                wrong.join(", ")
            ),
            Some(format!(
                "sudo podspawn server-setup; if it stays, an earlier Match block in {} sets \
                 these for them",
                path.display()
            )),
        );
    }
}

/// sshd changes into the home before it runs the forced command; where it cannot,
/// every session's stderr starts with "Could not chdir to home directory".
fn check_homes(report: &mut Report, config: &ServerConfig) {
    let home = config.auth.home_dir.as_path();
    if let Some(private) = config.private_dir_holding_home() {
        report.line(
            Mark::Bad,
            &format!(
                "auth.home_dir {} is inside {}, which podspawn's users cannot enter",
                home.display(),
                private.display()
            ),
            Some(
                "set auth.home_dir outside it (the default is /var/lib/podspawn-home), then \
                 sudo podspawn server-setup"
                    .into(),
            ),
        );
    }
    match super::server_setup::homes_to_move(config) {
        Ok(moves) if moves.is_empty() => {}
        Ok(moves) => {
            let listed: Vec<String> = moves
                .iter()
                .map(|(user, old)| format!("{user} ({old})"))
                .collect();
            report.line(
                Mark::Bad,
                &format!(
                    "accounts podspawn created whose home is not {}: {}",
                    home.display(),
                    listed.join(", ")
                ),
                Some("sudo podspawn server-setup (when they have no session)".into()),
            );
        }
        Err(err) => report.line(Mark::Bad, &err.to_string(), None),
    }
}

/// With /proc mounted `hidepid`, the keeper cannot see the spawn processes of its
/// own user (they are setgid, so not dumpable) and takes live connections for dead.
fn check_proc(report: &mut Report) {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let docker = crate::accounts::group_id("docker").ok().flatten();
    match hidden_processes(&mounts, docker) {
        None => report.line(Mark::Good, "/proc shows every process to podspawn", None),
        Some(options) => report.line(
            Mark::Bad,
            &format!(
                "/proc is mounted with {options}: keepers would take live connections for \
                 dead and end their sessions"
            ),
            Some(
                "let the docker group see all processes: mount -o remount,gid=docker /proc \
                 (and add gid=docker to /proc's options in /etc/fstab)"
                    .into(),
            ),
        ),
    }
}

/// The `/proc` mount's hiding options, if they hide processes from the docker group.
fn hidden_processes(mounts: &str, docker_gid: Option<u32>) -> Option<String> {
    let options = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() >= 4 && fields[1] == "/proc" && fields[2] == "proc").then(|| fields[3])
    })?;
    let option = |name: &str| {
        options
            .split(',')
            .find_map(|option| option.strip_prefix(name)?.strip_prefix('='))
    };
    let hidepid = option("hidepid")?;
    if matches!(hidepid, "0" | "off") {
        return None;
    }
    let exempt = option("gid").and_then(|gid| gid.parse::<u32>().ok());
    if exempt.is_some() && exempt == docker_gid {
        return None;
    }
    Some(match option("gid") {
        Some(gid) => format!("hidepid={hidepid},gid={gid}"),
        None => format!("hidepid={hidepid}"),
    })
}

fn check_engine(report: &mut Report, config: &ServerConfig) {
    let mut effects = super::effects(config);
    let engine = effects.engine();
    match engine.version() {
        Ok(version) => report.line(
            Mark::Good,
            &format!("the container engine answers (version {version})"),
            None,
        ),
        Err(err) => {
            report.line(
                Mark::Bad,
                &format!("the container engine does not answer: {err}"),
                Some("start Docker, or set docker.host".into()),
            );
            return;
        }
    }
    let image = &config.defaults.image;
    match engine.has_image(image) {
        Ok(true) => report.line(
            Mark::Good,
            &format!("the default image {image} is here"),
            None,
        ),
        Ok(false) => report.line(
            Mark::Bad,
            &format!("the default image {image} is not here"),
            Some(format!(
                "docker pull {image} (and podspawn verify-image {image})"
            )),
        ),
        Err(err) => report.line(Mark::Bad, &format!("cannot ask for {image}: {err}"), None),
    }
}

fn check_database(report: &mut Report, config: &ServerConfig) {
    let path = config.state.db_path.as_path();
    if !path.exists() {
        report.line(
            Mark::Bad,
            &format!("{} does not exist", path.display()),
            Some("sudo podspawn server-setup".into()),
        );
        return;
    }
    match State::open(path).and_then(|state| state.is_intact()) {
        Ok(true) => report.line(Mark::Good, &format!("{} passes its integrity check", path.display()), None),
        Ok(false) => report.line(
            Mark::Bad,
            &format!("{} fails its integrity check", path.display()),
            Some("stop sessions, move it aside and run podspawn server-setup (sessions are reconciled)".into()),
        ),
        Err(err) => report.line(Mark::Bad, &err.to_string(), None),
    }
}

/// Each registered project has its checkout and its image; each declared one is
/// added.
fn check_projects(report: &mut Report, config: &ServerConfig) {
    let path = config.state.db_path.as_path();
    let registered = if path.exists() {
        match State::open(path).and_then(|state| state.projects()) {
            Ok(projects) => projects,
            Err(err) => return report.line(Mark::Bad, &err.to_string(), None),
        }
    } else {
        Vec::new()
    };
    let mut effects = super::effects(config);
    for project in &registered {
        let name = &project.name;
        let checkout = crate::project::clone_dir(config, name);
        if !checkout.join(".git").is_dir() {
            report.line(
                Mark::Bad,
                &format!("project {name} has no checkout at {}", checkout.display()),
                Some(format!(
                    "podspawn remove-project {name} && podspawn add-project {name} --repo {}",
                    project.repo
                )),
            );
            continue;
        }
        let log = crate::project::build_log(config, name);
        match effects.engine().has_image(&project.image) {
            Ok(true) => report.line(
                Mark::Good,
                &format!("project {name}: image {} is here", project.image),
                None,
            ),
            Ok(false) => report.line(
                Mark::Warn,
                &format!(
                    "project {name}: image {} is not here; the next connection builds it (last build's log: {})",
                    project.image,
                    log.display()
                ),
                Some(format!("podspawn update-project {name}")),
            ),
            Err(err) => report.line(Mark::Bad, &format!("cannot ask for {}: {err}", project.image), None),
        }
    }
    for key in config.projects.keys() {
        if !registered.iter().any(|row| row.name == key.0) {
            report.line(
                Mark::Warn,
                &format!("project {} is declared in the config but not added", key.0),
                Some(format!("podspawn update-project {}", key.0)),
            );
        }
    }
}

fn check_docker_members(report: &mut Report, config: &ServerConfig) {
    let store = KeyStore::new(config.auth.key_dir.as_path());
    let members = crate::accounts::group_members("docker")
        .ok()
        .flatten()
        .unwrap_or_default();
    let users = store.users().unwrap_or_default();
    let in_docker: Vec<String> = users
        .iter()
        .map(|user| user.to_string())
        .filter(|user| members.contains(user))
        .collect();
    if in_docker.is_empty() {
        report.line(Mark::Good, "no podspawn user is in the docker group", None);
    } else {
        report.line(
            Mark::Warn,
            &format!(
                "podspawn users in the docker group can reach the engine, i.e. root on this host: {}",
                in_docker.join(", ")
            ),
            Some("gpasswd -d USER docker (the setgid install needs no docker membership)".into()),
        );
    }
}

/// Addresses podspawn forwards to must be the user's alone: no two registered users
/// in one block of a pool (add-user refuses that, but an older podspawn or key files
/// written by hand did not), and no route of the host's own into the pools (a VPN's,
/// say), which forwarding would then reach.
fn check_networks(report: &mut Report, config: &ServerConfig) {
    let store = KeyStore::new(config.auth.key_dir.as_path());
    let (pool, services) = (&config.network.pool, &config.network.services_pool);
    let mut shared = Vec::new();
    for user in store.users().unwrap_or_default() {
        let Some(uid) = crate::accounts::uid_of(user.as_str()) else {
            continue;
        };
        let others = crate::host::other_users(&store, &user);
        let (network, service) = crate::network::sharing(uid, &others, pool, services);
        for (other, pool) in [
            (network, "network.pool"),
            (service, "network.services_pool"),
        ] {
            if let Some(other) = other.filter(|other| user.as_str() < *other) {
                shared.push(format!("{user} and {other} in {pool}"));
            }
        }
    }
    if shared.is_empty() {
        report.line(
            Mark::Good,
            "every registered user's addresses are theirs alone",
            None,
        );
    } else {
        report.line(
            Mark::Bad,
            &format!(
                "users share a block of addresses (neither may forward to it, and their \
                 sessions' networks would overlap): {}",
                shared.join("; ")
            ),
            Some("give that pool a larger range in the config".into()),
        );
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    for (iface, cidr) in foreign_routes(&routes, &[pool.to_string(), services.to_string()]) {
        report.line(
            Mark::Warn,
            &format!(
                "this host routes {cidr} through {iface}, inside podspawn's pools: \
                 a user's forwarding could reach what is there"
            ),
            Some(
                "move network.pool / network.services_pool to a range the host does not use".into(),
            ),
        );
    }
}

/// Routes of `/proc/net/route` (other than the default route and docker's own
/// bridges) into any of `pools`: (interface, destination/prefix).
fn foreign_routes(table: &str, pools: &[String]) -> Vec<(String, String)> {
    let parse_pool = |pool: &String| {
        let (address, prefix) = pool.split_once('/')?;
        let address: std::net::Ipv4Addr = address.parse().ok()?;
        Some((u32::from(address), prefix.parse::<u32>().ok()?))
    };
    let pools: Vec<(u32, u32)> = pools.iter().filter_map(parse_pool).collect();
    // The kernel prints each address's network-order bytes as a native integer.
    let hex = |field: &str| u32::from_str_radix(field, 16).ok().map(u32::from_be);
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (iface, destination, mask) =
                (fields.first()?, hex(fields.get(1)?)?, hex(fields.get(7)?)?);
            let prefix = mask.count_ones();
            let ours = iface.starts_with("br-") || iface.starts_with("docker");
            let overlaps = pools.iter().any(|(base, pool_prefix)| {
                let common = prefix.min(*pool_prefix);
                let shared = if common == 0 {
                    0
                } else {
                    u32::MAX << (32 - common)
                };
                base & shared == destination & shared
            });
            (prefix > 0 && !ours && overlaps).then(|| {
                (
                    iface.to_string(),
                    format!("{}/{prefix}", std::net::Ipv4Addr::from(destination)),
                )
            })
        })
        .collect()
}

/// The runtimes the config and users' files name are ones the engine knows, and what
/// its storage driver means for a disk limit.
fn check_sandbox(report: &mut Report, config: &ServerConfig) {
    let mut wanted: Vec<String> = config
        .security
        .runtime
        .iter()
        .map(|r| r.0.clone())
        .collect();
    for (path, _) in crate::user_settings::check_all(config) {
        let Some(user) = path.file_stem().and_then(|stem| stem.to_str()) else {
            continue;
        };
        let Ok(user) = crate::keys::UserName::parse(user) else {
            continue;
        };
        if let Ok(settings) = crate::user_settings::load(config, &user, false) {
            wanted.extend(settings.runtime.map(|runtime| runtime.0));
        }
    }
    wanted.sort();
    wanted.dedup();
    let mut effects = super::effects(config);
    let (known, driver) = match effects.engine().runtimes() {
        Ok(found) => found,
        // An engine that does not answer is said once, above.
        Err(_) if wanted.is_empty() => return,
        Err(err) => {
            report.line(
                Mark::Bad,
                &format!(
                    "cannot ask the engine for its runtimes ({}): {err}",
                    wanted.join(", ")
                ),
                None,
            );
            return;
        }
    };
    for runtime in &wanted {
        if known.contains(runtime) {
            report.line(
                Mark::Good,
                &format!("the engine has the runtime {runtime}"),
                None,
            );
        } else {
            let fix = if runtime.starts_with("runsc") {
                format!(
                    "apt-get install runsc; in /etc/docker/daemon.json: \"runtimes\": {{\"{runtime}\": \
                     {{\"path\": \"/usr/bin/runsc\", \"runtimeArgs\": [\"--network=host\", \"--host-uds=open\"]}}}}; \
                     then kill -HUP $(pidof dockerd)"
                )
            } else {
                format!(
                    "register {runtime} in /etc/docker/daemon.json's \"runtimes\" and kill -HUP dockerd"
                )
            };
            report.line(
                Mark::Bad,
                &format!(
                    "the engine has no runtime {runtime} (it has {}): every session that \
                     uses it fails to start",
                    known.join(", ")
                ),
                Some(fix),
            );
        }
    }
    if wanted.is_empty() {
        report.line(
            Mark::Info,
            "containers share the host's kernel (runc); for untrusted users, gVisor:              security.runtime: runsc",
            None,
        );
    }
    let limited = disk_limit_possible(&driver);
    match (&config.defaults.disk_size, limited) {
        (Some(_), false) => report.line(
            Mark::Bad,
            &format!(
                "defaults.disk_size is set, and the engine's storage driver {driver} has no \
                 per-container disk limit: every container fails to start"
            ),
            Some(
                "remove defaults.disk_size (security.read_only_root keeps users off the disk)"
                    .into(),
            ),
        ),
        (Some(_), true) => report.line(
            Mark::Info,
            &format!(
                "defaults.disk_size limits each container's disk on {driver} (overlay2: only \
                 on xfs mounted with pquota; elsewhere every container fails to start)"
            ),
            None,
        ),
        (None, true) => report.line(
            Mark::Info,
            &format!(
                "the engine's storage driver {driver} can limit each container's disk \
                 (defaults.disk_size; overlay2 needs xfs with pquota)"
            ),
            None,
        ),
        (None, false) => report.line(
            Mark::Info,
            &format!(
                "the engine's storage driver {driver} has no per-container disk limit; \
                 security.read_only_root keeps users off the disk"
            ),
            None,
        ),
    }
}

/// Whether docker's `--storage-opt size=` works on a storage driver at all.
fn disk_limit_possible(driver: &str) -> bool {
    matches!(driver, "overlay2" | "btrfs" | "zfs" | "devicemapper")
}

/// Each user's own settings file reads, and what it may ask for the server allows.
fn check_user_settings(report: &mut Report, config: &ServerConfig) {
    for (path, checked) in crate::user_settings::check_all(config) {
        match checked {
            Ok(()) => report.line(Mark::Good, &format!("{} is valid", path.display()), None),
            Err(err) => report.line(
                Mark::Bad,
                &err.to_string(),
                Some("correct or remove it: that user's logins fail until then".into()),
            ),
        }
    }
}

fn check_isolation(report: &mut Report, config: &ServerConfig) {
    let chain = crate::isolation::chain(config);
    let found = match crate::isolation::inspect(config) {
        Ok(found) => found,
        Err(err) => {
            report.line(
                Mark::Bad,
                &format!("cannot read the host's iptables rules: {}", err.detail),
                Some("run podspawn doctor as root".into()),
            );
            return;
        }
    };
    if found.missing.is_empty() {
        report.line(
            Mark::Good,
            &format!("podspawn's networks are kept apart (iptables -t mangle, chain {chain})"),
            None,
        );
        let network = &config.network;
        let mut kept_from = Vec::new();
        if !network.allow_host {
            kept_from.push("the host's own addresses (but DNS)".to_string());
        }
        if !network.allow_metadata {
            kept_from.push(crate::isolation::LINK_LOCAL.to_string());
        }
        kept_from.extend(network.deny.iter().map(ToString::to_string));
        let egress = crate::isolation::egress_chain(config);
        if kept_from.is_empty() {
            report.line(
                Mark::Warn,
                &format!(
                    "containers may reach the host and link-local addresses \
                     (network.allow_host and allow_metadata; chain {egress})"
                ),
                None,
            );
        } else {
            report.line(
                Mark::Good,
                &format!(
                    "containers cannot reach {} (egress policy, chain {egress})",
                    kept_from.join(", ")
                ),
                None,
            );
        }
    } else {
        report.line(
            Mark::Bad,
            &format!(
                "podspawn's iptables rules are not all in place (without them, Docker's own \
                 rules let packets between networks through while networks are made, and \
                 containers reach the host): missing {}",
                found.missing.join(", ")
            ),
            Some(
                "sudo podspawn cleanup --rules (iptables rules do not last a reboot: \
                 contrib's podspawn-rules.service puts them back at boot)"
                    .into(),
            ),
        );
    }
    if !found.stale.is_empty() {
        report.line(
            Mark::Info,
            &format!(
                "{chain} also drops {} (pools the config no longer names); once no network \
                 uses them: iptables -t mangle -L {chain} --line-numbers, then \
                 iptables -t mangle -D {chain} NUMBER",
                found.stale.join(", ")
            ),
            None,
        );
    }
    for other in &found.others {
        report.line(
            Mark::Warn,
            &format!(
                "mangle FORWARD also jumps to {other}, another podspawn installation's (an \
                 old state directory's?), still dropping its pools' traffic"
            ),
            Some(format!(
                "if it is no longer used: iptables -t mangle -D FORWARD -j {other} && \
                 iptables -t mangle -F {other} && iptables -t mangle -X {other}"
            )),
        );
    }
}

fn check_cleanup(report: &mut Report) {
    let timers = [
        "/etc/systemd/system/podspawn-cleanup.timer",
        "/lib/systemd/system/podspawn-cleanup.timer",
        "/usr/lib/systemd/system/podspawn-cleanup.timer",
        "/etc/cron.d/podspawn",
    ];
    match timers.iter().find(|path| Path::new(path).exists()) {
        Some(path) => report.line(
            Mark::Info,
            &format!("a cleanup schedule is installed ({path})"),
            None,
        ),
        None => report.line(
            Mark::Info,
            "no cleanup timer or cron job (optional: each session's keeper does the work)",
            Some("see contrib/systemd/ or contrib/cron.d/podspawn".into()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_into_the_pools_are_found_but_not_dockers_own_or_the_default() {
        let table = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     docker0\t000011AC\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n\
                     br-1a2b\t90F3D60A\t00000000\t0001\t0\t0\t0\tF0FFFFFF\t0\t0\t0\n\
                     tun0\t0000000A\t00000000\t0001\t0\t0\t0\t000000FF\t0\t0\t0\n\
                     wg0\t0000D70A\t00000000\t0001\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let pools = ["10.214.0.0/16".to_string(), "10.215.0.0/16".to_string()];
        assert_eq!(
            foreign_routes(table, &pools),
            [
                ("tun0".to_string(), "10.0.0.0/8".to_string()),
                ("wg0".to_string(), "10.215.0.0/16".to_string())
            ]
        );
        assert!(foreign_routes(table, &["192.168.7.0/24".to_string()]).is_empty());
    }

    #[test]
    fn hidden_processes_are_found_unless_the_docker_group_is_exempt() {
        let mounts = |options: &str| {
            format!(
                "sysfs /sys sysfs rw 0 0\nproc /proc proc {options} 0 0\nproc /other proc rw 0 0\n"
            )
        };
        assert_eq!(
            hidden_processes(&mounts("rw,nosuid,relatime"), Some(999)),
            None
        );
        assert_eq!(hidden_processes(&mounts("rw,hidepid=0"), Some(999)), None);
        assert_eq!(hidden_processes(&mounts("rw,hidepid=off"), Some(999)), None);
        for hidden in [
            "hidepid=2",
            "hidepid=invisible",
            "hidepid=1",
            "hidepid=noaccess",
            "hidepid=ptraceable",
        ] {
            assert_eq!(
                hidden_processes(&mounts(&format!("rw,{hidden}")), Some(999)).as_deref(),
                Some(hidden)
            );
        }
        assert_eq!(
            hidden_processes(&mounts("rw,hidepid=invisible,gid=999"), Some(999)),
            None
        );
        assert_eq!(
            hidden_processes(&mounts("rw,hidepid=2,gid=4"), Some(999)).as_deref(),
            Some("hidepid=2,gid=4")
        );
    }
}
