//! The host's own admin tools, as podspawn's admin commands run them: `sshd -t` and
//! `sshd -T`, `groupadd`, `useradd`, `usermod`, `userdel`, and the reload of sshd.
//! Like `docker`, every call is an argv vector, never a shell string, and a failure
//! carries the argv, the status and the tool's stderr.

use std::fmt;
use std::path::Path;
use std::process::Command;

#[derive(Debug)]
pub struct ToolError {
    pub argv: Vec<String>,
    pub detail: String,
    /// The tool's exit code, when it ran and exited with one.
    pub code: Option<i32>,
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "`{}` failed: {}", self.argv.join(" "), self.detail)
    }
}

impl std::error::Error for ToolError {}

/// Runs a tool to completion, for at most `TOOL_TIMEOUT`; its stderr (folded to one
/// line) on failure.
fn run(program: &str, args: &[&str]) -> Result<String, ToolError> {
    run_for(program, args, &[], TOOL_TIMEOUT)
}

/// The longest an admin tool (sshd -t, useradd, …) may take.
const TOOL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// An admin tool as found on PATH, else in /usr/sbin or /sbin (where Debian keeps
/// sshd, groupadd and useradd, and where `sudo` without a login shell may not look).
fn tool(name: &str) -> String {
    let from_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
    });
    from_path
        .or_else(|| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|dir| Path::new(dir).join(name))
                .find(|candidate| candidate.is_file())
        })
        .map(|path| path.display().to_string())
        .unwrap_or_else(|| name.to_string())
}

fn sshd() -> String {
    tool("sshd")
}

/// sshd's privilege-separation directory: sshd, even `sshd -t`, refuses to run
/// without it, and a host whose sshd never started since boot may not have it yet
/// (systemd-tmpfiles makes it when the service starts). Returns whether it was made.
pub fn ensure_privsep_dir() -> std::io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let dir = Path::new("/run/sshd");
    if dir.exists() || !Path::new("/run").is_dir() {
        return Ok(false);
    }
    std::fs::create_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(true)
}

/// `sshd -t -f CONFIG`: does sshd accept this config?
pub fn sshd_test(config: &Path) -> Result<(), ToolError> {
    run(&sshd(), &["-t", "-f", &config.display().to_string()]).map(|_| ())
}

/// The value sshd would use for `keyword` (lower-case), from `sshd -T -f CONFIG`.
pub fn sshd_setting(config: &Path, keyword: &str) -> Result<Option<String>, ToolError> {
    let dump = run(&sshd(), &["-T", "-f", &config.display().to_string()])?;
    Ok(dump.lines().find_map(|line| {
        let (key, value) = line.split_once(' ')?;
        (key == keyword).then(|| value.to_string())
    }))
}

/// What sshd would apply to a connection of `user` from the loopback, from
/// `sshd -T -C`: keyword (lower-case) to value.
pub fn sshd_settings_for(
    config: &Path,
    user: &str,
) -> Result<std::collections::BTreeMap<String, String>, ToolError> {
    let connection = format!("user={user},host=localhost,addr=127.0.0.1");
    let dump = run(
        &sshd(),
        &["-T", "-f", &config.display().to_string(), "-C", &connection],
    )?;
    Ok(dump
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect())
}

/// Reloads the running sshd: systemd's `reload` where systemd runs, else SIGHUP to
/// the pid in sshd's pid file. Returns what it did, for the admin.
pub fn reload_sshd(config: &Path) -> Result<String, ToolError> {
    if Path::new("/run/systemd/system").is_dir() {
        // Debian and Ubuntu call the unit "ssh", most others "sshd".
        let mut last = None;
        for unit in ["ssh", "sshd"] {
            match run(&tool("systemctl"), &["reload", unit]) {
                Ok(_) => return Ok(format!("reloaded {unit}")),
                Err(err) => last = Some(err),
            }
        }
        return Err(last.expect("two units were tried"));
    }
    let pid_file = sshd_setting(config, "pidfile")?.unwrap_or_else(|| "/run/sshd.pid".to_string());
    let failure = |detail: String| ToolError {
        argv: vec!["kill".into(), "-HUP".into(), format!("$(cat {pid_file})")],
        detail,
        code: None,
    };
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .map_err(|err| failure(format!("{pid_file}: {err} (is sshd running?)")))?
        .trim()
        .parse()
        .map_err(|_| failure(format!("{pid_file} holds no pid")))?;
    if unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        return Err(failure(std::io::Error::last_os_error().to_string()));
    }
    Ok(format!("reloaded sshd (SIGHUP to pid {pid})"))
}

/// Creates a system group.
pub fn groupadd(group: &str) -> Result<(), ToolError> {
    run(&tool("groupadd"), &["--system", group]).map(|_| ())
}

/// Creates a podspawn account: no usable password but not locked (`*`: with
/// `UsePAM no`, sshd refuses a locked account even with a valid key), login shell
/// /bin/sh (sshd runs the forced command through it), a shared root-owned home,
/// its own group, and member of podspawn's group.
pub fn useradd(user: &str, home: &Path, group: &str) -> Result<(), ToolError> {
    let home = home.display().to_string();
    run(
        &tool("useradd"),
        &[
            "--no-create-home",
            "--home-dir",
            &home,
            "--shell",
            "/bin/sh",
            "--user-group",
            "--groups",
            group,
            "--password",
            "*",
            user,
        ],
    )
    .map(|_| ())
}

/// Adds an existing account to a group.
pub fn add_to_group(user: &str, group: &str) -> Result<(), ToolError> {
    run(&tool("usermod"), &["--append", "--groups", group, user]).map(|_| ())
}

/// Changes an account's home directory (the directory itself is not moved: it is
/// podspawn's shared, empty one).
pub fn set_home(user: &str, home: &Path) -> Result<(), ToolError> {
    let home = home.display().to_string();
    run(&tool("usermod"), &["--home", &home, user]).map(|_| ())
}

/// How git runs for podspawn: never prompting (no terminal to answer on), with no
/// hooks or external transports, whatever the repo or the machine's config says.
fn git(args: &[&str], timeout: std::time::Duration) -> Result<String, ToolError> {
    let mut argv = vec![
        "-c",
        "protocol.ext.allow=never",
        "-c",
        "protocol.fd.allow=never",
        "-c",
        "core.hooksPath=/dev/null",
        "-c",
        "core.fsmonitor=false",
        "-c",
        "advice.detachedHead=false",
    ];
    argv.extend(args);
    run_for(
        &tool("git"),
        &argv,
        &[
            ("GIT_TERMINAL_PROMPT", "0"),
            // No shared ssh master left behind holding our pipes open.
            (
                "GIT_SSH_COMMAND",
                "ssh -o BatchMode=yes -o ControlMaster=no -o ControlPath=none",
            ),
            ("GIT_LFS_SKIP_SMUDGE", "1"),
        ],
        timeout,
    )
}

/// Clones `repo` (a URL or a local path) into `dir`, at `branch` or the default one.
pub fn git_clone(
    repo: &str,
    branch: Option<&str>,
    dir: &Path,
    timeout: std::time::Duration,
) -> Result<(), ToolError> {
    let dir = dir.display().to_string();
    let mut args = vec!["clone", "--quiet", "--no-recurse-submodules"];
    if let Some(branch) = branch {
        args.extend(["--branch", branch]);
    }
    args.extend(["--", repo, &dir]);
    git(&args, timeout).map(|_| ())
}

/// Brings the checkout in `dir` to the newest commit of `branch` on its origin,
/// dropping anything else in the tree.
pub fn git_update(dir: &Path, branch: &str, timeout: std::time::Duration) -> Result<(), ToolError> {
    let dir = dir.display().to_string();
    git(
        &["-C", &dir, "fetch", "--quiet", "origin", "--", branch],
        timeout,
    )?;
    git(
        &["-C", &dir, "reset", "--quiet", "--hard", "FETCH_HEAD"],
        timeout,
    )?;
    git(&["-C", &dir, "clean", "-ffdxq"], timeout).map(|_| ())
}

/// Puts the checkout in `dir` back at `commit`, dropping anything else in the tree.
pub fn git_reset(dir: &Path, commit: &str, timeout: std::time::Duration) -> Result<(), ToolError> {
    let dir = dir.display().to_string();
    git(&["-C", &dir, "reset", "--quiet", "--hard", commit], timeout)?;
    git(&["-C", &dir, "clean", "-ffdxq"], timeout).map(|_| ())
}

/// Every file of the commit checked out in `dir`, as `git ls-tree -r -z` lists them:
/// `MODE TYPE OBJECT<TAB>PATH`, each ended by a NUL.
pub fn git_files(dir: &Path) -> Result<String, ToolError> {
    let dir = dir.display().to_string();
    let timeout = std::time::Duration::from_secs(60);
    git(
        &["-C", &dir, "ls-tree", "-r", "-z", "--full-tree", "HEAD"],
        timeout,
    )
}

/// The commit the checkout in `dir` is at, and its branch.
pub fn git_head(dir: &Path) -> Result<(String, String), ToolError> {
    let dir = dir.display().to_string();
    let timeout = std::time::Duration::from_secs(30);
    let commit = git(&["-C", &dir, "rev-parse", "HEAD"], timeout)?;
    let branch = git(&["-C", &dir, "rev-parse", "--abbrev-ref", "HEAD"], timeout)?;
    Ok((commit.trim().to_string(), branch.trim().to_string()))
}

/// Like `run`, with extra environment, and killed after `timeout`.
fn run_for(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Result<String, ToolError> {
    run_both(program, args, env, timeout).map(|(stdout, _)| stdout)
}

/// `run_for`, giving what the tool said on stdout and on stderr when it succeeds.
fn run_both(
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: std::time::Duration,
) -> Result<(String, String), ToolError> {
    let argv: Vec<String> = std::iter::once(program.to_string())
        .chain(args.iter().map(|arg| arg.to_string()))
        .collect();
    let failure = |detail: String| ToolError {
        argv: argv.clone(),
        detail,
        code: None,
    };
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().copied());
    let Some((status, stdout, stderr)) = crate::process::output_within(&mut command, timeout)
        .map_err(|err| failure(err.to_string()))?
    else {
        return Err(failure(format!(
            "did not finish within {}s",
            timeout.as_secs()
        )));
    };
    if status.success() {
        return Ok((
            String::from_utf8_lossy(&stdout).into_owned(),
            String::from_utf8_lossy(&stderr).into_owned(),
        ));
    }
    let stderr = String::from_utf8_lossy(&stderr)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut failed = failure(if stderr.is_empty() {
        status.to_string()
    } else {
        stderr
    });
    failed.code = status.code();
    Err(failed)
}

/// `iptables ARGS` (the host's, iptables-nft or legacy: whichever Docker uses).
pub fn iptables(args: &[&str]) -> Result<String, ToolError> {
    run_for(&tool("iptables"), args, &[], IPTABLES_TIMEOUT)
}

/// How long one iptables call may take (it may wait for the xtables lock).
const IPTABLES_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the ssh client reads `config` without complaint (`ssh -G -F CONFIG`, for
/// a host no `.pod` block matches, so no `Match exec` of podspawn's runs).
/// `Ok(false)`: there is no ssh client to ask.
pub fn ssh_reads(config: &Path) -> Result<bool, ToolError> {
    let ssh = tool("ssh");
    if !Path::new(&ssh).is_file() {
        return Ok(false);
    }
    let config = config.display().to_string();
    run_for(
        &ssh,
        &["-G", "-F", &config, "podspawn-setup-check.invalid"],
        &[],
        SSH_TIMEOUT,
    )?;
    Ok(true)
}

/// The ssh client's version line (`OpenSSH_9.2p1 …`), if there is a client.
pub fn ssh_version() -> Option<String> {
    let (_, said) = run_both(&tool("ssh"), &["-V"], &[], SSH_TIMEOUT).ok()?;
    let text = said.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// How long the ssh client may take to print its version or its options.
const SSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The options ssh would use for `host` (`ssh -G HOST`, or `-F CONFIG`), as (keyword,
/// value) lines in lower case: what the user's own config and podspawn's block make
/// of it. It runs the block's `Match exec` for a `.pod` name, as a connection would.
pub fn ssh_options(host: &str, config: Option<&Path>) -> Result<Vec<(String, String)>, ToolError> {
    let config = config.map(|path| path.display().to_string());
    let mut args = vec!["-G"];
    if let Some(config) = &config {
        args.extend(["-F", config]);
    }
    args.extend(["--", host]);
    let dump = run_for(&tool("ssh"), &args, &[], SSH_TIMEOUT)?;
    Ok(dump
        .lines()
        .filter_map(|line| line.split_once(' '))
        .map(|(key, value)| (key.to_ascii_lowercase(), value.to_string()))
        .collect())
}

/// The addresses of host name `host`, in the order the system's resolver gives them,
/// as `getent ahosts` finds them: through the host's own NSS set-up (files, DNS,
/// mDNS, systemd-resolved), which a statically linked podspawn must not load into
/// itself. The error is one plain phrase.
pub fn resolve_host(
    host: &str,
    timeout: std::time::Duration,
) -> Result<Vec<std::net::IpAddr>, String> {
    let output =
        run_for(&tool("getent"), &["ahosts", "--", host], &[], timeout).map_err(|err| {
            // getent's own word for "no such key" is its exit status 2, and silence.
            if err.detail == "exit status: 2" {
                "no such host".to_string()
            } else {
                err.to_string()
            }
        })?;
    let mut addresses = Vec::new();
    for line in output.lines() {
        let Some(address) = line.split_whitespace().next() else {
            continue;
        };
        if let Ok(address) = address.parse::<std::net::IpAddr>()
            && !addresses.contains(&address)
        {
            addresses.push(address);
        }
    }
    if addresses.is_empty() {
        return Err("no address".to_string());
    }
    Ok(addresses)
}

/// Deletes an account (its shared home stays: it is not the account's).
pub fn userdel(user: &str) -> Result<(), ToolError> {
    run(&tool("userdel"), &[user]).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_tool_that_leaves_a_process_holding_its_pipes_does_not_hang_us() {
        let started = Instant::now();
        let said = run_for(
            "/bin/sh",
            &["-c", "sleep 30 & echo hi"],
            &[],
            Duration::from_secs(20),
        );
        assert_eq!(said.unwrap(), "hi\n");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn at_the_deadline_the_tool_and_what_it_started_are_killed() {
        let marker = std::env::temp_dir().join(format!("podspawn-run-for-{}", std::process::id()));
        let script = format!("(sleep 2; touch {}) & wait", marker.display());
        let started = Instant::now();
        let err =
            run_for("/bin/sh", &["-c", &script], &[], Duration::from_millis(300)).unwrap_err();
        assert!(err.detail.contains("did not finish"), "{}", err.detail);
        assert!(started.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_secs(3));
        assert!(!marker.exists(), "the tool's child outlived the deadline");
    }
}
