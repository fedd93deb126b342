//! What the shim tells the program (an errno) and its user (one line on stderr).

use std::fmt::Write as _;

use libc::c_int;
use portbroker::{Error, ErrorKind, Refusal};

use crate::install::Applied;
use crate::records::{NotKept, Record, Unrecorded};
use crate::settings::FALLBACK_ENV;
use crate::sys;

/// The errno `bind()` fails with when the broker refuses or cannot be asked.
pub fn errno_for(err: &Error) -> c_int {
    if let Error::Refused(refusal) = err {
        return match refusal {
            // As the kernel says it: the port is taken, or no port is left to pick.
            Refusal::InUse { .. }
            | Refusal::InUseOutside { .. }
            | Refusal::PoolExhausted { .. } => libc::EADDRINUSE,
            Refusal::NotPermitted { .. } | Refusal::QuotaExceeded { .. } => libc::EACCES,
            Refusal::InvalidSpec { .. } | Refusal::UnknownService { .. } => libc::EINVAL,
            // The kernel's own answer to the broker's bind (EADDRNOTAVAIL for an address this
            // host does not have, say) is what the program's bind would have got.
            Refusal::BindFailed { errno, .. } if *errno > 0 => *errno,
            Refusal::BindFailed { .. } => libc::EADDRNOTAVAIL,
        };
    }
    match err.kind() {
        // Not an answer bind() gives on its own, so that the program's message ("Connection
        // refused") cannot be mistaken for a port conflict or a permission problem.
        ErrorKind::Unreachable => libc::ECONNREFUSED,
        ErrorKind::UntrustedBroker | ErrorKind::NotPermitted | ErrorKind::NotYourLease => {
            libc::EACCES
        }
        ErrorKind::InUse | ErrorKind::InUseOutside | ErrorKind::PoolExhausted => libc::EADDRINUSE,
        ErrorKind::QuotaExceeded => libc::EACCES,
        ErrorKind::JournalUnavailable => libc::EAGAIN,
        ErrorKind::VersionMismatch | ErrorKind::Protocol => libc::EPROTO,
        ErrorKind::ConnectionLost | ErrorKind::LeaseLost => libc::ECONNRESET,
        // ErrorKind is non-exhaustive: a kind added later is an I/O error until named here.
        _ => libc::EIO,
    }
}

/// Who is binding, for the start of a line: `portbroker-preload: NAME (pid N): `.
fn prefix() -> String {
    format!(
        "portbroker-preload: {} (pid {}): ",
        portbroker::proto::escaped(&sys::thread_name()),
        sys::pid()
    )
}

/// Writes one line to stderr in one `write`, so that lines of several threads do not mix.
fn emit(line: &str) {
    let mut line = line.replace('\n', " ");
    line.push('\n');
    sys::write_stderr(line.as_bytes());
}

/// `bind()` of `what` failed because of `err` (a refusal names the holder: its name is
/// escaped by the library's `Holder` display).
pub fn failed(fd: c_int, what: &str, err: &Error) {
    let hint = match err.kind() {
        ErrorKind::Unreachable => format!(
            "; to let programs bind on their own where no broker is reachable, set \
             {FALLBACK_ENV}=1"
        ),
        _ => String::new(),
    };
    emit(&format!("{}bind(fd {fd}) to {what}: {err}{hint}", prefix()));
}

/// `bind()` of `what` was refused by the shim itself, for `why`.
pub fn refused(fd: c_int, what: &str, why: &str) {
    emit(&format!(
        "{}bind(fd {fd}) to {what} refused: {why}",
        prefix()
    ));
}

/// The leased socket could not be put in place of the program's.
pub fn not_in_place(fd: c_int, what: &str, err: &std::io::Error) {
    emit(&format!(
        "{}bind(fd {fd}) to {what}: the leased socket could not replace the program's (the \
         lease is released): {err}",
        prefix()
    ));
}

/// The bind with no broker to ask, under `PORTBROKER_SHIM_FALLBACK=1`.
pub fn fallback(fd: c_int, what: &str, err: &Error) {
    emit(&format!(
        "{}bind(fd {fd}) to {what} goes to the kernel unleased ({FALLBACK_ENV}=1): {err}",
        prefix()
    ));
}

/// What became of the options the program set before bind: a warning for each that the
/// leased socket may lack, and under `verbose` a line for the lease with every option.
pub fn leased(
    fd: c_int,
    granted: &str,
    lease: u64,
    outcomes: &[(Record, Applied)],
    records_lost: bool,
    verbose: bool,
) {
    for (record, applied) in outcomes.iter().filter(|(_, applied)| applied.is_failure()) {
        emit(&format!(
            "{}warning: bind(fd {fd}) to {granted}: {} was set before bind() but the leased \
             socket may not have it: {}",
            prefix(),
            option_name(record.level, record.name),
            applied_text(applied)
        ));
    }
    if records_lost {
        emit(&format!(
            "{}warning: bind(fd {fd}) to {granted}: the options set before bind() could not be \
             read (their table was busy), so none were set on the leased socket",
            prefix()
        ));
    }
    if verbose {
        let mut line = format!("{}fd {fd} is {granted}, lease {lease}", prefix());
        for (record, applied) in outcomes {
            let _ = write!(
                line,
                "; {}: {}",
                option_name(record.level, record.name),
                applied_text(applied)
            );
        }
        emit(&line);
    }
}

fn applied_text(applied: &Applied) -> String {
    match applied {
        Applied::Set => "set".into(),
        Applied::AlreadySo => "already so".into(),
        Applied::Irrelevant => "irrelevant on a specific address".into(),
        Applied::Failed(err) => format!("setting it failed: {err}"),
        Applied::NotKept(NotKept::TooLong(len)) => {
            format!("its value ({len} bytes) was too long to keep")
        }
        Applied::NotKept(NotKept::HoldsPointer) => {
            "its value points into the program's memory, so it was not kept".into()
        }
        Applied::NotKept(NotKept::HoldsFd) => {
            "its value names a file descriptor, so it was not kept".into()
        }
    }
}

/// `SO_RCVBUF`, `TCP_NODELAY`, ...; `option 99 at level 6` for the rest.
pub fn option_name(level: c_int, name: c_int) -> String {
    let known = match (level, name) {
        (libc::SOL_SOCKET, libc::SO_REUSEADDR) => "SO_REUSEADDR",
        (libc::SOL_SOCKET, libc::SO_REUSEPORT) => "SO_REUSEPORT",
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE) => "SO_KEEPALIVE",
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => "SO_RCVBUF",
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => "SO_SNDBUF",
        (libc::SOL_SOCKET, libc::SO_RCVBUFFORCE) => "SO_RCVBUFFORCE",
        (libc::SOL_SOCKET, libc::SO_SNDBUFFORCE) => "SO_SNDBUFFORCE",
        (libc::SOL_SOCKET, libc::SO_BROADCAST) => "SO_BROADCAST",
        (libc::SOL_SOCKET, libc::SO_LINGER) => "SO_LINGER",
        (libc::SOL_SOCKET, libc::SO_BINDTODEVICE) => "SO_BINDTODEVICE",
        (libc::SOL_SOCKET, libc::SO_MARK) => "SO_MARK",
        (libc::SOL_SOCKET, libc::SO_PRIORITY) => "SO_PRIORITY",
        (libc::SOL_SOCKET, libc::SO_RCVTIMEO) => "SO_RCVTIMEO",
        (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => "SO_SNDTIMEO",
        (libc::SOL_SOCKET, libc::SO_ATTACH_FILTER) => "SO_ATTACH_FILTER",
        (libc::SOL_SOCKET, libc::SO_ATTACH_BPF) => "SO_ATTACH_BPF",
        (libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF) => "SO_ATTACH_REUSEPORT_CBPF",
        (libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_EBPF) => "SO_ATTACH_REUSEPORT_EBPF",
        (libc::IPPROTO_TCP, libc::TCP_NODELAY) => "TCP_NODELAY",
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => "TCP_KEEPIDLE",
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => "TCP_KEEPINTVL",
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => "TCP_KEEPCNT",
        (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT) => "TCP_DEFER_ACCEPT",
        (libc::IPPROTO_TCP, libc::TCP_FASTOPEN) => "TCP_FASTOPEN",
        (libc::IPPROTO_TCP, libc::TCP_MD5SIG) => "TCP_MD5SIG",
        (libc::IPPROTO_TCP, libc::TCP_CONGESTION) => "TCP_CONGESTION",
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT) => "TCP_USER_TIMEOUT",
        (libc::IPPROTO_IP, libc::IP_TOS) => "IP_TOS",
        (libc::IPPROTO_IP, libc::IP_TTL) => "IP_TTL",
        (libc::IPPROTO_IP, libc::IP_FREEBIND) => "IP_FREEBIND",
        (libc::IPPROTO_IP, libc::IP_TRANSPARENT) => "IP_TRANSPARENT",
        (libc::IPPROTO_IP, libc::IP_BIND_ADDRESS_NO_PORT) => "IP_BIND_ADDRESS_NO_PORT",
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) => "IPV6_V6ONLY",
        (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => "IPV6_TCLASS",
        _ => return format!("option {name} at level {level}"),
    };
    known.into()
}

/// A `setsockopt()` that could not be recorded: said at once, without allocating or locking,
/// since this runs inside `setsockopt()`, maybe in a signal handler.
pub fn unrecorded(fd: c_int, level: c_int, name: c_int, why: Unrecorded) {
    let mut line = StackLine::new();
    let _ = writeln!(
        line,
        "portbroker-preload: warning: setsockopt(fd {fd}, level {level}, option {name}) on an \
         unbound socket was not recorded ({}); if this socket is bound, the leased socket will \
         not have it",
        match why {
            Unrecorded::Full => "the shim's table of 128 options of unbound sockets is full",
            Unrecorded::Busy => "the shim's table was busy",
        }
    );
    sys::write_stderr(line.as_bytes());
}

/// A line formatted on the stack: core::fmt allocates nothing and takes no lock. Text past
/// its capacity is cut.
struct StackLine {
    buf: [u8; 320],
    len: usize,
}

impl StackLine {
    fn new() -> Self {
        StackLine {
            buf: [0; 320],
            len: 0,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::fmt::Write for StackLine {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let take = text.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&text.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portbroker::{Holder, LeaseId, Transport};

    fn holder() -> Holder {
        Holder {
            pid: 4242,
            uid: 1000,
            gid: 1000,
            name: "evil\x1b[31m".into(),
        }
    }

    #[test]
    fn refusals_map_to_the_kernels_errnos() {
        let in_use = Error::Refused(Refusal::InUse {
            transport: Transport::Tcp,
            requested: "127.0.0.1:80".parse().unwrap(),
            held: "0.0.0.0:80".parse().unwrap(),
            lease: LeaseId(2),
            holder: holder(),
        });
        assert_eq!(errno_for(&in_use), libc::EADDRINUSE);
        assert!(in_use
            .to_string()
            .contains(r"held by pid 4242 (evil\x1b[31m, uid 1000)"));
        let policy = Error::Refused(Refusal::NotPermitted {
            reason: "no".into(),
        });
        assert_eq!(errno_for(&policy), libc::EACCES);
        let quota = Error::Refused(Refusal::QuotaExceeded {
            quota: "leases_per_uid".into(),
            used: 1,
            limit: 1,
        });
        assert_eq!(errno_for(&quota), libc::EACCES);
        let kernel = Error::Refused(Refusal::BindFailed {
            transport: Transport::Udp,
            requested: "192.0.2.1:53".parse().unwrap(),
            errno: libc::EADDRNOTAVAIL,
            message: "Cannot assign requested address".into(),
        });
        assert_eq!(errno_for(&kernel), libc::EADDRNOTAVAIL);
        let unreachable = Error::Unreachable {
            path: "/x".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(errno_for(&unreachable), libc::ECONNREFUSED);
    }

    #[test]
    fn option_names_are_known_or_numbered() {
        assert_eq!(
            option_name(libc::IPPROTO_TCP, libc::TCP_NODELAY),
            "TCP_NODELAY"
        );
        assert_eq!(option_name(77, 5), "option 5 at level 77");
    }

    #[test]
    fn a_stack_line_cuts_what_does_not_fit() {
        let mut line = StackLine::new();
        for _ in 0..100 {
            let _ = write!(line, "0123456789");
        }
        assert_eq!(line.as_bytes().len(), 320);
    }
}
