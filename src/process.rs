//! Processes on this host: a process's identity that survives pid reuse, whether it
//! is still alive, and ending the processes of one connection.
//!
//! A pid alone can be reused; a pid with the process's start time (in clock ticks
//! since boot, from `/proc/<pid>/stat`) and the boot id names exactly one process.

use std::fs;
use std::thread::sleep;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessId {
    pub pid: i32,
    pub start_ticks: u64,
    pub boot_id: String,
}

/// This boot's id (it changes on every reboot).
pub fn boot_id() -> String {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|text| text.trim().to_string())
        .unwrap_or_default()
}

/// The identity of process `pid`, if it exists and has not exited.
pub fn identify(pid: i32) -> Option<ProcessId> {
    let (state, start_ticks) = stat_fields(pid)?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    Some(ProcessId {
        pid,
        start_ticks,
        boot_id: boot_id(),
    })
}

pub fn current() -> ProcessId {
    let pid = std::process::id() as i32;
    identify(pid).unwrap_or(ProcessId {
        pid,
        start_ticks: 0,
        boot_id: boot_id(),
    })
}

/// True while the very process `id` names is running (not a zombie, not a later
/// process that got the same pid, not one from before a reboot).
pub fn is_alive(id: &ProcessId) -> bool {
    match stat_fields(id.pid) {
        Some((state, start_ticks)) => {
            state != 'Z' && state != 'X' && start_ticks == id.start_ticks && id.boot_id == boot_id()
        }
        None => false,
    }
}

/// (state, start time) from `/proc/<pid>/stat`. The command name in field 2 may hold
/// spaces and parentheses, so fields are counted from the last ')'.
fn stat_fields(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

fn parse_stat(text: &str) -> Option<(char, u64)> {
    let after_name = &text[text.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; the start time is field 22.
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some((state, start_ticks))
}

/// Ends every process of `uid` whose environment holds exactly `marker`
/// (`NAME=value`): SIGHUP first, as a hung-up terminal would, then SIGKILL for what is
/// left after `patience`. Returns how many processes it signalled.
///
/// These are the processes one connection started in its container: `docker exec`
/// gives them the marker, they run under the user's own uid, and killing the
/// `docker exec` client does not end them.
pub fn end_marked(uid: u32, marker: &str, patience: Duration) -> usize {
    let targets = marked(uid, marker);
    for &pid in &targets {
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
    let deadline = Instant::now() + patience;
    loop {
        let left: Vec<i32> = targets.iter().copied().filter(|&pid| exists(pid)).collect();
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for pid in left {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            break;
        }
        sleep(Duration::from_millis(20));
    }
    targets.len()
}

fn exists(pid: i32) -> bool {
    matches!(stat_fields(pid), Some((state, _)) if state != 'Z' && state != 'X')
}

/// Processes of `uid` carrying `marker` in their environment.
fn marked(uid: u32, marker: &str) -> Vec<i32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    // Reading another process's environment is a ptrace-style check on the
    // filesystem ids; with a borrowed (setgid) group our fsgid would not match the
    // user's processes, so look with the real gid.
    let real_gid = unsafe { libc::getgid() };
    let previous_fsgid = unsafe { libc::setfsgid(real_gid) };
    let wanted = marker.as_bytes();
    let found = entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| owner(pid) == Some(uid))
        .filter(|&pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .map(|environ| {
                    environ
                        .split(|&byte| byte == 0)
                        .any(|entry| entry == wanted)
                })
                .unwrap_or(false)
        })
        .collect();
    unsafe { libc::setfsgid(previous_fsgid as libc::gid_t) };
    found
}

fn owner(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|meta| meta.uid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line = "1234 (a (weird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(parse_stat(line), Some(('S', 987654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn a_live_process_is_alive_until_it_exits_and_a_reused_identity_is_not() {
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        let id = identify(child.id() as i32).unwrap();
        assert!(is_alive(&id));
        let other_start = ProcessId {
            start_ticks: id.start_ticks + 1,
            ..id.clone()
        };
        assert!(!is_alive(&other_start));
        let other_boot = ProcessId {
            boot_id: "another-boot".into(),
            ..id.clone()
        };
        assert!(!is_alive(&other_boot));
        child.kill().unwrap();
        // Not yet reaped: a zombie does not count as alive.
        sleep(Duration::from_millis(100));
        assert!(!is_alive(&id));
        child.wait().unwrap();
        assert!(!is_alive(&id));
        assert!(is_alive(&current()));
    }

    #[test]
    fn end_marked_ends_only_the_marked_processes() {
        let spawn = |marker: &str| {
            use std::os::unix::process::CommandExt;
            let mut command = Command::new("sleep");
            command
                .arg("30")
                .env("PODSPAWN_CONNECTION", marker)
                .stdin(Stdio::null());
            // SIGHUP as a user's process has it, whatever this test inherited (under
            // `nohup` it is ignored).
            // SAFETY: only async-signal-safe calls between fork and exec.
            unsafe {
                command.pre_exec(|| {
                    libc::signal(libc::SIGHUP, libc::SIG_DFL);
                    Ok(())
                });
            }
            command.spawn().unwrap()
        };
        let mut mine = spawn("test-end-marked-1");
        let mut other = spawn("test-end-marked-10");
        let uid = unsafe { libc::getuid() };
        let ended = end_marked(
            uid,
            "PODSPAWN_CONNECTION=test-end-marked-1",
            Duration::from_secs(2),
        );
        assert_eq!(ended, 1);
        let status = mine.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGHUP));
        assert_eq!(other.try_wait().unwrap(), None);
        other.kill().unwrap();
        other.wait().unwrap();
    }
}

/// How a command ended: its status, and what it wrote on stdout and stderr.
pub type Finished = (std::process::ExitStatus, Vec<u8>, Vec<u8>);

/// Runs `command` to its end, with stdin closed and its output captured, for at most
/// `timeout`: `None` when it ran out of time (then it, and every process it started,
/// is killed). It runs in a process group of its own, so whatever it started goes
/// with it; a process it left behind holding the pipes is not waited for beyond two
/// seconds after it ends.
pub fn output_within(
    command: &mut std::process::Command,
    timeout: Duration,
) -> std::io::Result<Option<Finished>> {
    use std::os::unix::process::CommandExt;
    use std::process::Stdio;
    use std::sync::mpsc;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let group = child.id() as libc::pid_t;
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let Some(mut pipe) = pipe else { return };
            let mut chunk = [0u8; 8192];
            loop {
                match pipe.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        if sender.send(chunk[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        });
        receiver
    };
    // Everything a pipe said until it closed, or until `until`.
    let collect = |receiver: mpsc::Receiver<Vec<u8>>, until: Instant| {
        let mut bytes = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(chunk) => bytes.extend(chunk),
                Err(_) => break,
            }
        }
        bytes
    };
    let stdout = read(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let stderr = read(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    );
    let deadline = Instant::now() + timeout;
    // Looked at every 2 ms at most: a login waits on these calls, and a look is
    // one waitpid.
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            // Not reaped yet, so the group id is still its own.
            unsafe { libc::kill(-group, libc::SIGKILL) };
            let _ = child.wait();
            return Ok(None);
        }
        sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(2));
    };
    // A process it left behind may still hold the pipes: what was said by now is
    // what there is. (Its group is not killed once it is reaped: the id is free.)
    let until = Instant::now() + Duration::from_secs(2);
    Ok(Some((
        status,
        collect(stdout, until),
        collect(stderr, until),
    )))
}

#[cfg(test)]
mod bounded_tests {
    use super::*;

    #[test]
    fn a_command_past_its_time_is_killed_with_what_it_started() {
        let mut command = std::process::Command::new("/bin/sh");
        command.args(["-c", "sleep 30 & echo started; wait"]);
        let start = Instant::now();
        let ran = output_within(&mut command, Duration::from_millis(300)).unwrap();
        assert!(ran.is_none());
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        let mut quick = std::process::Command::new("/bin/sh");
        quick.args(["-c", "echo out; echo err >&2; exit 3"]);
        let (status, stdout, stderr) = output_within(&mut quick, Duration::from_secs(10))
            .unwrap()
            .unwrap();
        assert_eq!(
            (status.code(), &stdout[..], &stderr[..]),
            (Some(3), &b"out\n"[..], &b"err\n"[..])
        );
    }
}
