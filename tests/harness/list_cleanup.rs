//! list and cleanup against the fake docker: what admins see, and reconciliation.

use std::time::Duration;

use crate::support::{Input, Rule, SpawnUser, TestEnv};

fn env_with(session: &str) -> (TestEnv, SpawnUser) {
    crate::support::spawn_env("test-image", session)
}

/// `docker ps` of what `env`'s installation made, answering with these containers
/// (name, state, user, session).
fn ps(env: &TestEnv, containers: &[(&str, &str, &str, &str)]) -> Rule {
    let lines: String = containers
        .iter()
        .map(|(name, state, user, session)| format!("{name}\t{state}\t{user}\t\t{session}\t\n"))
        .collect();
    Rule::docker(&[
        "ps",
        "--all",
        "--no-trunc",
        "--filter",
        "label=podspawn.managed=true",
        "--filter",
        &format!("label=podspawn.installation={}", env.installation()),
        "--format",
        "*",
    ])
    .stdout(&lines)
}

#[test]
fn list_without_sessions_shows_the_header_and_calls_no_docker() {
    let env = TestEnv::new();
    env.podspawn(&["list"])
        .assert_success()
        .assert_stdout("USER  PROJECT  CONTAINER  STATUS  CONNS  AGE  LIFETIME LEFT\n");
    env.podspawn(&["list", "--json"])
        .assert_success()
        .assert_stdout("[]\n");
    assert!(env.calls().is_empty());
    assert!(
        !env.path("state/state.db").exists(),
        "a reader creates no database"
    );
}

#[test]
fn list_counts_live_connections_only() {
    let (env, user) = env_with("  grace_period: 60s\n");
    let container = format!("podspawn-{}", user.name);
    env.scenario(&[
        Rule::docker(&["run", "**"]),
        Rule::docker(&["exec", "**"]).wait_for_stdin(),
        Rule::docker(&["ps", "**"])
            .stdout(&format!("{container}\trunning\t{}\t\tx\t\n", user.name)),
        Rule::docker(&["rm", "**"]),
    ]);
    let running = env
        .spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "sleep 300")
        .input(Input::OpenPipe)
        .start();
    assert!(env.wait_for(Duration::from_secs(10), || {
        env.docker_calls().iter().any(|c| c.subcommand() == "exec")
    }));
    let table = env.podspawn(&["list"]).assert_success().stdout();
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[..5],
        [
            user.name.as_str(),
            "(default)",
            container.as_str(),
            "running",
            "1"
        ],
        "{table}"
    );
    assert!(["8h", "7h59m"].contains(&row[6]), "{table}");

    running.signal(libc::SIGKILL);
    running.finish(Duration::from_secs(5));
    let json = env.podspawn(&["list", "--json"]).assert_success().stdout();
    assert!(json.contains("\"connections\":0"), "{json}");
    assert!(
        json.contains(&format!("\"container\":\"{container}\"")),
        "{json}"
    );
    for call in env.calls() {
        if call.program == "docker" && call.subcommand() == "exec" {
            unsafe { libc::kill(call.pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn list_shows_grace_and_missing_containers() {
    let (env, user) = env_with("  grace_period: 10m\n");
    env.scenario(&[
        Rule::docker(&["run", "**"]),
        Rule::docker(&["exec", "**"]),
        ps(&env, &[]),
        Rule::docker(&["rm", "**"]),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    // The fake's ps knows no container: the row's container is missing.
    let table = env.podspawn(&["list"]).assert_success().stdout();
    assert!(
        table.lines().nth(1).unwrap().contains(" missing "),
        "{table}"
    );
}

#[test]
fn cleanup_removes_orphans_and_drops_rows_without_containers() {
    let (env, user) = env_with("  grace_period: 10m\n");
    env.scenario(&isolation_in_place(vec![
        Rule::docker(&["run", "**"]),
        Rule::docker(&["exec", "**"]),
        // Our session's container is gone; someone else's is an orphan.
        ps(&env, &[("podspawn-ghost", "running", "ghost", "abc")]),
        Rule::docker(&["inspect", "**"])
            .stderr("Error: No such object: x\n")
            .exit(1),
        Rule::docker(&["rm", "--force", "**"]),
        Rule::docker(&["network", "ls", "**"]),
        Rule::docker(&["volume", "ls", "**"]),
        // The image of a project that is no longer registered goes too.
        Rule::docker(&["image", "ls", "**"]).stdout("podspawn/gone:0123456789ab\tsha256:abc\n"),
        Rule::docker(&["image", "rm", "podspawn/gone:0123456789ab"]),
    ]));
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    env.podspawn(&["cleanup"])
        .assert_success()
        .assert_stdout("cleanup pass complete: grace_expired=0 lifetime_expired=0 orphans_removed=1 rows_dropped=1 services_restarted=0 networks_removed=0 volumes_removed=0 images_removed=1\n");
    assert_eq!(
        env.removed_containers(),
        [
            format!("podspawn-{}", user.name),
            "podspawn-ghost".to_string()
        ]
    );
    env.podspawn(&["list", "--json"])
        .assert_success()
        .assert_stdout("[]\n");
    // The audit log has what cleanup took, and why, by `cleanup`.
    let events = env.audit_events();
    let orphan = events
        .iter()
        .find(|event| event["container"] == "podspawn-ghost")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(orphan["event"], "container.remove");
    assert_eq!(orphan["reason"], "orphan");
    assert_eq!(orphan["actor"], "cleanup");
    // Whose it was, as its labels said.
    assert_eq!(orphan["user"], "ghost");
    assert_eq!(orphan["session"], "abc");
    let image = events
        .iter()
        .find(|event| event["event"] == "image.remove")
        .unwrap_or_else(|| panic!("{events:#?}"));
    assert_eq!(image["image"], "podspawn/gone:0123456789ab");
}

#[test]
fn cleanup_expires_sessions_whose_keeper_is_gone() {
    let (env, user) = env_with("  grace_period: 1s\n");
    let container = format!("podspawn-{}", user.name);
    env.scenario(&isolation_in_place(vec![
        Rule::docker(&["run", "**"]),
        Rule::docker(&["exec", "**"]),
        Rule::docker(&["ps", "**"])
            .stdout(&format!("{container}\trunning\t{}\t\tx\t\n", user.name)),
        Rule::docker(&["rm", "--force", "**"]),
        Rule::docker(&["network", "ls", "**"]),
        Rule::docker(&["volume", "ls", "**"]),
        Rule::docker(&["image", "ls", "**"]),
    ]));
    // A keeper that died (an OOM kill, say): cleanup must do its job.
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    kill_keepers(&env);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        env.removed_containers(),
        Vec::<String>::new(),
        "the keeper was not stopped in time"
    );
    env.podspawn(&["cleanup"])
        .assert_success()
        .assert_stdout("cleanup pass complete: grace_expired=1 lifetime_expired=0 orphans_removed=0 rows_dropped=0 services_restarted=0 networks_removed=0 volumes_removed=0 images_removed=0\n");
}

/// `rules`, on a host whose rule keeping podspawn's networks apart is in place:
/// cleanup looks for it on every pass.
fn isolation_in_place(mut rules: Vec<Rule>) -> Vec<Rule> {
    rules.extend(crate::support::iptables_set_up());
    rules
}

#[test]
fn cleanup_puts_back_the_rule_that_keeps_networks_apart() {
    let env = TestEnv::new();
    let mut rules = crate::support::iptables_to_be_set_up();
    rules.extend([
        ps(&env, &[]),
        Rule::docker(&["network", "ls", "**"]),
        Rule::docker(&["volume", "ls", "**"]),
        Rule::docker(&["image", "ls", "**"]),
    ]);
    env.scenario(&rules);
    let run = env.podspawn(&["cleanup"]);
    run.assert_success();
    let said = run.stdout();
    assert!(
        said.starts_with(
            "put back the rule that keeps podspawn's networks apart (iptables -t mangle, chain PODSPAWN-"
        ),
        "{said}"
    );
    // Once there, the next pass only looks.
    env.podspawn(&["cleanup"])
        .assert_success()
        .assert_stdout("cleanup pass complete: grace_expired=0 lifetime_expired=0 orphans_removed=0 rows_dropped=0 services_restarted=0 networks_removed=0 volumes_removed=0 images_removed=0\n");
}

/// `cleanup --rules`, as a boot unit runs it before the engine starts: the rules
/// only, not one docker call, and nothing changed once they are there.
#[test]
fn cleanup_rules_puts_the_iptables_rules_in_place_without_the_engine() {
    let env = TestEnv::new();
    env.scenario(&crate::support::iptables_to_be_set_up());
    let run = env.podspawn(&["cleanup", "--rules"]);
    run.assert_success();
    let said = run.stdout();
    assert!(
        said.starts_with("podspawn's iptables rules are in place (mangle, chains PODSPAWN-")
            && said.ends_with("-OUT); some were missing or out of date and were put right\n"),
        "{said}"
    );
    let again = env.podspawn(&["cleanup", "--rules"]);
    again.assert_success();
    assert!(again.stdout().ends_with("-OUT)\n"), "{}", again.stdout());
    assert!(env.docker_calls().is_empty(), "{:?}", env.docker_calls());
    env.podspawn(&["cleanup", "--rules", "--daemon"])
        .assert_code(2);
}

/// Kills the keepers started for this tree (found by the config on their command line).
fn kill_keepers(env: &TestEnv) {
    let config = env.config_path().display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let mut args = cmdline.split(|b| *b == 0);
        let is_keeper = args.clone().any(|arg| arg == b"keeper");
        let ours = args.any(|arg| arg == config.as_bytes());
        if is_keeper && ours {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

#[test]
fn cleanup_daemon_repeats_until_sigterm() {
    let env = TestEnv::new();
    env.scenario(&isolation_in_place(vec![
        ps(&env, &[("podspawn-ghost", "exited", "ghost", "abc")]).times(1),
        ps(&env, &[]),
        // A network of a user who is not registered (any more) goes too.
        Rule::docker(&["network", "ls", "**"])
            .stdout("podspawn-ghost\tghost\t\t\n")
            .times(1),
        Rule::docker(&["network", "ls", "**"]),
        Rule::docker(&["volume", "ls", "**"]),
        Rule::docker(&["image", "ls", "**"]),
        Rule::docker(&["network", "rm", "podspawn-ghost"]),
        Rule::docker(&["rm", "**"]),
    ]));
    let daemon = env
        .invoke(&["cleanup", "--daemon", "--interval", "1s"])
        .start();
    assert!(env.wait_for(Duration::from_secs(10), || {
        env.docker_calls()
            .iter()
            .filter(|call| call.subcommand() == "ps")
            .count()
            >= 2
    }));
    daemon.signal(libc::SIGTERM);
    let run = daemon.finish(Duration::from_secs(5));
    run.assert_success().assert_stdout("");
    assert!(
        run.stderr().contains("cleanup daemon started interval=1s"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("orphans_removed=1"),
        "{}",
        run.stderr()
    );
}

#[test]
fn cleanup_usage_mistakes_are_named() {
    let env = TestEnv::new();
    env.podspawn(&["cleanup", "--interval", "5s"])
        .assert_one_line_error(2, "--interval goes with --daemon");
    env.podspawn(&["cleanup", "--daemon", "--interval", "soon"])
        .assert_one_line_error(2, "invalid duration \"soon\"");
    env.podspawn(&["list", "--yaml"])
        .assert_one_line_error(2, "list: unknown option '--yaml'");
}

#[test]
fn status_counts_sessions_and_speaks_prometheus_and_json() {
    let (env, user) = env_with("  grace_period: 10m\n");
    let container = format!("podspawn-{}", user.name);
    env.scenario(&[
        Rule::docker(&["run", "**"]),
        Rule::docker(&["exec", "**"]),
        ps(&env, &[(&container, "running", &user.name, "x")]),
        Rule::docker(&["version", "**"]).stdout("20.10.24\n"),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    let text = env.podspawn(&["status"]).assert_success().stdout();
    assert!(
        text.starts_with(
            "sessions        1 (0 connected, 1 in grace period, 0 idle, 0 missing)\nconnections     0\n"
        ),
        "{text}"
    );
    assert!(text.ends_with("engine          answers\n"), "{text}");

    let json: serde_json::Value = serde_json::from_str(
        &env.podspawn(&["status", "--json"])
            .assert_success()
            .stdout(),
    )
    .unwrap();
    assert_eq!(json["sessions"], 1);
    assert_eq!(json["sessions_in_grace_period"], 1);
    assert_eq!(json["users"], 1);
    assert_eq!(json["engine_up"], true);
    assert!(json["next_grace_end_seconds"].as_i64().unwrap() > 500);

    let metrics = env
        .podspawn(&["status", "--prometheus"])
        .assert_success()
        .stdout();
    assert!(
        metrics.contains("# TYPE podspawn_sessions gauge\npodspawn_sessions{state=\"connected\"} 0\npodspawn_sessions{state=\"grace_period\"} 1\n"),
        "{metrics}"
    );
    // Debian's prometheus package has promtool (.ci/run installs it).
    if let Ok(mut check) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        check
            .stdin
            .take()
            .unwrap()
            .write_all(metrics.as_bytes())
            .unwrap();
        let checked = check.wait_with_output().unwrap();
        assert!(
            checked.status.success() && checked.stdout.is_empty() && checked.stderr.is_empty(),
            "promtool: {}{}\n{metrics}",
            String::from_utf8_lossy(&checked.stdout),
            String::from_utf8_lossy(&checked.stderr)
        );
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing; .ci/run installs Debian's prometheus package"
        );
    }
}
