//! Disconnects through a real sshd: the grace period with no cron, and clients that
//! vanish (killed with and without a terminal) leaving nothing behind.

use std::process::Stdio;
use std::time::{Duration, Instant};

use super::{Account, Server};
use crate::real_engine::Terminal;

#[test]
fn after_the_last_disconnect_the_container_goes_within_the_grace_period() {
    let server = crate::server_or_skip!("2s", 1);
    let user = &server.users[0];
    let output = server.run(user, "true");
    assert!(output.status.success(), "{}", server.explain(&output));
    let ended = Instant::now();
    assert!(server.container_exists(user));
    let gone = server.wait_until(Duration::from_secs(10), || !server.container_exists(user));
    assert!(
        gone.is_some(),
        "the container outlived its grace period\n{}",
        server.podspawn_log()
    );
    assert!(
        ended.elapsed() >= Duration::from_secs(2),
        "gone after {:?}",
        ended.elapsed()
    );
    eprintln!(
        "gone {:.1}s after the last disconnect (grace 2s)",
        ended.elapsed().as_secs_f64()
    );
}

#[test]
fn a_client_killed_without_a_terminal_leaves_nothing_behind() {
    let server = crate::server_or_skip!("3s", 1);
    let user = &server.users[0];
    let mut client = server
        .ssh(user, &[], Some("sleep 300"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let started = server.wait_until(Duration::from_secs(30), || {
        server
            .user_processes(user)
            .iter()
            .any(|line| line.contains("sleep 300"))
    });
    assert!(
        started.is_some(),
        "the command never started\n{}",
        server.podspawn_log()
    );
    client.kill().unwrap();
    client.wait().unwrap();
    // sshd sends no signal here: spawn notices that its stdout's reader is gone.
    assert_nothing_left(&server, user, "its killed client");
}

#[test]
fn a_terminal_session_dropped_by_sshd_leaves_nothing_behind() {
    let server = crate::server_or_skip!("3s", 1);
    let user = &server.users[0];
    let mut terminal = Terminal::start(server.ssh(user, &["-tt"], None), 24, 80);
    terminal.type_text("sleep 300\n");
    let started = server.wait_until(Duration::from_secs(30), || {
        server
            .user_processes(user)
            .iter()
            .any(|line| line.contains("sleep 300"))
    });
    assert!(
        started.is_some(),
        "the command never started:\n{}\n{}",
        terminal.seen,
        server.podspawn_log()
    );
    // The client dies; sshd hangs up the terminal (SIGHUP to spawn).
    terminal.child.kill().unwrap();
    terminal.child.wait().unwrap();
    assert_nothing_left(&server, user, "its dropped session");
}

/// No process of `user` is left in the container, and the container goes once the
/// grace period ends.
fn assert_nothing_left(server: &Server, user: &Account, after: &str) {
    let cleared = server.wait_until(Duration::from_secs(10), || {
        server.user_processes(user).is_empty()
    });
    assert!(
        cleared.is_some(),
        "left behind: {:?}\n{}",
        server.user_processes(user),
        server.podspawn_log()
    );
    let gone = server.wait_until(Duration::from_secs(15), || !server.container_exists(user));
    assert!(
        gone.is_some(),
        "the container outlived {after}\n{}",
        server.podspawn_log()
    );
}

/// `podspawn stop USER`: every connection of the session ends with one line that
/// says why — a terminal's too — the container goes, nothing is made again, and the
/// user's next connection gets a new one.
#[test]
fn stop_ends_a_session_its_connections_say_why_and_the_next_login_starts_afresh() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let piped = server
        .ssh(user, &[], Some("echo started; sleep 300"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut terminal = Terminal::start(server.ssh(user, &["-tt"], None), 24, 80);
    terminal.type_text("echo ready-$((6*7))\n");
    assert!(
        terminal.expect("ready-42", Duration::from_secs(30)),
        "{}",
        terminal.seen
    );
    let both = server.wait_until(Duration::from_secs(30), || {
        server
            .user_processes(user)
            .iter()
            .any(|line| line.contains("sleep 300"))
    });
    assert!(both.is_some(), "{}", server.podspawn_log());
    let before = crate::real_engine::container_id(&user.container());

    let stop = server.podspawn(&["stop", &user.name]);
    assert!(stop.status.success(), "{}", server.explain(&stop));
    assert_eq!(
        String::from_utf8_lossy(&stop.stdout),
        format!("stopped {} (2 connection(s) ended)\n", user.container())
    );
    let piped = piped.wait_with_output().unwrap();
    assert_eq!(piped.status.code(), Some(125), "{}", server.explain(&piped));
    assert_eq!(
        String::from_utf8_lossy(&piped.stderr),
        "podspawn: an admin ended this session\n"
    );
    assert!(
        terminal.expect(
            "podspawn: an admin ended this session",
            Duration::from_secs(30)
        ),
        "{}",
        terminal.seen
    );
    assert_eq!(terminal.child.wait().unwrap().code(), Some(125));
    assert!(!server.container_exists(user), "the container stayed");

    let again = server.run(user, "true");
    assert!(again.status.success(), "{}", server.explain(&again));
    assert_ne!(
        crate::real_engine::container_id(&user.container()),
        before,
        "the next login got the stopped container back"
    );
}
