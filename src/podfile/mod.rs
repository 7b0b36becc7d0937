//! The Podfile: a project's environment as its repo declares it — base image,
//! packages, shell, env, companion services, lifecycle hooks, dotfiles, workspace.
//!
//! A Podfile is the repo owner's text, read by root. It is parsed strictly: an unknown
//! key, a wrong type, a package that is not a package name, a host path as a volume, a
//! file over `MAX_SIZE` or YAML aliases that expand beyond a bound are errors that name
//! the file, the key and the line. Its strings only ever reach a shell inside a
//! container (the image build, a session), never one on the host.
//!
//! Found in a repo at `.podspawn/podfile.yaml`, else `podfile.yaml`, else
//! `.devcontainer/devcontainer.json`, else `.devcontainer.json` (see `devcontainer`).

mod devcontainer;
mod model;

use std::fmt;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub use model::{Dotfiles, EnvName, EnvValue, Package, Podfile};

#[cfg(test)]
pub fn parse_yaml_for_tests(text: &str) -> Podfile {
    model::parse_yaml(text).unwrap()
}

/// The largest Podfile read (a real one is a few hundred bytes).
pub const MAX_SIZE: u64 = 64 * 1024;

/// The places a Podfile may be, in the order they are tried.
pub const PLACES: &[&str] = &[
    ".podspawn/podfile.yaml",
    "podfile.yaml",
    ".devcontainer/devcontainer.json",
    ".devcontainer.json",
];

/// Why a repo's Podfile cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodfileError {
    /// The file, relative to the repo (empty when none was found).
    pub file: String,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for PodfileError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match (self.file.is_empty(), self.line) {
            (true, _) => f.write_str(&self.message),
            (false, Some(line)) => write!(f, "{}, line {line}: {}", self.file, self.message),
            (false, None) => write!(f, "{}: {}", self.file, self.message),
        }
    }
}

impl std::error::Error for PodfileError {}

/// A Podfile as found in a repo.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    pub podfile: Podfile,
    /// Where it was, relative to the repo.
    pub file: String,
    /// What a devcontainer.json said that podspawn does not do, for one warning line.
    pub warnings: Vec<String>,
}

/// Finds and reads the Podfile of the repo checked out at `repo`.
pub fn find(repo: &Path) -> Result<Found, PodfileError> {
    for place in PLACES {
        let Some(bytes) = read_in_repo(repo, place)? else {
            continue;
        };
        let text = std::str::from_utf8(&bytes).map_err(|_| PodfileError {
            file: place.to_string(),
            line: None,
            message: "the file is not valid UTF-8".to_string(),
        })?;
        let (podfile, warnings) = if place.ends_with(".json") {
            devcontainer::parse(text)
        } else {
            model::parse_yaml(text).map(|podfile| (podfile, Vec::new()))
        }
        .map_err(|(line, message)| PodfileError {
            file: place.to_string(),
            line,
            message,
        })?;
        return Ok(Found {
            podfile,
            file: place.to_string(),
            warnings,
        });
    }
    Err(PodfileError {
        file: String::new(),
        line: None,
        message: format!("the repo has no Podfile (looked for {})", PLACES.join(", ")),
    })
}

/// The bytes of `relative` inside `repo`, or `None` when it is not there. Nothing the
/// repo holds may lead the read elsewhere: every component is opened without
/// following symbolic links, and only a regular file of at most `MAX_SIZE` is read.
fn read_in_repo(repo: &Path, relative: &str) -> Result<Option<Vec<u8>>, PodfileError> {
    let refuse = |message: String| PodfileError {
        file: relative.to_string(),
        line: None,
        message,
    };
    let mut path = PathBuf::from(repo);
    let components: Vec<&str> = relative.split('/').collect();
    for (index, component) in components.iter().enumerate() {
        path.push(component);
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(refuse(err.to_string())),
        };
        if meta.file_type().is_symlink() {
            return Err(refuse(
                "it is a symbolic link; a Podfile must be a file of the repo".to_string(),
            ));
        }
        let last = index + 1 == components.len();
        if !last && !meta.is_dir() {
            return Ok(None);
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .map_err(|err| refuse(err.to_string()))?;
    let meta = file.metadata().map_err(|err| refuse(err.to_string()))?;
    if !meta.is_file() {
        return Err(refuse("it is not a regular file".to_string()));
    }
    if meta.len() > MAX_SIZE {
        return Err(refuse(format!(
            "it is {} bytes; a Podfile may be at most {MAX_SIZE}",
            meta.len()
        )));
    }
    let mut bytes = Vec::new();
    (&mut file)
        .take(MAX_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|err| refuse(err.to_string()))?;
    if bytes.len() as u64 > MAX_SIZE {
        return Err(refuse(format!("it is larger than {MAX_SIZE} bytes")));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(tag: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("podspawn-podfile-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_first_place_that_has_one_wins() {
        let dir = repo("order");
        std::fs::write(dir.join("podfile.yaml"), "base: debian:bookworm\n").unwrap();
        std::fs::create_dir_all(dir.join(".devcontainer")).unwrap();
        std::fs::write(
            dir.join(".devcontainer/devcontainer.json"),
            "{\"image\": \"ubuntu:24.04\"}",
        )
        .unwrap();
        let found = find(&dir).unwrap();
        assert_eq!(found.file, "podfile.yaml");
        assert_eq!(found.podfile.base.as_deref(), Some("debian:bookworm"));
        std::fs::create_dir_all(dir.join(".podspawn")).unwrap();
        std::fs::write(dir.join(".podspawn/podfile.yaml"), "base: alpine:3\n").unwrap();
        assert_eq!(find(&dir).unwrap().file, ".podspawn/podfile.yaml");
        std::fs::remove_file(dir.join(".podspawn/podfile.yaml")).unwrap();
        std::fs::remove_file(dir.join("podfile.yaml")).unwrap();
        let found = find(&dir).unwrap();
        assert_eq!(found.file, ".devcontainer/devcontainer.json");
        assert_eq!(found.podfile.base.as_deref(), Some("ubuntu:24.04"));
        std::fs::remove_dir_all(dir.join(".devcontainer")).unwrap();
        let err = find(&dir).unwrap_err();
        assert!(err.to_string().contains("has no Podfile"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_podfile_that_leads_elsewhere_or_is_too_big_is_refused() {
        let dir = repo("links");
        std::os::unix::fs::symlink("/etc/shadow", dir.join("podfile.yaml")).unwrap();
        let err = find(&dir).unwrap_err();
        assert_eq!(err.file, "podfile.yaml");
        assert!(err.message.contains("symbolic link"), "{err}");
        std::fs::remove_file(dir.join("podfile.yaml")).unwrap();
        std::os::unix::fs::symlink("/etc", dir.join(".podspawn")).unwrap();
        assert!(find(&dir).unwrap_err().message.contains("symbolic link"));
        std::fs::remove_file(dir.join(".podspawn")).unwrap();
        std::fs::write(dir.join("podfile.yaml"), "#".repeat(MAX_SIZE as usize + 1)).unwrap();
        assert!(find(&dir).unwrap_err().message.contains("at most"));
        std::fs::remove_file(dir.join("podfile.yaml")).unwrap();
        std::fs::create_dir(dir.join("podfile.yaml")).unwrap();
        assert!(
            find(&dir)
                .unwrap_err()
                .message
                .contains("not a regular file")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        let dir = repo("errors");
        std::fs::write(
            dir.join("podfile.yaml"),
            "base: debian\npackages:\n  - git\n  - curl\n  - \"git; rm -rf /\"\n  - jq\n",
        )
        .unwrap();
        let err = find(&dir).unwrap_err().to_string();
        assert!(err.starts_with("podfile.yaml, line 5: packages"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
