//! The audit log through a real sshd and engine: what connections, commands, file
//! transfers, disconnects, grace expiry, `stop`, `remove-user --force` and a refused
//! spawn leave in it — each line one JSON object, and exactly one `session.connect`
//! per connection when fifty come at once, and a real `cleanup` that finds an orphan
//! of this installation's — and leaves alone what another installation on the same
//! engine made (every other test's server is one).

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
    assert_eq!(named(&events, "session.disconnect").len(), before + 50);

    // An orphan: a container with this installation's labels and no row (a crash
    // between create and insert); beside it, one of another installation's.
    let installation = crate::support::installation_of(&server.root.join("state"));
    let orphan = Container::run(
        &format!("{}-orphan", alice.container()),
        &installation,
        alice,
    );
    let elsewhere = Container::run(
        &format!("{}-elsewhere", alice.container()),
        "0000beef",
        alice,
    );
    let cleanup = server.podspawn(&["cleanup"]);
    assert!(cleanup.status.success(), "{}", server.explain(&cleanup));
    assert!(!super::container_exists(&orphan.0), "the orphan stayed");
    assert!(
        super::container_exists(&elsewhere.0),
        "another installation's container went"
    );
    let events = server.audit_events();
    let removed = find(
        &events,
        &[
            ("event", "container.remove".into()),
            ("container", orphan.0.as_str().into()),
        ],
    );
    assert_eq!(removed["reason"], "orphan");
    assert_eq!(removed["actor"], "cleanup");
    assert_eq!(removed["user"], name(alice));
    assert_eq!(removed["session"], "lost");
    assert!(
        !events
            .iter()
            .any(|event| event["container"] == elsewhere.0.as_str()),
        "{events:#?}"
    );
}

/// A container made by hand with podspawn's labels for `installation` and `owner`,
/// removed when dropped.
struct Container(String);

impl Container {
    fn run(name: &str, installation: &str, owner: &super::Account) -> Container {
        let container = Container(name.to_string());
        let output = Command::new("docker")
            .args([
                "run",
                "--detach",
                "--rm",
                "--name",
                name,
                "--network",
                "none",
            ])
            .args(["--label", "podspawn.managed=true"])
            .args(["--label", &format!("podspawn.installation={installation}")])
            .args(["--label", &format!("podspawn.user={}", owner.name)])
            .args(["--label", "podspawn.project="])
            .args(["--label", "podspawn.session=lost"])
            .args(["--entrypoint", "/bin/sleep", super::image(), "300"])
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        container
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "--force", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
