//! `connect`'s relay: ssh's pipes on one side, the server's TCP connection on the
//! other.
//!
//! Each direction runs on its own (a thread for ssh → server, this thread for
//! server → ssh) and ends with a half-close: the end of ssh's input becomes the
//! socket's `shutdown(Write)`, the server's end becomes the close of our stdout, and
//! the other direction goes on until it ends too — the ssh protocol relies on both.
//! Bytes move with `splice(2)` where one side is a pipe (ssh gives a ProxyCommand
//! pipes), so they are never copied through podspawn's memory; with `read`/`write`
//! where neither is (a terminal, a file).
//!
//! With ssh's `ProxyUseFdpass` (what `setup` writes) there is no relay at all: the
//! connected socket itself is handed to ssh over its stdout (`pass`), and podspawn
//! is gone before the first byte of the session.
//!
//! Nothing blocks inside a `splice`: the socket is non-blocking, the pipe side is
//! `SPLICE_F_NONBLOCK`, and each move waits in `poll` for both ends first. A splice
//! from a socket into a pipe that waits for the socket does so holding the pipe's
//! lock, and ssh's `read` of that pipe then waits behind it: ssh, waiting for its
//! read to send its next message, and the server, waiting for that message, never
//! move again (seen here on the first try, with a real sshd).

use std::io;
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};

/// The most one `splice` or `read` moves.
const CHUNK: usize = 1 << 20;

/// Relays stdin to `socket` and `socket` to stdout until both directions have ended.
/// An error in either (ssh went away, the connection was reset) ends it at once.
pub fn relay(socket: TcpStream) -> io::Result<()> {
    set_options(&socket);
    socket.set_nonblocking(true)?;
    let to_server = socket.try_clone()?;
    let sending = std::thread::spawn(move || {
        let sent = pump(libc::STDIN_FILENO, to_server.as_raw_fd());
        let _ = to_server.shutdown(Shutdown::Write);
        sent
    });
    let received = pump(socket.as_raw_fd(), libc::STDOUT_FILENO);
    // The server is done: ssh reads end-of-file, while its input still flows. (A
    // socket as both stdin and stdout, as inetd or socat give, needs the shutdown:
    // closing fd 1 leaves fd 0 holding it open.)
    unsafe {
        libc::shutdown(libc::STDOUT_FILENO, libc::SHUT_WR);
        libc::close(libc::STDOUT_FILENO);
    }
    received?;
    sending
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the sending side panicked")))
}

/// Whether stdout is a Unix socket, as ssh's `ProxyUseFdpass` makes it: only then
/// can the connection be handed over (a TCP socket would take the handed-over byte
/// for data and drop the descriptor).
pub fn can_pass() -> bool {
    let mut domain: libc::c_int = 0;
    let mut length = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    let asked = unsafe {
        libc::getsockopt(
            libc::STDOUT_FILENO,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut domain as *mut libc::c_int).cast(),
            &mut length,
        )
    };
    asked == 0 && domain == libc::AF_UNIX
}

/// Hands `socket` to ssh through stdout (see `can_pass`): ssh then talks to the
/// server itself, through no process of ours.
pub fn pass(socket: TcpStream) -> io::Result<()> {
    set_options(&socket);
    pass_through(libc::STDOUT_FILENO, &socket)
}

/// Sends `socket`'s descriptor over the Unix socket `through`, with the one byte of
/// data OpenSSH's receiving end expects.
fn pass_through(through: RawFd, socket: &TcpStream) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut payload = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // A control buffer aligned for `cmsghdr`, however the allocator would place bytes.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u64; space.div_ceil(8)];
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut payload;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = space as _;
    unsafe {
        let header = libc::CMSG_FIRSTHDR(&message);
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), socket.as_raw_fd());
    }
    loop {
        if unsafe { libc::sendmsg(through, &message, libc::MSG_NOSIGNAL) } == 1 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// No Nagle delay, as ssh has for a terminal session (a login's key exchange, whose
/// small writes otherwise wait for the server's delayed ACK, is ~40 ms quicker
/// here), and TCP keepalives (ssh's `TCPKeepAlive`, on by default). Best effort.
fn set_options(socket: &TcpStream) {
    set_option(socket, libc::IPPROTO_TCP, libc::TCP_NODELAY);
    set_option(socket, libc::SOL_SOCKET, libc::SO_KEEPALIVE);
}

fn set_option(socket: &TcpStream, level: libc::c_int, option: libc::c_int) {
    let on: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            option,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
}

/// Waits until `fd` is ready for `events`, or has hung up or failed (which the
/// next read or write then reports).
fn wait(fd: RawFd, events: libc::c_short) -> io::Result<()> {
    let mut poll = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    loop {
        if unsafe { libc::poll(&mut poll, 1, -1) } >= 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

fn again(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

/// Moves bytes from `from` to `to` until `from` ends: a splice as long as there is
/// something to move and room for it, a wait in `poll` when there is not.
fn pump(from: RawFd, to: RawFd) -> io::Result<()> {
    widen_pipe(from);
    widen_pipe(to);
    loop {
        let moved = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                CHUNK,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        match moved {
            0 => return Ok(()),
            moved if moved > 0 => continue,
            _ => {
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    // Neither side is a pipe: copy.
                    Some(libc::EINVAL) => return copy(from, to),
                    Some(libc::EAGAIN) => {
                        wait(from, libc::POLLIN)?;
                        wait(to, libc::POLLOUT)?;
                    }
                    _ if again(&err) => continue,
                    _ => return Err(err),
                }
            }
        }
    }
}

/// The size a pipe of ours is given: each splice moves up to a pipe's worth, so
/// a bigger pipe is fewer wake-ups per mebibyte (measured here: 4 GiB from a pipe to
/// a local socket in 2.5–3.2 s with 1 MiB pipes, 5.1–5.9 s with Linux's default
/// 64 KiB). Best effort; a non-pipe is left alone.
const PIPE_SIZE: libc::c_int = 1 << 20;

fn widen_pipe(fd: RawFd) {
    unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) };
}

fn copy(from: RawFd, to: RawFd) -> io::Result<()> {
    let mut buffer = vec![0u8; CHUNK];
    loop {
        wait(from, libc::POLLIN)?;
        let read = unsafe { libc::read(from, buffer.as_mut_ptr().cast(), buffer.len()) };
        if read < 0 {
            let err = io::Error::last_os_error();
            if again(&err) {
                continue;
            }
            return Err(err);
        }
        if read == 0 {
            return Ok(());
        }
        let mut left = &buffer[..read as usize];
        while !left.is_empty() {
            wait(to, libc::POLLOUT)?;
            let written = unsafe { libc::write(to, left.as_ptr().cast(), left.len()) };
            if written < 0 {
                let err = io::Error::last_os_error();
                if again(&err) {
                    continue;
                }
                return Err(err);
            }
            left = &left[written as usize..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::FromRawFd;

    fn pipe() -> (std::fs::File, std::fs::File) {
        let mut fds = [0; 2];
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    /// ssh reads what arrived while the relay waits for more from the server: a
    /// splice blocked on the socket would hold the pipe's lock, and this read with it.
    #[test]
    fn a_reader_of_the_pipe_never_waits_behind_a_pump_waiting_for_the_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut far, _) = listener.accept().unwrap();
        near.set_nonblocking(true).unwrap();
        let (mut read_end, write_end) = pipe();
        let near_fd = near.as_raw_fd();
        std::thread::spawn(move || pump(near_fd, write_end.as_raw_fd()));
        far.write_all(b"banner\n").unwrap();
        // The banner is in the pipe; the pump is back to waiting for the socket.
        wait(read_end.as_raw_fd(), libc::POLLIN).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut got = [0u8; 7];
            let _ = done.send(read_end.read_exact(&mut got).map(|()| got));
        });
        let got = finished
            .recv_timeout(std::time::Duration::from_secs(5))
            .expect("the read waited behind the pump");
        assert_eq!(&got.unwrap(), b"banner\n");
        drop(near);
    }

    /// What ssh's `mm_receive_fd` does with what `pass_through` sends: one byte, and
    /// a descriptor that is the very connection.
    #[test]
    fn a_handed_over_descriptor_is_the_connection_itself() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let socket = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        let (ssh_end, ours) = std::os::unix::net::UnixStream::pair().unwrap();
        pass_through(ours.as_raw_fd(), &socket).unwrap();
        drop(socket);
        let mut byte = [0u8; 1];
        let mut payload = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let mut control = [0u64; 8];
        let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
        message.msg_iov = &mut payload;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = std::mem::size_of_val(&control) as _;
        assert_eq!(
            unsafe { libc::recvmsg(ssh_end.as_raw_fd(), &mut message, 0) },
            1
        );
        let received = unsafe {
            let header = libc::CMSG_FIRSTHDR(&message);
            assert!(!header.is_null());
            assert_eq!(
                ((*header).cmsg_level, (*header).cmsg_type),
                (libc::SOL_SOCKET, libc::SCM_RIGHTS)
            );
            std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<RawFd>())
        };
        let mut received = unsafe { TcpStream::from_raw_fd(received) };
        received.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
    }

    /// Both ways a pump can go: spliced between a pipe and a socket, and copied
    /// between two sockets.
    #[test]
    fn bytes_arrive_whole_spliced_or_copied() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut near = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut far, _) = listener.accept().unwrap();
        let data: Vec<u8> = (0..3_000_000u32).map(|n| (n % 251) as u8).collect();

        // pipe → socket (splice)
        let (read_end, mut write_end) = pipe();
        let sent = data.clone();
        let writer = std::thread::spawn(move || write_end.write_all(&sent));
        let socket_fd = near.as_raw_fd();
        let pumping = std::thread::spawn(move || pump(read_end.as_raw_fd(), socket_fd));
        let mut got = vec![0u8; data.len()];
        far.read_exact(&mut got).unwrap();
        assert!(got == data);
        writer.join().unwrap().unwrap();
        pumping.join().unwrap().unwrap();

        // socket → socket (copy, after splice says EINVAL)
        let listener2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut out = TcpStream::connect(listener2.local_addr().unwrap()).unwrap();
        let (sink, _) = listener2.accept().unwrap();
        let far_fd = far.as_raw_fd();
        let sink_fd = sink.as_raw_fd();
        let pumping = std::thread::spawn(move || pump(far_fd, sink_fd));
        near.write_all(b"hello").unwrap();
        near.shutdown(Shutdown::Write).unwrap();
        pumping.join().unwrap().unwrap();
        drop(sink);
        let mut rest = Vec::new();
        out.read_to_end(&mut rest).unwrap();
        assert_eq!(rest, b"hello");
    }
}
