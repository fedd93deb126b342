//! Putting the leased socket where the program's was: the options the program set, its
//! O_NONBLOCK, and its fd number (with its FD_CLOEXEC).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::classify::is_v6_wildcard;
use crate::real;
use crate::records::{NotKept, Record, Value, VALUE_MAX};
use crate::sys;

/// What became of one recorded option on the leased socket.
#[derive(Debug)]
pub enum Applied {
    /// Set as the program had set it.
    Set,
    /// The broker's socket already had that value (SO_REUSEADDR of a listener, say).
    AlreadySo,
    /// IPV6_V6ONLY of a socket on a specific IPv6 address, where it changes nothing.
    Irrelevant,
    /// Setting it failed (some options cannot change after bind).
    Failed(io::Error),
    /// The value was not kept, so it was not set.
    NotKept(NotKept),
}

impl Applied {
    /// Whether the leased socket may differ from what the program asked for.
    pub fn is_failure(&self) -> bool {
        matches!(self, Applied::Failed(_) | Applied::NotKept(_))
    }
}

/// Sets the recorded options on the leased socket, in the program's order, and says what
/// became of each.
pub fn replay(leased: RawFd, addr: SocketAddr, records: &[Record]) -> Vec<(Record, Applied)> {
    records
        .iter()
        .map(|record| (*record, apply(leased, addr, record)))
        .collect()
}

fn apply(fd: RawFd, addr: SocketAddr, record: &Record) -> Applied {
    let wanted = match record.value {
        Value::Bytes { .. } => record.value.bytes().unwrap_or_default(),
        Value::NotKept(why) => return Applied::NotKept(why),
    };
    let v6_only = (record.level, record.name) == (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
    // IPV6_V6ONLY cannot change after bind; it is asked of the broker with the lease, and on a
    // specific address it does nothing either way.
    if v6_only && !is_v6_wildcard(addr.ip()) {
        return Applied::Irrelevant;
    }
    let mut current = [0u8; VALUE_MAX];
    if let Ok(len) = sys::option_bytes(fd, record.level, record.name, &mut current) {
        if same_value(&current[..len], wanted) {
            return Applied::AlreadySo;
        }
    }
    match real::set_option(fd, record.level, record.name, wanted) {
        Ok(()) => Applied::Set,
        Err(err) => Applied::Failed(err),
    }
}

/// Whether an option read back equals the value set. An `int` option set with a wider or
/// narrower buffer reads back as an int: compare as booleans-or-numbers then.
fn same_value(current: &[u8], wanted: &[u8]) -> bool {
    if current == wanted {
        return true;
    }
    let as_int = |bytes: &[u8]| -> Option<i64> {
        match bytes.len() {
            1 => Some(i64::from(bytes[0])),
            4 => Some(i64::from(i32::from_ne_bytes(bytes.try_into().ok()?))),
            8 => Some(i64::from_ne_bytes(bytes.try_into().ok()?)),
            _ => None,
        }
    };
    matches!((as_int(current), as_int(wanted)), (Some(a), Some(b)) if a == b)
}

/// Makes the program's fd `onto` refer to `leased`, with the program's O_NONBLOCK and
/// FD_CLOEXEC. The program's own socket closes; `leased`'s extra fd closes on drop.
pub fn put_in_place(leased: OwnedFd, onto: RawFd) -> io::Result<()> {
    let nonblocking = sys::status_flags(onto)? & libc::O_NONBLOCK != 0;
    let flags = sys::status_flags(leased.as_raw_fd())?;
    let flags = match nonblocking {
        true => flags | libc::O_NONBLOCK,
        false => flags & !libc::O_NONBLOCK,
    };
    sys::set_status_flags(leased.as_raw_fd(), flags)?;
    let cloexec = match sys::close_on_exec(onto)? {
        true => libc::O_CLOEXEC,
        false => 0,
    };
    sys::dup3(leased.as_raw_fd(), onto, cloexec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, UdpSocket};

    fn record(level: libc::c_int, name: libc::c_int, value: i32) -> Record {
        let mut bytes = [0u8; VALUE_MAX];
        bytes[..4].copy_from_slice(&value.to_ne_bytes());
        Record {
            level,
            name,
            value: Value::Bytes { len: 4, bytes },
        }
    }

    fn int(fd: RawFd, level: libc::c_int, name: libc::c_int) -> i32 {
        sys::int_option(fd, level, name).unwrap()
    }

    #[test]
    fn options_are_set_on_a_bound_socket_or_found_already_so() {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = socket.as_raw_fd();
        let addr = socket.local_addr().unwrap();
        let outcomes = replay(
            fd,
            addr,
            &[
                record(libc::SOL_SOCKET, libc::SO_BROADCAST, 1),
                record(libc::SOL_SOCKET, libc::SO_REUSEADDR, 0),
                record(libc::SOL_SOCKET, 4242, 1),
            ],
        );
        assert!(matches!(outcomes[0].1, Applied::Set), "{outcomes:?}");
        assert_eq!(int(fd, libc::SOL_SOCKET, libc::SO_BROADCAST), 1);
        assert!(matches!(outcomes[1].1, Applied::AlreadySo), "{outcomes:?}");
        assert!(
            matches!(&outcomes[2].1, Applied::Failed(err) if err.raw_os_error() == Some(libc::ENOPROTOOPT)),
            "{outcomes:?}"
        );
    }

    #[test]
    fn v6_only_is_irrelevant_on_a_specific_address_and_fails_to_change_on_the_wildcard() {
        let Ok(socket) = TcpListener::bind("[::1]:0") else {
            eprintln!("SKIPPED: no IPv6 loopback");
            return;
        };
        let outcomes = replay(
            socket.as_raw_fd(),
            socket.local_addr().unwrap(),
            &[record(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)],
        );
        assert!(matches!(outcomes[0].1, Applied::Irrelevant), "{outcomes:?}");
        let wildcard = TcpListener::bind("[::]:0").unwrap();
        let wanted = 1 - int(wildcard.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY);
        let outcomes = replay(
            wildcard.as_raw_fd(),
            wildcard.local_addr().unwrap(),
            &[record(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, wanted)],
        );
        assert!(outcomes[0].1.is_failure(), "{outcomes:?}");
    }

    #[test]
    fn int_values_compare_across_widths() {
        assert!(same_value(&1i32.to_ne_bytes(), &[1]));
        assert!(!same_value(&1i32.to_ne_bytes(), &2i32.to_ne_bytes()));
        assert!(!same_value(&[1, 2, 3], &[1, 2]));
    }

    #[test]
    fn the_leased_socket_takes_the_programs_number_and_flags() {
        let program = UdpSocket::bind("127.0.0.1:0").unwrap();
        program.set_nonblocking(true).unwrap();
        let leased = UdpSocket::bind("127.0.0.1:0").unwrap();
        let leased_addr = leased.local_addr().unwrap();
        put_in_place(leased.into(), program.as_raw_fd()).unwrap();
        assert_eq!(program.local_addr().unwrap(), leased_addr);
        assert!(sys::status_flags(program.as_raw_fd()).unwrap() & libc::O_NONBLOCK != 0);
        // std opens every socket with O_CLOEXEC, and the number keeps it.
        assert!(sys::close_on_exec(program.as_raw_fd()).unwrap());
    }
}
