//! `podspawn doctor` on a laptop: the ssh client, podspawn's block in
//! `~/.ssh/config`, the client config, and each server it names — as what
//! `ssh USER@NAME.pod` needs, with the fix for each thing that is not there.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use super::{Mark, Report};
use crate::client::config::{ClientConfig, SSH_PORT};
use crate::client::ssh_config::{self, Added};
use crate::client::{self, ClientPaths, SshConfigFile};
use crate::error::Error;
use crate::system;

/// The oldest OpenSSH client with `SetEnv` (7.8); `Match exec` and `Include` are older.
const OLDEST_SSH: (u32, u32) = (7, 8);

/// How long a server has to show its SSH banner.
const BANNER_TIMEOUT: Duration = Duration::from_secs(5);

/// `server_config`: the server config that was looked for and not found, if that
/// is why this machine is taken for a laptop.
pub(super) fn doctor(server_config: Option<&Path>) -> Result<(), Error> {
    let mut report = Report::default();
    if let Some(path) = server_config {
        report.line(
            Mark::Info,
            &format!(
                "no server config at {}: checking this machine as a laptop (--server checks a server)",
                path.display()
            ),
            None,
        );
    }
    let paths = ClientPaths::from_env()?;
    check_ssh(&mut report);
    check_block(&mut report, &paths);
    if let Some(config) = check_config_and_servers(&mut report, &paths) {
        check_what_ssh_does(&mut report, &paths, &config);
    }
    if report.bad > 0 {
        return Err(Error::Refused(format!("{} problem(s) found", report.bad)));
    }
    Ok(())
}

/// `OpenSSH_9.2p1 Debian-2, OpenSSL …` → (9, 2).
fn openssh_version(line: &str) -> Option<(u32, u32)> {
    let version = line.strip_prefix("OpenSSH_")?;
    let (major, rest) = version.split_once('.')?;
    let minor: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((major.parse().ok()?, minor.parse().ok()?))
}

fn check_ssh(report: &mut Report) {
    match system::ssh_version() {
        None => report.line(
            Mark::Bad,
            "no ssh client found",
            Some("install OpenSSH's client (Debian/Ubuntu: openssh-client)".into()),
        ),
        Some(line) => match openssh_version(&line) {
            Some(version) if version >= OLDEST_SSH => {
                report.line(Mark::Good, &format!("ssh client: {line}"), None)
            }
            Some(_) => report.line(
                Mark::Bad,
                &format!("ssh client: {line}, older than OpenSSH 7.8 (no SetEnv)"),
                Some("upgrade OpenSSH's client".into()),
            ),
            None => report.line(
                Mark::Warn,
                &format!("ssh client: {line}, not OpenSSH: the .pod block is OpenSSH's syntax"),
                None,
            ),
        },
    }
}

fn check_block(report: &mut Report, paths: &ClientPaths) {
    let file = match SshConfigFile::read(paths) {
        Ok(file) => file,
        Err(err) => {
            report.line(Mark::Bad, &err.to_string(), Some("podspawn setup".into()));
            return;
        }
    };
    let path = file.path;
    let Some(text) = file.original else {
        report.line(
            Mark::Bad,
            &format!(
                "{} has no podspawn block: .pod names go nowhere",
                path.display()
            ),
            Some("podspawn setup".into()),
        );
        return;
    };
    let binary = client::own_binary().unwrap_or_default();
    let made = ssh_config::made_by_setup(&text).unwrap_or(false);
    let expected = ssh_config::block(&binary, &paths.hosts_dir(), made);
    match expected.map(|block| ssh_config::add(&text, &block)) {
        Ok(Ok(Added::Unchanged)) => report.line(
            Mark::Good,
            &format!(
                "{} has podspawn's block, running {}",
                path.display(),
                binary.display()
            ),
            None,
        ),
        Ok(Ok(Added::Inserted(_))) => report.line(
            Mark::Bad,
            &format!("{} has no podspawn block: .pod names go nowhere", path.display()),
            Some("podspawn setup".into()),
        ),
        Ok(Ok(Added::Replaced(_))) => report.line(
            Mark::Warn,
            &format!(
                "{}'s podspawn block is not what this podspawn ({}) writes: another binary's, or an older one",
                path.display(),
                binary.display()
            ),
            Some("podspawn setup (with the podspawn you mean to use)".into()),
        ),
        Ok(Err(problem)) | Err(problem) => report.line(
            Mark::Bad,
            &format!("{}: {problem}", path.display()),
            Some("fix the podspawn lines by hand, then podspawn setup".into()),
        ),
    }
    match system::ssh_reads(&path) {
        Ok(true) => report.line(Mark::Good, "ssh reads it", None),
        Ok(false) => {}
        Err(err) => report.line(
            Mark::Bad,
            &format!("ssh cannot read {}: {}", path.display(), err.detail),
            Some(format!("fix {}", path.display())),
        ),
    }
}

/// The client config, when there is one that names a server.
fn check_config_and_servers(report: &mut Report, paths: &ClientPaths) -> Option<ClientConfig> {
    let config_path = paths.config();
    let loaded = match paths.load_config() {
        Ok(Some(loaded)) => loaded,
        Ok(None) => {
            report.line(
                Mark::Bad,
                &format!("{} does not exist", config_path.display()),
                Some(format!(
                    "write `servers: {{default: HOST}}` (HOST or HOST:PORT) to {}",
                    config_path.display()
                )),
            );
            return None;
        }
        Err(err) => {
            report.line(Mark::Bad, &err.to_string(), Some("fix that line".into()));
            return None;
        }
    };
    let servers = loaded.all_servers();
    if servers.is_empty() {
        report.line(
            Mark::Bad,
            &format!("{} names no server", config_path.display()),
            Some("set servers.default (HOST or HOST:PORT)".into()),
        );
        return None;
    }
    report.line(
        Mark::Good,
        &format!("{} reads well", config_path.display()),
        None,
    );
    if loaded.servers.default.is_none() {
        report.line(
            Mark::Info,
            "no servers.default: only the mapped names go anywhere",
            None,
        );
    }
    for (server, chosen) in servers {
        let port = server.port_or(SSH_PORT);
        let shown = format!("{server} ({chosen})");
        match client::dial(&server.host, port, &chosen.to_string()).map(banner) {
            Ok(Some(banner)) => {
                report.line(Mark::Good, &format!("{shown} answers: {banner}"), None)
            }
            Ok(None) => report.line(
                Mark::Bad,
                &format!("{shown} answers, but not as an SSH server"),
                Some(format!("check the host and port of {chosen}")),
            ),
            Err(err) => report.line(
                Mark::Bad,
                &err.to_string(),
                Some(format!(
                    "check {chosen} in {}, and that the server's sshd runs",
                    config_path.display()
                )),
            ),
        }
    }
    Some(loaded)
}

/// Names the probe gives ssh: made up (scratch environments) when there is a
/// default server, else the mapped ones.
fn probe_names(config: &ClientConfig) -> Vec<String> {
    match config.servers.default {
        Some(_) => vec!["podspawn-doctor-a".into(), "podspawn-doctor-b".into()],
        None => config
            .servers
            .mappings
            .keys()
            .take(2)
            .map(ToString::to_string)
            .collect(),
    }
}

/// What ssh itself makes of `NAME.pod` (`ssh -G`, reading the config of the account's
/// passwd home, as every connection does): podspawn's ProxyCommand, and the project
/// in `SetEnv` — OpenSSH takes the first `SetEnv` line that applies, so one of the
/// user's own above podspawn's block (or `-o SetEnv` on a command line) drops it —
/// and one ControlPath per name, or a second name joins the first one's connection.
fn check_what_ssh_does(report: &mut Report, paths: &ClientPaths, config: &ClientConfig) {
    // ssh reads the config of the account's home in /etc/passwd, whatever HOME says.
    let passwd_home = crate::accounts::caller().ok().map(|account| account.home);
    let elsewhere = passwd_home.filter(|home| Path::new(home) != paths.home);
    if let Some(home) = &elsewhere {
        report.line(
            Mark::Warn,
            &format!(
                "HOME is {}, but ssh reads {home}/.ssh/config (the account's home): only \
                 `ssh -F {}` sees podspawn's block",
                paths.home.display(),
                paths.ssh_config().display()
            ),
            Some(format!("podspawn setup with HOME={home}")),
        );
    }
    let ssh_config = paths.ssh_config();
    let read_as = elsewhere.as_ref().map(|_| ssh_config.as_path());
    let mut control_paths = Vec::new();
    for name in probe_names(config) {
        let host = format!("{name}.pod");
        let options = system::ssh_options(&host, read_as);
        let _ = std::fs::remove_file(
            paths
                .hosts_dir()
                .join(format!("{host}{}", ssh_config::HOST_FILE_SUFFIX)),
        );
        let options = match options {
            Ok(options) => options,
            Err(err) => {
                report.line(Mark::Bad, &format!("ssh -G {host}: {}", err.detail), None);
                return;
            }
        };
        let option = |key: &str| {
            options
                .iter()
                .find(|(found, _)| found == key)
                .map(|(_, value)| value.as_str())
                .unwrap_or("")
        };
        let wanted = format!("PODSPAWN_PROJECT={name}");
        if !option("proxycommand").contains(" connect ") {
            report.line(
                Mark::Bad,
                &format!("ssh {host} does not go through podspawn"),
                Some("podspawn setup, as the account that runs ssh".into()),
            );
        } else if !option("setenv")
            .split_whitespace()
            .any(|pair| pair == wanted)
        {
            report.line(
                Mark::Bad,
                &format!(
                    "ssh {host} would not carry its project: ssh's SetEnv is {:?} (the first \
                     SetEnv line that applies wins)",
                    option("setenv")
                ),
                Some("keep podspawn's block above your own SetEnv lines".into()),
            );
        } else {
            report.line(
                Mark::Good,
                &format!("ssh {host} goes through podspawn with {wanted} (ssh -G)"),
                None,
            );
        }
        let control_path = option("controlpath").to_string();
        if control_path != "none" {
            control_paths.push(control_path);
        }
    }
    if control_paths.len() == 2 && control_paths[0] == control_paths[1] {
        report.line(
            Mark::Warn,
            &format!(
                "ssh shares one ControlPath ({}) among .pod names: a second name would join \
                 the first one's connection, in the first one's project",
                control_paths[0]
            ),
            Some("put %n, %h or %C into your ControlPath".into()),
        );
    }
}

/// The server's first line, if it is an SSH banner.
fn banner(mut stream: std::net::TcpStream) -> Option<String> {
    let _ = stream.set_read_timeout(Some(BANNER_TIMEOUT));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 255 {
        match stream.read(&mut byte) {
            Ok(1) if byte[0] == b'\n' => break,
            Ok(1) => line.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&line).trim_end().to_string();
    text.starts_with("SSH-")
        .then(|| crate::logging::one_safe_line(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openssh_versions_are_read_from_ssh_v() {
        assert_eq!(
            openssh_version("OpenSSH_9.2p1 Debian-2+deb12u3, OpenSSL 3.0.15 3 Sep 2024"),
            Some((9, 2))
        );
        assert_eq!(
            openssh_version("OpenSSH_7.4p1, OpenSSL 1.0.2k-fips"),
            Some((7, 4))
        );
        assert!(openssh_version("OpenSSH_7.4p1").unwrap() < OLDEST_SSH);
        assert_eq!(openssh_version("Dropbear v2022.83"), None);
    }
}
