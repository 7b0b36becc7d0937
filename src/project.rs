//! Projects: a git repo with a Podfile, registered by the admin, built into an image,
//! and entered with `PODSPAWN_PROJECT`.

use std::fmt;

/// A project's name, as `PODSPAWN_PROJECT` carries it and `ssh NAME.pod` spells it: in
/// container names (`podspawn-<user>-<project>`, also the hostname, at most 63), image
/// names and paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectName(String);

/// The longest project name: `podspawn-` + the longest user name + `-` + this fits a
/// hostname's 63.
pub const MAX_PROJECT_NAME: usize = 21;

impl ProjectName {
    pub fn parse(name: &str) -> Result<ProjectName, String> {
        let ok = !name.is_empty()
            && name.len() <= MAX_PROJECT_NAME
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(ProjectName(name.to_string()))
        } else {
            Err(format!(
                "{:?} is not a project name (a lower-case letter, then letters, digits and \
                 '-', at most {MAX_PROJECT_NAME})",
                name.escape_debug().to_string()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_plain_and_short() {
        for ok in ["api", "node-api", "a1", "work"] {
            assert!(ProjectName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Api",
            "1api",
            "api-",
            "a_b",
            "a.b",
            "../x",
            "a b",
            &"x".repeat(22),
        ] {
            assert!(ProjectName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
