//! auth-keys as sshd runs it: keys for registered users, nothing (and exit 0) for
//! everyone and everything else, and never a docker call, a database or the network.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use crate::support::{
    ECDSA, ED25519, ED25519_OTHER, NOBODY, PODSPAWN, TestEnv, binary_for_others, body, is_root,
};

fn forced(env: &TestEnv, user: &str, key: &str) -> String {
    forced_by(env, &fs::canonicalize(PODSPAWN).unwrap(), user, key)
}

/// The line auth-keys prints, run from the binary at `exe`, for a user without a
/// Unix account (whose address cannot be known: no TCP forwarding at all).
/// The config is not at its default place, so the forced command names it.
fn forced_by(env: &TestEnv, exe: &std::path::Path, user: &str, key: &str) -> String {
    format!(
        "command=\"{} --config {} spawn --user {user}\",restrict,pty,agent-forwarding,X11-forwarding {key}\n",
        exe.display(),
        env.config_path().display()
    )
}

fn registered(env: &TestEnv, user: &str, keys: &[&str]) {
    let mut args = vec!["add-user", user];
    for key in keys {
        args.extend(["--key", key]);
    }
    env.podspawn(&args).assert_success();
}

#[test]
fn addresses_two_registered_users_would_share_are_neither_users() {
    // daemon (uid 1) and www-data (uid 33), as base-passwd makes them everywhere,
    // share a block of a services pool of 16 blocks (a /21), not of network.pool.
    let env = TestEnv::new();
    let config = fs::read_to_string(env.config_path()).unwrap();
    env.write_config_text(&format!(
        "{config}network:\n  services_pool: 10.215.0.0/21\nsession:\n  max_per_user: 2\n"
    ));
    env.write_key_file("daemon", &format!("{ED25519}\n"));
    let alone = env
        .podspawn(&["auth-keys", "daemon"])
        .assert_success()
        .stdout();
    assert_eq!(alone.matches("permitopen=").count(), 2 + 5, "{alone}");
    // The second one written by hand (add-user would refuse it): the services'
    // addresses go from both users' key lines, their own networks' stay.
    env.write_key_file("www-data", &format!("{ED25519_OTHER}\n"));
    for user in ["daemon", "www-data"] {
        let lines = env.podspawn(&["auth-keys", user]).assert_success().stdout();
        assert_eq!(lines.matches("permitopen=").count(), 2, "{lines}");
        assert!(!lines.contains("permitopen=\"10.215."), "{lines}");
    }
    let log = fs::read_to_string(env.log_path()).unwrap_or_default();
    assert!(
        log.contains("daemon and www-data share a block of network.services_pool 10.215.0.0/21"),
        "{log}"
    );
}

#[test]
fn a_registered_user_gets_one_forced_command_line_per_key() {
    let env = TestEnv::new();
    registered(&env, "alice", &[ED25519, ECDSA]);
    env.podspawn(&["auth-keys", "alice"])
        .assert_success()
        .assert_stderr("")
        .assert_stdout(&(forced(&env, "alice", ED25519) + &forced(&env, "alice", ECDSA)));
}

#[test]
fn forwarding_is_allowed_only_to_the_users_own_containers() {
    // `nobody` (uid 65534) has an account on every machine: slot 65534 % 4096 = 4094
    // of 10.214.0.0/16 is 10.214.255.224/28, the containers .226 to .230 (one per
    // session the user may hold, `session.max_per_user` = 5); block 65534 % 512 = 510
    // of 10.215.0.0/16 is 10.215.255.0/25, a /29 per session slot for the private
    // networks of sessions with services: the container's .2 and the services' .3
    // to .6 of each slot but the default session's (0), which has no services.
    let env = TestEnv::new();
    // add-user makes the network of a user with an account.
    env.scenario(&[crate::support::Rule::docker(&["network", "create", "**"])]);
    registered(&env, "nobody", &[ED25519]);
    let exe = fs::canonicalize(PODSPAWN).unwrap();
    env.podspawn(&["auth-keys", "nobody"])
        .assert_success()
        .assert_stdout(&format!(
            "command=\"{} --config {} spawn --user nobody\",restrict,pty,agent-forwarding,\
             port-forwarding,X11-forwarding,permitopen=\"10.214.255.226:*\",\
             permitopen=\"10.214.255.227:*\",permitopen=\"10.214.255.228:*\",\
             permitopen=\"10.214.255.229:*\",permitopen=\"10.214.255.230:*\",{services} {ED25519}\n",
            exe.display(),
            env.config_path().display(),
            services = (1..5)
                .flat_map(|slot| (2..=6).map(move |last| 8 * slot + last))
                .map(|last| format!("permitopen=\"10.215.255.{last}:*\""))
                .collect::<Vec<_>>()
                .join(",")
        ));
    // The pool is the config's.
    let config = fs::read_to_string(env.config_path()).unwrap();
    env.write_config_text(&format!(
        "{config}network:\n  pool: 172.30.0.0/20\nsession:\n  max_per_user: 1\n"
    ));
    let stdout = env
        .podspawn(&["auth-keys", "nobody"])
        .assert_success()
        .stdout();
    assert_eq!(stdout.matches("permitopen=").count(), 1, "{stdout}");
    assert!(
        stdout.contains(",permitopen=\"172.30.15.226:*\" "),
        "{stdout}"
    );
}

#[test]
fn the_config_can_be_named_on_the_command_line() {
    // As sshd runs it: a clean environment, the config named by --config.
    let env = TestEnv::new();
    registered(&env, "alice", &[ED25519]);
    let config = env.config_path().display().to_string();
    let run = env
        .invoke(&["--config", &config, "auth-keys", "alice"])
        .var("PODSPAWN_CONFIG", "")
        .run();
    run.assert_success()
        .assert_stdout(&forced(&env, "alice", ED25519));
}

#[test]
fn with_the_offered_key_only_that_key_is_printed() {
    let env = TestEnv::new();
    registered(&env, "alice", &[ED25519, ECDSA]);
    env.podspawn(&["auth-keys", "alice", "ecdsa-sha2-nistp256", body(ECDSA)])
        .assert_success()
        .assert_stdout(&forced(&env, "alice", ECDSA));
    env.podspawn(&["auth-keys", "alice", "ssh-ed25519", body(ED25519_OTHER)])
        .assert_success()
        .assert_stdout("");
}

#[test]
fn an_unregistered_user_gets_nothing_and_exit_0() {
    let env = TestEnv::new();
    registered(&env, "alice", &[ED25519]);
    env.podspawn(&["auth-keys", "bob", "ssh-ed25519", body(ED25519)])
        .assert_success()
        .assert_stdout("")
        .assert_stderr("");
}

#[test]
fn hostile_user_names_get_nothing_and_exit_0() {
    let env = TestEnv::new();
    registered(&env, "alice", &[ED25519]);
    // A file an unchecked name could reach from the key dir.
    fs::write(env.path("etc/passwd"), format!("{ED25519}\n")).unwrap();
    let long = "a".repeat(200);
    for name in [
        "../etc/passwd",
        "alice/../alice",
        "root/x",
        "-o",
        "--help",
        "",
        &long,
        "ålice",
        "ALICE",
        "root",
        "alice\n",
        ".",
        "..",
    ] {
        env.podspawn(&["auth-keys", name, "ssh-ed25519", body(ED25519)])
            .assert_success()
            .assert_stdout("")
            .assert_stderr("");
    }
}

#[test]
fn malformed_lines_are_skipped_and_logged_and_the_rest_still_work() {
    let env = TestEnv::new();
    env.write_key_file(
        "alice",
        &format!(
            "# alice's keys\n{ED25519}\ncommand=\"/bin/sh\" {ED25519_OTHER}\nssh-ed25519 not-base64!\n\n{ECDSA}\r\n"
        ),
    );
    env.podspawn(&["auth-keys", "alice"])
        .assert_success()
        .assert_stderr("")
        .assert_stdout(&(forced(&env, "alice", ED25519) + &forced(&env, "alice", ECDSA)));
    let log = fs::read_to_string(env.log_path()).unwrap();
    assert!(
        log.contains("line 3: skipped: the key line carries authorized_keys options"),
        "{log}"
    );
    assert!(
        log.contains("line 4: skipped: the key body is not valid base64"),
        "{log}"
    );
}

#[test]
fn a_key_file_others_could_write_is_not_trusted() {
    let env = TestEnv::new();
    registered(&env, "alice", &[ED25519]);
    fs::set_permissions(env.key_file("alice"), fs::Permissions::from_mode(0o666)).unwrap();
    env.podspawn(&["auth-keys", "alice"])
        .assert_success()
        .assert_stdout("");
    let log = fs::read_to_string(env.log_path()).unwrap();
    assert!(log.contains("writable by group or others"), "{log}");
}

#[test]
fn a_key_file_that_is_a_directory_or_a_link_gives_nothing() {
    let env = TestEnv::new();
    fs::create_dir(env.key_file("alice")).unwrap();
    env.write_key_file("target", &format!("{ED25519}\n"));
    std::os::unix::fs::symlink(env.key_file("target"), env.key_file("bob")).unwrap();
    for user in ["alice", "bob"] {
        env.podspawn(&["auth-keys", user])
            .assert_success()
            .assert_stdout("")
            .assert_stderr("");
    }
    let log = fs::read_to_string(env.log_path()).unwrap();
    assert!(log.contains("is not a regular file"), "{log}");
    assert!(log.contains("symbolic link"), "{log}");
}

#[test]
fn runs_as_nobody_and_an_unreadable_key_file_gives_nothing() {
    let env = TestEnv::new();
    registered(&env, "alice", &[ED25519]);
    registered(&env, "bob", &[ECDSA]);
    if !is_root() {
        return crate::support::skip("auth-keys as nobody", "not root");
    }
    // The log file is root's: as nobody, auth-keys falls back to syslog.
    env.podspawn_as(NOBODY, NOBODY, &["auth-keys", "alice"])
        .assert_success()
        .assert_stderr("")
        .assert_stdout(&forced_by(&env, &binary_for_others(), "alice", ED25519));
    fs::set_permissions(env.key_file("bob"), fs::Permissions::from_mode(0o600)).unwrap();
    env.podspawn_as(NOBODY, NOBODY, &["auth-keys", "bob"])
        .assert_success()
        .assert_stdout("")
        .assert_stderr("");
}

#[test]
fn never_runs_docker_or_curl_nor_opens_the_database() {
    let env = TestEnv::new();
    env.fake_program("curl");
    registered(&env, "alice", &[ED25519]);
    for args in [
        &["auth-keys", "alice"][..],
        &["auth-keys", "alice", "ssh-ed25519", body(ED25519)],
        &["auth-keys", "nobody-here"],
        &["auth-keys", "../x"],
    ] {
        env.podspawn(args).assert_success();
    }
    let calls = env.calls();
    assert!(calls.is_empty(), "auth-keys ran {calls:?}");
    let state: Vec<_> = fs::read_dir(env.path("state")).unwrap().collect();
    assert!(state.is_empty(), "auth-keys created {state:?}");
}

#[test]
fn writes_only_key_lines_to_stdout_even_at_trace_level() {
    let env = TestEnv::new();
    env.write_config_text(&format!(
        "auth:\n  key_dir: {}\nlog:\n  level: trace\n",
        env.key_dir().display()
    ));
    env.write_key_file("alice", &format!("{ED25519}\nbroken line\n"));
    env.podspawn(&["auth-keys", "alice"])
        .assert_success()
        .assert_stderr("")
        .assert_stdout(&forced(&env, "alice", ED25519));
}
