//! remove-user: the keys go, and with them every podspawn login of that user.

use crate::support::{ED25519, NOBODY, Rule, TestEnv, is_root};

#[test]
fn removing_a_user_deletes_their_keys_and_auth_keys_falls_through() {
    let env = TestEnv::new();
    env.scenario(&[Rule::docker(&["network", "rm", "podspawn-alice"])]);
    env.podspawn(&["add-user", "alice", "--key", ED25519])
        .assert_success();
    env.podspawn(&["remove-user", "alice"])
        .assert_success()
        .assert_stdout("removed user alice (0 session(s) destroyed)\n");
    assert!(!env.key_file("alice").exists());
    env.podspawn(&["auth-keys", "alice"])
        .assert_success()
        .assert_stdout("");
    assert_eq!(
        env.docker_calls().len(),
        1,
        "the network goes with the user"
    );
}

#[test]
fn removing_an_unknown_user_says_so() {
    let env = TestEnv::new();
    env.podspawn(&["remove-user", "bob"])
        .assert_one_line_error(1, "user bob is not registered");
    env.podspawn(&["remove-user", "../keys"])
        .assert_one_line_error(1, "contains '.'");
}

#[test]
fn a_caller_who_is_not_root_is_refused() {
    let env = TestEnv::new();
    env.podspawn(&["add-user", "alice", "--key", ED25519])
        .assert_success();
    let run = if is_root() {
        env.podspawn_as(NOBODY, NOBODY, &["remove-user", "alice"])
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(env.key_dir(), std::fs::Permissions::from_mode(0o555)).unwrap();
        env.podspawn(&["remove-user", "alice"])
    };
    run.assert_one_line_error(1, "remove-user must run as root");
    assert!(env.key_file("alice").exists());
}
