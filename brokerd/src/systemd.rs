//! Everything the daemon says to and takes from systemd, in one place: the sockets it passes in
//! (`LISTEN_FDS`: the listener of a socket unit, and the reservations kept in the fd store), and
//! the notifications it sends (`NOTIFY_SOCKET`: readiness, status, reloads, the watchdog, the fd
//! store). Without these variables the daemon runs as it does anywhere else.
//!
//! Each variable is read once at start-up and removed from the environment, so that no child
//! (none today; a hook tomorrow) mistakes our sockets or our watchdog for its own. Sends are
//! non-blocking datagrams and never fail the daemon: systemd being slow or gone costs a debug
//! line, never a wait on the event loop.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use nix::sys::socket::{
    sendmsg, socket, AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, UnixAddr,
};
use portbroker_proto::Transport;
use tracing::{debug, warn};

/// The names of the fds systemd passes in, as `LISTEN_FDNAMES` would give them to this
/// process: `None` when the fds are not for us (no `LISTEN_FDS`, or `LISTEN_PID` another
/// process's), else one name per fd, starting at fd 3. Names missing from `LISTEN_FDNAMES` are
/// "unknown", as systemd's own `sd_listen_fds_with_names` says.
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    names: Option<&str>,
    our_pid: u32,
) -> Result<Option<Vec<String>>, String> {
    let Some(count) = listen_fds else {
        return Ok(None);
    };
    // systemd always sets LISTEN_PID; without it (or with another pid) the fds were meant for
    // the process that exec'd us, not for us.
    match listen_pid.map(str::trim) {
        Some(pid) if pid.parse::<u32>().ok() == Some(our_pid) => {}
        _ => return Ok(None),
    }
    let count: usize = count
        .trim()
        .parse()
        .map_err(|_| format!("LISTEN_FDS={count:?} is not a number of file descriptors"))?;
    // More than this many fds is no socket unit and fd store of ours (the store's entries are
    // capped by the policy's reservations, 4096, and FileDescriptorStoreMax).
    if count > 8192 {
        return Err(format!(
            "LISTEN_FDS={count} is more fds than portbrokerd ever stores"
        ));
    }
    let mut given = names
        .filter(|n| !n.is_empty())
        .map(|n| n.split(':').map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    given.resize(count, "unknown".to_owned());
    Ok(Some(given))
}

/// The first fd systemd passes (SD_LISTEN_FDS_START).
pub const LISTEN_FDS_START: i32 = 3;

/// What `LISTEN_FDS` gave: the broker's listening socket if a socket unit passed one, and the
/// fds stored in systemd's fd store under their names.
#[derive(Default)]
pub struct Passed {
    pub listener: Option<OwnedFd>,
    pub stored: Vec<(String, OwnedFd)>,
}

/// Takes the fds systemd passed in (see `parse_listen_env`) and removes `LISTEN_PID`,
/// `LISTEN_FDS` and `LISTEN_FDNAMES` from the environment. Call before any other thread or fd
/// exists. Fds named like fd-store entries (`reserve-*`) are `stored`, still unchecked; of the
/// others, the one that is a listening AF_UNIX stream socket is the listener, and anything
/// else is closed with a warning.
pub fn take_listen_fds() -> anyhow::Result<Passed> {
    let var = |name| std::env::var(name).ok();
    let names = parse_listen_env(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        var("LISTEN_FDNAMES").as_deref(),
        std::process::id(),
    );
    // listenfd validates each fd as a socket, marks it close-on-exec and hands it over owned
    // (this crate forbids unsafe). It is asked only once LISTEN_PID is known to be ours (it
    // would take fds without one), and must not start anywhere but at fd 3.
    std::env::remove_var("LISTEN_FDS_FIRST_FD");
    let mut fds = match &names {
        Ok(Some(_)) => listenfd::ListenFd::from_env(),
        _ => listenfd::ListenFd::empty(),
    };
    // Edition 2021: removing variables is safe while no other thread reads the environment,
    // which holds here (start-up, one thread).
    for name in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(name);
    }
    let names = names.map_err(|e| anyhow::anyhow!("{e}; start portbrokerd as systemd does"))?;
    let Some(names) = names else {
        return Ok(Passed::default());
    };
    let mut passed = Passed::default();
    for (index, name) in names.into_iter().enumerate() {
        let number = LISTEN_FDS_START + index as i32;
        let stored = name.starts_with("reserve-");
        // Any socket is taken (validated as a socket, made close-on-exec) and owned; the exact
        // checks follow, on an owned fd that closes if they fail.
        let family = if stored { libc::AF_INET } else { libc::AF_UNIX };
        let mut fd = None;
        for kind in [libc::SOCK_STREAM, libc::SOCK_DGRAM] {
            if let Ok(Some(taken)) = fds.take_custom::<OwnedFd>(index, family, kind, "socket") {
                fd = Some(taken);
                break;
            }
        }
        let Some(fd) = fd else {
            warn!("fd {number} ({name:?}) passed by systemd is not a socket portbrokerd uses; closing it");
            if let Ok(Some(raw)) = fds.take_raw_fd(index) {
                let _ = nix::unistd::close(raw);
            }
            continue;
        };
        if stored {
            // Left blocking: a reservation becomes a lease's socket, and holders get blocking
            // sockets, as std::net expects.
            passed.stored.push((name, fd));
        } else if passed.listener.is_none() && is_unix_listener(&fd) {
            // The event loop never blocks on accept (O_NONBLOCK is shared with systemd's copy,
            // which only polls it).
            if let Err(err) = set_nonblocking(&fd) {
                warn!(
                    "cannot make the passed listener (fd {number}) non-blocking: {err}; closing it"
                );
                continue;
            }
            passed.listener = Some(fd);
        } else {
            warn!(
                "fd {number} ({name:?}) passed by systemd is not a listening AF_UNIX stream \
                 socket (or a second one); closing it. The socket unit should pass one \
                 ListenStream= path with FileDescriptorName=portbroker.sock"
            );
        }
    }
    Ok(passed)
}

fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}

/// Whether `fd` is an AF_UNIX stream socket that listens: what a socket unit's `ListenStream=`
/// passes.
fn is_unix_listener(fd: &OwnedFd) -> bool {
    use rustix::net::sockopt;
    sockopt::socket_domain(fd).is_ok_and(|d| d == rustix::net::AddressFamily::UNIX)
        && sockopt::socket_type(fd).is_ok_and(|t| t == rustix::net::SocketType::STREAM)
        && sockopt::socket_acceptconn(fd).unwrap_or(false)
}

/// The fd-store name of a held reservation: stable across restarts, so that the next start
/// knows which port each stored socket reserves.
pub fn store_name(transport: Transport, port: u16) -> String {
    let proto = match transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    };
    format!("reserve-{proto}-{port}")
}

/// The reservation a store name names, if it names one.
pub fn parse_store_name(name: &str) -> Option<(Transport, u16)> {
    let rest = name.strip_prefix("reserve-")?;
    let (proto, digits) = rest.split_once('-')?;
    let transport = match proto {
        "tcp" => Transport::Tcp,
        "udp" => Transport::Udp,
        _ => return None,
    };
    // Exactly as store_name writes it: no sign, no leading zeros, not port 0.
    let port: u16 = digits.parse().ok()?;
    (port != 0 && port.to_string() == digits).then_some((transport, port))
}

/// `RELOADING=1` with the time of the reload, as systemd's `Type=notify-reload` expects.
pub fn reloading_message(monotonic_usec: u64) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")
}

/// The status line `systemctl status` shows.
pub fn status_message(leases: usize, connections: usize) -> String {
    format!("STATUS={leases} leases, {connections} connections")
}

/// `FDPOLL=0`: systemd polls stored fds and drops one that reports EPOLLHUP, which a bound TCP
/// socket that neither listens nor is connected (a reservation) does at once (TCP_CLOSE).
fn store_message(name: &str) -> String {
    format!("FDSTORE=1\nFDNAME={name}\nFDPOLL=0")
}

fn store_remove_message(name: &str) -> String {
    format!("FDSTOREREMOVE=1\nFDNAME={name}")
}

/// The watchdog interval systemd asks for, if it asks this process: `WATCHDOG_USEC` set and
/// non-zero, and `WATCHDOG_PID` ours or unset.
pub fn parse_watchdog(usec: Option<&str>, pid: Option<&str>, our_pid: u32) -> Option<Duration> {
    if let Some(pid) = pid.filter(|p| !p.is_empty()) {
        if pid.trim().parse::<u32>().ok() != Some(our_pid) {
            return None;
        }
    }
    let usec: u64 = usec?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Where notifications go: `NOTIFY_SOCKET` as a path, or an abstract name after '@'.
pub fn parse_notify_socket(value: &[u8]) -> Option<Result<UnixAddr, String>> {
    match value {
        [] => None,
        [b'@', name @ ..] => {
            Some(UnixAddr::new_abstract(name).map_err(|e| format!("abstract name too long: {e}")))
        }
        [b'/', ..] => Some(UnixAddr::new(value).map_err(|e| format!("path too long: {e}"))),
        _ => Some(Err(
            "neither an absolute path nor an abstract name (@...)".into()
        )),
    }
}

/// The service manager's notification socket, or nothing (not run by systemd, or not
/// `Type=notify`): every method is then a no-op.
#[derive(Default)]
pub struct Notifier {
    target: Option<(OwnedFd, UnixAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID` and removes them from the
    /// environment. A socket that cannot be used is logged and ignored: the daemon serves
    /// without notifications rather than not at all.
    pub fn from_env() -> Notifier {
        let value: Option<OsString> = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        for name in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            std::env::remove_var(name);
        }
        let watchdog = parse_watchdog(usec.as_deref(), pid.as_deref(), std::process::id());
        let Some(value) = value else {
            return Notifier::default();
        };
        let addr = match parse_notify_socket(value.as_bytes()) {
            None => return Notifier::default(),
            Some(Ok(addr)) => addr,
            Some(Err(why)) => {
                warn!("NOTIFY_SOCKET={value:?} is not usable ({why}); not notifying systemd");
                return Notifier::default();
            }
        };
        // Non-blocking: a full queue at systemd loses one message, it never stops the loop.
        let fd = match socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        ) {
            Ok(fd) => fd,
            Err(err) => {
                warn!("cannot create a socket to notify systemd ({value:?}): {err}; not notifying");
                return Notifier::default();
            }
        };
        Notifier {
            target: Some((fd, addr)),
            watchdog,
        }
    }

    /// The watchdog interval, when systemd runs one for us and can hear us.
    pub fn watchdog(&self) -> Option<Duration> {
        self.watchdog.filter(|_| self.target.is_some())
    }

    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    fn send(&self, message: &str, fd: Option<BorrowedFd<'_>>) {
        let Some((socket, addr)) = &self.target else {
            return;
        };
        let raw = fd.map(|fd| [fd.as_raw_fd()]);
        let cmsgs: Vec<ControlMessage> = raw
            .iter()
            .map(|fds| ControlMessage::ScmRights(fds))
            .collect();
        let sent = sendmsg(
            socket.as_raw_fd(),
            &[IoSlice::new(message.as_bytes())],
            &cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            Some(addr),
        );
        if let Err(err) = sent {
            debug!(
                "cannot notify systemd ({:?}): {err}",
                message.lines().next().unwrap_or("")
            );
        }
    }

    pub fn ready(&self) {
        self.send("READY=1", None);
    }

    pub fn status(&self, leases: usize, connections: usize) {
        self.send(&status_message(leases, connections), None);
    }

    pub fn reloading(&self) {
        self.send(&reloading_message(monotonic_usec()), None);
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1", None);
    }

    pub fn watchdog_ping(&self) {
        self.send("WATCHDOG=1", None);
    }

    /// Hands systemd a copy of `fd` to keep under `name` across restarts of the daemon.
    pub fn store(&self, name: &str, fd: impl AsFd) {
        self.send(&store_message(name), Some(fd.as_fd()));
    }

    /// Tells systemd to close its copies stored under `name`.
    pub fn store_remove(&self, name: &str) {
        self.send(&store_remove_message(name), None);
    }
}

/// CLOCK_MONOTONIC in microseconds, the clock systemd compares reload times on.
fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_fds_are_ours_only_with_our_pid() {
        assert_eq!(parse_listen_env(None, None, None, 7), Ok(None));
        assert_eq!(parse_listen_env(Some("8"), Some("1"), None, 7), Ok(None));
        assert_eq!(parse_listen_env(None, Some("1"), None, 7), Ok(None));
        assert_eq!(
            parse_listen_env(Some("7"), Some("2"), None, 7),
            Ok(Some(vec!["unknown".into(), "unknown".into()]))
        );
        assert!(parse_listen_env(Some("7"), Some("x"), None, 7).is_err());
        assert!(parse_listen_env(Some("7"), Some("100000"), None, 7).is_err());
    }

    #[test]
    fn fd_names_pair_with_fds_and_missing_ones_are_unknown() {
        let names = parse_listen_env(
            Some("7"),
            Some("3"),
            Some("portbroker.sock:reserve-tcp-9000"),
            7,
        );
        assert_eq!(
            names,
            Ok(Some(vec![
                "portbroker.sock".into(),
                "reserve-tcp-9000".into(),
                "unknown".into()
            ]))
        );
        let extra = parse_listen_env(Some("7"), Some("1"), Some("a:b"), 7);
        assert_eq!(extra, Ok(Some(vec!["a".into()])));
        assert_eq!(
            parse_listen_env(Some("7"), Some("0"), Some(""), 7),
            Ok(Some(vec![]))
        );
    }

    #[test]
    fn store_names_round_trip_and_nothing_else_parses() {
        assert_eq!(store_name(Transport::Tcp, 9000), "reserve-tcp-9000");
        assert_eq!(store_name(Transport::Udp, 53), "reserve-udp-53");
        for (t, p) in [(Transport::Tcp, 1), (Transport::Udp, 65535)] {
            assert_eq!(parse_store_name(&store_name(t, p)), Some((t, p)));
        }
        for bad in [
            "reserve-tcp-0",
            "reserve-tcp-09000",
            "reserve-tcp-+9000",
            "reserve-tcp-70000",
            "reserve-sctp-9000",
            "reserve-tcp",
            "portbroker.sock",
            "unknown",
        ] {
            assert_eq!(parse_store_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_are_what_sd_notify_expects() {
        assert_eq!(
            reloading_message(12345),
            "RELOADING=1\nMONOTONIC_USEC=12345"
        );
        assert_eq!(status_message(3, 1), "STATUS=3 leases, 1 connections");
        assert_eq!(
            store_message("reserve-tcp-9000"),
            "FDSTORE=1\nFDNAME=reserve-tcp-9000\nFDPOLL=0"
        );
        assert_eq!(
            store_remove_message("reserve-udp-53"),
            "FDSTOREREMOVE=1\nFDNAME=reserve-udp-53"
        );
        assert!(monotonic_usec() > 0);
    }

    #[test]
    fn the_watchdog_is_ours_only_when_its_pid_is_ours_or_unset() {
        let half_second = Some(Duration::from_millis(500));
        assert_eq!(parse_watchdog(Some("500000"), None, 7), half_second);
        assert_eq!(parse_watchdog(Some("500000"), Some("7"), 7), half_second);
        assert_eq!(parse_watchdog(Some("500000"), Some(""), 7), half_second);
        assert_eq!(parse_watchdog(Some("500000"), Some("8"), 7), None);
        assert_eq!(parse_watchdog(Some("0"), None, 7), None);
        assert_eq!(parse_watchdog(Some("soon"), None, 7), None);
        assert_eq!(parse_watchdog(None, None, 7), None);
    }

    #[test]
    fn notify_sockets_are_paths_or_abstract_names() {
        assert!(parse_notify_socket(b"").is_none());
        let path = parse_notify_socket(b"/run/systemd/notify")
            .unwrap()
            .unwrap();
        assert_eq!(path.path().unwrap().as_os_str(), "/run/systemd/notify");
        let abs = parse_notify_socket(b"@sd-notify").unwrap().unwrap();
        assert_eq!(abs.as_abstract(), Some(&b"sd-notify"[..]));
        assert!(parse_notify_socket(b"relative").unwrap().is_err());
        assert!(parse_notify_socket(b"vsock:2:1").unwrap().is_err());
    }

    #[test]
    fn notifications_arrive_with_their_fd() {
        use std::os::unix::net::UnixDatagram;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let receiver = UnixDatagram::bind(&path).unwrap();
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let notifier = Notifier {
            target: Some((fd, UnixAddr::new(&path).unwrap())),
            watchdog: None,
        };
        notifier.ready();
        let mut buf = [0u8; 256];
        let n = receiver.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let (a, _b) = UnixDatagram::pair().unwrap();
        notifier.store("reserve-tcp-9000", &a);
        let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = nix::sys::socket::recvmsg::<()>(
            receiver.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .unwrap();
        let fds: Vec<_> = msg
            .cmsgs()
            .unwrap()
            .flat_map(|c| match c {
                nix::sys::socket::ControlMessageOwned::ScmRights(fds) => fds,
                _ => vec![],
            })
            .collect();
        assert_eq!(fds.len(), 1);
        for fd in fds {
            nix::unistd::close(fd).unwrap();
        }
        let n = msg.bytes;
        assert_eq!(&buf[..n], b"FDSTORE=1\nFDNAME=reserve-tcp-9000\nFDPOLL=0");
    }
}
