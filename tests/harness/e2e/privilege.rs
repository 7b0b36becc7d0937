//! The privilege model end to end, as a registered (non-root) user of a server set
//! up by server-setup, through the installed root:docker 2755 binary: the user is
//! not in the docker group and cannot reach the engine, and nothing they control
//! (config, DOCKER_HOST, PATH, HOME, ~/.docker) changes what podspawn runs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use super::{Account, Server};

/// A directory of the user's own, for files they control.
fn own_dir(server: &Server, account: &Account) -> PathBuf {
    let dir = server.root.join(format!("own-{}", account.name));
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(account.uid), None).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// An executable script at `path` that leaves `marker` behind if it ever runs.
fn trap(path: &Path, marker: &Path) {
    fs::write(
        path,
        format!("#!/bin/sh\ntouch {}\nexit 1\n", marker.display()),
    )
    .unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `program` as the account (its own groups, as a login gives them).
pub fn as_user(account: &Account, program: &Path, args: &[&str], env: &[(&str, String)]) -> Output {
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/");
    for (key, value) in env {
        command.env(key, value);
    }
    let name = std::ffi::CString::new(account.name.as_str()).unwrap();
    let uid = account.uid;
    unsafe {
        command.pre_exec(move || {
            let entry = libc::getpwnam(name.as_ptr());
            if entry.is_null() {
                return Err(std::io::Error::other("no account"));
            }
            let gid = (*entry).pw_gid;
            if libc::initgroups(name.as_ptr(), gid) != 0
                || libc::setgid(gid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.stdin(Stdio::null()).output().unwrap()
}

#[test]
fn a_user_cannot_reach_the_engine_directly() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let groups =
        String::from_utf8_lossy(&as_user(user, Path::new("/usr/bin/id"), &["-Gn"], &[]).stdout)
            .to_string();
    assert!(
        !groups.split_whitespace().any(|group| group == "docker"),
        "in docker: {groups}"
    );
    assert!(
        groups.split_whitespace().any(|group| group == server.group),
        "not in {}: {groups}",
        server.group
    );
    let docker = as_user(user, Path::new("/usr/bin/docker"), &["ps"], &[]);
    assert!(!docker.status.success());
    assert!(
        String::from_utf8_lossy(&docker.stderr).contains("permission denied"),
        "{}",
        server.explain(&docker)
    );
}

#[test]
fn what_the_user_controls_changes_nothing_spawn_runs() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let own = own_dir(&server, user);
    let marker = own.join("trapped");
    // A config of the user's naming their own "docker", their own docker on PATH, a
    // credential helper and a CLI plugin in their ~/.docker.
    trap(&own.join("docker"), &marker);
    trap(&own.join("docker-credential-evil"), &marker);
    fs::create_dir_all(own.join(".docker/cli-plugins")).unwrap();
    trap(&own.join(".docker/cli-plugins/docker-exec"), &marker);
    fs::write(
        own.join(".docker/config.json"),
        format!(
            "{{\"credsStore\": \"evil\", \"cliPluginsExtraDirs\": [\"{0}\"], \"currentContext\": \"evil\"}}",
            own.display()
        ),
    )
    .unwrap();
    let evil_config = own.join("config.yaml");
    // Everything a spawn needs, so that a podspawn which read it would go as far as
    // running the user's "docker".
    fs::write(
        &evil_config,
        format!(
            "auth:\n  key_dir: {keys}\ndocker:\n  binary: {docker}\n\
             state:\n  db_path: {own}/state.db\n  lock_dir: {own}/locks\n  agent_dir: {own}/agents\n",
            keys = server.root.join("keys").display(),
            docker = own.join("docker").display(),
            own = own.display(),
        ),
    )
    .unwrap();
    for path in [
        &own,
        &own.join(".docker"),
        &own.join(".docker/cli-plugins"),
        &evil_config,
    ] {
        std::os::unix::fs::chown(path, Some(user.uid), None).unwrap();
    }

    let binary = server.root.join("bin/podspawn");
    let config = server.root.join("config.yaml").display().to_string();
    let command = (
        "SSH_ORIGINAL_COMMAND",
        "echo inside $(hostname)".to_string(),
    );

    // A config of the user's is not read: spawn falls back to the default place
    // (which does not know this test's user) and runs nothing of theirs.
    let evil = evil_config.display().to_string();
    for (what, argv, env) in [
        (
            "PODSPAWN_CONFIG",
            vec!["spawn", "--user", &user.name],
            vec![("PODSPAWN_CONFIG", evil.clone()), command.clone()],
        ),
        (
            "--config",
            vec!["--config", &evil, "spawn", "--user", &user.name],
            vec![command.clone()],
        ),
    ] {
        let output = as_user(user, &binary, &argv, &env);
        assert_eq!(
            output.status.code(),
            Some(125),
            "{what}: {}",
            server.explain(&output)
        );
        assert!(
            output.stdout.is_empty(),
            "{what}: {}",
            server.explain(&output)
        );
        assert!(
            !marker.exists(),
            "{what}: the user's own docker ran with the docker group"
        );
    }

    // With the real config, the user's environment changes nothing either.
    let env = vec![
        ("DOCKER_HOST", "tcp://127.0.0.1:9".to_string()),
        ("PATH", format!("{}:/usr/bin:/bin", own.display())),
        ("HOME", own.display().to_string()),
        ("DOCKER_CONFIG", own.join(".docker").display().to_string()),
        ("DOCKER_CONTEXT", "evil".to_string()),
        command,
    ];
    let output = as_user(
        user,
        &binary,
        &["--config", &config, "spawn", "--user", &user.name],
        &env,
    );
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("inside {}\n", user.container()),
        "{}",
        server.explain(&output)
    );
    assert!(
        !marker.exists(),
        "a program of the user's ran with the docker group"
    );
}

#[test]
fn admin_commands_refuse_a_user() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let binary = server.root.join("bin/podspawn");
    let config = server.root.join("config.yaml").display().to_string();
    let sshd_config = server.root.join("sshd_config").display().to_string();
    let key = user.key.with_extension("pub").display().to_string();
    for args in [
        vec!["list"],
        vec!["cleanup"],
        vec!["add-user", "mallory", "--key-file", &key],
        vec!["remove-user", &user.name],
        vec!["server-setup", "--sshd-config", &sshd_config],
    ] {
        let mut argv = vec!["--config", &config];
        argv.extend(args.iter().copied());
        let output = as_user(user, &binary, &argv, &[]);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{args:?}: {}",
            server.explain(&output)
        );
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("must run as root"),
            "{args:?}: {}",
            server.explain(&output)
        );
    }
    assert!(
        !fs::read_to_string("/etc/passwd")
            .unwrap()
            .lines()
            .any(|line| line.starts_with("mallory:"))
    );
}

/// An account that existed before podspawn (a password, its own authorized_keys)
/// logs in, once registered, only with podspawn's keys and only into its container:
/// its password or its own key would give it a shell on the host, where nothing of
/// podspawn's restrictions applies.
#[test]
fn a_registered_existing_account_gets_only_its_container() {
    let server = crate::server_or_skip!("60s", 0);
    let name = server.account_name("legacy");
    let own_key = server.plain_account(&name);
    let password = "Legacy-pw-4711";
    server.set_password(&own_key, password);
    let host = String::from_utf8(Command::new("hostname").output().unwrap().stdout).unwrap();
    // Before: both of its own ways in reach the host (so the test can tell).
    let before = server.run(&own_key, "hostname");
    assert_eq!(
        String::from_utf8_lossy(&before.stdout),
        host,
        "{}",
        server.explain(&before)
    );
    let before = server.run_with_password(&name, password, "hostname");
    assert_eq!(
        String::from_utf8_lossy(&before.stdout),
        host,
        "{}",
        server.explain(&before)
    );

    let (registered, added) = server.add_user(&name);
    let said = String::from_utf8_lossy(&added.stdout).to_string();
    assert!(
        said.contains("only with podspawn's keys, into its container"),
        "add-user did not say what changes for {name}:\n{said}"
    );

    for (how, output) in [
        ("its own key", server.run(&own_key, "hostname")),
        (
            "its password",
            server.run_with_password(&name, password, "hostname"),
        ),
    ] {
        assert_eq!(
            output.status.code(),
            Some(255),
            "{how}: {}",
            server.explain(&output)
        );
        assert!(
            output.stdout.is_empty(),
            "{how}: {}",
            server.explain(&output)
        );
    }
    let inside = server.run(&registered, "hostname");
    assert_eq!(
        String::from_utf8_lossy(&inside.stdout),
        format!("{}\n", registered.container()),
        "{}",
        server.explain(&inside)
    );
}
