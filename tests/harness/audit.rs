//! The audit log against the fake docker: what a connection, a refusal and an
//! admin leave in it, each line one JSON object, and many writers at once.

use std::io::Write;

use serde_json::Value;

use crate::support::{ED25519, Rule, TestEnv, spawn_env};

const IMAGE: &str = "test-image";

/// Each event's name, in order.
fn event_names(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["event"].as_str().unwrap())
        .collect()
}

fn events_named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["event"] == name)
        .collect()
}

#[test]
fn a_connection_leaves_its_container_its_command_and_its_end_with_the_client() {
    let (env, user) = spawn_env(IMAGE, "  grace_period: 60s\n");
    env.scenario(&[
        Rule::docker(&["run", "**"]).stdout("f00dcafe\n"),
        Rule::docker(&["exec", "**"]).exit(3),
        Rule::docker(&["rm", "--force", "**"]),
    ]);
    // A command with quotes, a newline and a terminal escape.
    let command = "printf '%s\\n' \"a b\"\n\u{1b}[31m; exit 3";
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", command)
        .var("SSH_CONNECTION", "203.0.113.9 40022 10.0.0.1 22")
        .run()
        .assert_code(3);
    let events = env.audit_events();
    let names = event_names(&events);
    assert_eq!(
        names,
        ["container.create", "session.connect", "session.disconnect"],
        "{events:#?}"
    );
    let created = &events[0];
    assert_eq!(created["reason"], "first_connection");
    assert_eq!(created["container"], format!("podspawn-{}", user.name));
    assert_eq!(created["image"], IMAGE);
    let connect = &events[1];
    for (key, value) in [
        ("user", Value::from(user.name.as_str())),
        ("actor", Value::from(user.name.as_str())),
        ("kind", Value::from("command")),
        ("command", Value::from(command)),
        ("client", Value::from("203.0.113.9")),
        ("client_port", Value::from(40022)),
        ("created", Value::from(true)),
    ] {
        assert_eq!(connect[key], value, "{key}: {connect}");
    }
    assert_eq!(connect["session"], created["session"]);
    let time = connect["time"].as_str().unwrap();
    assert!(
        time.len() == 24 && time.ends_with('Z') && time.as_bytes()[19] == b'.',
        "{time}"
    );
    let disconnect = &events[2];
    assert_eq!(disconnect["exit_code"], 3);
    assert!(disconnect["duration_ms"].is_u64());
    assert_eq!(disconnect["connection"], connect["connection"]);
}

#[test]
fn a_refused_connection_says_by_which_rule() {
    let env = TestEnv::new();
    env.write_config(&format!("defaults:\n  image: {IMAGE}\n"));
    let user = env.spawn_user();
    env.write_key_file("someone-else", &format!("{ED25519}\n"));
    env.scenario(&[]);
    env.invoke_as(&user, &["spawn", "--user", "someone-else"])
        .var("SSH_CONNECTION", "198.51.100.7 50000 10.0.0.1 22")
        .run()
        .assert_code(125);
    let refused = env.audit_events();
    assert_eq!(refused.len(), 1, "{refused:#?}");
    assert_eq!(refused[0]["event"], "refused");
    assert_eq!(refused[0]["reason"], "other_user");
    assert_eq!(refused[0]["user"], "someone-else");
    assert_eq!(refused[0]["actor"], user.name.as_str());
    assert_eq!(refused[0]["client"], "198.51.100.7");
}

#[test]
fn fifty_connections_at_once_leave_fifty_whole_lines_each() {
    let (env, user) = spawn_env(IMAGE, "  grace_period: 60s\n");
    env.scenario(&[
        Rule::docker(&["run", "**"]).stdout("f00dcafe\n"),
        Rule::docker(&["exec", "**"]),
        Rule::docker(&["rm", "--force", "**"]),
    ]);
    std::thread::scope(|scope| {
        for n in 0..50 {
            let (env, user) = (&env, &user);
            scope.spawn(move || {
                env.spawn(user)
                    .var(
                        "SSH_ORIGINAL_COMMAND",
                        &format!("echo {n} {}", "x".repeat(3000)),
                    )
                    .run()
                    .assert_success();
            });
        }
    });
    let events = env.audit_events();
    assert_eq!(events_named(&events, "session.connect").len(), 50);
    assert_eq!(events_named(&events, "session.disconnect").len(), 50);
    assert_eq!(events_named(&events, "container.create").len(), 1);
    let mut commands: Vec<String> = events_named(&events, "session.connect")
        .iter()
        .map(|event| event["command"].as_str().unwrap().to_string())
        .collect();
    commands.sort();
    commands.dedup();
    assert_eq!(commands.len(), 50, "every command whole, once");
}

#[test]
fn admins_adding_and_removing_users_are_recorded_as_admins() {
    let env = TestEnv::new();
    env.scenario(&[Rule::docker(&["network", "rm", "podspawn-alice"])]);
    env.podspawn(&["add-user", "alice", "--key", ED25519])
        .assert_success();
    env.podspawn(&["remove-user", "alice"]).assert_success();
    let events = env.audit_events();
    let names = event_names(&events);
    // remove-user takes the user's network too, for its reason.
    assert_eq!(
        names,
        ["user.add", "network.remove", "user.remove"],
        "{events:#?}"
    );
    assert_eq!(events[1]["reason"], "removed_user");
    assert_eq!(events[1]["network"], "podspawn-alice");
    let uid = unsafe { libc::getuid() };
    for event in &events {
        assert_eq!(event["user"], "alice");
        assert_eq!(event["actor"], format!("admin:{uid}"));
    }
    assert_eq!(events[0]["keys_added"], 1);
}

#[test]
fn an_audit_log_that_cannot_be_written_stops_nothing_and_says_so_once() {
    let (env, user) = spawn_env(IMAGE, "  grace_period: 60s\n");
    // Gone (a rotation without `create`, say): spawn never makes it.
    std::fs::remove_file(env.audit_path()).unwrap();
    env.scenario(&[
        Rule::docker(&["run", "**"]).stdout("f00dcafe\n"),
        Rule::docker(&["exec", "**"]).stdout("ran\n"),
        Rule::docker(&["rm", "--force", "**"]),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success()
        .assert_stdout("ran\n")
        .assert_stderr("");
    if crate::support::is_root() {
        // spawn ran as another account, and did not make the file.
        assert!(!env.audit_path().exists());
    }
    let log = std::fs::read_to_string(env.log_path()).unwrap();
    assert_eq!(
        log.matches("cannot write the audit log").count(),
        1,
        "{log}"
    );
    for event in ["container.create", "session.connect", "session.disconnect"] {
        assert!(
            log.contains(&format!("\",\"event\":\"{event}\"")),
            "{event} not in the service log:\n{log}"
        );
    }
}

/// A file size limit the caller sets (`ulimit -f`) keeps no event out of the audit log
/// while it may be lifted, cuts no line when it may not, and kills no connection
/// (SIGXFSZ) as it logs.
#[test]
fn a_callers_file_size_limit_cuts_no_line_and_ends_no_connection() {
    let (env, user) = spawn_env(IMAGE, "  grace_period: 60s\n");
    let rules = [
        Rule::docker(&["run", "**"]).stdout("f00dcafe\n"),
        Rule::docker(&["exec", "**"]).stdout("ran\n"),
        Rule::docker(&["rm", "--force", "**"]),
    ];
    env.scenario(&rules);
    // A soft limit of one byte: lifted to the hard one (none).
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .file_size_limit(1, u64::MAX)
        .run()
        .assert_success()
        .assert_stdout("ran\n")
        .assert_stderr("");
    let events = env.audit_events();
    let names = event_names(&events);
    assert!(
        names.contains(&"session.connect") && names.contains(&"session.disconnect"),
        "{names:?}"
    );
    // A hard limit just past an audit log grown large (every other file is far below
    // it): no line fits, none is begun, the events go to the service log, and the
    // connection ends as its command did.
    let mut grown = std::fs::OpenOptions::new()
        .append(true)
        .open(env.audit_path())
        .unwrap();
    let filler = format!(
        "{{\"event\":\"filler\",\"text\":\"{}\"}}\n",
        "x".repeat(1 << 20)
    );
    grown.write_all(filler.as_bytes()).unwrap();
    drop(grown);
    let size = std::fs::metadata(env.audit_path()).unwrap().len();
    let limit = size + 10;
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .file_size_limit(limit, limit)
        .run()
        .assert_success()
        .assert_stdout("ran\n")
        .assert_stderr("");
    assert_eq!(std::fs::metadata(env.audit_path()).unwrap().len(), size);
    assert_eq!(env.audit_events().len(), events.len() + 1);
    let log = std::fs::read_to_string(env.log_path()).unwrap();
    assert!(log.contains("file size limit"), "{log}");
    assert!(log.contains("\"event\":\"session.connect\""), "{log}");
}

/// contrib/logrotate/podspawn as logrotate reads it: the audit log rotated where its
/// directory is root:docker 2770, and made anew as podspawn needs it.
#[test]
fn the_contrib_logrotate_config_rotates_the_audit_log_and_makes_it_anew() {
    if !crate::support::is_root() || !std::path::Path::new("/usr/sbin/logrotate").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root with logrotate (.ci/run installs it)"
        );
        return crate::support::skip("logrotate test", "not root, or no logrotate");
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let env = TestEnv::new();
    let dir = env.path("var-log/podspawn");
    std::fs::create_dir_all(&dir).unwrap();
    let docker = crate::real_engine::docker_gid();
    std::os::unix::fs::chown(&dir, Some(0), Some(docker)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2770)).unwrap();
    let audit = dir.join("audit.jsonl");
    std::fs::write(&audit, "{\"event\":\"before\"}\n").unwrap();
    std::os::unix::fs::chown(&audit, Some(0), Some(docker)).unwrap();
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o660)).unwrap();
    let config = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/logrotate/podspawn"),
    )
    .unwrap()
    .replace("/var/log/podspawn", &dir.display().to_string());
    std::fs::write(env.path("logrotate.conf"), config).unwrap();
    let rotated = std::process::Command::new("/usr/sbin/logrotate")
        .args(["-f", "-s"])
        .arg(env.path("logrotate.status"))
        .arg(env.path("logrotate.conf"))
        .output()
        .unwrap();
    assert!(rotated.status.success(), "{rotated:?}");
    assert_eq!(
        std::fs::read_to_string(dir.join("audit.jsonl.1")).unwrap(),
        "{\"event\":\"before\"}\n"
    );
    let meta = std::fs::metadata(&audit).unwrap();
    assert_eq!(
        (meta.len(), meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0, 0o660, 0, docker)
    );
}
