//! Records the commit podspawn is built from, for `podspawn version`.
//! A release build may set PODSPAWN_COMMIT; otherwise git is asked; otherwise "unknown".

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=PODSPAWN_COMMIT");
    let commit = std::env::var("PODSPAWN_COMMIT")
        .ok()
        .filter(|commit| !commit.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=PODSPAWN_COMMIT={commit}");
}

fn git_commit() -> Option<String> {
    let git_dir = run(&["rev-parse", "--git-dir"])?;
    for watched in ["HEAD", "refs", "packed-refs"] {
        // A path that does not exist would make cargo rerun this on every build.
        let path = format!("{git_dir}/{watched}");
        if std::path::Path::new(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    run(&["rev-parse", "--short=7", "HEAD"])
}

fn run(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}
