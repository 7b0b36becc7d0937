//! Forwarding through a real sshd: the agent, TCP to the user's own container (and
//! nothing else), no Unix-socket or remote forwarding, and X11's DISPLAY.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Account, Server, free_port};

fn container_address(account: &Account) -> String {
    let output = Command::new("docker")
        .args([
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            &account.container(),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `ssh -N -L local:target` in the background; returns it and the local port once
/// it listens.
fn forward(server: &Server, account: &Account, target: &str) -> (std::process::Child, u16) {
    let port = free_port();
    let spec = format!("127.0.0.1:{port}:{target}");
    let child = server
        .ssh(
            account,
            &["-N", "-o", "ExitOnForwardFailure=yes", "-L", &spec],
            None,
        )
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let listening = server.wait_until(Duration::from_secs(15), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    assert!(listening.is_some(), "ssh -L {spec} never listened");
    (child, port)
}

/// What a client gets from a forwarded port: the bytes until the far end closes.
fn fetch(port: u16, request: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let _ = stream.write_all(request);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer
}

fn stop(mut child: std::process::Child) -> String {
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// A real ssh-agent in `dir` holding a new key commented `carried-key`: the agent,
/// and its socket.
pub(super) fn agent_with_key(server: &Server, dir: &Path) -> (std::process::Child, PathBuf) {
    let socket = dir.join("agent.sock");
    let agent = Command::new("ssh-agent")
        .arg("-D")
        .arg("-a")
        .arg(&socket)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        server
            .wait_until(Duration::from_secs(10), || socket.exists())
            .is_some()
    );
    let key = dir.join("carried");
    assert!(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "carried-key", "-f"])
            .arg(&key)
            .status()
            .unwrap()
            .success()
    );
    assert!(
        Command::new("ssh-add")
            .arg("-q")
            .arg(&key)
            .env("SSH_AUTH_SOCK", &socket)
            .status()
            .unwrap()
            .success()
    );
    (agent, socket)
}

#[test]
fn agent_forwarding_reaches_the_container_for_every_connection() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let dir = server.scratch("agent");
    let (mut agent, socket) = agent_with_key(&server, &dir);
    let first = server
        .ssh_with_agent(user, &socket, "sleep 3; ssh-add -l")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let second = server
        .ssh_with_agent(user, &socket, "echo $SSH_AUTH_SOCK; ssh-add -l")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&second.stdout).to_string();
    assert!(
        text.starts_with("/run/ssh-agent/agent-"),
        "{}",
        server.explain(&second)
    );
    assert!(text.contains("carried-key"), "{}", server.explain(&second));
    let first = first.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&first.stdout).contains("carried-key"),
        "{}",
        server.explain(&first)
    );

    // Without -A there is no agent, and the sockets of ended connections are gone.
    let without = server.run(user, "ssh-add -l; ls /run/ssh-agent | wc -l");
    assert_eq!(
        without.status.code(),
        Some(0),
        "{}",
        server.explain(&without)
    );
    let text = String::from_utf8_lossy(&without.stdout).to_string();
    assert!(text.ends_with("0\n"), "{text}");
    let _ = agent.kill();
    let _ = agent.wait();
}

#[test]
fn local_forwarding_reaches_the_users_container_and_nothing_else() {
    let server = crate::server_or_skip!("60s", 2);
    let (alice, bob) = (&server.users[0], &server.users[1]);
    // A web server in each container, on port 8080.
    let mut servers = Vec::new();
    for user in [alice, bob] {
        let command = format!(
            "mkdir -p ~/www && echo hello-from-{0} > ~/www/index.html && exec busybox httpd -f -p 8080 -h ~/www",
            user.name
        );
        servers.push(
            server
                .ssh(user, &[], Some(&command))
                .stdin(Stdio::null())
                .spawn()
                .unwrap(),
        );
    }
    for user in [alice, bob] {
        let up = server.wait_until(Duration::from_secs(30), || {
            server
                .user_processes(user)
                .iter()
                .any(|line| line.contains("httpd"))
        });
        assert!(
            up.is_some(),
            "httpd did not start for {}\n{}",
            user.name,
            server.podspawn_log()
        );
    }
    let alice_address = container_address(alice);
    let bob_address = container_address(bob);

    // The working way: -L to the container's own address (what the banner names).
    let (tunnel, port) = forward(&server, alice, &format!("{alice_address}:8080"));
    let page = fetch(port, b"GET /index.html HTTP/1.0\r\n\r\n");
    assert!(
        String::from_utf8_lossy(&page).contains(&format!("hello-from-{}", alice.name)),
        "{}",
        String::from_utf8_lossy(&page)
    );
    stop(tunnel);

    // What -L localhost:PORT really means: the host's port. Refused, like the
    // host's sshd itself and the other user's container.
    for target in [
        format!("localhost:{}", server.port),
        format!("127.0.0.1:{}", server.port),
        format!("{bob_address}:8080"),
    ] {
        let (tunnel, port) = forward(&server, alice, &target);
        let answer = fetch(port, b"GET / HTTP/1.0\r\n\r\n");
        assert!(
            answer.is_empty(),
            "-L {target} reached something: {}",
            String::from_utf8_lossy(&answer)
        );
        stop(tunnel);
        // sshd logs "Received request from ADDR port N to connect to host H port P,
        // but the request was denied." for what permitopen does not allow.
        let (host, port) = target.rsplit_once(':').unwrap();
        let denied = format!("to connect to host {host} port {port}, but the request was denied");
        assert!(
            server.sshd_log().contains(&denied),
            "-L {target}:\n{}",
            server.sshd_log()
        );
    }
    for mut child in servers {
        let _ = child.kill();
        let _ = child.wait();
    }
}

#[test]
fn unix_socket_and_remote_forwarding_are_refused() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let local = server.scratch("streamlocal").join("docker.sock");
    let spec = format!("{}:/var/run/docker.sock", local.display());
    let child = server
        .ssh(user, &["-N", "-L", &spec], None)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        server
            .wait_until(Duration::from_secs(15), || local.exists())
            .is_some()
    );
    let mut stream = std::os::unix::net::UnixStream::connect(&local).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    use std::io::Write;
    let _ = stream.write_all(b"GET /version HTTP/1.0\r\n\r\n");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    assert!(
        answer.is_empty(),
        "the docker socket answered: {}",
        String::from_utf8_lossy(&answer)
    );
    stop(child);
    assert!(
        server.sshd_log().contains(
            "refused streamlocal port forward: originator  port 0, target /var/run/docker.sock"
        ),
        "{}",
        server.sshd_log()
    );

    let remote = server
        .ssh(
            user,
            &[
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                "127.0.0.1:0:127.0.0.1:22",
            ],
            None,
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!remote.status.success());
    assert!(
        String::from_utf8_lossy(&remote.stderr).contains("remote port forwarding failed"),
        "{}",
        server.explain(&remote)
    );
}

#[test]
fn x11_forwarding_sets_display_in_the_container() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let output = server
        .ssh(user, &["-X"], Some("echo \"[$DISPLAY]\""))
        .env("DISPLAY", ":99")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", server.explain(&output));
    let text = String::from_utf8_lossy(&output.stdout).to_string();
    assert!(
        text.starts_with("[localhost:1") && text.ends_with(".0]\n"),
        "{}",
        server.explain(&output)
    );
}

/// How many of `tries` TCP connections from `from`'s container to `address` reach
/// it: a closed port of a reachable container answers at once ("Connection
/// refused"); a dropped packet never does. The tries are 50 ms apart, each left
/// waiting until a second after the last, so a slow start cannot count as dropped.
fn reached(server: &Server, from: &Account, address: &str, tries: usize) -> usize {
    let probe = format!(
        "bash -c 'for i in $(seq {tries}); do (exec 3<>/dev/tcp/{address}/9) 2>&1 & sleep 0.05; \
         done; sleep 1; kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; true'"
    );
    let output = server.run(from, &probe);
    assert!(output.status.success(), "{}", server.explain(&output));
    String::from_utf8_lossy(&output.stdout)
        .matches("connect: Connection refused")
        .count()
}

/// Networks made and removed, over and over, until dropped: what other users'
/// sessions do all day. Counts the networks it made; removes what it made.
struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl Churn {
    fn start(tag: String) -> Churn {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let running = stop.clone();
        let thread = std::thread::spawn(move || {
            let quiet = |args: &[&str]| {
                Command::new("docker")
                    .args(args)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            };
            let mut made = 0;
            let mut round = 0;
            while !running.load(std::sync::atomic::Ordering::SeqCst) {
                let name = format!("{tag}-{round}");
                // No subnet of its own: docker picks a free one.
                if quiet(&["network", "create", &name]) {
                    made += 1;
                }
                quiet(&["network", "rm", &name]);
                round += 1;
            }
            made
        });
        Churn {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Docker keeps networks apart with rules it takes out and puts back whenever any
/// network is made (measured: 1 of 60 connections got through meanwhile, and 2 and 6
/// of 150 here without podspawn's rule); server-setup's own rule, where Docker never
/// writes, holds throughout.
#[test]
fn no_connection_crosses_between_users_while_networks_come_and_go() {
    let server = crate::server_or_skip!("60s", 2);
    let (alice, bob) = (&server.users[0], &server.users[1]);
    for user in [alice, bob] {
        let started = server.run(user, "true");
        assert!(started.status.success(), "{}", server.explain(&started));
    }
    let alice_address = container_address(alice);
    // The probe sees a reachable container: alice's own.
    assert_eq!(reached(&server, alice, &alice_address, 3), 3);

    let churn = Churn::start(server.project_name("churn"));
    let crossed = reached(&server, bob, &alice_address, 150);
    let made = churn.finish();
    assert!(made >= 5, "only {made} networks came and went");
    assert_eq!(crossed, 0, "bob reached alice's container {crossed} times");
    // And the other way.
    let bob_address = container_address(bob);
    assert_eq!(reached(&server, bob, &bob_address, 3), 3);
    let back = reached(&server, alice, &bob_address, 20);
    assert_eq!(back, 0, "alice reached bob's container {back} times");
}
