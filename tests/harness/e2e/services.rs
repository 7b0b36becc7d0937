//! Companion services through a real sshd, with service images built offline from
//! Debian's PostgreSQL and Redis (`testdata/build-service-images`): the dev container
//! reaches its project's database by name and runs a real query; the same service
//! name in two sessions is two servers, and no user reaches another's; a terminal
//! sees them start and `ssh -L` reaches one by its address; after the last
//! disconnect and the grace period every container, network and volume of the
//! session is gone, also after a SIGKILLed spawn; a host path as a volume is refused.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Account, Server, labelled};
use crate::real_engine::{Terminal, image, service_images};

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn container_of(user: &Account, project: &str) -> String {
    format!("podspawn-{}-{project}", user.name)
}

/// A project whose Podfile is `podfile`, added; returns what add-project printed.
pub(super) fn add(server: &Server, project: &str, podfile: &str) -> String {
    let repo = server.git_repo(&format!("{project}-repo"), &[("podfile.yaml", podfile)]);
    let output = server.podspawn(&["add-project", project, "--repo", repo.to_str().unwrap()]);
    assert!(output.status.success(), "{}", server.explain(&output));
    stdout(&output)
}

/// A Podfile on the test image with one Redis service named `cache`.
pub(super) fn redis_podfile() -> String {
    format!(
        "base: {base}\nservices:\n  - name: cache\n    image: {redis}\n    ports: [6379]\n",
        base = image(),
        redis = service_images().1
    )
}

/// What of `user`'s session in `project` the engine has: its containers, its
/// network, its volumes (by podspawn's labels and names).
fn remains(user: &Account, project: &str) -> Vec<String> {
    let container = container_of(user, project);
    let mut found: Vec<String> = Vec::new();
    let names = |kind: &str| -> Vec<String> {
        let format = "{{.Name}}";
        let mut args = match kind {
            "ps" => vec!["ps", "--all", "--format", "{{.Names}}"],
            kind => vec![kind, "ls", "--format", format],
        };
        let filter = format!("label=podspawn.user={}", user.name);
        args.extend(["--filter", &filter]);
        let output = Command::new("docker").args(&args).output().unwrap();
        stdout(&output).lines().map(str::to_string).collect()
    };
    let volume_prefix = format!("podspawn-{}.{project}.", user.name);
    for kind in ["ps", "network", "volume"] {
        found.extend(names(kind).into_iter().filter(|name| {
            name == &container
                || name.starts_with(&format!("{container}."))
                || name.starts_with(&volume_prefix)
        }));
    }
    found.sort();
    found
}

/// A command for the dev container: sends Redis `commands` to `host`, then `QUIT`
/// (the server answers `+OK` and closes), and prints every reply line (bash's
/// /dev/tcp, so no client is needed).
pub(super) fn redis_script(host: &str, commands: &[&str]) -> String {
    let sent: String = commands
        .iter()
        .chain(&["QUIT"])
        .map(|command| format!("{command}\\r\\n"))
        .collect();
    format!(
        "bash <<'EOF'\n\
         exec 3<>/dev/tcp/{host}/6379 || exit 9\n\
         printf '{sent}' >&3\n\
         while IFS= read -r line <&3; do printf '%s\\n' \"${{line%$'\\r'}}\"; done\n\
         EOF\n"
    )
}

/// Waits until nothing of the session is left; how long that took after `since`.
fn gone_after(server: &Server, user: &Account, project: &str, since: Instant) -> Duration {
    let gone = server.wait_until(Duration::from_secs(30), || {
        remains(user, project).is_empty()
    });
    assert!(
        gone.is_some(),
        "left behind: {:?}\n{}",
        remains(user, project),
        server.podspawn_log()
    );
    since.elapsed()
}

#[test]
fn a_projects_database_answers_by_name_and_goes_with_the_session() {
    let server = crate::server_or_skip!("2s", 1);
    let user = &server.users[0];
    let project = server.project_name("api");
    let postgres = &service_images().0;
    let podfile = format!(
        "base: {base}\npackages: [postgresql-client]\n\
         env:\n  DATABASE_URL: postgres://postgres:devpass@postgres:5432/testdb\n\
         services:\n  - name: postgres\n    image: {postgres}\n    ports: [5432]\n\
         \x20   env:\n      POSTGRES_PASSWORD: devpass\n      POSTGRES_DB: testdb\n\
         \x20   volumes: [pgdata:/var/lib/postgresql/data]\n",
        base = image()
    );
    let added = add(&server, &project, &podfile);
    assert!(
        added.contains(&format!("  Service postgres ({postgres})... present\n")),
        "{added}"
    );

    // The first connection makes the session and its database, waits for it, and
    // its command queries it by name; its output is the command's alone.
    let output = server.run_in(
        user,
        &project,
        "psql \"$DATABASE_URL\" -tAc 'CREATE TABLE t (n int); INSERT INTO t VALUES (40); \
         SELECT n + 2 FROM t'",
    );
    assert!(output.status.success(), "{}", server.explain(&output));
    assert_eq!(stdout(&output), "CREATE TABLE\nINSERT 0 1\n42\n");
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    let ended = Instant::now();

    let container = container_of(user, &project);
    let there = remains(user, &project);
    assert!(there.contains(&container), "{there:?}");
    assert!(
        there.contains(&format!("{container}.postgres")),
        "{there:?}"
    );
    assert!(there.contains(&format!("{container}.net")), "{there:?}");
    let volume_prefix = format!("podspawn-{}.{project}.", user.name);
    assert!(
        there
            .iter()
            .any(|name| name.starts_with(&volume_prefix) && name.ends_with(".pgdata")),
        "the session's own volume: {there:?}"
    );
    // Hardened as the session's container, where the image allows.
    let inspect = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.HostConfig.CapDrop}} {{.HostConfig.CapAdd}} {{.HostConfig.SecurityOpt}} \
             {{.HostConfig.PublishAllPorts}} {{len .HostConfig.PortBindings}} {{.HostConfig.PidsLimit}}",
            &format!("{container}.postgres"),
        ])
        .output()
        .unwrap();
    assert_eq!(
        stdout(&inspect).trim(),
        "[ALL] [CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_SETGID CAP_SETUID] \
         [no-new-privileges] false 0 512"
    );

    // The session ends with its grace period, and all of it with the session.
    let after = gone_after(&server, user, &project, ended);
    assert!(after >= Duration::from_secs(2), "gone after {after:?}");
    eprintln!(
        "the session, its database, network and volume gone {:.1}s after the last \
         disconnect (grace 2s)",
        after.as_secs_f64()
    );
}

#[test]
fn the_same_service_name_is_another_server_in_each_session_and_no_user_reaches_anothers() {
    let server = crate::server_or_skip!("60s", 2);
    let (alice, bob) = (&server.users[0], &server.users[1]);
    let one = server.project_name("one");
    let two = server.project_name("two");
    add(&server, &one, &redis_podfile());
    add(&server, &two, &redis_podfile());
    let ask = |user: &Account, project: &str, commands: &[&str]| {
        let output = server.run_in(user, project, &redis_script("cache", commands));
        assert!(output.status.success(), "{}", server.explain(&output));
        let replies = stdout(&output);
        replies
            .strip_suffix("+OK\n")
            .unwrap_or_else(|| panic!("no reply to QUIT: {replies:?}"))
            .to_string()
    };
    assert_eq!(
        ask(alice, &one, &["SET k alice-one", "GET k"]),
        "+OK\n$9\nalice-one\n"
    );
    // The same name in alice's other project is another server…
    assert_eq!(ask(alice, &two, &["GET k", "PING"]), "$-1\n+PONG\n");
    // …and in bob's session of the same project, bob's own.
    assert_eq!(ask(bob, &one, &["GET k", "PING"]), "$-1\n+PONG\n");
    assert_eq!(
        ask(alice, &one, &["GET k", "PING"]),
        "$9\nalice-one\n+PONG\n"
    );

    // Not by its address either: bob's container cannot open alice's.
    let list = server.podspawn(&["list", "--json"]);
    let sessions: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let alices = sessions
        .as_array()
        .unwrap()
        .iter()
        .find(|session| {
            session["user"] == alice.name.as_str() && session["project"] == one.as_str()
        })
        .expect("alice's session is listed");
    let address = alices["services"][0]["address"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(alices["services"][0]["status"], "running");
    let probe = format!("timeout 3 bash -c 'exec 3<>/dev/tcp/{address}/6379' && echo reached");

    let output = server.run_in(bob, &one, &probe);
    assert!(!output.status.success(), "{}", server.explain(&output));
    assert_eq!(stdout(&output), "");
    let output = server.run_in(alice, &one, &probe);
    assert_eq!(stdout(&output), "reached\n", "{}", server.explain(&output));
}

#[test]
fn a_terminal_sees_its_services_start_and_ssh_l_reaches_one_by_its_address() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let project = server.project_name("web");
    add(&server, &project, &redis_podfile());
    let mut terminal = Terminal::start(server.ssh_project(user, &project, &["-tt"], None), 24, 120);
    let wait = Duration::from_secs(30);
    let redis = &service_images().1;
    assert!(
        terminal.expect(
            &format!("Starting companion service: cache ({redis})... done"),
            wait
        ),
        "{}\n{}",
        terminal.seen,
        server.podspawn_log()
    );
    assert!(
        terminal.expect("podspawn: services cache at ", wait),
        "{}",
        terminal.seen
    );
    let banner = terminal.seen.clone();
    let address = banner
        .split("podspawn: services cache at ")
        .nth(1)
        .and_then(|rest| rest.split(':').next())
        .unwrap()
        .to_string();
    terminal.type_text("exit\n");
    assert!(terminal.child.wait().unwrap().success());

    // The address is in the user's permitopen plan: -L reaches the service.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let forward = format!("{port}:{address}:6379");
    let mut tunnel = server
        .ssh(
            user,
            &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &forward],
            None,
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut answer = String::new();
    let reached = server.wait_until(Duration::from_secs(15), || {
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let _ = stream.write_all(b"PING\r\n");
        let mut reply = [0u8; 7];
        let read = stream.read(&mut reply).unwrap_or(0);
        answer = String::from_utf8_lossy(&reply[..read]).to_string();
        answer == "+PONG\r\n"
    });
    let _ = tunnel.kill();
    let _ = tunnel.wait();
    assert!(
        reached.is_some(),
        "through -L: {answer:?}\n{}",
        server.sshd_log()
    );
}

#[test]
fn a_sigkilled_spawn_still_has_its_session_and_services_reaped() {
    let server = crate::server_or_skip!("2s", 1);
    let user = &server.users[0];
    let project = server.project_name("cache");
    add(&server, &project, &redis_podfile());
    let mut client = server
        .ssh_project(user, &project, &[], Some("sleep 300"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let container = container_of(user, &project);
    let started = server.wait_until(Duration::from_secs(60), || {
        crate::real_engine::processes_of(&container, user.uid)
            .iter()
            .any(|line| line.contains("sleep 300"))
    });
    assert!(
        started.is_some(),
        "never started\n{}",
        server.podspawn_log()
    );
    assert!(remains(user, &project).contains(&format!("{container}.cache")));
    // The connection's own spawn, killed so that no exit path of its runs.
    let killed = Command::new("pkill")
        .args(["-KILL", "-u", &user.name, "-f", " spawn --user "])
        .status()
        .unwrap();
    assert!(killed.success(), "no spawn process to kill");
    let at = Instant::now();
    let after = gone_after(&server, user, &project, at);
    let _ = client.kill();
    let _ = client.wait();
    eprintln!(
        "after a SIGKILLed spawn, all of the session gone in {:.1}s (grace 2s)",
        after.as_secs_f64()
    );
}

#[test]
fn a_podfile_with_a_host_path_volume_is_refused_and_leaves_nothing() {
    let server = crate::server_or_skip!("60s", 1);
    let project = server.project_name("evil");
    let podfile = format!(
        "base: {base}\nservices:\n  - name: db\n    image: {redis}\n    volumes:\n      - /etc:/host\n",
        base = image(),
        redis = service_images().1
    );
    let repo = server.git_repo("evil-repo", &[("podfile.yaml", &podfile)]);
    let output = server.podspawn(&["add-project", &project, "--repo", repo.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1), "{}", server.explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("podspawn:"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("podfile.yaml, line 6: services[0].volumes")
            && said[0].contains("host path"),
        "{stderr}"
    );
    let projects = server.podspawn(&["list", "--projects", "--json"]);
    assert_eq!(stdout(&projects), "[]\n");
    assert!(labelled("images", &format!("podspawn.project={project}")).is_empty());
}

#[test]
fn verify_image_tries_a_service_image_as_a_session_would_run_it() {
    let server = crate::server_or_skip!("60s", 0);
    let (postgres, redis) = service_images();
    let verify = |args: &[&str]| {
        let mut all = vec!["verify-image", "--service"];
        all.extend(args);
        server.podspawn(&all)
    };
    let output = verify(&["--env", "POSTGRES_PASSWORD=x", postgres]);
    assert!(output.status.success(), "{}", server.explain(&output));
    let report = stdout(&output);
    assert!(
        report.contains(
            "✓ keeps running as a service (capabilities CHOWN DAC_OVERRIDE FOWNER SETGID SETUID, \
             no new privileges"
        ),
        "{report}"
    );
    assert!(report.contains("✓ port 5432 "), "{report}");
    assert!(
        report.contains("⚠ volume /var/lib/postgresql/data:"),
        "{report}"
    );
    // Without its password the image stops: said, with its own last words.
    let output = verify(&[postgres]);
    assert_eq!(output.status.code(), Some(1), "{}", server.explain(&output));
    let report = stdout(&output);
    assert!(report.contains("✗ stopped (exit "), "{report}");
    assert!(report.contains("POSTGRES_PASSWORD is required"), "{report}");
    // Too few capabilities for its start: the same image stops.
    let config = server.root.join("config.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!("{text}services:\n  capabilities: [SETUID, SETGID]\n"),
    )
    .unwrap();
    let output = verify(&["--port", "6379", redis]);
    assert_eq!(output.status.code(), Some(1), "{}", server.explain(&output));
    assert!(
        stdout(&output).contains("Operation not permitted"),
        "{}",
        stdout(&output)
    );
    // Nothing of the tries is left.
    let left = Command::new("docker")
        .args(["ps", "--all", "--quiet", "--filter", "name=podspawn.probe."])
        .output()
        .unwrap();
    assert_eq!(stdout(&left), "");
}
