//! Supervising one connection's `docker exec`.
//!
//! podspawn hands its own stdin and stdout to the docker child and copies none of
//! those bytes. It keeps watching three things while the child runs:
//!
//! - signals: SIGCHLD (the child ended), SIGHUP (sshd dropped a PTY session) and
//!   SIGTERM end the wait; SIGINT and SIGQUIT are caught and ignored, so a Ctrl-C
//!   that reaches the whole process group stops the program in the container (docker
//!   puts the terminal in raw mode and passes it on), never podspawn;
//! - its own stdout: when sshd's end of it goes away, `poll` reports POLLERR (a pipe)
//!   or POLLHUP (a terminal) — the only sign of a lost client that a session without
//!   a PTY ever gets;
//! - docker's stderr, which it relays, holding back only a first line that looks like
//!   docker's own "no such container" / "not running" message, so that the caller can
//!   decide whether the command ever ran before the user sees it.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::container::WindowSize;
use crate::docker;

/// How a supervised exec ended.
#[derive(Debug)]
pub enum Ended {
    /// The child exited. `held_stderr` is what was held back and not yet shown.
    Exited {
        status: ExitStatus,
        held_stderr: Vec<u8>,
    },
    /// The client went away (SIGHUP, SIGTERM, or stdout's reader vanished) while the
    /// child still ran; `signal` is what podspawn exits with (128 + signal).
    Disconnected { signal: i32, child: Child },
    /// An admin ended the session (`stop` sent `host::STOP_SIGNAL`) while the child
    /// ran (or before), and the child then ended as it did, with what was held back.
    Stopped {
        status: ExitStatus,
        held_stderr: Vec<u8>,
    },
}

/// Set by `stop`'s signal.
static STOP_REQUESTED: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// Catches `stop`'s signal from now on (its default would end this process before
/// it could tell its user why), and nothing else: until the exec, a hang-up or Ctrl-C
/// still ends this process as it always did. Call early, before the connection is
/// recorded.
pub fn catch_stop() -> io::Result<()> {
    if STOP_REQUESTED.get().is_some() {
        return Ok(());
    }
    let flag = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(crate::host::STOP_SIGNAL, flag.clone())?;
    let _ = STOP_REQUESTED.set(flag);
    Ok(())
}

/// Whether `stop`'s signal came.
pub fn stop_requested() -> bool {
    STOP_REQUESTED
        .get()
        .is_some_and(|flag| flag.load(Ordering::SeqCst))
}

/// The exit code for a child's status: its code, or 128 + the signal that ended it.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(signal)) => 128 + signal,
        (None, None) => 1,
    }
}

/// The size of the terminal on `fd`; none when it is not a terminal or has no size.
pub fn terminal_size(fd: RawFd) -> Option<WindowSize> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } != 0 {
        return None;
    }
    (size.ws_row > 0 && size.ws_col > 0).then_some(WindowSize {
        rows: size.ws_row,
        cols: size.ws_col,
    })
}

/// Runs `command` with our stdin and stdout, relaying its stderr, until it exits or
/// the client disconnects.
pub fn supervise(mut command: Command) -> io::Result<Ended> {
    let signals = Signals::installed()?;
    // Anything a previous exec of this process left in the pipe is old news.
    signals.drain();
    let (stderr_read, stderr_write) = pipe()?;
    command
        .stdin(Stdio::inherit())
        .stdout(Stdio::inherit())
        .stderr(Stdio::from(stderr_write));
    let spawned = command.spawn();
    // The child has its copy; ours must go, or the relay never sees end-of-file.
    drop(command);
    let mut child = spawned?;
    let mut stderr = Some(std::fs::File::from(stderr_read));
    let mut relay = StderrRelay::new();
    let mut watch_stdout = true;
    loop {
        // A hang-up reaches docker too, which may die of it first: check ours first,
        // so a dropped terminal session is never mistaken for a normal exit.
        if let Some(signal) = signals.termination() {
            return Ok(Ended::Disconnected { signal, child });
        }
        if let Some(status) = child.try_wait()? {
            if let Some(stderr) = stderr.take() {
                drain(stderr, &mut relay);
            }
            let held_stderr = relay.into_held();
            if stop_requested() {
                return Ok(Ended::Stopped {
                    status,
                    held_stderr,
                });
            }
            return Ok(Ended::Exited {
                status,
                held_stderr,
            });
        }
        let mut fds = vec![libc::pollfd {
            fd: signals.read_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        if let Some(stderr) = &stderr {
            fds.push(libc::pollfd {
                fd: stderr.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let stdout_slot = fds.len();
        if watch_stdout {
            // No events asked for: poll still reports POLLERR and POLLHUP.
            fds.push(libc::pollfd {
                fd: libc::STDOUT_FILENO,
                events: 0,
                revents: 0,
            });
        }
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        signals.drain();
        if stderr.is_some() && fds[1].revents != 0 {
            let mut buffer = [0u8; 8192];
            match stderr.as_mut().map(|file| file.read(&mut buffer)) {
                Some(Ok(0)) | Some(Err(_)) => stderr = None,
                Some(Ok(n)) => relay.feed(&buffer[..n]),
                None => {}
            }
        }
        if watch_stdout {
            let revents = fds[stdout_slot].revents;
            if revents & libc::POLLNVAL != 0 {
                watch_stdout = false;
            } else if revents & (libc::POLLERR | libc::POLLHUP) != 0 {
                return Ok(Ended::Disconnected {
                    signal: libc::SIGPIPE,
                    child,
                });
            }
        }
    }
}

fn drain(mut stderr: std::fs::File, relay: &mut StderrRelay) {
    let mut buffer = [0u8; 8192];
    while let Ok(n) = stderr.read(&mut buffer) {
        if n == 0 {
            break;
        }
        relay.feed(&buffer[..n]);
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Relays docker's stderr to ours, except a first line that may be docker saying
/// the container is gone: that is held until the caller decides.
struct StderrRelay {
    holding: bool,
    held: Vec<u8>,
}

/// The most a relay holds back before giving up and showing it.
const MAX_HELD: usize = 4096;

impl StderrRelay {
    fn new() -> StderrRelay {
        StderrRelay {
            holding: true,
            held: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        if !self.holding {
            write_stderr(data);
            return;
        }
        self.held.extend_from_slice(data);
        if !self.may_be_docker_error() {
            self.holding = false;
            write_stderr(&std::mem::take(&mut self.held));
        }
    }

    /// Whether what is held so far can still be docker's own one-line error.
    fn may_be_docker_error(&self) -> bool {
        if self.held.len() > MAX_HELD {
            return false;
        }
        let text = String::from_utf8_lossy(&self.held);
        let start = "Error";
        if text.len() < start.len() {
            return start.starts_with(&*text);
        }
        if !text.starts_with(start) {
            return false;
        }
        match text.split_once('\n') {
            None => true,
            Some((line, rest)) => docker::says_container_gone(line) && rest.trim().is_empty(),
        }
    }

    fn into_held(self) -> Vec<u8> {
        if self.holding { self.held } else { Vec::new() }
    }
}

pub fn write_stderr(data: &[u8]) {
    let mut stderr = io::stderr().lock();
    let _ = stderr.write_all(data);
    let _ = stderr.flush();
}

/// Lines for the user's terminal, written by a thread of their own so that whoever
/// shows them never blocks: a terminal the user stopped (Ctrl-S) must not stall
/// what holds a lock others wait for. A line that finds the queue full is dropped.
pub struct TerminalLines {
    sender: std::sync::mpsc::SyncSender<String>,
    written: std::sync::mpsc::Receiver<()>,
}

impl TerminalLines {
    const QUEUE: usize = 64;

    pub fn start() -> TerminalLines {
        TerminalLines::start_with(io::stderr())
    }

    fn start_with(mut terminal: impl Write + Send + 'static) -> TerminalLines {
        let (sender, receiver) = std::sync::mpsc::sync_channel::<String>(Self::QUEUE);
        let (done, written) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for text in receiver {
                let _ = terminal.write_all(text.as_bytes());
                let _ = terminal.flush();
            }
            let _ = done.send(());
        });
        TerminalLines { sender, written }
    }

    pub fn show(&self, text: &str) {
        let _ = self.sender.try_send(text.to_string());
    }

    /// Lets what was shown reach the terminal before what comes next, waiting at
    /// most `patience` (a stopped terminal keeps the rest).
    pub fn finish(self, patience: std::time::Duration) {
        drop(self.sender);
        let _ = self.written.recv_timeout(patience);
    }
}

/// The signals a supervised exec reacts to, delivered through a self-pipe.
struct Signals {
    read: UnixStream,
    termination: Arc<AtomicUsize>,
}

impl Signals {
    /// The handlers, installed once per process however many execs it supervises (a
    /// connection whose container was recreated runs two).
    fn installed() -> io::Result<&'static Signals> {
        static INSTALLED: std::sync::OnceLock<Signals> = std::sync::OnceLock::new();
        if let Some(signals) = INSTALLED.get() {
            return Ok(signals);
        }
        let signals = Signals::install()?;
        Ok(INSTALLED.get_or_init(|| signals))
    }

    fn install() -> io::Result<Signals> {
        let (read, write) = UnixStream::pair()?;
        read.set_nonblocking(true)?;
        let termination = Arc::new(AtomicUsize::new(0));
        // `stop`'s signal wakes the wait too (its flag is `catch_stop`'s).
        catch_stop()?;
        for signal in [
            libc::SIGCHLD,
            libc::SIGHUP,
            libc::SIGTERM,
            crate::host::STOP_SIGNAL,
        ] {
            signal_hook::low_level::pipe::register(signal, write.try_clone()?)?;
        }
        for signal in [libc::SIGHUP, libc::SIGTERM] {
            signal_hook::flag::register_usize(signal, termination.clone(), signal as usize)?;
        }
        for signal in [libc::SIGINT, libc::SIGQUIT] {
            signal_hook::flag::register(signal, Arc::new(AtomicBool::new(false)))?;
        }
        Ok(Signals { read, termination })
    }

    fn read_fd(&self) -> i32 {
        self.read.as_raw_fd()
    }

    fn drain(&self) {
        let mut buffer = [0u8; 64];
        while let Ok(n) = (&self.read).read(&mut buffer) {
            if n == 0 {
                break;
            }
        }
    }

    fn termination(&self) -> Option<i32> {
        match self.termination.load(Ordering::SeqCst) {
            0 => None,
            signal => Some(signal as i32),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_lines_never_block_the_writer_even_on_a_stopped_terminal() {
        // A pipe nobody reads: the thread's writes block once it is full, as on a
        // terminal the user stopped with Ctrl-S.
        let (read, write) = std::io::pipe().unwrap();
        let lines = TerminalLines::start_with(write);
        let started = std::time::Instant::now();
        let line = "x".repeat(4096);
        for _ in 0..1000 {
            lines.show(&line);
        }
        lines.finish(std::time::Duration::from_millis(100));
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
        drop(read);
    }

    fn relay_of(chunks: &[&str]) -> (bool, String) {
        let mut relay = StderrRelay {
            holding: true,
            held: Vec::new(),
        };
        for chunk in chunks {
            relay.held.extend_from_slice(chunk.as_bytes());
            if !relay.may_be_docker_error() {
                relay.holding = false;
            }
        }
        let holding = relay.holding;
        (holding, String::from_utf8(relay.held).unwrap())
    }

    #[test]
    fn docker_gone_messages_are_held_and_others_are_not() {
        assert!(relay_of(&["Err"]).0);
        assert!(relay_of(&["Error response from daemon: No such container: podspawn-alice\n"]).0);
        assert!(
            relay_of(&[
                "Error response from daemon: ",
                "Container abc is not running\n"
            ])
            .0
        );
        assert!(!relay_of(&["ls: cannot access"]).0);
        assert!(!relay_of(&["Error: file not found\n"]).0);
        assert!(!relay_of(&["Error response from daemon: No such container: x\nmore\n"]).0);
        assert!(!relay_of(&[&"Error".repeat(1000)]).0);
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(42 << 8)), 42);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }
}
