//! An image build as people see it: the build's own output goes whole to its log,
//! and each of the Dockerfile's named steps (see `image`) becomes one progress line,
//! `  Installing packages: git curl... done`, as the seeds' tutorial shows.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The most of a build's output its log keeps (it lives beside the state database,
/// and a build may print for as long as it runs).
const MAX_LOG: u64 = 16 << 20;

/// The mode of a build log: root's add-project and users' spawns (group docker)
/// both write it.
const LOG_MODE: u32 = 0o660;

pub struct Progress {
    /// The step of each instruction, in order.
    labels: Vec<String>,
    /// The step running now.
    current: Option<String>,
    log: Option<File>,
    /// Bytes written to the log so far.
    logged: u64,
}

impl Progress {
    /// Progress through a build of `dockerfile`, its output kept in `log` (replaced).
    pub fn new(dockerfile: &str, log: &Path) -> Progress {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(LOG_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(log);
        let log = match file {
            Ok(file) => {
                // The umask may have taken the group's write: say the mode (only its
                // owner can, and only needs to when it made the file).
                let _ =
                    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(LOG_MODE));
                Some(file)
            }
            Err(err) => {
                log::warn!("no build log at {}: {err}", log.display());
                None
            }
        };
        Progress {
            labels: crate::image::instruction_labels(dockerfile),
            current: None,
            log,
            logged: 0,
        }
    }

    /// Takes one line of the build's output; returns what to show, if anything (a
    /// part of a line: the previous step's ` done` and the new step's name).
    pub fn line(&mut self, line: &str) -> Option<String> {
        if let Some(log) = &mut self.log {
            let size = line.len() as u64 + 1;
            if self.logged + size <= MAX_LOG {
                let _ = writeln!(log, "{line}");
            } else if self.logged <= MAX_LOG {
                let _ = writeln!(log, "…(the log stops here: {MAX_LOG} bytes)");
                self.logged = MAX_LOG + 1;
            }
            self.logged += size;
        }
        let number: usize = line
            .strip_prefix("Step ")?
            .split('/')
            .next()?
            .trim()
            .parse()
            .ok()?;
        let label = self.labels.get(number.checked_sub(1)?)?;
        if self.current.as_ref() == Some(label) {
            return None;
        }
        let shown = match &self.current {
            Some(_) => format!(" done\n  {label}..."),
            None => format!("  {label}..."),
        };
        self.current = Some(label.clone());
        Some(shown)
    }

    /// What to show when the build ends.
    pub fn finish(&mut self, succeeded: bool) -> Option<String> {
        self.current.as_ref()?;
        Some(if succeeded { " done\n" } else { " failed\n" }.to_string())
    }

    /// The step the build is at (or ended at).
    pub fn step(&self) -> &str {
        self.current.as_deref().unwrap_or("starting the build")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builds_steps_become_one_line_each_and_the_log_gets_everything() {
        let dockerfile = "# Generated\n# step: Pulling base image debian\nFROM debian\n\
                          # step: Installing packages: git\nRUN [\"/bin/sh\", \"-c\", \"apt\"]\n\
                          # step: Copying the repo\nCOPY . /w\nWORKDIR /w\n";
        let dir = std::env::temp_dir().join(format!("podspawn-progress-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("build.log");
        let mut progress = Progress::new(dockerfile, &log);
        let output = [
            "Sending build context to Docker daemon  2.048kB",
            "Step 1/4 : FROM debian",
            " ---> 1234",
            "Step 2/4 : RUN [\"/bin/sh\", \"-c\", \"apt\"]",
            "Get:1 http://deb.debian.org bookworm InRelease",
            "Step 3/4 : COPY . /w",
            "Step 4/4 : WORKDIR /w",
            "Successfully built 5678",
        ];
        let shown: String = output
            .iter()
            .filter_map(|line| progress.line(line))
            .collect();
        let shown = shown + &progress.finish(true).unwrap();
        assert_eq!(
            shown,
            "  Pulling base image debian... done\n  Installing packages: git... done\n  Copying the repo... done\n"
        );
        assert_eq!(progress.step(), "Copying the repo");
        drop(progress);
        assert_eq!(
            std::fs::read_to_string(&log).unwrap(),
            output.join("\n") + "\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
