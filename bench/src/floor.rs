//! Baseline (c), the kernel's floor: the least work any broker must do to hand a client a bound
//! TCP socket, written with raw system calls so that what it costs is the kernel's cost and
//! nothing else. One epoll thread; a request is 4 bytes that say nothing; the answer is the port
//! (4 bytes) with the fd attached, in one `sendmsg`. No table, no codec, no release message, no
//! allocation per request. The client is as bare: one `send`, one `recvmsg`, one `close`.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::ptr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use libc::c_int;

use crate::worker;

/// A request, and an answer: 4 bytes each.
const MESSAGE_LEN: usize = 4;

/// Room for one control message carrying one fd.
// SAFETY: CMSG_SPACE only computes a size.
const CONTROL_LEN: usize = unsafe { libc::CMSG_SPACE(size_of::<c_int>() as u32) } as usize;

/// The control buffer of a `sendmsg` or `recvmsg`, aligned as a `cmsghdr` must be.
#[repr(C, align(8))]
struct Control([u8; CONTROL_LEN]);

/// The error of the system call that just failed, named.
fn os_error(call: &'static str) -> anyhow::Error {
    anyhow::Error::new(io::Error::last_os_error()).context(call)
}

fn errno() -> c_int {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn unix_addr(path: &Path) -> Result<libc::sockaddr_un> {
    // SAFETY: sockaddr_un is plain old data, and all zeroes is a valid value of it.
    let mut addr: libc::sockaddr_un = unsafe { zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    // Shorter than sun_path, so that the path stays NUL-terminated.
    ensure!(
        bytes.len() < addr.sun_path.len(),
        "socket path too long: {}",
        path.display()
    );
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    Ok(addr)
}

/// Serves on a Unix socket at `path` until killed.
pub fn serve(path: &Path) -> Result<()> {
    let addr = unix_addr(path)?;
    // SAFETY: socket takes no pointers.
    let listener = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if listener < 0 {
        return Err(os_error("socket"));
    }
    let addr_len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a live sockaddr_un of the length passed.
    if unsafe { libc::bind(listener, (&raw const addr).cast(), addr_len) } < 0 {
        return Err(os_error("bind")).with_context(|| path.display().to_string());
    }
    // SAFETY: listen takes no pointers.
    if unsafe { libc::listen(listener, libc::SOMAXCONN) } < 0 {
        return Err(os_error("listen"));
    }
    // SAFETY: epoll_create1 takes no pointers.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(os_error("epoll_create1"));
    }
    watch(epoll, listener)?;
    // How many bytes of its current request each connection has sent, by fd: a request may
    // arrive in pieces. Grows when a connection gets a higher fd, never per request.
    let mut have: Vec<u8> = Vec::new();
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    loop {
        // SAFETY: events is a live array of the length passed.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as c_int, -1) };
        if n < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return Err(os_error("epoll_wait"));
        }
        for event in &events[..n as usize] {
            let fd = event.u64 as c_int;
            if fd == listener {
                accept_all(listener, epoll, &mut have)?;
            } else {
                on_readable(fd, &mut have[fd as usize])?;
            }
        }
    }
}

/// Adds `fd` to the epoll set, level-triggered: data left unread wakes the loop again.
fn watch(epoll: c_int, fd: c_int) -> Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: event is a live epoll_event.
    if unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) } < 0 {
        return Err(os_error("epoll_ctl"));
    }
    Ok(())
}

/// Accepts every pending connection, non-blocking, into the epoll set.
fn accept_all(listener: c_int, epoll: c_int, have: &mut Vec<u8>) -> Result<()> {
    loop {
        // SAFETY: null address pointers ask for no peer address, which accept4 allows.
        let conn = unsafe {
            libc::accept4(
                listener,
                ptr::null_mut(),
                ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if conn < 0 {
            return match errno() {
                libc::EAGAIN | libc::EINTR => Ok(()),
                libc::ECONNABORTED => continue,
                _ => Err(os_error("accept4")),
            };
        }
        watch(epoll, conn)?;
        let slot = conn as usize;
        if have.len() <= slot {
            have.resize(slot + 1, 0);
        }
        have[slot] = 0;
    }
}

/// Reads what has come of `conn`'s request, and answers it once all 4 bytes are in. A
/// connection that ends or fails is closed, which also takes it out of the epoll set.
fn on_readable(conn: c_int, have: &mut u8) -> Result<()> {
    let mut request = [0u8; MESSAGE_LEN];
    // Never more than the rest of this request: a client waits for its answer before it sends
    // the next one, so one `recv` per request is all it takes.
    let want = MESSAGE_LEN - usize::from(*have);
    // SAFETY: request has room for `want` ≤ 4 bytes.
    let got = unsafe { libc::recv(conn, request.as_mut_ptr().cast(), want, 0) };
    let done = if got == 0 {
        true // the client left
    } else if got < 0 {
        !matches!(errno(), libc::EAGAIN | libc::EINTR)
    } else {
        *have += got as u8;
        if usize::from(*have) < MESSAGE_LEN {
            false // the rest wakes the loop again
        } else {
            *have = 0;
            !grant(conn)?
        }
    };
    if done {
        // SAFETY: conn is a connection of ours, closed once: its slot is reset on its next accept.
        unsafe { libc::close(conn) };
    }
    Ok(())
}

/// Binds a fresh TCP listener to 127.0.0.1 on a port of the kernel's choosing and sends the
/// port and the fd to `conn` in one `sendmsg`; false if the client is gone. The server's own
/// failures (no socket, no port) end it.
fn grant(conn: c_int) -> Result<bool> {
    // SAFETY: socket takes no pointers.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(os_error("socket"));
    }
    let sent = bind_and_send(sock, conn);
    // SAFETY: sock is ours and closed once; the client has its own copy by now.
    unsafe { libc::close(sock) };
    sent
}

fn bind_and_send(sock: c_int, conn: c_int) -> Result<bool> {
    // SAFETY: sockaddr_in is plain old data, and all zeroes is a valid value of it.
    let mut addr: libc::sockaddr_in = unsafe { zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: addr and len are live locals, addr of the length passed.
    unsafe {
        if libc::bind(sock, (&raw const addr).cast(), len) < 0 {
            return Err(os_error("bind"));
        }
        if libc::listen(sock, libc::SOMAXCONN) < 0 {
            return Err(os_error("listen"));
        }
        if libc::getsockname(sock, (&raw mut addr).cast(), &mut len) < 0 {
            return Err(os_error("getsockname"));
        }
    }
    let mut answer = u32::from(u16::from_be(addr.sin_port)).to_ne_bytes();
    let mut control = Control([0; CONTROL_LEN]);
    let mut iov = libc::iovec {
        iov_base: answer.as_mut_ptr().cast(),
        iov_len: MESSAGE_LEN,
    };
    let msg = one_fd_message(&mut iov, &mut control);
    // SAFETY: msg_control points to CONTROL_LEN aligned bytes, room for one header with one fd,
    // so the first header exists and its data holds a c_int; iov, answer and control outlive
    // the call.
    let sent = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<c_int>() as u32) as _;
        ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>(), sock);
        libc::sendmsg(conn, &msg, libc::MSG_NOSIGNAL)
    };
    // Whatever failed here (the client left: EPIPE; or it broke the one-request-at-a-time rule
    // and its buffer is full: EAGAIN) is the client's, and ends its connection only.
    Ok(sent == MESSAGE_LEN as isize)
}

/// The header of a one-part message at `iov` with room for one fd in `control`; it points
/// into both, which the caller keeps alive while it is used.
fn one_fd_message(iov: &mut libc::iovec, control: &mut Control) -> libc::msghdr {
    // SAFETY: msghdr is plain old data, and all zeroes is a valid (empty) message.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL_LEN as _;
    msg
}

/// The client: asks the floor server at `path` for sockets, again and again, each timed.
pub fn request_loop(path: &Path, duration: Duration, max_ops: u64) -> Result<()> {
    let addr = unix_addr(path)?;
    // SAFETY: socket takes no pointers.
    let conn = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if conn < 0 {
        return Err(os_error("socket"));
    }
    let addr_len = size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: addr is a live sockaddr_un of the length passed.
    if unsafe { libc::connect(conn, (&raw const addr).cast(), addr_len) } < 0 {
        return Err(os_error("connect")).with_context(|| path.display().to_string());
    }
    // The connection stays open until the process exits.
    println!("ready");
    worker::wait_for_start()?;
    let result = worker::timed_loop(duration, max_ops, || request(conn))?;
    worker::report(&result)
}

/// One request on the blocking connection `conn`: 4 bytes out; the port and the fd back in one
/// `recvmsg`; the fd closed.
fn request(conn: c_int) -> Result<()> {
    let request = [0u8; MESSAGE_LEN];
    // SAFETY: request is MESSAGE_LEN live bytes.
    let sent = unsafe {
        libc::send(
            conn,
            request.as_ptr().cast(),
            MESSAGE_LEN,
            libc::MSG_NOSIGNAL,
        )
    };
    if sent < 0 {
        return Err(os_error("send"));
    }
    ensure!(sent == MESSAGE_LEN as isize, "send wrote {sent} bytes");
    let mut answer = [0u8; MESSAGE_LEN];
    let mut control = Control([0; CONTROL_LEN]);
    let mut iov = libc::iovec {
        iov_base: answer.as_mut_ptr().cast(),
        iov_len: MESSAGE_LEN,
    };
    let mut msg = one_fd_message(&mut iov, &mut control);
    // SAFETY: iov, answer and control are live and of the lengths msg gives.
    let got = unsafe { libc::recvmsg(conn, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(os_error("recvmsg"));
    }
    // SAFETY: the kernel wrote msg_controllen bytes of well-formed headers into control, and
    // CMSG_FIRSTHDR gives null when there is none; an SCM_RIGHTS header of CMSG_LEN(4) bytes
    // carries exactly one fd, which is ours now and closed once.
    let had_fd = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        let one_fd = !cmsg.is_null()
            && (*cmsg).cmsg_level == libc::SOL_SOCKET
            && (*cmsg).cmsg_type == libc::SCM_RIGHTS
            && (*cmsg).cmsg_len as usize == libc::CMSG_LEN(size_of::<c_int>() as u32) as usize;
        if one_fd {
            libc::close(ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<c_int>()));
        }
        one_fd
    };
    ensure!(got != 0, "the floor server closed the connection");
    // The 4 bytes and the fd leave in one sendmsg, as one message that one recvmsg of 4 bytes
    // takes whole: a short read would be a broken server.
    ensure!(got == MESSAGE_LEN as isize, "recvmsg read {got} bytes");
    ensure!(had_fd, "the answer came without its fd");
    ensure!(u32::from_ne_bytes(answer) != 0, "the answer was port 0");
    Ok(())
}
