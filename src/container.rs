//! What a podspawn container is: its name, the user inside it, and the few small
//! shell scripts podspawn runs in it. Pure data and text; `docker` turns these into
//! argv and runs them.
//!
//! Inside, the user has the host account's name, uid and gid, home `/home/<user>` (a
//! tmpfs already owned by them: with every capability dropped, root in the container
//! can still write its own /etc/passwd but cannot chown) and the configured shell, or
//! `/bin/sh` when the image lacks it. The scripts are POSIX sh and need only what
//! busybox has, so minimal images work too. Every value reaches them as a positional
//! argument, never spliced into the script text.

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use crate::keys::UserName;
use crate::network::Network;
use crate::router::Program;

/// An image reference as docker takes it, or why not: one starting with `-` would be
/// read as an option of `docker run`, and whitespace or control characters are no
/// part of any reference.
pub fn check_image(text: &str) -> Result<(), String> {
    // A reference's characters only: it is written into Dockerfiles (`FROM`) too.
    if text.is_empty()
        || text.len() > 255
        || text.starts_with(['-', '.', '/', ':', '@'])
        || !text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:@".contains(c))
    {
        return Err(format!(
            "invalid image {text:?} (expected e.g. ubuntu:24.04)"
        ));
    }
    Ok(())
}

/// The container of a user's default environment (`project` empty) or of a project.
pub fn container_name(user: &UserName, project: &str) -> String {
    if project.is_empty() {
        format!("podspawn-{user}")
    } else {
        format!("podspawn-{user}-{project}")
    }
}

/// The user as they exist inside their container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: UserName,
    pub uid: u32,
    pub gid: u32,
    /// The primary group's name (made safe for /etc/group).
    pub group: String,
    pub shell: String,
}

impl Identity {
    pub fn new(name: UserName, uid: u32, gid: u32, group: &str, shell: &str) -> Identity {
        // A group name goes into /etc/group and a grep pattern inside the container;
        // anything unusual is replaced by the user's own name.
        let plain = !group.is_empty()
            && group.len() <= 32
            && group
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
        Identity {
            group: if plain {
                group.to_string()
            } else {
                name.to_string()
            },
            name,
            uid,
            gid,
            shell: shell.to_string(),
        }
    }

    pub fn home(&self) -> String {
        format!("/home/{}", self.name)
    }
}

/// Everything `docker run` needs to create a session's container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub project: String,
    pub session_id: String,
    pub user: Identity,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub pids_limit: u32,
    /// How long the container's main process lives: the engine itself ends the
    /// container at its max lifetime, whether or not podspawn is running.
    pub lifetime: Duration,
    /// The user's own network, and the container's fixed address on it.
    pub network: Network,
    /// The host directory where this user's connections put forwarded ssh-agent
    /// sockets, mounted at `AGENT_MOUNT`.
    pub agent_dir: Option<String>,
    pub hardening: Hardening,
    /// A project's workspace: with a read-only root, the container's own copy.
    pub workspace: Option<String>,
}

/// What holds a session's container in beyond its cpus, memory and pids, and what
/// it may do beyond the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hardening {
    /// The home tmpfs's size.
    pub home_bytes: u64,
    /// `--ulimit nofile` (soft and hard).
    pub nofile: u32,
    /// `--ulimit nproc` (soft and hard), if any.
    pub nproc: Option<u32>,
    /// `--storage-opt size=`, if any.
    pub disk_bytes: Option<u64>,
    /// The engine's OCI runtime for it (and its services), if not the default.
    pub runtime: Option<String>,
    /// A read-only root: /etc is the container's own copy (a volume made from the
    /// image's), and the home, /tmp, /var/tmp and /run are tmpfs.
    pub read_only_root: bool,
    /// Passwordless sudo for the user: `SUDO_CAPABILITIES` come back and
    /// no-new-privileges goes.
    pub sudo: bool,
    /// Keep the container off IPv6 (`net.ipv6.conf.all.disable_ipv6=1`): where the
    /// host has IPv6 at all (booted without it, the sysctl does not exist and every
    /// container would fail to start).
    pub ipv6_off: bool,
}

impl Default for Hardening {
    fn default() -> Self {
        Hardening {
            home_bytes: 1 << 30,
            nofile: 16384,
            nproc: None,
            disk_bytes: None,
            runtime: None,
            read_only_root: false,
            sudo: false,
            ipv6_off: true,
        }
    }
}

/// Whether an OCI runtime runs containers in a sandbox of their own (a user-space
/// kernel or a VM): gVisor's `runsc` or Kata's, by the names their docs register.
pub fn is_sandbox(runtime: Option<&str>) -> bool {
    runtime.is_some_and(|name| {
        ["runsc", "kata"]
            .iter()
            .any(|sandbox| name.starts_with(sandbox))
    })
}

/// Whether the engine's pids limit counts a runtime's own host threads rather than
/// the processes inside: gVisor's (Kata enforces it inside its VM).
pub fn counts_host_threads(runtime: Option<&str>) -> bool {
    runtime.is_some_and(|name| name.starts_with("runsc"))
}

/// The capabilities a session with sudo has (every other is dropped): what `sudo`
/// itself and a package manager (apt: dpkg's chown and setuid bits, the download
/// step run as `_apt`) need.
pub const SUDO_CAPABILITIES: &[&str] = &[
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
];

/// A companion service's container: `<session container>.<service>` (user and project
/// names hold no `.`, so it is never a session's name), on the session's network.
pub fn service_container_name(container: &str, service: &str) -> String {
    format!("{container}.{service}")
}

/// A service's named volume: the session's own (`persistent` false: it carries the
/// session id, so a later session never finds an earlier one's data), or one kept
/// for the user and project across sessions. Its parts are `.`-separated, which no
/// user, project or volume name holds: `alice`'s `api-x` and `alice-api`'s `x` never
/// share one (docker would reuse a volume of the same name, labels and all).
pub fn volume_name(
    user: &UserName,
    project: &str,
    session_id: &str,
    volume: &str,
    persistent: bool,
) -> String {
    if persistent {
        format!("podspawn-{user}.{project}.{volume}")
    } else {
        format!("podspawn-{user}.{project}.{session_id}.{volume}")
    }
}

/// A companion service as a session asks for it: what its project's Podfile says
/// (kept in the project's registration, where `env` values still hold their
/// `${PODSPAWN_USER}`; a session's request has them filled in).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Service {
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
    #[serde(default)]
    pub volumes: Vec<VolumeMount>,
    #[serde(default)]
    pub command: Option<Vec<String>>,
}

/// A named volume a service mounts, as the Podfile says it (`NAME:/path[:ro]`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VolumeMount {
    pub name: String,
    pub target: String,
    pub read_only: bool,
}

/// How a session's services run, from the server config.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceLimits {
    /// The share of the session's cpus, memory and pids limit its services have
    /// together (each an equal part).
    pub share: f64,
    pub capabilities: Vec<String>,
    pub persist_volumes: bool,
}

/// Everything `docker run` needs to create one of a session's companion services.
/// Kept whole in the state (as JSON), so `cleanup` can make a missing one again
/// exactly as it was.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ServiceSpec {
    /// The container's name (`service_container_name`).
    pub container: String,
    /// The service's name in the Podfile: its DNS name and hostname on the network.
    pub name: String,
    pub image: String,
    pub user: String,
    pub project: String,
    pub session_id: String,
    /// The session's private network, and the service's fixed address on it.
    pub network: String,
    pub address: std::net::Ipv4Addr,
    /// What the Podfile says it listens on (for readiness and the banner).
    pub ports: Vec<u16>,
    pub env: Vec<(String, String)>,
    pub volumes: Vec<ServiceVolume>,
    /// Replaces the image's `CMD`; its entrypoint stays.
    pub command: Option<Vec<String>>,
    pub cpus: f64,
    pub memory_bytes: u64,
    pub pids_limit: u32,
    /// The capabilities it keeps (`services.capabilities`); all others are dropped.
    pub capabilities: Vec<String>,
    /// The session's OCI runtime, if not the engine's default.
    #[serde(default)]
    pub runtime: Option<String>,
    /// As the session's (`Hardening::ipv6_off`).
    #[serde(default)]
    pub ipv6_off: bool,
}

impl ServiceLimits {
    /// The cpus, memory and pids limit of each of a session's `services`: together
    /// they have `share` of the session's, in equal parts — however many a Podfile
    /// declares — and each never less than a server needs to start at all.
    pub fn of_session(
        &self,
        cpus: f64,
        memory_bytes: u64,
        pids_limit: u32,
        services: usize,
    ) -> (f64, u64, u32) {
        let share = |value: f64| value * self.share / services.max(1) as f64;
        (
            // docker takes cpus to two decimals; a share never rounds to nothing.
            (share(cpus) * 100.0).round().max(1.0) / 100.0,
            (share(memory_bytes as f64) as u64).max(MIN_SERVICE_MEMORY),
            (share(f64::from(pids_limit)) as u32).max(MIN_SERVICE_PIDS),
        )
    }
}

impl ServiceSpec {
    /// Service number `index` of the `services` of the session whose container is
    /// `session`, on the session's network.
    pub fn of(
        service: &Service,
        services: usize,
        session: &ContainerSpec,
        index: usize,
        limits: &ServiceLimits,
    ) -> ServiceSpec {
        let (cpus, memory_bytes, pids_limit) = limits.of_session(
            session.cpus,
            session.memory_bytes,
            session.pids_limit,
            services,
        );
        ServiceSpec {
            container: service_container_name(&session.name, &service.name),
            name: service.name.clone(),
            image: service.image.clone(),
            user: session.user.name.to_string(),
            project: session.project.clone(),
            session_id: session.session_id.clone(),
            network: session.network.name.clone(),
            address: session.network.service(index),
            ports: service.ports.clone(),
            env: service.env.clone(),
            volumes: service
                .volumes
                .iter()
                .map(|volume| ServiceVolume {
                    name: volume_name(
                        &session.user.name,
                        &session.project,
                        &session.session_id,
                        &volume.name,
                        limits.persist_volumes,
                    ),
                    target: volume.target.clone(),
                    read_only: volume.read_only,
                    persistent: limits.persist_volumes,
                })
                .collect(),
            command: service.command.clone(),
            cpus,
            memory_bytes,
            pids_limit,
            capabilities: limits.capabilities.clone(),
            runtime: session.hardening.runtime.clone(),
            ipv6_off: session.hardening.ipv6_off,
        }
    }
}

/// The least memory a service gets, whatever its share says (docker refuses less
/// than 6 MiB).
const MIN_SERVICE_MEMORY: u64 = 32 << 20;

/// The fewest processes a service may have, whatever its share says.
const MIN_SERVICE_PIDS: u32 = 64;

/// A named volume mounted into a service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ServiceVolume {
    /// The docker volume (`volume_name`).
    pub name: String,
    pub target: String,
    pub read_only: bool,
    /// Kept across sessions (`services.persist_volumes`).
    pub persistent: bool,
}

/// Where forwarded ssh-agent sockets appear inside a container.
pub const AGENT_MOUNT: &str = "/run/ssh-agent";

/// Everything `docker exec` needs for one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecSpec {
    pub container: String,
    pub user: Identity,
    pub tty: bool,
    /// Where the program starts; the user's home when none.
    pub workdir: Option<String>,
    /// Extra environment, after HOME, USER, LOGNAME and SHELL.
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
}

/// The environment variable that marks every process of one connection, so that
/// podspawn can find and end them when the connection drops.
pub const CONNECTION_MARKER: &str = "PODSPAWN_CONNECTION";

/// Where the setup script says it is done (written into the scripts' text).
#[cfg(test)]
const READY_FILE: &str = "/run/podspawn-ready";

/// The container's main process: put the user into /etc/passwd and /etc/group
/// (replacing any entry with the same name or uid), say it is ready, then sleep for
/// the container's lifetime.
const SETUP_SCRIPT: &str = r#"user=$1 uid=$2 gid=$3 group=$4 home=$5 shell=$6 seconds=$7 sudo=$8
[ -x "$shell" ] || shell=/bin/sh
{ grep -v -e "^$user:" -e "^[^:]*:[^:]*:$uid:" /etc/passwd 2>/dev/null
  echo "$user:x:$uid:$gid::$home:$shell"
} > /etc/passwd.podspawn && cat /etc/passwd.podspawn > /etc/passwd
rm -f /etc/passwd.podspawn
if ! grep -q "^[^:]*:[^:]*:$gid:" /etc/group 2>/dev/null; then
  { grep -v "^$group:" /etc/group 2>/dev/null; echo "$group:x:$gid:"; } > /etc/group.podspawn \
    && cat /etc/group.podspawn > /etc/group
  rm -f /etc/group.podspawn
fi
if [ "$sudo" = 1 ]; then
  # sudo's PAM account check wants the user in /etc/shadow (no password: `*`).
  if [ -f /etc/shadow ]; then
    (umask 077; { grep -v "^$user:" /etc/shadow; echo "$user:*:1:0:99999:7:::"; } \
      > /etc/shadow.podspawn) && cat /etc/shadow.podspawn > /etc/shadow
    rm -f /etc/shadow.podspawn
  fi
  mkdir -p /etc/sudoers.d && echo "$user ALL=(ALL) NOPASSWD:ALL" > /etc/sudoers.d/podspawn \
    && chmod 0440 /etc/sudoers.d/podspawn
fi
mkdir -p /run && : > /run/podspawn-ready
exec sleep "$seconds"
"#;

/// `docker run --entrypoint /bin/sh IMAGE` followed by these.
pub fn setup_command(spec: &ContainerSpec) -> Vec<String> {
    let user = &spec.user;
    vec![
        "-c".to_string(),
        SETUP_SCRIPT.to_string(),
        "podspawn-setup".to_string(),
        user.name.to_string(),
        user.uid.to_string(),
        user.gid.to_string(),
        user.group.clone(),
        user.home(),
        user.shell.clone(),
        spec.lifetime.as_secs().max(1).to_string(),
        u8::from(spec.hardening.sudo).to_string(),
    ]
}

/// The login shell, falling back to /bin/sh when the image does not have the
/// configured one.
const SHELL_SCRIPT: &str = r#"[ -x "$1" ] || set -- /bin/sh "$2"
SHELL=$1; export SHELL
exec "$1" -l"#;

/// A project's `on_start` (as $2), its output on the terminal, then the login shell as
/// `SHELL_SCRIPT` runs it. If it fails, that is said with its last lines, and the
/// session still opens.
const ON_START_SCRIPT: &str = r#"log=${HOME:-/tmp}/.podspawn-on-start
{ /bin/sh -c "$2"; echo "$?" > "$log.status"; } 2>&1 | tee "$log"
status=$(cat "$log.status" 2>/dev/null || echo 1)
if [ "$status" != 0 ]; then
  echo "podspawn: on_start failed (exit $status); its last lines:" >&2
  tail -n 5 "$log" >&2
fi
[ -x "$1" ] || set -- /bin/sh
SHELL=$1; export SHELL
exec "$1" -l"#;

/// The image's sftp-server, wherever its distribution puts it.
const SFTP_SCRIPT: &str = r#"for server in /usr/lib/openssh/sftp-server /usr/libexec/openssh/sftp-server \
    /usr/lib/ssh/sftp-server /usr/libexec/sftp-server /usr/lib/sftp-server /usr/sbin/sftp-server; do
  [ -x "$server" ] && exec "$server"
done
echo "podspawn: this image has no sftp-server (Debian/Ubuntu: openssh-sftp-server)" >&2
exit 127"#;

/// Until the setup script is done (only a brand-new container can be that young),
/// wait for it, at most about five seconds, then run the connection's program.
const WAIT_SCRIPT: &str = r#"n=0
while [ ! -e /run/podspawn-ready ] && [ "$n" -lt 250 ]; do
  sleep 0.02 2>/dev/null || sleep 1
  n=$((n + 1))
done
dotfiles=/usr/local/share/podspawn/dotfiles
if [ -d "$dotfiles" ] && [ -n "$HOME" ] && [ ! -e "$HOME/.dotfiles" ]; then
  cp -R "$dotfiles" "$HOME/.dotfiles"     && if [ -f "$dotfiles.install" ]; then
      (cd "$HOME/.dotfiles" && /bin/sh "$dotfiles.install") </dev/null >"$HOME/.dotfiles-install.log" 2>&1
    fi
fi
exec "$@""#;

/// A command that is not UTF-8, passed as octal escapes (`\0NNN`) of every byte that
/// is not printable ASCII or is a backslash, and turned back into its bytes inside.
/// The engine's API is JSON, which would replace such bytes with U+FFFD: a latin-1
/// file name in `scp -t` would become another name. The `x` keeps the command's
/// trailing newlines from `$(…)`.
const BYTES_SCRIPT: &str = r#"command=$(printf '%b' "$1"; echo x)
exec /bin/sh -c "${command%x}""#;

/// What runs in the container for a routed connection; `on_start` only ever with a
/// shell on a terminal.
pub fn program_argv(program: &Program, shell: &str, on_start: Option<&str>) -> Vec<String> {
    let strings = |items: &[&str]| items.iter().map(|item| item.to_string()).collect();
    match program {
        Program::Shell => match on_start {
            Some(on_start) => strings(&[
                "/bin/sh",
                "-c",
                ON_START_SCRIPT,
                "podspawn-shell",
                shell,
                on_start,
            ]),
            None => strings(&["/bin/sh", "-c", SHELL_SCRIPT, "podspawn-shell", shell]),
        },
        Program::Sftp => strings(&["/bin/sh", "-c", SFTP_SCRIPT, "podspawn-sftp"]),
        Program::Command(command) => match command.to_str() {
            Some(command) => strings(&["/bin/sh", "-c", command]),
            None => strings(&[
                "/bin/sh",
                "-c",
                BYTES_SCRIPT,
                "podspawn-command",
                &octal_escaped(command.as_bytes()),
            ]),
        },
    }
}

/// `bytes` with every byte that is not printable ASCII, or is a backslash, written
/// as `\0NNN` (what `printf '%b'` reads back).
fn octal_escaped(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len());
    for &byte in bytes {
        if (byte.is_ascii_graphic() || byte == b' ') && byte != b'\\' {
            text.push(char::from(byte));
        } else {
            text.push_str(&format!("\\0{byte:03o}"));
        }
    }
    text
}

/// The size of the client's terminal, as sshd's pseudo-terminal has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSize {
    pub rows: u16,
    pub cols: u16,
}

/// Gives the container's terminal the client's size (as $1 and $2) unless the
/// engine already has, then runs the program. An engine before API 1.42 (Docker
/// 20.10) starts an exec's program on a 0x0 terminal and resizes it only after: a
/// program that asks first (`stty size`, a shell reading typed-ahead input, `ssh -t
/// host vim`) saw 0 0 in 2 of 30 tries here. A size already set is the engine's own
/// and newer; no `stty` in the image changes nothing.
const SIZE_SCRIPT: &str = r#"[ "$(stty size 2>/dev/null)" != "0 0" ] || stty rows "$1" cols "$2" 2>/dev/null
shift 2
exec "$@""#;

/// `argv`, run on a terminal given `size` first.
pub fn sized_terminal(argv: Vec<String>, size: WindowSize) -> Vec<String> {
    let mut wrapped: Vec<String> = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        SIZE_SCRIPT.to_string(),
        "podspawn-size".to_string(),
        size.rows.to_string(),
        size.cols.to_string(),
    ];
    wrapped.extend(argv);
    wrapped
}

/// `argv`, made to wait for a brand-new container's setup first.
/// The first program of a new container waits for its setup, and installs the
/// project's dotfiles (if its image has them, see `image`) into the user's home:
/// copied to `~/.dotfiles`, their install script run there, its output in
/// `~/.dotfiles-install.log` (never on the session's stdout, which may be a
/// protocol's).
pub fn after_setup(argv: Vec<String>) -> Vec<String> {
    let mut wrapped: Vec<String> = ["/bin/sh", "-c", WAIT_SCRIPT, "podspawn-wait"]
        .iter()
        .map(|item| item.to_string())
        .collect();
    wrapped.extend(argv);
    wrapped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn alice() -> Identity {
        Identity::new(
            UserName::parse("alice").unwrap(),
            1001,
            1002,
            "devs",
            "/bin/bash",
        )
    }

    #[test]
    fn names_follow_user_and_project() {
        let user = UserName::parse("alice").unwrap();
        assert_eq!(container_name(&user, ""), "podspawn-alice");
        assert_eq!(container_name(&user, "api"), "podspawn-alice-api");
    }

    #[test]
    fn odd_group_names_are_replaced_by_the_user_name() {
        let name = UserName::parse("alice").unwrap();
        assert_eq!(
            Identity::new(name.clone(), 1, 1, "devs", "/bin/sh").group,
            "devs"
        );
        for odd in ["", "a b", "a:b", "x\ny", "dom.users", "^evil$"] {
            assert_eq!(
                Identity::new(name.clone(), 1, 1, odd, "/bin/sh").group,
                "alice"
            );
        }
    }

    #[test]
    fn values_reach_the_setup_script_as_arguments() {
        let spec = ContainerSpec {
            name: "podspawn-alice".into(),
            image: "img".into(),
            project: String::new(),
            session_id: "s1".into(),
            user: alice(),
            cpus: 2.0,
            memory_bytes: 1 << 30,
            pids_limit: 512,
            lifetime: Duration::from_secs(3600),
            network: crate::network::Pool::default().for_user("alice", 1001),
            agent_dir: None,
            hardening: Hardening::default(),
            workspace: None,
        };
        let argv = setup_command(&spec);
        assert_eq!(argv[0], "-c");
        assert_eq!(argv[1], SETUP_SCRIPT);
        assert_eq!(
            &argv[2..],
            [
                "podspawn-setup",
                "alice",
                "1001",
                "1002",
                "devs",
                "/home/alice",
                "/bin/bash",
                "3600",
                "0"
            ]
        );
    }

    /// Runs the setup script against copies of /etc/passwd and /etc/group in a temp
    /// dir (the script's paths rewritten), with this machine's sh and grep.
    #[test]
    fn setup_replaces_clashing_entries_and_keeps_the_rest() {
        let dir = std::env::temp_dir().join(format!("podspawn-setup-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let passwd = dir.join("passwd");
        let group = dir.join("group");
        std::fs::write(
            &passwd,
            "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1001:1001::/home/ubuntu:/bin/bash\nalice:x:5:5::/old:/bin/false\n",
        )
        .unwrap();
        std::fs::write(&group, "root:x:0:\nubuntu:x:1001:\n").unwrap();
        let script = SETUP_SCRIPT
            .replace("/etc/passwd", passwd.to_str().unwrap())
            .replace("/etc/group", group.to_str().unwrap())
            .replace(
                "mkdir -p /run && : > /run/podspawn-ready",
                &format!(": > {}/ready", dir.display()),
            )
            .replace("exec sleep \"$seconds\"", "echo slept \"$seconds\"");
        let output = Command::new("/bin/sh")
            .args([
                "-c",
                &script,
                "podspawn-setup",
                "alice",
                "1001",
                "1002",
                "devs",
                "/home/alice",
                "/bin/no-such-shell",
                "60",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "slept 60\n");
        assert_eq!(
            std::fs::read_to_string(&passwd).unwrap(),
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1002::/home/alice:/bin/sh\n"
        );
        assert_eq!(
            std::fs::read_to_string(&group).unwrap(),
            "root:x:0:\nubuntu:x:1001:\ndevs:x:1002:\n"
        );
        assert!(dir.join("ready").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn programs_run_through_sh_with_the_command_untouched() {
        assert_eq!(
            program_argv(
                &Program::Command("echo 'a b' \"$HOME\"".into()),
                "/bin/bash",
                None
            ),
            ["/bin/sh", "-c", "echo 'a b' \"$HOME\""]
        );
        let shell = program_argv(&Program::Shell, "/bin/zsh", None);
        assert_eq!(shell.last().unwrap(), "/bin/zsh");
        let sftp = program_argv(&Program::Sftp, "/bin/bash", None);
        assert!(sftp[2].contains("/usr/lib/openssh/sftp-server"));
    }

    #[test]
    fn a_command_that_is_not_utf8_runs_as_its_very_bytes() {
        use std::os::unix::ffi::OsStringExt;
        let command = b"printf '%s|' caf\xe9 'back\\slash' \"$(printf 'x\\ty')\"\n\n";
        let argv = program_argv(
            &Program::Command(std::ffi::OsString::from_vec(command.to_vec())),
            "/bin/sh",
            None,
        );
        assert!(argv.iter().all(|arg| arg.is_ascii()), "{argv:?}");
        let output = Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        assert_eq!(
            output.stdout,
            b"caf\xe9|back\\slash|x\ty|",
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // UTF-8 commands are passed as they are.
        let plain = program_argv(&Program::Command("echo é".into()), "/bin/sh", None);
        assert_eq!(plain, ["/bin/sh", "-c", "echo é"]);
    }

    #[test]
    fn the_shell_falls_back_to_sh_and_sftp_says_what_is_missing() {
        let run = |argv: Vec<String>| Command::new(&argv[0]).args(&argv[1..]).output().unwrap();
        let mut shell = program_argv(&Program::Shell, "/bin/no-such-shell", None);
        // Replace `-l` login by `-c 'echo $SHELL'` to see which shell was chosen.
        shell[2] = shell[2].replace("exec \"$1\" -l", "exec \"$1\" -c 'echo $SHELL'");
        assert_eq!(String::from_utf8_lossy(&run(shell).stdout), "/bin/sh\n");

        // Every place the script looks moved to where nothing is, whatever this host has.
        let mut sftp = program_argv(&Program::Sftp, "/bin/sh", None);
        sftp[2] = sftp[2]
            .replace(" /usr/", " /nonexistent/usr/")
            .replace("in /usr/", "in /nonexistent/usr/");
        assert!(
            !sftp[2].contains(" /usr/") && !sftp[2].contains("in /usr/"),
            "{}",
            sftp[2]
        );
        let output = run(sftp);
        assert_eq!(output.status.code(), Some(127));
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            "podspawn: this image has no sftp-server (Debian/Ubuntu: openssh-sftp-server)\n"
        );
    }

    #[test]
    fn on_start_runs_before_the_shell_and_its_failure_is_said_with_its_last_lines() {
        let home = std::env::temp_dir().join(format!("podspawn-on-start-{}", std::process::id()));
        std::fs::create_dir_all(&home).unwrap();
        let run = |on_start: &str| {
            let mut argv = program_argv(&Program::Shell, "/bin/sh", Some(on_start));
            // `-l` would wait for a terminal's input: say which shell would run.
            argv[2] = argv[2].replace("exec \"$1\" -l", "echo \"shell $SHELL\"");
            Command::new(&argv[0])
                .args(&argv[1..])
                .env("HOME", &home)
                .output()
                .unwrap()
        };
        let ok = run("echo ready");
        assert_eq!(
            String::from_utf8_lossy(&ok.stdout),
            "ready\nshell /bin/sh\n"
        );
        assert!(ok.stderr.is_empty());
        let failed = run("for i in 1 2 3 4 5 6 7; do echo line$i; done; exit 3");
        assert!(String::from_utf8_lossy(&failed.stdout).ends_with("line7\nshell /bin/sh\n"));
        assert_eq!(
            String::from_utf8_lossy(&failed.stderr),
            "podspawn: on_start failed (exit 3); its last lines:\nline3\nline4\nline5\nline6\nline7\n"
        );
        std::fs::remove_dir_all(&home).unwrap();
    }

    /// A new pseudo-terminal's slave side, of `rows` x `cols` (0 0: no size yet).
    fn terminal(rows: u16, cols: u16) -> (std::fs::File, std::fs::File) {
        use std::os::fd::FromRawFd;
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0);
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0);
            let size = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            assert_eq!(libc::ioctl(slave, libc::TIOCSWINSZ, &size), 0);
            (
                std::fs::File::from_raw_fd(master),
                std::fs::File::from_raw_fd(slave),
            )
        }
    }

    #[test]
    fn a_terminal_without_a_size_gets_the_clients_and_one_with_a_size_keeps_it() {
        let size_seen = |rows: u16, cols: u16| {
            let (_master, slave) = terminal(rows, cols);
            let argv = sized_terminal(
                vec![
                    "/bin/sh".into(),
                    "-c".into(),
                    "stty size; echo \"$0\"".into(),
                ],
                WindowSize {
                    rows: 30,
                    cols: 100,
                },
            );
            let output = Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(slave)
                .output()
                .unwrap();
            String::from_utf8_lossy(&output.stdout).to_string()
        };
        assert_eq!(size_seen(0, 0), "30 100\n/bin/sh\n");
        assert_eq!(size_seen(24, 80), "24 80\n/bin/sh\n");
    }

    #[test]
    fn setup_and_wait_agree_on_the_ready_file() {
        assert!(SETUP_SCRIPT.contains(READY_FILE));
        assert!(WAIT_SCRIPT.contains(READY_FILE));
    }

    #[test]
    fn the_wait_wrapper_runs_the_program_with_its_arguments() {
        let script = WAIT_SCRIPT.replace(READY_FILE, "/");
        let output = Command::new("/bin/sh")
            .args([
                "-c",
                &script,
                "podspawn-wait",
                "printf",
                "%s|",
                "a b",
                "$HOME",
            ])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&output.stdout), "a b|$HOME|");
        let wrapped = after_setup(vec!["true".into()]);
        assert_eq!(wrapped[..2], ["/bin/sh", "-c"]);
        assert_eq!(wrapped.last().unwrap(), "true");
    }
}
