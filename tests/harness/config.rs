//! A broken config stops admin commands with a line naming file, line and key, and
//! changes nothing; for auth-keys it means "no keys", never an error sshd would see.

use crate::support::{ED25519, TestEnv};

#[test]
fn an_unknown_key_is_named_with_file_and_line_and_nothing_changes() {
    let env = TestEnv::new();
    env.write_config("session:\n  grace_period: 90s\n  grace_peroid: 5m\n");
    let run = env.podspawn(&["add-user", "alice", "--key", ED25519]);
    let file = env.config_path().display().to_string();
    run.assert_one_line_error(1, &format!("config {file}, line "))
        .assert_stderr_contains("session.grace_peroid: unknown key");
    assert!(!env.key_file("alice").exists());
}

#[test]
fn a_bad_duration_is_named_with_file_and_line() {
    let env = TestEnv::new();
    env.write_config("session:\n  max_lifetime: 8 hours\n");
    let run = env.podspawn(&["remove-user", "alice"]);
    run.assert_one_line_error(1, "session.max_lifetime: invalid duration \"8 hours\"");
    let lines = std::fs::read_to_string(env.config_path()).unwrap();
    let line = lines
        .lines()
        .position(|l| l.contains("max_lifetime"))
        .unwrap()
        + 1;
    run.assert_stderr_contains(&format!("line {line}:"));
}

#[test]
fn a_wrong_type_is_named() {
    let env = TestEnv::new();
    env.write_config("defaults:\n  cpus: lots\n");
    env.podspawn(&["add-user", "alice", "--key", ED25519])
        .assert_one_line_error(1, "defaults.cpus: invalid type");
}

#[test]
fn a_config_that_is_a_directory_is_refused() {
    let env = TestEnv::new();
    std::fs::remove_file(env.config_path()).unwrap();
    std::fs::create_dir(env.config_path()).unwrap();
    env.podspawn(&["add-user", "alice", "--key", ED25519])
        .assert_one_line_error(1, "cannot read config");
}

#[test]
fn auth_keys_with_a_broken_config_prints_nothing_and_exits_0() {
    let env = TestEnv::new();
    env.write_key_file("alice", &format!("{ED25519}\n"));
    // With the unknown key ignored, this config would find alice's key.
    env.write_config_text(&format!(
        "auth:\n  key_dir: {}\n  key_dri: /nowhere\n",
        env.key_dir().display()
    ));
    env.podspawn(&["auth-keys", "alice"])
        .assert_success()
        .assert_stdout("")
        .assert_stderr("");
}

#[test]
fn the_sshd_config_snippet_in_contrib_is_valid_for_sshd() {
    let sshd = std::path::Path::new("/usr/sbin/sshd");
    if !sshd.exists() {
        return crate::support::skip("the sshd_config snippet check", "sshd is not installed");
    }
    crate::support::ensure_sshd_privsep_dir();
    let env = TestEnv::new();
    let key = env.path("host_key");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let snippet = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/sshd_config.snippet"
    ))
    .unwrap();
    let config = env.path("sshd_config");
    std::fs::write(&config, format!("HostKey {}\n{snippet}", key.display())).unwrap();
    let output = std::process::Command::new(sshd)
        .arg("-t")
        .arg("-f")
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
