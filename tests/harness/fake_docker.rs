//! The fake docker itself: if it were not strict, "no docker call" would prove nothing.

use std::process::Command;

use crate::support::TestEnv;

#[test]
fn an_unexpected_call_fails_loudly_and_is_recorded() {
    let env = TestEnv::new();
    env.unexpected_calls_are_the_point();
    let output = Command::new(env.path("bin/docker"))
        .args(["ps", "--all"])
        .env_clear()
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(97));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unexpected call: docker [\"ps\", \"--all\"]"),
        "{stderr}"
    );
    let calls = env.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].program, "docker");
    assert_eq!(calls[0].argv, ["ps", "--all"]);
    assert!(!calls[0].expected);
}

#[test]
fn a_scenario_rule_answers_matching_calls_only() {
    let env = TestEnv::new();
    env.unexpected_calls_are_the_point();
    std::fs::write(
        env.path("fake-docker/scenario.json"),
        r#"{"rules": [{"argv": ["inspect", "podspawn-*", "**"], "exit": 3, "stdout": "out", "stderr": "err"}]}"#,
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(env.path("bin/docker"))
            .args(args)
            .output()
            .unwrap()
    };
    let answered = run(&["inspect", "podspawn-alice", "--format", "{{.State}}"]);
    assert_eq!(answered.status.code(), Some(3));
    assert_eq!(answered.stdout, b"out");
    assert_eq!(answered.stderr, b"err");
    assert_eq!(run(&["inspect", "other"]).status.code(), Some(97));
    let expected: Vec<bool> = env.calls().iter().map(|call| call.expected).collect();
    assert_eq!(expected, [true, false]);
}
