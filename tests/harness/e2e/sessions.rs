//! Sessions through a real sshd: terminal, remote commands, sharing and isolation,
//! multiplexing, and the ordinary account podspawn must not touch.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use crate::real_engine::{Terminal, check_terminal_session};

#[test]
fn an_interactive_shell_has_a_terminal_that_resizes_and_takes_ctrl_c() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let terminal = Terminal::start(server.ssh(user, &["-tt"], None), 24, 80);
    check_terminal_session(terminal, &|| {
        format!("{}\n{}", server.podspawn_log(), server.sshd_log())
    });
}

#[test]
fn remote_commands_return_their_exit_codes_and_keep_stdout_and_stderr_apart() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    for code in [0, 1, 42, 255] {
        let output = server.run(
            user,
            &format!("echo out-{code}; echo err-{code} >&2; exit {code}"),
        );
        assert_eq!(
            output.status.code(),
            Some(code),
            "{}",
            server.explain(&output)
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("out-{code}\n")
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stderr),
            format!("err-{code}\n")
        );
    }
}

#[test]
fn special_characters_and_quoting_arrive_as_typed() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let command = r#"printf '[%s]\n' "a  b" 'c"d' '$HOME' 'x;y' "é ü" "$(echo sub)" '*' '\n'"#;
    let output = server.run(user, command);
    assert!(output.status.success(), "{}", server.explain(&output));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "[a  b]\n[c\"d]\n[$HOME]\n[x;y]\n[é ü]\n[sub]\n[*]\n[\\n]\n"
    );
}

#[test]
fn a_hundred_mebibytes_of_binary_stdin_come_back_unchanged() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let data: Vec<u8> = (0..100u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let mut child = server
        .ssh(user, &[], Some("cat"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || stdin.write_all(&data))
    };
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "{}", server.explain(&output));
    assert!(
        output.stdout == data,
        "{} of {} bytes came back, or changed",
        output.stdout.len(),
        data.len()
    );
}

#[test]
fn two_logins_of_one_user_share_a_container_and_two_users_are_apart() {
    let server = crate::server_or_skip!("60s", 2);
    let (alice, bob) = (&server.users[0], &server.users[1]);
    let first = server
        .ssh(
            alice,
            &[],
            Some("echo mine > ~/secret; sleep 4; cat ~/second"),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        server
            .wait_until(Duration::from_secs(30), || server.container_exists(alice))
            .is_some()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let second = server.run(alice, "cat ~/secret; hostname; echo hello > ~/second");
    assert_eq!(
        String::from_utf8_lossy(&second.stdout),
        format!("mine\n{}\n", alice.container()),
        "{}",
        server.explain(&second)
    );
    let first = first.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&first.stdout),
        "hello\n",
        "{}",
        server.explain(&first)
    );

    let other = server.run(
        bob,
        &format!(
            "hostname; ls /home; cat /home/{}/secret 2>&1 || echo unreadable",
            alice.name
        ),
    );
    let text = String::from_utf8_lossy(&other.stdout).to_string();
    assert!(
        text.starts_with(&format!("{}\n{}\n", bob.container(), bob.name)),
        "{}",
        server.explain(&other)
    );
    assert!(text.ends_with("unreadable\n"), "{text}");
    assert!(!text.contains("mine"), "{text}");
}

#[test]
fn one_multiplexed_connection_carries_sftp_and_several_commands_into_one_container() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let socket = server.scratch("mux").join("control");
    let control = format!("ControlPath={}", socket.display());
    let master = server
        .ssh(
            user,
            &["-o", "ControlMaster=yes", "-o", &control, "-N"],
            None,
        )
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        server
            .wait_until(Duration::from_secs(10), || socket.exists())
            .is_some(),
        "no master"
    );
    let through_master = ["-o", "ControlMaster=no", "-o", &control];
    let mut commands = Vec::new();
    for index in 0..4 {
        let child = server
            .ssh(
                user,
                &through_master,
                Some(&format!("sleep 1; hostname; echo exec-{index}")),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        commands.push(child);
    }
    let batch = server.scratch("mux").join("batch");
    std::fs::write(
        &batch,
        "put /etc/hostname uploaded\nls -1\nget uploaded /dev/null\n",
    )
    .unwrap();
    let sftp = std::process::Command::new("sftp")
        .args(server.client_options(user))
        .args([
            "-P",
            &server.port.to_string(),
            "-o",
            "ControlMaster=no",
            "-o",
            &control,
            "-b",
        ])
        .arg(&batch)
        .arg(format!("{}@127.0.0.1", user.name))
        .env("HOME", server.root.join("client"))
        .output()
        .unwrap();
    assert!(sftp.status.success(), "{}", server.explain(&sftp));
    assert!(String::from_utf8_lossy(&sftp.stdout).contains("uploaded"));
    for (index, child) in commands.into_iter().enumerate() {
        let output = child.wait_with_output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{}\nexec-{index}\n", user.container()),
            "{}",
            server.explain(&output)
        );
    }
    let check = server.run(user, "ls ~/uploaded");
    assert!(
        check.status.success(),
        "sftp's upload is in the same container"
    );
    assert_eq!(
        server
            .podspawn_log()
            .matches(" INFO create container podspawn-")
            .count(),
        1,
        "{}",
        server.podspawn_log()
    );
    let mut master = master;
    let _ = master.kill();
    let _ = master.wait();
}

#[test]
fn an_ordinary_account_still_logs_in_normally() {
    let server = crate::server_or_skip!("60s", 1);
    let output = server.run(&server.plain, "id -un; echo $HOME; hostname");
    assert!(output.status.success(), "{}", server.explain(&output));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{0}\n/home/{0}\n{1}\n", server.plain.name, host.trim())
    );
    // podspawn was asked (every login asks it), said nothing, and made nothing.
    assert!(!server.container_exists(&server.plain));
    assert!(
        !server
            .podspawn_log()
            .contains(&format!("{} connects", server.plain.name))
    );
}

#[test]
fn accounts_add_user_creates_log_in_with_and_without_pam() {
    for use_pam in [false, true] {
        let server = crate::server_or_skip!("60s", 1, use_pam);
        let user = &server.users[0];
        // Created by add-user: no usable password, but not locked.
        let shadow = std::fs::read_to_string("/etc/shadow").unwrap();
        let entry = shadow
            .lines()
            .find(|line| line.starts_with(&format!("{}:", user.name)))
            .unwrap();
        assert_eq!(entry.split(':').nth(1), Some("*"), "{entry}");
        let output = server.run(user, "hostname");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            format!("{}\n", user.container()),
            "UsePAM {use_pam}: {}",
            server.explain(&output)
        );
    }
}

#[test]
fn remove_user_force_ends_the_session_and_deletes_the_account_podspawn_made() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let output = server.run(user, "true");
    assert!(output.status.success(), "{}", server.explain(&output));
    assert!(server.container_exists(user));
    let removed = server.podspawn(&["remove-user", "--force", &user.name]);
    assert_eq!(
        String::from_utf8_lossy(&removed.stdout),
        format!("removed user {} (1 session(s) destroyed)\n", user.name),
        "{}",
        server.explain(&removed)
    );
    assert!(!server.container_exists(user));
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd
            .lines()
            .any(|line| line.starts_with(&format!("{}:", user.name))),
        "the account is still there"
    );
    let after = server.run(user, "true");
    assert_eq!(after.status.code(), Some(255), "{}", server.explain(&after));
    // The ordinary account, which podspawn did not create, is never touched.
    let plain = server.podspawn(&["remove-user", &server.plain.name]);
    assert!(!plain.status.success());
    assert!(
        std::fs::read_to_string("/etc/passwd")
            .unwrap()
            .contains(&format!("{}:", server.plain.name))
    );
}
