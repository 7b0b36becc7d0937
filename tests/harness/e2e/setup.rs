//! What server-setup and doctor do on a real server: the host home sshd must be able
//! to enter, accounts moved out of the state directory, and doctor's view of sshd.

use std::process::Command;
use std::time::Duration;

use super::Server;

/// The account's running processes, if any.
fn has_processes(name: &str) -> bool {
    Command::new("pgrep")
        .args(["-u", name])
        .output()
        .is_ok_and(|output| output.status.success())
}

fn doctor(server: &Server) -> String {
    let sshd_config = server.root.join("sshd_config").display().to_string();
    let output = server.podspawn(&["doctor", "--sshd-config", &sshd_config]);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// sshd changes into the account's home before the forced command, and says so on
/// the session's stderr when it cannot: an older podspawn put created accounts' home
/// inside the state directory, which they cannot enter. server-setup moves them.
#[test]
fn ssh_true_prints_nothing_once_server_setup_moved_an_older_home() {
    let server = crate::server_or_skip!("0s", 1);
    let user = &server.users[0];
    let clean = server.run(user, "true");
    assert!(clean.status.success(), "{}", server.explain(&clean));
    assert_eq!(
        String::from_utf8_lossy(&clean.stderr),
        "",
        "a session's stderr is the user's"
    );
    assert!(clean.stdout.is_empty());
    let report = doctor(&server);
    assert!(
        report.contains(&format!(
            "✓ sshd holds podspawn's users (checked for {}) to podspawn's keys",
            user.name
        )),
        "{report}"
    );

    // As an older podspawn made it: the home inside the 2770 state directory.
    let old_home = server.root.join("state/home");
    std::fs::create_dir_all(&old_home).unwrap();
    let idle = || !has_processes(&user.name);
    assert!(
        server.wait_until(Duration::from_secs(10), idle).is_some(),
        "{} still runs processes",
        user.name
    );
    assert!(
        Command::new("usermod")
            .args(["--home", old_home.to_str().unwrap(), &user.name])
            .status()
            .unwrap()
            .success()
    );
    let warned = server.run(user, "true");
    assert!(
        String::from_utf8_lossy(&warned.stderr).contains("Could not chdir to home directory"),
        "the older layout should show the warning: {}",
        server.explain(&warned)
    );
    let report = doctor(&server);
    assert!(
        report.contains(&format!(
            "✗ accounts podspawn created whose home is not {}: {} ({})",
            server.root.join("home").display(),
            user.name,
            old_home.display()
        )),
        "{report}"
    );

    assert!(
        server.wait_until(Duration::from_secs(10), idle).is_some(),
        "{} still runs processes",
        user.name
    );
    let sshd_config = server.root.join("sshd_config").display().to_string();
    let setup = server.podspawn(&["server-setup", "--sshd-config", &sshd_config, "--no-reload"]);
    let said = String::from_utf8_lossy(&setup.stdout).to_string();
    assert!(
        setup.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&setup.stderr)
    );
    assert!(
        said.contains(&format!(
            "moved the home of {} from {} to {}",
            user.name,
            old_home.display(),
            server.root.join("home").display()
        )),
        "{said}"
    );
    let after = server.run(user, "true");
    assert!(after.status.success(), "{}", server.explain(&after));
    assert_eq!(
        String::from_utf8_lossy(&after.stderr),
        "",
        "{}",
        server.explain(&after)
    );
    assert!(after.stdout.is_empty());
    assert!(!doctor(&server).contains("whose home is not"));
}
