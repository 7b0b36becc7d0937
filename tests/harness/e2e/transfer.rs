//! Files in and out with the real clients: sftp, scp (both protocols) and rsync,
//! including names with spaces, quotes, unicode and a leading dash.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use super::{Account, Server};

/// Deterministic bytes that are not text.
fn payload(length: usize, seed: u32) -> Vec<u8> {
    (0..length as u32)
        .map(|i| (i.wrapping_add(seed).wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

const ODD_NAMES: &[&str] = &[
    "plain.txt",
    "with space.txt",
    "quote'and\"double.txt",
    "ünïcødé.txt",
    "-leading-dash.txt",
];

fn tool(server: &Server, program: &str, account: &Account) -> Command {
    let mut command = Command::new(program);
    command
        .args(server.client_options(account))
        .env("HOME", server.root.join("client"));
    command
}

fn check(server: &Server, output: Output) -> Output {
    assert!(output.status.success(), "{}", server.explain(&output));
    output
}

fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn sftp_puts_gets_lists_renames_and_removes() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let local = server.scratch("sftp");
    let big = local.join("big.bin");
    fs::write(&big, payload(32 << 20, 1)).unwrap();
    for name in ODD_NAMES {
        fs::write(local.join(name), format!("content of {name}\n")).unwrap();
    }
    let mut batch = format!("put {} big.bin\n", big.display());
    for name in ODD_NAMES {
        let quoted = name.replace('\\', "\\\\").replace('"', "\\\"");
        batch += &format!("put \"{}/{quoted}\" \"{quoted}\"\n", local.display());
    }
    batch += "rename big.bin moved.bin\nls -1\n";
    batch += &format!("get moved.bin {}\n", local.join("back.bin").display());
    batch += "rm \"with space.txt\"\n";
    let batch_file = local.join("batch");
    fs::write(&batch_file, batch).unwrap();
    let output = check(
        &server,
        tool(&server, "sftp", user)
            .args(["-P", &server.port.to_string(), "-b"])
            .arg(&batch_file)
            .arg(format!("{}@127.0.0.1", user.name))
            .output()
            .unwrap(),
    );
    let listing = String::from_utf8_lossy(&output.stdout).to_string();
    for name in ["moved.bin", "-leading-dash.txt", "ünïcødé.txt"] {
        assert!(listing.contains(name), "{name} missing from:\n{listing}");
    }
    assert_eq!(
        sha256(&big),
        sha256(&local.join("back.bin")),
        "the 32 MiB file changed on the way"
    );
    let inside = server.run(user, "ls -1 ~; sha256sum ~/moved.bin");
    let text = String::from_utf8_lossy(&inside.stdout).to_string();
    assert!(
        !text.contains("with space.txt"),
        "rm did not remove it:\n{text}"
    );
    assert!(text.contains("quote'and\"double.txt"), "{text}");
    assert!(text.contains(&sha256(&big)), "{text}");
}

#[test]
fn scp_uploads_downloads_and_copies_trees_with_both_protocols() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let local = server.scratch("scp");
    let tree = local.join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    for name in ODD_NAMES {
        fs::write(tree.join(name), format!("{name}\n")).unwrap();
    }
    fs::write(tree.join("sub/deeper/big.bin"), payload(8 << 20, 2)).unwrap();
    let target = |path: &str| format!("{}@127.0.0.1:{path}", user.name);
    // -O: the legacy scp protocol (`scp -t`/`-f` through sh -c); default: SFTP.
    for (protocol, flag) in [("legacy", Some("-O")), ("sftp", None)] {
        let port = server.port.to_string();
        let mut base = vec!["-P", &port, "-q"];
        base.extend(flag);
        let remote_dir = format!("copy-{protocol}");
        check(
            &server,
            tool(&server, "scp", user)
                .args(&base)
                .arg("-r")
                .arg(&tree)
                .arg(target(&remote_dir))
                .output()
                .unwrap(),
        );
        check(
            &server,
            tool(&server, "scp", user)
                .args(&base)
                .arg(tree.join("with space.txt"))
                .arg(target(&format!("single-{protocol}.txt")))
                .output()
                .unwrap(),
        );
        let back = local.join(format!("back-{protocol}"));
        check(
            &server,
            tool(&server, "scp", user)
                .args(&base)
                .arg("-r")
                .arg(target(&remote_dir))
                .arg(&back)
                .output()
                .unwrap(),
        );
        let down = local.join(format!("single-{protocol}.txt"));
        check(
            &server,
            tool(&server, "scp", user)
                .args(&base)
                .arg(target(&format!("single-{protocol}.txt")))
                .arg(&down)
                .output()
                .unwrap(),
        );
        assert_eq!(
            fs::read_to_string(&down).unwrap(),
            "with space.txt\n",
            "{protocol}"
        );
        for name in ODD_NAMES {
            assert_eq!(
                fs::read_to_string(back.join(name)).unwrap(),
                format!("{name}\n"),
                "{protocol}: {name}"
            );
        }
        assert_eq!(
            sha256(&tree.join("sub/deeper/big.bin")),
            sha256(&back.join("sub/deeper/big.bin")),
            "{protocol}"
        );
    }
}

#[test]
fn rsync_syncs_deletes_and_a_second_run_transfers_nothing() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let local = server.scratch("rsync");
    let source = local.join("src");
    fs::create_dir_all(source.join("nested")).unwrap();
    for name in ODD_NAMES {
        fs::write(source.join(name), format!("{name}\n")).unwrap();
    }
    fs::write(source.join("nested/data.bin"), payload(4 << 20, 3)).unwrap();
    let ssh = server.ssh_command_line(user);
    let rsync = |extra: &[&str]| {
        let mut command = Command::new("rsync");
        command
            .args(["-avz", "--itemize-changes", "-e", &ssh])
            .args(extra)
            .arg(format!("{}/", source.display()))
            .arg(format!("{}@127.0.0.1:mirror/", user.name))
            .env("HOME", server.root.join("client"));
        check(&server, command.output().unwrap())
    };
    let first = String::from_utf8_lossy(&rsync(&[]).stdout).to_string();
    // Pushed files show as "<f" in rsync's itemized list.
    assert!(first.contains("<f+++++++++ nested/data.bin"), "{first}");
    let second = String::from_utf8_lossy(&rsync(&[]).stdout).to_string();
    assert!(
        !second.contains(">f"),
        "the second run transferred files:\n{second}"
    );

    fs::remove_file(source.join("plain.txt")).unwrap();
    let third = String::from_utf8_lossy(&rsync(&["--delete"]).stdout).to_string();
    assert!(third.contains("*deleting   plain.txt"), "{third}");
    let inside = server.run(user, "ls -1A ~/mirror; sha256sum ~/mirror/nested/data.bin");
    let text = String::from_utf8_lossy(&inside.stdout).to_string();
    assert!(!text.contains("plain.txt"), "{text}");
    assert!(
        text.contains("-leading-dash.txt") && text.contains("ünïcødé.txt"),
        "{text}"
    );
    assert!(
        text.contains(&sha256(&source.join("nested/data.bin"))),
        "{text}"
    );
}
