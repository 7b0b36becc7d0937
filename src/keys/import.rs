//! Where `add-user` gets keys from: `--key "…"`, `--key-file PATH` and
//! `--github LOGIN` (fetched once with `curl`; afterwards the keys live in the local
//! store and authentication never touches the network).
//!
//! Every source is read and checked before anything is stored, so one bad key means
//! nothing changes.

use std::fmt;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::store::parse_key_file;
use super::{KeyError, PublicKey};

/// One place keys come from, as the admin named it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Literal(String),
    File(PathBuf),
    GitHub(String),
}

/// A key file or GitHub answer larger than this is refused.
const MAX_IMPORT: u64 = 1024 * 1024;

#[derive(Debug)]
pub enum ImportError {
    BadKey {
        origin: String,
        error: KeyError,
    },
    NoKeys(String),
    ReadFile {
        path: PathBuf,
        source: io::Error,
    },
    /// The path is not a regular file; the text says what it is instead.
    NotAFile(PathBuf, &'static str),
    TooLarge(String),
    BadGitHubLogin(String),
    CurlMissing,
    Curl {
        url: String,
        detail: String,
    },
    HttpStatus {
        url: String,
        status: u16,
    },
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ImportError::BadKey { origin, error } => write!(f, "{origin}: {error}"),
            ImportError::NoKeys(origin) => write!(f, "{origin}: no keys found"),
            ImportError::ReadFile { path, source } => {
                write!(f, "cannot read key file {}: {source}", path.display())
            }
            ImportError::NotAFile(path, what) => {
                write!(f, "key file {} is {what}", path.display())
            }
            ImportError::TooLarge(origin) => {
                write!(
                    f,
                    "{origin}: more than {MAX_IMPORT} bytes; that is not a key list"
                )
            }
            ImportError::BadGitHubLogin(login) => write!(
                f,
                "\"{}\" is not a GitHub login (letters, digits and single '-', at most 39)",
                login.escape_debug()
            ),
            ImportError::CurlMissing => write!(
                f,
                "--github needs curl, which is not installed; install curl or use --key/--key-file"
            ),
            ImportError::Curl { url, detail } => write!(f, "cannot fetch {url}: {detail}"),
            ImportError::HttpStatus { url, status: 404 } => {
                write!(f, "{url}: no such GitHub user (HTTP 404)")
            }
            ImportError::HttpStatus { url, status } => {
                write!(f, "{url}: the server answered HTTP {status}")
            }
        }
    }
}

impl std::error::Error for ImportError {}

/// Reads every source and returns all their keys, or the first problem.
pub fn collect(sources: &[KeySource], github_url: &str) -> Result<Vec<PublicKey>, ImportError> {
    let mut keys = Vec::new();
    for source in sources {
        match source {
            KeySource::Literal(text) => {
                keys.push(PublicKey::parse(text).map_err(|error| ImportError::BadKey {
                    origin: "--key".to_string(),
                    error,
                })?)
            }
            KeySource::File(path) => {
                let text = read_key_file(path)?;
                keys.extend(parse_all(&text, &path.display().to_string())?);
            }
            KeySource::GitHub(login) => {
                let url = github_keys_url(github_url, login)?;
                let text = fetch(&url)?;
                keys.extend(parse_all(&text, &url)?);
            }
        }
    }
    Ok(keys)
}

/// Every key in `text`; any line that is not a key is an error naming `origin:line`.
fn parse_all(text: &str, origin: &str) -> Result<Vec<PublicKey>, ImportError> {
    let file = parse_key_file(text);
    if let Some((line, error)) = file.skipped.into_iter().next() {
        return Err(ImportError::BadKey {
            origin: format!("{origin}, line {line}"),
            error,
        });
    }
    if file.keys.is_empty() {
        return Err(ImportError::NoKeys(origin.to_string()));
    }
    Ok(file.keys)
}

fn read_key_file(path: &Path) -> Result<String, ImportError> {
    let read_error = |source| ImportError::ReadFile {
        path: path.to_path_buf(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_error)?;
    if meta.is_dir() {
        return Err(ImportError::NotAFile(path.to_path_buf(), "a directory"));
    }
    if !meta.is_file() {
        return Err(ImportError::NotAFile(
            path.to_path_buf(),
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    fs::File::open(path)
        .and_then(|file| file.take(MAX_IMPORT + 1).read_to_end(&mut bytes))
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_IMPORT {
        return Err(ImportError::TooLarge(path.display().to_string()));
    }
    String::from_utf8(bytes).map_err(|_| ImportError::BadKey {
        origin: path.display().to_string(),
        error: KeyError::UnknownType("(not UTF-8 text)".to_string()),
    })
}

/// `<base>/<login>.keys`, after checking that the login is one GitHub could issue (so
/// it cannot change the URL's path or query).
fn github_keys_url(base: &str, login: &str) -> Result<String, ImportError> {
    let valid = !login.is_empty()
        && login.len() <= 39
        && login.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !login.starts_with('-')
        && !login.ends_with('-')
        && !login.contains("--");
    if !valid {
        return Err(ImportError::BadGitHubLogin(login.to_string()));
    }
    Ok(format!("{}/{login}.keys", base.trim_end_matches('/')))
}

/// Fetches `url` with curl: only http(s), redirects only to https, bounded in time
/// and size. The HTTP status is read separately from the body.
fn fetch(url: &str) -> Result<String, ImportError> {
    let output = Command::new("curl")
        .args([
            "--silent",
            "--show-error",
            "--location",
            "--proto",
            "=https,http",
            "--proto-redir",
            "=https",
            "--max-time",
            "30",
            "--max-filesize",
            &MAX_IMPORT.to_string(),
            "--write-out",
            "\n%{http_code}",
            "--",
            url,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|err| match err.kind() {
            io::ErrorKind::NotFound => ImportError::CurlMissing,
            _ => ImportError::Curl {
                url: url.to_string(),
                detail: err.to_string(),
            },
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let detail = stderr
            .lines()
            .find(|line| !line.trim().is_empty())
            .unwrap_or("curl failed")
            .trim_start_matches("curl: ")
            .to_string();
        return Err(ImportError::Curl {
            url: url.to_string(),
            detail,
        });
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status: u16 = status.trim().parse().unwrap_or(0);
    if status != 200 {
        return Err(ImportError::HttpStatus {
            url: url.to_string(),
            status,
        });
    }
    Ok(body.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_logins_cannot_reshape_the_url() {
        assert_eq!(
            github_keys_url("https://github.com/", "sarah-codes").unwrap(),
            "https://github.com/sarah-codes.keys"
        );
        for login in [
            "",
            "../x",
            "a/b",
            "a?b",
            "a b",
            "-a",
            "a-",
            "a--b",
            &"a".repeat(40),
        ] {
            assert!(
                github_keys_url("https://github.com", login).is_err(),
                "{login:?}"
            );
        }
    }

    #[test]
    fn literal_keys_are_checked() {
        let err = collect(&[KeySource::Literal("ssh-foo AAAA".into())], "").unwrap_err();
        assert!(
            err.to_string().starts_with("--key: unknown key type"),
            "{err}"
        );
    }

    #[test]
    fn a_bad_line_in_a_list_names_its_line() {
        let text = format!(
            "{}\n\nno-pty {}\n",
            crate::keys::tests::ED25519,
            crate::keys::tests::ECDSA
        );
        let err = parse_all(&text, "keys.pub").unwrap_err();
        assert!(err.to_string().starts_with("keys.pub, line 3: "), "{err}");
        assert!(matches!(
            parse_all("# only a comment\n", "x"),
            Err(ImportError::NoKeys(_))
        ));
    }
}
