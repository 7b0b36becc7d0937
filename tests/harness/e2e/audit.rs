//! The audit log through a real sshd and engine: what connections, commands, file
//! transfers, disconnects, grace expiry, `stop`, `remove-user --force` and a refused
//! spawn leave in it — each line one JSON object, and exactly one `session.connect`
//! per connection when fifty come at once. (`cleanup`'s orphans are the harness's:
//! a real `cleanup` here would take the containers of every other test's server on
//! this engine, which it has no row for.)

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// The events named `name`, in order.
fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["event"] == name)
        .collect()
}

/// The one event matching `wanted` (each key's value), or the whole log.
fn find<'a>(events: &'a [Value], wanted: &[(&str, Value)]) -> &'a Value {
    events
        .iter()
        .find(|event| wanted.iter().all(|(key, value)| &event[*key] == value))
        .unwrap_or_else(|| panic!("no event with {wanted:?} in\n{events:#?}"))
}

#[test]
fn every_connection_change_and_refusal_is_in_the_audit_log() {
    let server = crate::server_or_skip!("2s", 2);
    let (alice, bob) = (&server.users[0], &server.users[1]);
    let name = |account: &super::Account| Value::from(account.name.as_str());

    // A command and its exit code.
    let output = server.run(alice, "echo \"it's\" done; exit 7");
    assert_eq!(output.status.code(), Some(7), "{}", server.explain(&output));
    // A file in, by scp's own protocol.
    let local = server.scratch("audit").join("file.txt");
    std::fs::write(&local, "x\n").unwrap();
    let scp = Command::new("scp")
        .args(server.client_options(alice))
        .args(["-O", "-P", &server.port.to_string()])
        .arg(&local)
        .arg(format!("{}@127.0.0.1:/tmp/file.txt", alice.name))
        .env("HOME", server.root.join("client"))
        .output()
        .unwrap();
    assert!(scp.status.success(), "{}", server.explain(&scp));
    // The grace period (2s) ends: the keeper removes the container.
    assert!(
        server
            .wait_until(Duration::from_secs(15), || !server.container_exists(alice))
            .is_some()
    );

    // stop ends a connection; remove-user --force another user's session.
    let mut long = server
        .ssh(alice, &[], Some("sleep 300"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let running = server.run(bob, "true");
    assert!(running.status.success(), "{}", server.explain(&running));
    assert!(
        server
            .wait_until(Duration::from_secs(30), || server
                .user_processes(alice)
                .iter()
                .any(|line| line.contains("sleep 300")))
            .is_some()
    );
    let stop = server.podspawn(&["stop", &alice.name]);
    assert!(stop.status.success(), "{}", server.explain(&stop));
    assert_eq!(long.wait().unwrap().code(), Some(125));
    let removed = server.podspawn(&["remove-user", &bob.name, "--force"]);
    assert!(removed.status.success(), "{}", server.explain(&removed));

    // A spawn for someone else's name, run by alice's own account.
    let binary = server.root.join("bin/podspawn");
    let config = server.root.join("config.yaml").display().to_string();
    let refused = super::privilege::as_user(
        alice,
        &binary,
        &["--config", &config, "spawn", "--user", &bob.name],
        &[(
            "SSH_CONNECTION",
            "192.0.2.10 50000 127.0.0.1 22".to_string(),
        )],
    );
    assert_eq!(refused.status.code(), Some(125));

    let events = server.audit_events();
    let first = find(
        &events,
        &[
            ("event", "session.connect".into()),
            ("kind", "command".into()),
        ],
    );
    assert_eq!(first["user"], name(alice));
    assert_eq!(first["actor"], name(alice));
    assert_eq!(first["command"], "echo \"it's\" done; exit 7");
    assert_eq!(first["client"], "127.0.0.1");
    assert!(first["client_port"].as_u64().unwrap() > 0);
    let created = find(
        &events,
        &[
            ("event", "container.create".into()),
            ("session", first["session"].clone()),
        ],
    );
    assert_eq!(created["reason"], "first_connection");
    let ended = find(
        &events,
        &[
            ("event", "session.disconnect".into()),
            ("connection", first["connection"].clone()),
        ],
    );
    assert_eq!(ended["exit_code"], 7);
    assert!(ended["duration_ms"].as_u64().is_some());
    find(
        &events,
        &[("event", "session.connect".into()), ("kind", "scp".into())],
    );
    let expired = find(
        &events,
        &[
            ("event", "container.remove".into()),
            ("reason", "grace_expired".into()),
        ],
    );
    assert_eq!(expired["actor"], "keeper");
    assert_eq!(expired["user"], name(alice));
    let stopped = find(&events, &[("event", "session.stop".into())]);
    assert_eq!(stopped["user"], name(alice));
    assert_eq!(stopped["connections"], 1);
    assert!(stopped["actor"].as_str().unwrap().starts_with("admin:"));
    find(
        &events,
        &[
            ("event", "container.remove".into()),
            ("reason", "stopped".into()),
        ],
    );
    find(
        &events,
        &[
            ("event", "container.remove".into()),
            ("reason", "removed_user".into()),
            ("user", name(bob)),
        ],
    );
    find(
        &events,
        &[("event", "user.remove".into()), ("user", name(bob))],
    );
    let refusal = find(&events, &[("event", "refused".into())]);
    assert_eq!(refusal["reason"], "other_user");
    assert_eq!(refusal["actor"], name(alice));
    assert_eq!(refusal["client"], "192.0.2.10");
    // Fifty connections at once: fifty connect lines and fifty disconnect lines.
    let before = named(&events, "session.connect").len();
    let clients: Vec<_> = (0..50)
        .map(|n| {
            server
                .ssh(alice, &[], Some(&format!("echo {n}")))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for client in clients {
        let output = client.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", server.explain(&output));
    }
    let events = server.audit_events();
    assert_eq!(named(&events, "session.connect").len(), before + 50);
    let mut echoed: Vec<&str> = named(&events, "session.connect")[before..]
        .iter()
        .map(|event| event["command"].as_str().unwrap())
        .collect();
    echoed.sort();
    echoed.dedup();
    assert_eq!(echoed.len(), 50);
}
