//! install.sh against a local HTTP server serving a release tarball the test builds:
//! a good checksum installs (setgid docker as root), a bad one or a missing
//! architecture installs nothing, a local directory works offline, and the script
//! works piped into sh as `curl … | sh` runs it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::{HttpServer, NOBODY, PODSPAWN, TestEnv, is_root};

fn arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "x86_64",
        "aarch64" => "aarch64",
        other => panic!("no release name for {other}"),
    }
}

fn tarball_name(arch: &str) -> String {
    format!("podspawn-linux-{arch}.tar.gz")
}

/// A release directory: the tarball (holding `podspawn`) and its `.sha256`.
fn release(env: &TestEnv) -> PathBuf {
    let dir = env.path("release");
    let stage = env.path("stage");
    fs::create_dir_all(&dir).unwrap();
    fs::create_dir_all(&stage).unwrap();
    fs::copy(PODSPAWN, stage.join("podspawn")).unwrap();
    let name = tarball_name(arch());
    let status = Command::new("tar")
        .args(["-czf"])
        .arg(dir.join(&name))
        .arg("-C")
        .arg(&stage)
        .arg("podspawn")
        .status()
        .unwrap();
    assert!(status.success());
    let sum = Command::new("sha256sum")
        .arg(&name)
        .current_dir(&dir)
        .output()
        .unwrap();
    fs::write(dir.join(format!("{name}.sha256")), sum.stdout).unwrap();
    // The tree must be reachable for runs as another user.
    for path in [&dir, &stage] {
        fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    dir
}

fn serve(dir: &Path, files: &[&str]) -> HttpServer {
    HttpServer::start_bytes(
        files
            .iter()
            .map(|name| (format!("/{name}"), 200, fs::read(dir.join(name)).unwrap()))
            .collect(),
    )
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("install.sh")
}

fn install(env: &TestEnv, url: &str, install_dir: &Path) -> Output {
    Command::new("sh")
        .arg(script())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", env.path("home"))
        .env("PODSPAWN_INSTALL_URL", url)
        .env("PODSPAWN_INSTALL_DIR", install_dir)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn explain(output: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn docker_group() -> Option<u32> {
    fs::read_to_string("/etc/group")
        .unwrap()
        .lines()
        .find_map(|line| {
            line.strip_prefix("docker:x:")
                .and_then(|rest| rest.split(':').next()?.parse().ok())
        })
}

#[test]
fn a_good_checksum_installs_the_binary_and_prints_its_version() {
    let env = TestEnv::new();
    let dir = release(&env);
    let name = tarball_name(arch());
    let server = serve(&dir, &[&name, &format!("{name}.sha256")]);
    let target = env.path("installed");
    let output = install(&env, &server.base_url, &target);
    assert!(output.status.success(), "{}", explain(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.starts_with(&format!("Detected: linux/{}\n", arch())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("podspawn {} (", env!("CARGO_PKG_VERSION"))),
        "{stdout}"
    );
    assert!(stdout.ends_with("Done.\n"), "{stdout}");
    assert_eq!(
        server.requests(),
        [format!("/{name}"), format!("/{name}.sha256")]
    );
    let installed = target.join("podspawn");
    assert_eq!(fs::read(&installed).unwrap(), fs::read(PODSPAWN).unwrap());
    let meta = fs::metadata(&installed).unwrap();
    match (is_root(), docker_group()) {
        (true, Some(docker)) => assert_eq!(
            (meta.mode() & 0o7777, meta.uid(), meta.gid()),
            (0o2755, 0, docker)
        ),
        _ => assert_eq!(meta.mode() & 0o7777, 0o755),
    }
    assert!(!target.join(".podspawn.new").exists());
}

#[test]
fn a_bad_checksum_installs_nothing() {
    let env = TestEnv::new();
    let dir = release(&env);
    let name = tarball_name(arch());
    fs::write(
        dir.join(format!("{name}.sha256")),
        format!("{}  {name}\n", "0".repeat(64)),
    )
    .unwrap();
    let server = serve(&dir, &[&name, &format!("{name}.sha256")]);
    let target = env.path("installed");
    let output = install(&env, &server.base_url, &target);
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("checksum mismatch for {name}")),
        "{stderr}"
    );
    assert!(stderr.ends_with("not installing\n"), "{stderr}");
    assert!(!target.join("podspawn").exists());
}

#[test]
fn a_missing_architecture_is_named_and_installs_nothing() {
    let env = TestEnv::new();
    let dir = release(&env);
    // The server has a release, but for another architecture only.
    let other = if arch() == "x86_64" {
        "aarch64"
    } else {
        "x86_64"
    };
    fs::rename(
        dir.join(tarball_name(arch())),
        dir.join(tarball_name(other)),
    )
    .unwrap();
    let server = serve(&dir, &[&tarball_name(other)]);
    let target = env.path("installed");
    let output = install(&env, &server.base_url, &target);
    assert_eq!(output.status.code(), Some(1), "{}", explain(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(&format!(
            "there is no podspawn release for linux/{}",
            arch()
        )),
        "{}",
        explain(&output)
    );
    assert!(!target.join("podspawn").exists());
}

#[test]
fn a_local_directory_works_offline_and_the_script_works_piped() {
    let env = TestEnv::new();
    let dir = release(&env);
    let target = env.path("installed");
    let output = install(&env, dir.to_str().unwrap(), &target);
    assert!(output.status.success(), "{}", explain(&output));
    fs::remove_file(target.join("podspawn")).unwrap();

    // `curl … | sh`: the script arrives on stdin.
    let piped = Command::new("sh")
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", env.path("home"))
        .env("PODSPAWN_INSTALL_URL", format!("file://{}", dir.display()))
        .env("PODSPAWN_INSTALL_DIR", &target)
        .stdin(fs::File::open(script()).unwrap())
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", explain(&piped));
    assert!(target.join("podspawn").exists());
}

#[test]
fn without_root_it_installs_to_the_users_own_bin() {
    if !is_root() {
        return crate::support::skip("install test", "not root, so it cannot run as another user");
    }
    let env = TestEnv::new();
    let dir = release(&env);
    let home = env.path("home");
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    use std::os::unix::process::CommandExt;
    let output = Command::new("sh")
        .arg(script())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &home)
        .env("PODSPAWN_INSTALL_URL", &dir)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", explain(&output));
    let installed = home.join(".local/bin/podspawn");
    let meta = fs::metadata(&installed).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.uid()), (0o755, NOBODY));
    // A laptop's install says what comes next, and that its directory is not on PATH.
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(
        said.contains(&format!(
            "note: {}/.local/bin is not on your PATH",
            home.display()
        )),
        "{said}"
    );
    assert!(
        said.contains(&format!(
            "On a laptop, next: {}/.local/bin/podspawn setup",
            home.display()
        )),
        "{said}"
    );
}

#[test]
fn unknown_options_are_named() {
    let env = TestEnv::new();
    let output = Command::new("sh")
        .arg(script())
        .arg("--frob")
        .env("HOME", env.path("home"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "install.sh: unknown option '--frob'; see install.sh --help\n"
    );
}
