//! add-user: keys from --key, --key-file and --github, checked before anything is
//! written, stored once, with explicit modes; bad input changes nothing.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use crate::support::{ECDSA, ED25519, ED25519_OTHER, HttpServer, NOBODY, TestEnv, is_root};

fn stored(env: &TestEnv, user: &str) -> Option<String> {
    fs::read_to_string(env.key_file(user)).ok()
}

#[test]
fn a_key_is_stored_with_explicit_modes() {
    let env = TestEnv::new();
    // A fresh server: the key dir does not exist yet.
    fs::remove_dir(env.key_dir()).unwrap();
    env.podspawn(&["add-user", "alice", "--key", ED25519])
        .assert_success()
        .assert_stdout("added 1 key(s) for alice\n");
    assert_eq!(stored(&env, "alice").unwrap(), format!("{ED25519}\n"));
    let file_mode = fs::metadata(env.key_file("alice")).unwrap().mode() & 0o7777;
    let dir_mode = fs::metadata(env.key_dir()).unwrap().mode() & 0o7777;
    assert_eq!((file_mode, dir_mode), (0o644, 0o755));
    assert!(env.calls().is_empty());
}

#[test]
fn adding_the_same_key_twice_adds_it_once() {
    let env = TestEnv::new();
    env.podspawn(&["add-user", "alice", "--key", ED25519])
        .assert_success();
    env.podspawn(&["add-user", "alice", "--key", ED25519, "--key", ED25519])
        .assert_success()
        .assert_stdout("added 0 key(s) for alice\n");
    env.podspawn(&[
        "add-user",
        "alice",
        "--key",
        ED25519_OTHER,
        "--key",
        ED25519,
    ])
    .assert_success()
    .assert_stdout("added 1 key(s) for alice\n");
    assert_eq!(
        stored(&env, "alice").unwrap(),
        format!("{ED25519}\n{ED25519_OTHER}\n")
    );
}

#[test]
fn a_key_file_with_several_keys_and_comments_is_imported() {
    let env = TestEnv::new();
    let file = env.path("home/team.pub");
    fs::write(&file, format!("# the team\n{ED25519}\n\n{ECDSA}\r\n")).unwrap();
    env.podspawn(&["add-user", "alice", "--key-file", file.to_str().unwrap()])
        .assert_success()
        .assert_stdout("added 2 key(s) for alice\n");
    assert_eq!(
        stored(&env, "alice").unwrap(),
        format!("{ED25519}\n{ECDSA}\n")
    );
}

#[test]
fn hostile_names_are_refused_and_nothing_is_written() {
    let env = TestEnv::new();
    let long = "a".repeat(200);
    let cases: &[(&str, &str)] = &[
        ("../etc", "contains '.'"),
        ("root/x", "contains '/'"),
        ("-o", "must start with a lower-case letter"),
        (&long, "200 characters long"),
        ("ålice", "contains 'å'"),
        ("", "user name is empty"),
        ("Alice", "contains 'A'"),
        ("root", "cannot be a podspawn user"),
    ];
    for (name, reason) in cases {
        // `--` so that "-o" reaches add-user as a name, as a script might pass it.
        env.podspawn(&["add-user", "--key", ED25519, "--", name])
            .assert_one_line_error(1, reason);
    }
    assert_eq!(fs::read_dir(env.key_dir()).unwrap().count(), 0);
    assert!(!env.path("etc/passwd").exists());
}

#[test]
fn bad_key_lines_are_refused_and_nothing_is_written() {
    let env = TestEnv::new();
    env.podspawn(&["add-user", "alice", "--key", ED25519])
        .assert_success();
    let before = stored(&env, "alice").unwrap();
    let cases: Vec<(String, &str)> = vec![
        (format!("no-pty {ECDSA}"), "carries authorized_keys options"),
        (
            format!("command=\"/bin/sh\" {ECDSA}"),
            "carries authorized_keys options",
        ),
        ("ssh-ed25519 AAAA".into(), "does not hold an SSH public key"),
        ("ssh-ed25519 @@@@".into(), "not valid base64"),
        ("ssh-foo AAAA".into(), "unknown key type"),
        ("".into(), "the key is empty"),
        ("-----BEGIN OPENSSH PRIVATE KEY-----".into(), "private key"),
    ];
    for (key, reason) in &cases {
        // A good key beside the bad one must not be stored either.
        env.podspawn(&["add-user", "alice", "--key", ED25519_OTHER, "--key", key])
            .assert_one_line_error(1, reason)
            .assert_stderr_contains("--key: ");
    }
    assert_eq!(stored(&env, "alice").unwrap(), before);
}

#[test]
fn a_bad_line_in_a_key_file_names_the_file_and_line() {
    let env = TestEnv::new();
    let file = env.path("home/keys.pub");
    fs::write(&file, format!("{ED25519}\nrestrict {ECDSA}\n")).unwrap();
    env.podspawn(&["add-user", "alice", "--key-file", file.to_str().unwrap()])
        .assert_one_line_error(1, &format!("{}, line 2: ", file.display()))
        .assert_stderr_contains("options");
    assert!(stored(&env, "alice").is_none());
}

#[test]
fn a_key_file_that_is_a_directory_missing_or_empty_is_refused() {
    let env = TestEnv::new();
    let dir = env.path("home");
    let empty = env.path("home/empty.pub");
    fs::write(&empty, "# nothing\n").unwrap();
    let cases = [
        (dir.clone(), "is a directory"),
        (
            std::path::PathBuf::from("/dev/null"),
            "is not a regular file",
        ),
        (env.path("home/absent.pub"), "cannot read key file"),
        (empty, "no keys found"),
    ];
    for (path, reason) in cases {
        env.podspawn(&["add-user", "alice", "--key-file", path.to_str().unwrap()])
            .assert_one_line_error(1, reason);
    }
    assert!(stored(&env, "alice").is_none());
}

#[test]
fn an_unreadable_key_file_is_refused() {
    let env = TestEnv::new();
    let file = env.path("home/secret.pub");
    fs::write(&file, format!("{ED25519}\n")).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o000)).unwrap();
    let args = ["add-user", "alice", "--key-file", file.to_str().unwrap()];
    let run = if is_root() {
        // Root reads anything; an admin-like caller who cannot read it is `nobody`
        // with a key dir of its own.
        std::os::unix::fs::chown(env.key_dir(), Some(NOBODY), Some(NOBODY)).unwrap();
        env.podspawn_as(NOBODY, NOBODY, &args)
    } else {
        env.podspawn(&args)
    };
    run.assert_one_line_error(1, "Permission denied")
        .assert_stderr_contains(&file.display().to_string());
    assert!(stored(&env, "alice").is_none());
}

#[test]
fn github_keys_are_fetched_once_and_stored() {
    let mut env = TestEnv::new();
    let server = HttpServer::start(vec![(
        "/sarahcodes.keys",
        200,
        &format!("{ED25519}\n{ECDSA}\n"),
    )]);
    env.write_config_text(&format!(
        "auth:\n  key_dir: {}\n  github_url: {}/\n  create_accounts: false\n",
        env.key_dir().display(),
        server.base_url
    ));
    env.set_env("http_proxy", "");
    env.podspawn(&["add-user", "sarah", "--github", "sarahcodes"])
        .assert_success()
        .assert_stdout("added 2 key(s) for sarah\n");
    assert_eq!(server.requests(), ["/sarahcodes.keys"]);
    // GitHub keys carry no comment; stored as they came.
    assert_eq!(
        stored(&env, "sarah").unwrap(),
        format!("{ED25519}\n{ECDSA}\n")
    );
}

fn github_env(server: &HttpServer) -> TestEnv {
    let env = TestEnv::new();
    env.write_config_text(&format!(
        "auth:\n  key_dir: {}\n  github_url: {}\n  create_accounts: false\n",
        env.key_dir().display(),
        server.base_url
    ));
    env
}

#[test]
fn a_github_login_that_does_not_exist_is_refused() {
    let server = HttpServer::start(vec![]);
    let env = github_env(&server);
    env.podspawn(&[
        "add-user",
        "sarah",
        "--key",
        ED25519,
        "--github",
        "nosuchlogin",
    ])
    .assert_one_line_error(1, "/nosuchlogin.keys: no such GitHub user (HTTP 404)");
    assert!(stored(&env, "sarah").is_none());
}

#[test]
fn a_github_login_without_keys_is_refused() {
    let server = HttpServer::start(vec![("/keyless.keys", 200, "")]);
    let env = github_env(&server);
    env.podspawn(&["add-user", "sarah", "--github", "keyless"])
        .assert_one_line_error(1, "/keyless.keys: no keys found");
    assert!(stored(&env, "sarah").is_none());
}

#[test]
fn a_github_server_error_or_no_server_is_refused() {
    let server = HttpServer::start(vec![("/sarah.keys", 500, "oops")]);
    let env = github_env(&server);
    env.podspawn(&["add-user", "sarah", "--github", "sarah"])
        .assert_one_line_error(1, "the server answered HTTP 500");
    drop(server);
    // Nothing listens on port 9 (discard) here: curl cannot connect.
    let env = TestEnv::new();
    env.podspawn(&["add-user", "sarah", "--github", "sarah"])
        .assert_one_line_error(1, "cannot fetch http://127.0.0.1:9/sarah.keys");
    assert!(stored(&env, "sarah").is_none());
}

#[test]
fn a_github_login_that_would_reshape_the_url_is_refused() {
    let server = HttpServer::start(vec![]);
    let env = github_env(&server);
    for login in ["../admin", "a/b", "a?x=1", "-rf"] {
        env.podspawn(&["add-user", "sarah", "--github", login])
            .assert_one_line_error(1, "is not a GitHub login");
    }
    assert!(server.requests().is_empty());
}

#[test]
fn without_curl_github_import_says_so() {
    let mut env = TestEnv::new();
    env.only_tree_on_path();
    env.podspawn(&[
        "add-user",
        "sarah",
        "--key",
        ED25519,
        "--github",
        "sarahcodes",
    ])
    .assert_one_line_error(1, "--github needs curl, which is not installed");
    assert!(stored(&env, "sarah").is_none());
}

#[test]
fn a_caller_who_is_not_root_is_refused() {
    let env = TestEnv::new();
    let run = if is_root() {
        env.podspawn_as(NOBODY, NOBODY, &["add-user", "alice", "--key", ED25519])
    } else {
        fs::set_permissions(env.key_dir(), fs::Permissions::from_mode(0o555)).unwrap();
        env.podspawn(&["add-user", "alice", "--key", ED25519])
    };
    run.assert_one_line_error(1, "add-user must run as root")
        .assert_stderr_contains(&format!(
            "{} is not writable by you",
            env.key_dir().display()
        ));
    assert!(stored(&env, "alice").is_none());
}

#[test]
fn concurrent_additions_lose_nothing() {
    let env = TestEnv::new();
    let keys = [ED25519, ED25519_OTHER, ECDSA];
    std::thread::scope(|scope| {
        for key in keys {
            let env = &env;
            scope.spawn(move || {
                env.podspawn(&["add-user", "alice", "--key", key])
                    .assert_success();
            });
        }
    });
    let text = stored(&env, "alice").unwrap();
    for key in keys {
        assert_eq!(text.matches(key).count(), 1, "{text}");
    }
    assert_eq!(text.lines().count(), 3, "{text}");
}

/// Adding an existing account to podspawn's group goes through `usermod`, which the
/// harness fakes like docker: no harness test changes the host's accounts (one once
/// left the host's `nobody` in a group).
#[test]
fn an_existing_account_joins_the_group_through_usermod_and_is_told_what_changes() {
    if !is_root() {
        return crate::support::skip(
            "add-user test",
            "not root (only root adds accounts to groups)",
        );
    }
    let env = TestEnv::new();
    // nobody's own primary group: a real group it is not listed in.
    let group = fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find(|line| line.split(':').nth(2) == Some(&NOBODY.to_string()))
        .and_then(|line| line.split(':').next().map(str::to_string))
        .expect("a group with nobody's gid");
    env.set_group(&group);
    env.scenario(&[
        crate::support::Rule::program("usermod", &["--append", "--groups", &group, "nobody"]),
        crate::support::Rule::docker(&["network", "create", "**"]),
    ]);
    let group_line = || {
        fs::read_to_string("/etc/group")
            .unwrap()
            .lines()
            .find(|line| line.starts_with(&format!("{group}:")))
            .map(str::to_string)
    };
    let before = group_line();
    let run = env.podspawn(&["add-user", "nobody", "--key", ED25519]);
    run.assert_success();
    assert!(
        run.stdout().starts_with(
            "nobody is an existing account: from now on it logs in over SSH only with podspawn's keys, into its container"
        ),
        "{}",
        run.stdout()
    );
    let usermod: Vec<_> = env
        .calls()
        .into_iter()
        .filter(|call| call.program == "usermod")
        .collect();
    assert_eq!(usermod.len(), 1, "{usermod:?}");
    assert_eq!(group_line(), before, "the host's group {group} changed");
}
