//! Limits that hold, on the real engine: the home stops at its size, a fork bomb at
//! the pids limit, a memory hog is killed inside its container; and a user's own
//! settings file changes their container and nobody else's.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{RealEnv, image, unavailable};

/// `docker inspect -f FORMAT container`, trimmed.
fn inspect(container: &str, format: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "-f", format, container])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

#[test]
fn filling_the_home_stops_at_its_size() {
    let env = real_env_or_skip!("60s");
    env.configure("  home_size: 16m\n", "");
    let output = env.run(
        "dd if=/dev/zero of=$HOME/fill bs=1M count=64 2>&1; echo dd=$?; \
         echo size=$(du -m $HOME/fill | cut -f1)",
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        text.contains("No space left on device") && text.contains("dd=1"),
        "{}",
        env.explain(&output)
    );
    let size: u32 = text
        .lines()
        .find_map(|line| line.strip_prefix("size="))
        .and_then(|size| size.parse().ok())
        .unwrap_or_else(|| panic!("{}", env.explain(&output)));
    assert!((15..=16).contains(&size), "the home took {size} MiB");
    println!("home_size 16m: dd stopped at {size} MiB (No space left on device)");
}

/// A memory hog is killed inside the container (no swap to go to), the connection
/// says so with 137, and the container and its next connection live on.
#[test]
fn a_memory_hog_is_killed_inside_and_the_container_lives_on() {
    let env = real_env_or_skip!("60s");
    env.configure("  memory: 96m\n  home_size: 8m\n", "");
    // `tail` keeps a line with no newline whole: it grows until something stops it.
    let output = env.run("head -c 1024m /dev/zero | tail -n 1 >/dev/null; echo tail=$?");
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert_eq!(text, "tail=137\n", "{}", env.explain(&output));
    let container = env.container();
    assert_eq!(inspect(&container, "{{.HostConfig.Memory}}"), "100663296");
    assert_eq!(
        inspect(&container, "{{.HostConfig.MemorySwap}}"),
        "100663296"
    );
    let again = env.run("echo alive");
    assert_eq!(again.stdout, b"alive\n", "{}", env.explain(&again));
    println!("memory 96m, no swap: the hog was SIGKILLed (exit 137), the container lived on");
}

/// A fork bomb stops at the pids limit: the container holds no more than that many
/// processes, another user's container answers meanwhile, and the bomb's connection
/// goes with its processes.
#[test]
fn a_fork_bomb_stops_at_the_pids_limit_and_others_stay_responsive() {
    let env = real_env_or_skip!("60s");
    let other = RealEnv::new("60s", image());
    env.configure("  pids_limit: 64\n", "");
    for warm in [&env, &other] {
        let started = warm.run("true");
        assert!(started.status.success(), "{}", warm.explain(&started));
    }
    let mut bomb = env
        // Every process forks copies of itself for ever: held only by the limit
        // (bash retries a fork the limit refused; dash's shells would give up).
        .spawn(Some(
            "bash -c 'f() { while :; do f & done; }; f 2>/dev/null'",
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The container's pids cgroup (v1, or v2's scope): how many tasks it has, and how
    // many forks the limit refused.
    let id = super::container_id(&env.container());
    assert!(!id.is_empty(), "no container");
    let cgroup = [
        format!("/sys/fs/cgroup/pids/docker/{id}"),
        format!("/sys/fs/cgroup/system.slice/docker-{id}.scope"),
    ]
    .into_iter()
    .find(|dir| std::path::Path::new(dir).join("pids.current").exists())
    .expect("the container's pids cgroup");
    let read = |file: &str| fs::read_to_string(format!("{cgroup}/{file}")).unwrap_or_default();
    let refused = || -> u64 {
        read("pids.events")
            .split_whitespace()
            .nth(1)
            .and_then(|count| count.parse().ok())
            .unwrap_or(0)
    };
    let mut most = 0;
    let hit = env.wait_until(Duration::from_secs(60), || {
        most = most.max(read("pids.current").trim().parse().unwrap_or(0));
        refused() > 0
    });
    assert!(
        hit.is_some(),
        "the bomb never met the limit ({most} tasks at most)"
    );
    // Held at the limit for a while.
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(200));
        most = most.max(read("pids.current").trim().parse().unwrap_or(0));
    }
    assert!(most <= 64, "{most} processes in a container limited to 64");
    let start = Instant::now();
    let answered = other.run("echo fine");
    let took = start.elapsed();
    assert_eq!(answered.stdout, b"fine\n", "{}", other.explain(&answered));
    println!(
        "pids_limit 64: the bomb held {most} processes, {} forks refused; another user's \
         connection took {took:?}",
        refused()
    );
    let _ = bomb.kill();
    let _ = bomb.wait();
}

/// A user's own file gives them their own limits, environment and max sessions;
/// another user keeps the server's; a broken file refuses only its user, with one line.
#[test]
fn a_users_own_settings_apply_to_them_alone() {
    let env = real_env_or_skip!("60s");
    let other = RealEnv::new("60s", image());
    let users = env.root.join("users");
    fs::create_dir_all(&users).unwrap();
    fs::set_permissions(&users, fs::Permissions::from_mode(0o755)).unwrap();
    let file = users.join(format!("{}.yaml", env.user));
    fs::write(
        &file,
        "cpus: 0.5\nmemory: 256m\npids_limit: 100\nhome_size: 32m\nmax_sessions: 1\n\
         env:\n  GREETING: hello ${PODSPAWN_USER}\n",
    )
    .unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let output = env.run("echo \"$GREETING\"; df -m $HOME | tail -1 | awk '{print $2}'");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("hello {}\n32\n", env.user),
        "{}",
        env.explain(&output)
    );
    let container = env.container();
    assert_eq!(inspect(&container, "{{.HostConfig.NanoCpus}}"), "500000000");
    assert_eq!(inspect(&container, "{{.HostConfig.Memory}}"), "268435456");
    assert_eq!(inspect(&container, "{{.HostConfig.PidsLimit}}"), "100");
    // max_sessions 1: a project or scratch session of theirs is refused.
    let scratch = env
        .spawn(Some("true"))
        .env("PODSPAWN_PROJECT", "scratch1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        scratch.status.code(),
        Some(125),
        "{}",
        env.explain(&scratch)
    );

    let theirs = other.run("echo \"[$GREETING]\"");
    assert_eq!(theirs.stdout, b"[]\n", "{}", other.explain(&theirs));
    assert_eq!(
        inspect(&other.container(), "{{.HostConfig.Memory}}"),
        "536870912"
    );

    // A broken file: one line for the user, the file and line for the admin.
    fs::write(&file, "cpus: 1\nmemroy: 1g\n").unwrap();
    let _ = Command::new("docker")
        .args(["rm", "-f", &container])
        .output();
    let broken = env.run("true");
    assert_eq!(broken.status.code(), Some(125));
    assert_eq!(
        String::from_utf8_lossy(&broken.stderr),
        "podspawn: the podspawn configuration of this server is broken; tell your admin\n"
    );
    assert!(
        env.log()
            .contains(&format!("config {}, line 2: ", file.display())),
        "{}",
        env.log()
    );
}

/// `security.read_only_root`: the user's session works — their identity, home, /tmp
/// — and nothing else of the image can be written; /etc is the container's own copy
/// and goes with it.
#[test]
fn a_read_only_root_keeps_the_session_working_and_the_image_unwritten() {
    let env = real_env_or_skip!("1s");
    env.configure("", "security:\n  read_only_root: true\n");
    let output = env.run(
        "id -un; echo x > $HOME/a && echo x > /tmp/a && echo x > /var/tmp/a && echo writable; \
         touch /usr/x 2>&1; touch /x 2>&1; git --version >/dev/null && echo git",
    );
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        text.starts_with(&format!("{}\nwritable\n", env.user)),
        "{}",
        env.explain(&output)
    );
    assert_eq!(
        text.matches("Read-only file system").count(),
        2,
        "{}",
        env.explain(&output)
    );
    assert!(text.ends_with("git\n"), "{}", env.explain(&output));
    let container = env.container();
    assert_eq!(
        inspect(&container, "{{.HostConfig.ReadonlyRootfs}}"),
        "true"
    );
    let volume = inspect(
        &container,
        "{{range .Mounts}}{{if eq .Destination \"/etc\"}}{{.Name}}{{end}}{{end}}",
    );
    assert!(!volume.is_empty(), "no /etc volume");
    let labels = Command::new("docker")
        .args(["volume", "inspect", "-f", "{{json .Labels}}", &volume])
        .output()
        .unwrap();
    let labels = String::from_utf8_lossy(&labels.stdout).to_string();
    assert!(
        labels.contains(&format!("\"podspawn.user\":\"{}\"", env.user))
            && labels.contains("\"podspawn.session\":\""),
        "{labels}"
    );
    // podspawn's own teardown, after the grace period.
    let gone = env.wait_until(Duration::from_secs(30), || {
        !Command::new("docker")
            .args(["volume", "inspect", &volume])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    });
    assert!(
        gone.is_some(),
        "the /etc volume {volume} outlived its container"
    );
}

/// `security.sudo` (here with the admin's `sudo_without_sandbox`): the user installs
/// a package with sudo; in a default session sudo cannot become root.
#[test]
fn sudo_installs_a_package_only_where_the_server_allows_it() {
    let env = real_env_or_skip!("60s");
    let install = "sudo -n apt-get update -qq >/dev/null 2>&1; \
                   sudo -n apt-get install -y -qq jq >/dev/null 2>&1; echo apt=$?; \
                   echo '{\"a\":1}' | jq .a";
    let refused = env.run(install);
    let text = String::from_utf8_lossy(&refused.stdout).to_string();
    assert!(text.starts_with("apt=1\n"), "{}", env.explain(&refused));
    let said = env.run("sudo -n true 2>&1");
    assert!(
        String::from_utf8_lossy(&said.stdout).contains("no new privileges"),
        "{}",
        env.explain(&said)
    );

    let _ = Command::new("docker")
        .args(["rm", "--force", &env.container()])
        .output();
    env.configure(
        "",
        "security:\n  sudo: true\n  sudo_without_sandbox: true\n",
    );
    let installed = env.run(install);
    assert_eq!(
        String::from_utf8_lossy(&installed.stdout),
        "apt=0\n1\n",
        "{}",
        env.explain(&installed)
    );
    let root = env.run("sudo -n id -u");
    assert_eq!(root.stdout, b"0\n", "{}", env.explain(&root));
}

/// Under gVisor the engine's pids limit counts the sandbox's host threads: podspawn
/// limits processes inside (`nproc`, the sandbox's own count) and sets the host
/// limit above what they need. A fork bomb whose processes are reaped makes that
/// gVisor's threads grow without end, so the bomb ends its own sandbox at the host
/// limit; the host's count stays bounded, another user's session answers, and the
/// user's next connection gets a working container.
#[test]
fn a_fork_bomb_under_gvisor_is_held_to_its_sandbox() {
    if !crate::support::engine_has_runtime("runsc") {
        return crate::support::skip("gVisor test", "the engine has no runsc runtime");
    }
    let env = real_env_or_skip!("60s");
    let other = RealEnv::new("60s", image());
    let warm = other.run("true");
    assert!(warm.status.success(), "{}", other.explain(&warm));
    env.configure("  pids_limit: 64\n", "security:\n  runtime: runsc\n");
    let started = env.run("true");
    assert!(started.status.success(), "{}", env.explain(&started));
    let container = env.container();
    let limit: u32 = inspect(&container, "{{.HostConfig.PidsLimit}}")
        .parse()
        .unwrap();
    let id = super::container_id(&container);
    let tasks = || -> u32 {
        fs::read_to_string(format!("/sys/fs/cgroup/pids/docker/{id}/pids.current"))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0)
    };
    let mut bomb = env
        .spawn(Some("f() { while :; do f & done; }; f 2>/dev/null"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut most = 0;
    let mut answers = Vec::new();
    while start.elapsed() < Duration::from_secs(20) && super::container_exists(&container) {
        most = most.max(tasks());
        let asked = Instant::now();
        let answered = other.run("echo fine");
        assert_eq!(answered.stdout, b"fine\n", "{}", other.explain(&answered));
        answers.push(asked.elapsed());
    }
    let held = super::container_exists(&container);
    let _ = bomb.kill();
    let _ = bomb.wait();
    assert!(most <= limit, "{most} host tasks under a limit of {limit}");
    let slowest = answers.iter().max().copied().unwrap_or_default();
    println!(
        "gVisor, pids_limit 64 (host limit {limit}): {} after {:?}, at most {most} host tasks; \
         another user's connection answered {} times, the slowest in {slowest:?}",
        if held {
            "the sandbox held"
        } else {
            "the sandbox died"
        },
        start.elapsed(),
        answers.len()
    );
    let _ = Command::new("docker")
        .args(["rm", "--force", &container])
        .output();
    let again = env.run("echo back");
    assert_eq!(again.stdout, b"back\n", "{}", env.explain(&again));
}

/// An engine that accepts the connection and never answers (or is not there at all)
/// ends a login with one line, within `docker.timeout`, instead of holding it.
#[test]
fn an_engine_that_never_answers_ends_a_login_with_one_line_in_bounded_time() {
    let env = real_env_or_skip!("60s");
    let socket = env.root.join("hung.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o777)).unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming() {
            // Accepted, never answered.
            held.push(stream);
        }
    });
    env.configure(
        "",
        &format!(
            "docker:\n  host: unix://{}\n  timeout: 2s\n",
            socket.display()
        ),
    );
    let start = Instant::now();
    let output = env.run("true");
    let took = start.elapsed();
    assert_eq!(output.status.code(), Some(125), "{}", env.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "podspawn: the container engine did not answer within 2s; tell your admin\n"
    );
    // A few calls at most, each ended at its 2s.
    assert!(took < Duration::from_secs(20), "the login took {took:?}");
    println!("a hung engine (docker.timeout 2s): the login ended with one line after {took:?}");

    env.configure(
        "",
        &format!("docker:\n  host: unix://{}/none.sock\n", env.root.display()),
    );
    let start = Instant::now();
    let output = env.run("true");
    let took = start.elapsed();
    assert_eq!(output.status.code(), Some(125), "{}", env.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "podspawn: cannot reach the container engine; tell your admin\n"
    );
    println!("no engine at the socket: the login ended with one line after {took:?}");
}
