//! The laptop commands on their own, in a test's private home: `setup`'s edit of
//! `~/.ssh/config` (checked by the real ssh client), `connect`'s relay against a TCP
//! server of the test's, its one-line errors, and `connect --prepare`'s files.

use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{PODSPAWN, TestEnv};

fn home(env: &TestEnv) -> PathBuf {
    env.path("home")
}

fn write_client_config(env: &TestEnv, text: &str) {
    fs::create_dir_all(home(env).join(".podspawn")).unwrap();
    fs::write(home(env).join(".podspawn/config.yaml"), text).unwrap();
}

/// `podspawn connect ARGS` with piped stdin and stdout, in the test's home.
fn connect(env: &TestEnv, args: &[&str]) -> std::process::Child {
    Command::new(PODSPAWN)
        .arg("connect")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home(env))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// `ssh -G -F FILE HOST`: the options ssh would use.
fn ssh_options(file: &PathBuf, host: &str) -> String {
    let output = Command::new("ssh")
        .args(["-G", "-F"])
        .arg(file)
        .arg(host)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn setup_puts_its_block_first_changes_nothing_twice_and_remove_gives_back_the_bytes() {
    let env = TestEnv::new();
    let ssh_dir = home(&env).join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    let config = ssh_dir.join("config");
    let original = "ServerAliveInterval 61\n# mine\nHost work\n    User me";
    fs::write(&config, original).unwrap();
    fs::set_permissions(&config, fs::Permissions::from_mode(0o644)).unwrap();

    let setup = env.podspawn(&["setup"]);
    setup.assert_success().assert_stderr("");
    let said = setup.stdout();
    assert!(
        said.contains(&format!(
            "added podspawn's block to {} (backup: {}.podspawn.bak)",
            config.display(),
            config.display()
        )),
        "{said}"
    );
    assert!(said.contains("next: name your server in"), "{said}");
    let edited = fs::read_to_string(&config).unwrap();
    assert!(edited.starts_with("# >>> podspawn:"), "{edited}");
    assert!(edited.ends_with(original), "{edited}");
    assert_eq!(
        fs::read_to_string(ssh_dir.join("config.podspawn.bak")).unwrap(),
        original
    );
    assert_eq!(fs::metadata(&config).unwrap().mode() & 0o7777, 0o644);
    // What the user had before the block applies as before.
    let other = ssh_options(&config, "elsewhere.example");
    assert!(other.contains("\nserveraliveinterval 61\n"), "{other}");
    assert!(!other.contains("proxycommand"), "{other}");
    assert!(ssh_options(&config, "work").contains("\nuser me\n"));

    let again = env.podspawn(&["setup"]);
    again.assert_success();
    assert!(
        again
            .stdout()
            .contains("already has podspawn's block; nothing changed")
    );
    assert_eq!(fs::read_to_string(&config).unwrap(), edited);

    let removed = env.podspawn(&["setup", "--remove"]);
    removed.assert_success();
    assert_eq!(fs::read(&config).unwrap(), original.as_bytes());
    assert!(!home(&env).join(".podspawn/ssh").exists());
    env.podspawn(&["setup", "--remove"])
        .assert_success()
        .assert_stdout(&format!(
            "{} has no podspawn block; nothing changed\n",
            config.display()
        ));
    assert_eq!(fs::read(&config).unwrap(), original.as_bytes());
}

#[test]
fn setup_makes_a_private_ssh_dir_follows_a_linked_config_and_takes_away_what_it_made() {
    let env = TestEnv::new();
    let ssh_dir = home(&env).join(".ssh");
    env.podspawn(&["setup"]).assert_success();
    assert_eq!(fs::metadata(&ssh_dir).unwrap().mode() & 0o7777, 0o700);
    assert_eq!(
        fs::metadata(ssh_dir.join("config")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(
        fs::metadata(home(&env).join(".podspawn/ssh"))
            .unwrap()
            .mode()
            & 0o7777,
        0o700
    );
    env.podspawn(&["setup", "--remove"])
        .assert_success()
        .assert_stdout(&format!(
            "removed {} (podspawn setup had made it)\n",
            ssh_dir.join("config").display()
        ));
    assert!(!ssh_dir.join("config").exists());

    // Dotfiles kept elsewhere: the link stays a link, its target is edited.
    let dotfiles = home(&env).join("dotfiles");
    fs::create_dir_all(&dotfiles).unwrap();
    fs::write(dotfiles.join("ssh_config"), "Host x\n").unwrap();
    std::os::unix::fs::symlink(dotfiles.join("ssh_config"), ssh_dir.join("config")).unwrap();
    env.podspawn(&["setup"]).assert_success();
    assert!(
        fs::symlink_metadata(ssh_dir.join("config"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        fs::read_to_string(dotfiles.join("ssh_config"))
            .unwrap()
            .starts_with("# >>> podspawn:")
    );
    env.podspawn(&["setup", "--remove"]).assert_success();
    assert_eq!(
        fs::read_to_string(dotfiles.join("ssh_config")).unwrap(),
        "Host x\n"
    );
}

#[test]
fn setup_leaves_alone_a_config_it_cannot_edit_safely() {
    let env = TestEnv::new();
    let ssh_dir = home(&env).join(".ssh");
    fs::create_dir_all(&ssh_dir).unwrap();
    let config = ssh_dir.join("config");
    for (text, needle) in [
        (
            "# >>> podspawn: written by `podspawn setup`; `podspawn setup --remove` takes it out >>>\nHost x\n",
            "podspawn's begin line without its end line",
        ),
        (
            "Host x\n    NoSuchOption yes\n",
            "ssh cannot read it as it is",
        ),
    ] {
        fs::write(&config, text).unwrap();
        env.podspawn(&["setup"])
            .assert_one_line_error(1, &config.display().to_string())
            .assert_stderr_contains(needle);
        assert_eq!(fs::read_to_string(&config).unwrap(), text);
        assert!(!ssh_dir.join("config.podspawn.bak").exists());
    }
}

/// A TCP server of the test's, on one connection: `serve` gets the accepted stream.
fn server(serve: impl FnOnce(std::net::TcpStream) + Send + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        serve(stream);
    });
    port
}

#[test]
fn connect_relays_both_ways_and_passes_each_half_close_on() {
    let env = TestEnv::new();
    // ssh's end of input reaches the server as end-of-file, and the answer to it
    // still comes back.
    let port = server(|mut stream| {
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        stream
            .write_all(format!("got {}", got.len()).as_bytes())
            .unwrap();
    });
    let mut child = connect(&env, &["u", "127.0.0.1", &port.to_string()]);
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&vec![7u8; 3_000_000]));
    let output = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "got 3000000");
    assert!(output.status.success(), "{output:?}");

    // The server's end reaches ssh as end-of-file, and ssh's input still flows.
    let (seen, heard) = std::sync::mpsc::channel();
    let port = server(move |mut stream| {
        stream.write_all(b"hello").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut got = String::new();
        stream.read_to_string(&mut got).unwrap();
        seen.send(got).unwrap();
    });
    let mut child = connect(&env, &["u", "127.0.0.1", &port.to_string()]);
    let mut from_server = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut from_server)
        .unwrap();
    assert_eq!(from_server, "hello");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"bye after your end").unwrap();
    drop(stdin);
    assert_eq!(
        heard.recv_timeout(Duration::from_secs(10)).unwrap(),
        "bye after your end"
    );
    assert!(child.wait().unwrap().success());
}

/// Runs `connect ARGS` with stdin closed; (exit code, stdout, stderr).
fn connect_once(env: &TestEnv, args: &[&str]) -> (Option<i32>, String, String) {
    let mut child = connect(env, args);
    drop(child.stdin.take());
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn greeter(text: &'static str) -> u16 {
    server(move |mut stream| stream.write_all(text.as_bytes()).unwrap())
}

#[test]
fn pod_names_go_to_their_mapping_else_the_default_and_other_hosts_as_given() {
    let env = TestEnv::new();
    let default = greeter("default server");
    let mapped = greeter("mapped server");
    // `localhost`: a name, resolved by the system's resolver.
    write_client_config(
        &env,
        &format!(
            "servers:\n  default: localhost:{default}\n  mappings:\n    web.pod: 127.0.0.1:{mapped}\n"
        ),
    );
    // The config's port wins over the one ssh passes.
    assert_eq!(
        connect_once(&env, &["u", "api.pod", "22"]),
        (Some(0), "default server".into(), String::new())
    );
    assert_eq!(
        connect_once(&env, &["u", "WEB.pod", "22"]),
        (Some(0), "mapped server".into(), String::new())
    );
    let direct = greeter("as given");
    assert_eq!(
        connect_once(&env, &["u", "127.0.0.1", &direct.to_string()]),
        (Some(0), "as given".into(), String::new())
    );
    // --fdpass with pipes for stdout (no ProxyUseFdpass): relayed all the same.
    let piped = greeter("relayed");
    assert_eq!(
        connect_once(&env, &["--fdpass", "127.0.0.1", &piped.to_string()]),
        (Some(0), "relayed".into(), String::new())
    );
}

#[test]
fn connect_says_in_one_line_which_name_which_server_and_what_to_fix() {
    let env = TestEnv::new();
    let config = home(&env).join(".podspawn/config.yaml");
    let check = |args: &[&str], expected: String| {
        let (code, stdout, stderr) = connect_once(&env, args);
        assert_eq!((code, stdout.as_str()), (Some(1), ""), "{stderr}");
        assert_eq!(stderr, format!("podspawn: {expected}\n"));
    };
    check(
        &["u", "api.pod", "22"],
        format!(
            "no server for api.pod: {} does not exist; write `servers: {{default: HOST}}` there",
            config.display()
        ),
    );
    write_client_config(&env, "servers:\n  mappings:\n    web: 127.0.0.1:1\n");
    check(
        &["u", "api.pod", "22"],
        format!(
            "no server for api.pod: set servers.default (or servers.mappings.api) in {}",
            config.display()
        ),
    );
    check(
        &["u", "web.pod", "22"],
        format!(
            "cannot reach 127.0.0.1:1 (servers.mappings.web in {}, for web.pod): Connection refused",
            config.display()
        ),
    );
    check(
        &["u", "Bad_Name.pod", "22"],
        "bad_name.pod is no podspawn name: \"bad_name\" is not a project name (a lower-case \
         letter, then letters, digits and '-', at most 21)"
            .to_string(),
    );
    write_client_config(&env, "servers:\n  default: nowhere.invalid\n");
    check(
        &["u", "api.pod", "22"],
        format!(
            "cannot resolve nowhere.invalid (servers.default in {}, for api.pod): no such host",
            config.display()
        ),
    );
    // The block's fallback: the name's options did not reach ssh, so no connection
    // that would land in the default environment.
    check(
        &["--unprepared", "u", "api.pod", "22"],
        "not connecting to api.pod: podspawn's options for it (its project, its server's \
         host key name) did not reach ssh; `podspawn doctor` finds out why"
            .to_string(),
    );
    write_client_config(&env, "servers:\n  defualt: x\n");
    check(
        &["u", "api.pod", "22"],
        format!(
            "config {}, line 2: servers.defualt: unknown key (expected `default` or `mappings`)",
            config.display()
        ),
    );
}

#[test]
fn prepare_writes_each_names_ssh_options_and_nothing_for_a_name_that_is_none() {
    let env = TestEnv::new();
    let hosts = home(&env).join(".podspawn/ssh");
    let prepare = |host: &str, port: &str| {
        let (code, stdout, stderr) = connect_once(&env, &["--prepare", host, port]);
        assert_eq!((stdout.as_str(), stderr.as_str()), ("", ""));
        code
    };
    write_client_config(
        &env,
        "servers:\n  default: devbox\n  mappings:\n    api: 127.0.0.1:2222\n",
    );
    assert_eq!(prepare("api.pod", "22"), Some(0));
    let api = fs::read_to_string(hosts.join("api.pod.conf")).unwrap();
    assert!(api.contains("\nHost api.pod\n"), "{api}");
    assert!(api.contains(&format!(
        "    ProxyCommand '{PODSPAWN}' connect --fdpass api.pod 2222\n    ProxyUseFdpass yes\n"
    )));
    assert!(
        api.contains("    Port 2222\n    HostKeyAlias [127.0.0.1]:2222\n"),
        "{api}"
    );
    assert!(api.ends_with("    SetEnv PODSPAWN_PROJECT=api\n"), "{api}");
    assert_eq!(
        fs::metadata(hosts.join("api.pod.conf")).unwrap().mode() & 0o7777,
        0o600
    );
    assert_eq!(fs::metadata(&hosts).unwrap().mode() & 0o7777, 0o700);
    // No port in the config: the one ssh dials, and its known_hosts spelling.
    assert_eq!(prepare("work.pod", "22"), Some(0));
    assert!(
        fs::read_to_string(hosts.join("work.pod.conf"))
            .unwrap()
            .contains("    Port 22\n    HostKeyAlias devbox\n")
    );
    assert_eq!(prepare("work.pod", "2200"), Some(0));
    assert!(
        fs::read_to_string(hosts.join("work.pod.conf"))
            .unwrap()
            .contains("    Port 2200\n    HostKeyAlias [devbox]:2200\n")
    );

    write_client_config(&env, "servers:\n  mappings:\n    api: 127.0.0.1:2222\n");
    assert_eq!(prepare("work.pod", "22"), Some(0));
    let nowhere = fs::read_to_string(hosts.join("work.pod.conf")).unwrap();
    assert!(nowhere.ends_with("    LogLevel QUIET\n"), "{nowhere}");
    assert!(!nowhere.contains("SetEnv"), "{nowhere}");

    for hostile in ["a'b.pod", "../../x.pod", "x.y.pod", "devbox.company.com"] {
        assert_eq!(prepare(hostile, "22"), Some(1), "{hostile}");
    }
    let mut written: Vec<String> = fs::read_dir(&hosts)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["api.pod.conf", "work.pod.conf"]);
}

#[test]
fn doctor_on_a_laptop_checks_the_block_the_config_and_each_server() {
    let mut env = TestEnv::new();
    // A laptop: no server config where the server's would be.
    env.set_env("PODSPAWN_CONFIG", env.path("etc/none.yaml"));
    let config = home(&env).join(".podspawn/config.yaml");
    let before = env.podspawn(&["doctor"]);
    before.assert_code(1);
    let said = before.stdout();
    for expected in [
        "ℹ no server config at ",
        "checking this machine as a laptop",
        "has no podspawn block: .pod names go nowhere\n    fix: podspawn setup",
        &format!("✗ {} does not exist", config.display()),
    ] {
        assert!(
            said.contains(expected),
            "{expected:?} missing from:\n{said}"
        );
    }

    env.podspawn(&["setup"]).assert_success();
    let answering = server(|mut stream| {
        stream.write_all(b"SSH-2.0-OpenSSH_9.2p1 test\r\n").unwrap();
    });
    write_client_config(
        &env,
        &format!("servers:\n  default: 127.0.0.1:{answering}\n  mappings:\n    web: 127.0.0.1:1\n"),
    );
    let after = env.podspawn(&["doctor", "--client"]);
    after
        .assert_code(1)
        .assert_stderr("podspawn: 1 problem(s) found\n");
    let said = after.stdout();
    for expected in [
        "✓ ssh client: OpenSSH_".to_string(),
        format!("✓ {} has podspawn's block, running ", home(&env).join(".ssh/config").display()),
        "✓ ssh reads it".to_string(),
        format!("✓ {} reads well", config.display()),
        format!("✓ 127.0.0.1:{answering} (servers.default) answers: SSH-2.0-OpenSSH_9.2p1 test"),
        "✗ cannot reach 127.0.0.1:1 (servers.mappings.web): Connection refused\n    fix: check servers.mappings.web".to_string(),
        // The test's HOME is not root's home in /etc/passwd, which ssh would read.
        format!("⚠ HOME is {}, but ssh reads ", home(&env).display()),
        "✓ ssh podspawn-doctor-a.pod goes through podspawn with PODSPAWN_PROJECT=podspawn-doctor-a (ssh -G)".to_string(),
        "✓ ssh podspawn-doctor-b.pod goes through podspawn".to_string(),
    ] {
        assert!(said.contains(&expected), "{expected:?} missing from:\n{said}");
    }
    // The probe leaves no name's file behind.
    assert!(
        fs::read_dir(home(&env).join(".podspawn/ssh"))
            .unwrap()
            .next()
            .is_none()
    );

    // What drops the project, or mixes two names' connections, is found from what
    // ssh would do: a SetEnv of the user's above the block (the first one wins), and
    // one ControlPath for every name.
    let ssh_config = home(&env).join(".ssh/config");
    let text = fs::read_to_string(&ssh_config).unwrap();
    fs::write(
        &ssh_config,
        format!("SetEnv EDITOR=vi\nControlMaster auto\nControlPath /tmp/cm-%r@%k\n{text}"),
    )
    .unwrap();
    let tangled = env.podspawn(&["doctor", "--client"]);
    let said = tangled.stdout();
    for expected in [
        "✗ ssh podspawn-doctor-a.pod would not carry its project: ssh's SetEnv is \"EDITOR=vi\" \
         (the first SetEnv line that applies wins)\n    fix: keep podspawn's block above your own SetEnv lines",
        "⚠ ssh shares one ControlPath (/tmp/cm-root@",
        "a second name would join the first one's connection, in the first one's project\n    \
         fix: put %n, %h or %C into your ControlPath",
    ] {
        assert!(
            said.contains(expected),
            "{expected:?} missing from:\n{said}"
        );
    }
}
