//! spawn and the session lifecycle against the strict fake docker: argv and labels,
//! docker calls per path, exit codes, concurrency, grace, lifetime, kill -9, lost
//! clients, and podspawn's own failures.

use std::time::{Duration, Instant};

use crate::support::{Call, Input, Rule, Running, SpawnUser, TestEnv};

const IMAGE: &str = "podspawn-test:latest";

fn run_rule() -> Rule {
    Rule::docker(&["run", "**"]).stdout("f00dcafe\n")
}

fn rm_rule() -> Rule {
    Rule::docker(&["rm", "--force", "**"])
}

/// A tree whose config names the test image and the given session settings.
fn lifecycle_env(session: &str) -> (TestEnv, SpawnUser) {
    crate::support::spawn_env(IMAGE, session)
}

/// Takes `user`'s lock as another process would, until the file is dropped.
fn hold_user_lock(env: &TestEnv, user: &SpawnUser) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let locks = env.path("state/locks");
    std::fs::create_dir_all(&locks).unwrap();
    let path = locks.join(format!("{}.lock", user.name));
    let holder = std::fs::File::create(&path).unwrap();
    if crate::support::is_root() {
        std::os::unix::fs::chown(&locks, Some(user.uid), Some(user.gid)).unwrap();
        std::os::unix::fs::chown(&path, Some(user.uid), Some(user.gid)).unwrap();
    }
    assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX) }, 0);
    holder
}

fn subcommands(calls: &[Call]) -> Vec<&str> {
    calls.iter().map(Call::subcommand).collect()
}

#[test]
fn a_cold_start_runs_two_docker_processes_and_a_reattach_one() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[
        run_rule(),
        Rule::docker(&["exec", "**"]).stdout("hello\n"),
        rm_rule(),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "echo hello")
        .run()
        .assert_success()
        .assert_stdout("hello\n")
        .assert_stderr("");
    assert_eq!(subcommands(&env.docker_calls()), ["run", "exec"]);

    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "echo hello")
        .run()
        .assert_success()
        .assert_stdout("hello\n");
    let calls = env.docker_calls();
    assert_eq!(
        subcommands(&calls[2..]),
        ["exec"],
        "a reattach is one docker process"
    );
}

#[test]
fn run_argv_carries_labels_limits_and_hardening() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]), rm_rule()]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    let run = env
        .docker_calls()
        .into_iter()
        .find(|call| call.subcommand() == "run")
        .unwrap();
    let container = format!("podspawn-{}", user.name);
    assert_eq!(
        run.argv[..5],
        ["run", "--detach", "--rm", "--init", "--name"]
    );
    assert_eq!(run.flag("--name"), Some(container.as_str()));
    assert_eq!(run.flag("--hostname"), Some(container.as_str()));
    let labels = run.flags("--label");
    assert_eq!(
        labels[..4],
        [
            "podspawn.managed=true",
            &format!("podspawn.installation={}", env.installation()),
            &format!("podspawn.user={}", user.name),
            "podspawn.project="
        ]
    );
    let session = labels[4].strip_prefix("podspawn.session=").unwrap();
    assert!(
        session.len() == 16 && session.chars().all(|c| c.is_ascii_hexdigit()),
        "{session}"
    );
    assert_eq!(run.flag("--cpus"), Some("2"));
    assert_eq!(run.flag("--memory"), Some("2147483648"));
    // No swap beyond the memory limit.
    assert_eq!(run.flag("--memory-swap"), Some("2147483648"));
    assert_eq!(run.flag("--pids-limit"), Some("1024"));
    assert_eq!(run.flag("--ulimit"), Some("nofile=16384:16384"));
    assert_eq!(run.flag("--runtime"), None);
    assert_eq!(run.flag("--cap-drop"), Some("ALL"));
    assert_eq!(run.flag("--security-opt"), Some("no-new-privileges"));
    assert!(
        !run.argv
            .iter()
            .any(|arg| arg.starts_with("--cap-add") || arg == "--privileged")
    );
    assert_eq!(
        run.flag("--tmpfs"),
        Some(
            format!(
                "/home/{0}:rw,exec,nosuid,nodev,size=1073741824,uid={1},gid={2},mode=0700",
                user.name, user.uid, user.gid
            )
            .as_str()
        )
    );
    assert_eq!(run.flag("--entrypoint"), Some("/bin/sh"));
    let image_at = run.argv.iter().position(|arg| arg == IMAGE).unwrap();
    assert_eq!(run.argv[image_at + 1], "-c");
    assert_eq!(
        run.argv[image_at + 3..],
        [
            "podspawn-setup".to_string(),
            user.name.clone(),
            user.uid.to_string(),
            user.gid.to_string(),
            run.argv[image_at + 7].clone(),
            format!("/home/{}", user.name),
            "/bin/bash".to_string(),
            "28800".to_string(),
            // No sudo.
            "0".to_string(),
        ]
    );
}

#[test]
fn exec_argv_with_and_without_a_terminal() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]), rm_rule()]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "ls -la 'odd name'")
        .var("TERM", "xterm-256color")
        .var("LANG", "C.UTF-8")
        .var("LC_ALL", "C.UTF-8")
        .var("SECRET", "not for the container")
        .run()
        .assert_success();
    env.spawn(&user)
        .var("TERM", "xterm-256color")
        .input(Input::Tty)
        .run()
        .assert_success();
    let execs: Vec<Call> = env
        .docker_calls()
        .into_iter()
        .filter(|call| call.subcommand() == "exec")
        .collect();
    let (piped, tty) = (&execs[0], &execs[1]);
    let container = format!("podspawn-{}", user.name);
    let home = format!("/home/{}", user.name);

    assert_eq!(piped.argv[..2], ["exec", "--interactive"]);
    assert!(!piped.argv.contains(&"--tty".to_string()));
    assert_eq!(
        piped.flag("--user"),
        Some(format!("{}:{}", user.uid, user.gid).as_str())
    );
    assert_eq!(piped.flag("--workdir"), Some(home.as_str()));
    let env_flags = piped.flags("--env");
    for expected in [
        format!("HOME={home}"),
        format!("USER={}", user.name),
        format!("LOGNAME={}", user.name),
        "SHELL=/bin/bash".to_string(),
        "LANG=C.UTF-8".to_string(),
        "LC_ALL=C.UTF-8".to_string(),
    ] {
        assert!(
            env_flags.contains(&expected.as_str()),
            "{expected} not in {env_flags:?}"
        );
    }
    assert!(
        !env_flags
            .iter()
            .any(|e| e.starts_with("TERM=") || e.starts_with("SECRET=")),
        "{env_flags:?}"
    );
    assert!(
        env_flags
            .iter()
            .any(|e| e.starts_with("PODSPAWN_CONNECTION="))
    );
    // A brand-new container: the command waits for the setup, then runs untouched.
    let at = piped.argv.iter().position(|arg| *arg == container).unwrap();
    assert_eq!(piped.argv[at + 1..at + 3], ["/bin/sh", "-c"]);
    assert_eq!(
        piped.argv[at + 4..],
        ["podspawn-wait", "/bin/sh", "-c", "ls -la 'odd name'"]
    );

    assert_eq!(tty.argv[..3], ["exec", "--interactive", "--tty"]);
    assert!(tty.flags("--env").contains(&"TERM=xterm-256color"));
    let at = tty.argv.iter().position(|arg| *arg == container).unwrap();
    // The terminal's size is set before anything runs (an engine before API 1.42
    // would start the shell on a 0x0 terminal).
    assert_eq!(tty.argv[at + 1..at + 3], ["/bin/sh", "-c"]);
    assert_eq!(tty.argv[at + 4..at + 7], ["podspawn-size", "24", "80"]);
    assert_eq!(tty.argv[at + 7..at + 9], ["/bin/sh", "-c"]);
    assert_eq!(
        tty.argv[at + 10..],
        ["podspawn-shell", "/bin/bash"],
        "a login shell, reattached"
    );
}

#[test]
fn docker_runs_with_a_fixed_environment_whatever_the_caller_sets() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    let mut config = std::fs::read_to_string(env.config_path()).unwrap();
    config = config.replace(
        "docker:\n",
        "docker:\n  host: unix:///run/podspawn-test.sock\n",
    );
    env.write_config_text(&config);
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]), rm_rule()]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .var("DOCKER_HOST", "tcp://attacker:2375")
        .var("DOCKER_CONFIG", "/tmp/evil")
        .var("DOCKER_CONTEXT", "evil")
        .var("LD_PRELOAD", "/tmp/evil.so")
        .run()
        .assert_success();
    let docker_config = env.path("docker-config").display().to_string();
    for call in env.docker_calls() {
        let mut seen = call.env.clone();
        // Python itself adds LC_CTYPE under the C locale (PEP 538).
        seen.remove("LC_CTYPE");
        let expected: Vec<(&str, &str)> = vec![
            ("DOCKER_CONFIG", &docker_config),
            ("DOCKER_HOST", "unix:///run/podspawn-test.sock"),
            ("HOME", "/nonexistent"),
            (
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ),
        ];
        let seen: Vec<(&str, &str)> = seen.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(seen, expected, "{:?}", call.argv);
    }
}

#[test]
fn exit_codes_stdout_and_stderr_come_back_as_they_were() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[
        run_rule(),
        Rule::docker(&["exec", "**"])
            .stdout("out\n")
            .stderr("err\n")
            .exit(42),
        rm_rule(),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "exit 42")
        .run()
        .assert_code(42)
        .assert_stdout("out\n")
        .assert_stderr("err\n");
}

#[test]
fn stdin_reaches_the_container_untouched() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]).cat(), rm_rule()]);
    let data: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let run = env
        .spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "cat")
        .stdin(&data)
        .run();
    run.assert_success();
    assert!(
        run.output.stdout == data,
        "stdout differs from stdin ({} bytes)",
        run.output.stdout.len()
    );
}

#[test]
fn twenty_concurrent_first_connections_make_one_container() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[
        run_rule(),
        Rule::docker(&["exec", "**"]).sleep(0.2),
        rm_rule(),
    ]);
    std::thread::scope(|scope| {
        for _ in 0..20 {
            let (env, user) = (&env, &user);
            scope.spawn(move || {
                env.spawn(user)
                    .var("SSH_ORIGINAL_COMMAND", "true")
                    .run()
                    .assert_success();
            });
        }
    });
    let calls = env.docker_calls();
    let runs = calls
        .iter()
        .filter(|call| call.subcommand() == "run")
        .count();
    let execs = calls
        .iter()
        .filter(|call| call.subcommand() == "exec")
        .count();
    assert_eq!((runs, execs), (1, 20), "{:#?}", subcommands(&calls));
}

/// Waits for the fake's "process in the container" of the latest exec.
fn container_process(env: &TestEnv) -> i32 {
    let mut pid = 0;
    assert!(
        env.wait_for(Duration::from_secs(10), || {
            pid = env
                .calls()
                .iter()
                .rev()
                .find(|call| call.program == "container-process")
                .map_or(0, |call| call.pid);
            pid != 0
        }),
        "the exec never started"
    );
    pid
}

fn process_exists(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

/// A connection whose command (`None`: the login shell) runs in the container until
/// spawn's stdin closes; returns spawn and the fake's process in the container.
fn held_connection(env: &TestEnv, user: &SpawnUser, command: Option<&str>) -> (Running, i32) {
    env.scenario(&[
        run_rule(),
        Rule::docker(&["exec", "**"])
            .container_process()
            .wait_for_stdin(),
        rm_rule(),
    ]);
    let mut spawn = env.spawn(user).input(Input::OpenPipe);
    if let Some(command) = command {
        spawn = spawn.var("SSH_ORIGINAL_COMMAND", command);
    }
    let running = spawn.start();
    (running, container_process(env))
}

fn rm_calls(env: &TestEnv) -> usize {
    env.removed_containers().len()
}

#[test]
fn a_kill_9_of_spawn_cannot_pin_the_container() {
    let (env, user) = lifecycle_env("  grace_period: 2s\n");
    let (running, inside) = held_connection(&env, &user, Some("sleep 300"));
    running.signal(libc::SIGKILL);
    let killed = Instant::now();
    let run = running.finish(Duration::from_secs(5));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&run.output.status),
        Some(libc::SIGKILL)
    );
    // Nobody connects again, no cron runs: the keeper notices the dead connection,
    // waits out the grace period and removes the container.
    assert!(
        env.wait_for(Duration::from_secs(8), || rm_calls(&env) == 1),
        "container never removed"
    );
    let after = killed.elapsed();
    assert!(
        after >= Duration::from_secs(2),
        "removed after {after:?}, before the grace period ended"
    );
    unsafe { libc::kill(inside, libc::SIGKILL) };
}

#[test]
fn reconnecting_within_grace_gets_the_same_container() {
    let (env, user) = lifecycle_env("  grace_period: 30s\n");
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]), rm_rule()]);
    for _ in 0..3 {
        env.spawn(&user)
            .var("SSH_ORIGINAL_COMMAND", "true")
            .run()
            .assert_success();
    }
    assert_eq!(
        subcommands(&env.docker_calls()),
        ["run", "exec", "exec", "exec"]
    );
}

#[test]
fn after_grace_the_container_is_destroyed_and_the_next_login_gets_a_new_one() {
    let (env, user) = lifecycle_env("  grace_period: 1s\n");
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]), rm_rule()]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    let ended = Instant::now();
    assert!(
        env.wait_for(Duration::from_secs(6), || rm_calls(&env) == 1),
        "container never removed"
    );
    assert!(ended.elapsed() >= Duration::from_secs(1));
    let rm = env
        .docker_calls()
        .into_iter()
        .find(|call| call.subcommand() == "rm")
        .unwrap();
    assert_eq!(
        rm.argv,
        [
            "rm",
            "--force",
            "--volumes",
            &format!("podspawn-{}", user.name)
        ]
    );
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    assert_eq!(
        subcommands(&env.docker_calls()),
        ["run", "exec", "rm", "run", "exec"]
    );
}

#[test]
fn destroy_on_disconnect_removes_the_container_right_after_spawn_exits() {
    let (env, user) = lifecycle_env("  mode: destroy-on-disconnect\n");
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]), rm_rule()]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    // The exit code reached the user without waiting for docker rm...
    assert_eq!(subcommands(&env.docker_calls())[..2], ["run", "exec"]);
    // ...which the session's keeper runs within a few seconds.
    let started = Instant::now();
    assert!(
        env.wait_for(Duration::from_secs(5), || rm_calls(&env) == 1),
        "{:?}",
        env.docker_calls()
    );
    eprintln!("removed {:?} after spawn exited", started.elapsed());
    assert_eq!(subcommands(&env.docker_calls()), ["run", "exec", "rm"]);
}

#[test]
fn persistent_containers_stay() {
    let (env, user) = lifecycle_env("  mode: persistent\n  grace_period: 1s\n");
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"])]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    std::thread::sleep(Duration::from_secs(3));
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    assert_eq!(subcommands(&env.docker_calls()), ["run", "exec", "exec"]);
    let run = env.docker_calls().into_iter().next().unwrap();
    assert_eq!(run.argv[run.argv.len() - 2], "315360000", "ten years");
}

#[test]
fn a_sigterm_ends_the_connection_and_its_process_in_the_container() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    let (running, inside) = held_connection(&env, &user, Some("sleep 300"));
    assert!(process_exists(inside));
    running.signal(libc::SIGTERM);
    running
        .finish(Duration::from_secs(10))
        .assert_code(128 + libc::SIGTERM)
        .assert_stderr("");
    assert!(
        env.wait_for(Duration::from_secs(3), || !process_exists(inside)),
        "process {inside} lingers"
    );
}

#[test]
fn a_hangup_ends_the_connection_and_its_process_in_the_container() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    let (running, inside) = held_connection(&env, &user, None);
    running.signal(libc::SIGHUP);
    running
        .finish(Duration::from_secs(10))
        .assert_code(128 + libc::SIGHUP);
    assert!(
        env.wait_for(Duration::from_secs(3), || !process_exists(inside)),
        "process {inside} lingers"
    );
}

#[test]
fn a_client_that_vanishes_without_a_terminal_is_noticed() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    // Like sshd after its client was SIGKILLed: no signal at all, only the reading
    // end of spawn's stdout goes away.
    let (mut running, inside) = held_connection(&env, &user, Some("sleep 300"));
    drop(running.child.stdout.take());
    let started = Instant::now();
    while running.child.try_wait().unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "spawn did not notice the lost client"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        env.wait_for(Duration::from_secs(3), || !process_exists(inside)),
        "process {inside} lingers"
    );
}

#[test]
fn a_container_removed_by_hand_is_recreated_without_the_user_noticing() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    let name = format!("podspawn-{}", user.name);
    env.scenario(&[
        run_rule(),
        Rule::docker(&["exec", "**"]).stdout("first\n").times(1),
        Rule::docker(&["exec", "**"])
            .stderr(&format!(
                "Error response from daemon: No such container: {name}\n"
            ))
            .exit(1)
            .times(1),
        Rule::docker(&["inspect", "**"])
            .stderr(&format!("Error: No such object: {name}\n"))
            .exit(1),
        rm_rule(),
        Rule::docker(&["exec", "**"]).stdout("healed\n"),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "echo")
        .run()
        .assert_success()
        .assert_stdout("first\n");
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "echo")
        .run()
        .assert_success()
        .assert_stdout("healed\n")
        .assert_stderr("");
    assert_eq!(
        subcommands(&env.docker_calls()),
        ["run", "exec", "exec", "inspect", "rm", "run", "exec"]
    );
    // The audit log: the second connection in the vanished container ended
    // ("replaced", with its time), and went on as a new one in the new container.
    let events = env.audit_events();
    let second: Vec<_> = events
        .iter()
        .filter(|event| event["pid"] != events[0]["pid"])
        .filter(|event| event["event"].as_str().unwrap().starts_with("session."))
        .collect();
    let described: Vec<(&str, Option<&str>, i64)> = second
        .iter()
        .map(|event| {
            (
                event["event"].as_str().unwrap(),
                event["reason"].as_str(),
                event["connection"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        described,
        [
            ("session.connect", None, 2),
            ("session.disconnect", Some("replaced"), 2),
            ("session.connect", None, 3),
            ("session.disconnect", None, 3),
        ],
        "{events:#?}"
    );
    assert!(second[1]["duration_ms"].as_u64().is_some());
    assert_eq!(second[3]["exit_code"], 0);
    assert_ne!(second[0]["session"], second[2]["session"]);
}

#[test]
fn a_commands_own_exit_1_is_passed_on_with_its_stderr() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    let message = "Error response from daemon: No such container: my-app\n";
    env.scenario(&[
        run_rule(),
        Rule::docker(&["exec", "**"]).times(1),
        Rule::docker(&["exec", "**"]).stderr(message).exit(1),
        Rule::docker(&["inspect", "**"]).stdout("true\n"),
        rm_rule(),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "docker-like-tool")
        .run()
        .assert_code(1)
        .assert_stderr(message);
    assert_eq!(
        subcommands(&env.docker_calls()),
        ["run", "exec", "exec", "inspect"]
    );
}

#[test]
fn an_unreachable_engine_is_one_line_and_exit_125() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[Rule::docker(&["run", "**"])
        .stderr("docker: Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?\n")
        .exit(125)]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_code(125)
        .assert_stdout("")
        .assert_stderr("podspawn: cannot reach the container engine; tell your admin\n");
    let log = std::fs::read_to_string(env.log_path()).unwrap();
    assert!(log.contains("Cannot connect to the Docker daemon"), "{log}");
}

#[test]
fn a_missing_image_or_docker_binary_is_one_line_and_exit_125() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[Rule::docker(&["run", "**"])
        .stderr(&format!("Unable to find image '{IMAGE}' locally\ndocker: Error response from daemon: pull access denied for podspawn-test.\n"))
        .exit(125)]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_code(125)
        .assert_stderr(&format!(
            "podspawn: the image {IMAGE} is not available on this server; tell your admin\n"
        ));

    let config = std::fs::read_to_string(env.config_path()).unwrap();
    let docker = env.path("bin/docker").display().to_string();
    env.write_config_text(&config.replace(&docker, "/nonexistent/docker"));
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_code(125)
        .assert_stderr("podspawn: cannot reach the container engine; tell your admin\n");
}

#[test]
fn spawn_refuses_another_users_name_and_unregistered_users() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.write_key_file("alice", &format!("{}\n", crate::support::ED25519));
    env.invoke_as(&user, &["spawn", "--user", "alice"])
        .run()
        .assert_code(125)
        .assert_stderr("podspawn: this key is not set up for your account; tell your admin\n");
    std::fs::remove_file(env.key_file(&user.name)).unwrap();
    env.spawn(&user).run().assert_code(125).assert_stderr(
        "podspawn: you are not registered with podspawn on this server; tell your admin\n",
    );
    for bad in [
        &["spawn"][..],
        &["spawn", "--user"],
        &["spawn", "--user", "x", "--frob"],
    ] {
        env.podspawn(bad).assert_one_line_error(125, "spawn: ");
    }
    assert!(env.docker_calls().is_empty());
}

#[test]
fn spawn_refuses_root() {
    if !crate::support::is_root() {
        return crate::support::skip("spawn as root", "not root");
    }
    let env = TestEnv::new();
    env.write_key_file("nobody", &format!("{}\n", crate::support::ED25519));
    env.podspawn(&["spawn", "--user", "nobody"])
        .assert_code(125)
        .assert_stderr("podspawn: this key is not set up for your account; tell your admin\n");
}

#[test]
fn remove_user_force_destroys_sessions_and_counts_them() {
    let (env, user) = lifecycle_env("  mode: persistent\n");
    let network = format!("podspawn-{}", user.name);
    env.scenario(&[
        run_rule(),
        Rule::docker(&["exec", "**"]),
        rm_rule(),
        Rule::docker(&["network", "rm", &network]),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    env.podspawn(&["remove-user", &user.name])
        .assert_one_line_error(1, &format!("{} has 1 session(s); use --force", user.name));
    assert!(env.key_file(&user.name).exists());
    env.podspawn(&["remove-user", "--force", &user.name])
        .assert_success()
        .assert_stdout(&format!(
            "removed user {} (1 session(s) destroyed)\n",
            user.name
        ));
    assert_eq!(
        subcommands(&env.docker_calls()),
        ["run", "exec", "rm", "network"]
    );
    assert!(!env.key_file(&user.name).exists());
}

#[test]
fn a_missing_network_is_made_at_the_first_login() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    let network = format!("podspawn-{}", user.name);
    env.scenario(&[
        Rule::docker(&["run", "**"])
            .stderr(&format!(
                "docker: Error response from daemon: network {network} not found.\n"
            ))
            .exit(125)
            .times(1),
        Rule::docker(&["network", "create", "**"]),
        run_rule(),
        Rule::docker(&["exec", "**"]),
        rm_rule(),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success()
        .assert_stderr("");
    let calls = env.docker_calls();
    assert_eq!(subcommands(&calls), ["run", "network", "run", "exec"]);
    let create = &calls[1];
    assert_eq!(create.argv.last().unwrap(), &network);
    // The subnet's .2 is the container's address.
    let subnet = create
        .flag("--subnet")
        .unwrap()
        .trim_end_matches("/28")
        .to_string();
    let (prefix, last) = subnet.rsplit_once('.').unwrap();
    let expected_ip = format!("{prefix}.{}", last.parse::<u8>().unwrap() + 2);
    let run = &calls[2];
    assert_eq!(run.flag("--network"), Some(network.as_str()));
    assert_eq!(run.flag("--ip"), Some(expected_ip.as_str()));
}

#[test]
fn add_user_makes_the_network_of_a_user_with_an_account() {
    let env = TestEnv::new();
    env.scenario(&[Rule::docker(&["network", "create", "**"])]);
    env.podspawn(&["add-user", "nobody", "--key", crate::support::ED25519])
        .assert_success()
        .assert_stdout("added 1 key(s) for nobody\n");
    let calls = env.docker_calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].argv.join(" "),
        format!(
            "network create --driver bridge --subnet 10.214.255.224/28 --gateway 10.214.255.225 \
             --label podspawn.managed=true --label podspawn.installation={} \
             --label podspawn.user=nobody --label podspawn.project= \
             --label podspawn.session= podspawn-nobody",
            env.installation()
        )
    );
    // An engine that is away does not stop the registration.
    let env = TestEnv::new();
    env.scenario(&[Rule::docker(&["network", "create", "**"])
        .stderr("Cannot connect to the Docker daemon at unix:///var/run/docker.sock.\n")
        .exit(1)]);
    let run = env.podspawn(&["add-user", "nobody", "--key", crate::support::ED25519]);
    run.assert_success()
        .assert_stdout("added 1 key(s) for nobody\n");
    assert!(
        run.stderr().contains("the first login will"),
        "{}",
        run.stderr()
    );
}

#[test]
fn a_keeper_for_another_user_is_refused() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.write_key_file("alice", &format!("{}\n", crate::support::ED25519));
    // Run by anyone, it would keep the borrowed group and sit on alice's lock.
    let run = env.invoke_as(&user, &["keeper", "--user", "alice"]).run();
    run.assert_code(1).assert_stdout("");
    let log = std::fs::read_to_string(env.log_path()).unwrap_or_default();
    assert!(
        log.contains(&format!("keeper --user alice was run by {}", user.name)),
        "{log}"
    );
    assert!(
        !env.path("state/state.db").exists() && !env.path("state/locks").exists(),
        "the refused keeper touched the state"
    );
    // Nor may an account podspawn does not know run its own.
    std::fs::remove_file(env.key_file(&user.name)).unwrap();
    env.invoke_as(&user, &["keeper", "--user", &user.name])
        .run()
        .assert_code(1);
    let log = std::fs::read_to_string(env.log_path()).unwrap_or_default();
    assert!(
        log.contains(&format!("{} is not registered", user.name)),
        "{log}"
    );
    assert!(!env.path("state/state.db").exists());
    assert!(env.docker_calls().is_empty());
}

#[test]
fn a_lock_held_too_long_ends_the_login_with_one_line_in_time() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n  lock_timeout: 1s\n");
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]), rm_rule()]);
    // Someone holds the user's lock and never lets go (a stopped process).
    let holder = hold_user_lock(&env, &user);
    let started = Instant::now();
    let run = env.spawn(&user).var("SSH_ORIGINAL_COMMAND", "true").run();
    let waited = started.elapsed();
    run.assert_one_line_error(125, "your session is busy");
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(5),
        "gave up after {waited:?}"
    );
    assert!(env.docker_calls().is_empty());
    // Once the holder lets go, logins work again.
    drop(holder);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
}

#[test]
fn bytes_that_are_not_utf8_are_passed_on_not_panicked_on_or_rerouted() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    env.scenario(&[
        run_rule(),
        Rule::docker(&["exec", "**"]).stdout("ran\n"),
        rm_rule(),
    ]);
    // A latin-1 file name in an scp command, and a locale a client made up.
    let run = env
        .spawn(&user)
        .var_bytes("SSH_ORIGINAL_COMMAND", b"scp -t caf\xe9.txt")
        .var_bytes("LANG", b"de_DE.\xff")
        .var_bytes("LC_CTYPE", b"\xfe")
        .run();
    run.assert_success()
        .assert_stdout("ran\n")
        .assert_stderr("");
    let calls = env.docker_calls();
    let exec = calls
        .iter()
        .find(|call| call.subcommand() == "exec")
        .unwrap();
    // The command, as a command (a non-UTF-8 one used to become a login shell), its
    // bytes escaped so that the engine's JSON API cannot change them.
    let argv = &exec.argv;
    assert_eq!(argv.last().unwrap(), "scp -t caf\\0351.txt", "{argv:?}");
    assert_eq!(argv[argv.len() - 2], "podspawn-command", "{argv:?}");
    assert!(!argv.iter().any(|arg| arg == "podspawn-shell"), "{argv:?}");
    // A locale that is not UTF-8 names none: left out, and logged.
    let envs = exec.flags("--env");
    assert!(
        !envs
            .iter()
            .any(|pair| pair.starts_with("LANG=") || pair.starts_with("LC_CTYPE=")),
        "{envs:?}"
    );
    let log = std::fs::read_to_string(env.log_path()).unwrap();
    assert!(log.contains("not passing LANG="), "{log}");
}

/// docker's answer to a `run` whose name is taken.
fn name_in_use(name: &str) -> Rule {
    Rule::docker(&["run", "**"])
        .stderr(&format!(
            "docker: Error response from daemon: Conflict. The container name \"/{name}\" is already in use by container \"0123abcd\".\n"
        ))
        .exit(125)
        .times(1)
}

fn labels_rule(name: &str, answer: &str) -> Rule {
    Rule::docker(&[
        "inspect",
        "--type",
        "container",
        "--format",
        "*podspawn.managed*",
        name,
    ])
    .stdout(answer)
}

#[test]
fn a_container_in_the_way_is_removed_only_if_it_is_podspawns() {
    // Someone else's container of that name (no labels), or another installation's on
    // the same engine for a user of the same name: it stays; one line says why.
    for another_installations in [false, true] {
        let (env, user) = lifecycle_env("  grace_period: 60s\n");
        let name = format!("podspawn-{}", user.name);
        let labels = if another_installations {
            format!("true\t0000beef\t{}\t\n", user.name)
        } else {
            "<no value>\t<no value>\t<no value>\t<no value>\n".to_string()
        };
        env.scenario(&[name_in_use(&name), labels_rule(&name, &labels)]);
        env.spawn(&user)
            .var("SSH_ORIGINAL_COMMAND", "true")
            .run()
            .assert_one_line_error(
                125,
                &format!("a container named {name} that this podspawn did not make"),
            );
        assert_eq!(subcommands(&env.docker_calls()), ["run", "inspect"]);
    }

    // podspawn's own, left without a row: removed, and the login goes on.
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    let name = format!("podspawn-{}", user.name);
    env.scenario(&[
        name_in_use(&name),
        labels_rule(
            &name,
            &format!("true\t{}\t{}\t\n", env.installation(), user.name),
        ),
        rm_rule(),
        run_rule(),
        Rule::docker(&["exec", "**"]),
    ]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    assert_eq!(
        subcommands(&env.docker_calls()),
        ["run", "inspect", "rm", "run", "exec"]
    );
    assert_eq!(env.removed_containers(), [name]);
}

/// A connection on its way in while its user is removed: either its session is
/// counted and destroyed, or it finds the keys gone. Never a container that outlives
/// the removal.
#[test]
fn remove_user_during_a_cold_start_leaves_no_session_behind() {
    let (env, user) = lifecycle_env("  mode: persistent\n");
    let network = format!("podspawn-{}", user.name);
    env.scenario(&[
        run_rule().sleep(2.0),
        Rule::docker(&["exec", "**"]),
        rm_rule(),
        Rule::docker(&["network", "rm", &network]),
    ]);
    let connecting = env.spawn(&user).var("SSH_ORIGINAL_COMMAND", "true").start();
    // The spawn holds the user's lock while docker creates the container.
    assert!(env.wait_for(Duration::from_secs(10), || !env.docker_calls().is_empty()));
    env.podspawn(&["remove-user", "--force", &user.name])
        .assert_success()
        .assert_stdout(&format!(
            "removed user {} (1 session(s) destroyed)\n",
            user.name
        ));
    connecting.finish(Duration::from_secs(30));
    assert_eq!(
        env.removed_containers(),
        [format!("podspawn-{}", user.name)]
    );
    assert!(!env.key_file(&user.name).exists());
}

/// Before its program runs (here: waiting for a held lock), a connection whose client
/// hangs up or is interrupted ends at once, as it always did: only `stop`'s signal is
/// caught that early.
#[test]
fn a_hangup_before_the_program_runs_ends_the_connection_at_once() {
    for signal in [libc::SIGHUP, libc::SIGINT, libc::SIGTERM] {
        let (env, user) = lifecycle_env("  grace_period: 60s\n  lock_timeout: 30s\n");
        env.scenario(&[]);
        let _holder = hold_user_lock(&env, &user);
        let running = env.spawn(&user).var("SSH_ORIGINAL_COMMAND", "true").start();
        std::thread::sleep(Duration::from_millis(500));
        running.signal(signal);
        let started = Instant::now();
        let run = running.finish(Duration::from_secs(10));
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "signal {signal} took {:?}",
            started.elapsed()
        );
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&run.output.status),
            Some(signal),
            "signal {signal}: {:?}",
            run.output.status
        );
        assert!(env.docker_calls().is_empty());
    }
}

/// A user's own file names their image, shell and env: spawn runs them, and the
/// file's variables win over what the client sent.
#[test]
fn a_users_own_image_shell_and_env_win_over_the_servers_and_the_clients() {
    let (env, user) = lifecycle_env("  grace_period: 60s\n");
    let users = env.path("users");
    std::fs::create_dir_all(&users).unwrap();
    std::fs::write(
        users.join(format!("{}.yaml", user.name)),
        "image: their-image:1\nshell: /bin/zsh\nenv:\n  LANG: en_GB.UTF-8\n  EDITOR: vim\n",
    )
    .unwrap();
    let config = std::fs::read_to_string(env.config_path()).unwrap();
    env.write_config_text(&config.replacen(
        "  create_accounts: false\n",
        &format!(
            "  create_accounts: false\n  user_dir: {}\n",
            users.display()
        ),
        1,
    ));
    env.scenario(&[run_rule(), Rule::docker(&["exec", "**"]), rm_rule()]);
    env.spawn(&user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .var("LANG", "C")
        .run()
        .assert_success();
    let calls = env.docker_calls();
    let run = calls
        .iter()
        .find(|call| call.subcommand() == "run")
        .unwrap();
    assert!(
        run.argv.iter().any(|arg| arg == "their-image:1"),
        "{:?}",
        run.argv
    );
    assert!(!run.argv.iter().any(|arg| arg == IMAGE), "{:?}", run.argv);
    assert!(
        run.argv.iter().any(|arg| arg == "/bin/zsh"),
        "{:?}",
        run.argv
    );
    let exec = calls
        .iter()
        .find(|call| call.subcommand() == "exec")
        .unwrap();
    let envs = exec.flags("--env");
    assert!(envs.contains(&"EDITOR=vim"), "{envs:?}");
    assert!(envs.contains(&"LANG=en_GB.UTF-8"), "{envs:?}");
    assert!(!envs.contains(&"LANG=C"), "{envs:?}");
}
