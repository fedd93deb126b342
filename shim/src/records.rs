//! The socket options programs set on sockets that are not bound yet, to set them again on the
//! socket the broker binds in their place.
//!
//! Runs inside `setsockopt()`, which a program may call from a signal handler: a fixed table
//! (no allocation) behind a [`TryLock`] (no unbounded wait). A socket is known by its
//! `SO_COOKIE`, never by its fd number alone: a socket closed unbound leaves its records
//! behind, and the next socket to get its fd number must not inherit them. Such stale records
//! are reclaimed when the table fills up.

use std::os::fd::RawFd;

use libc::c_int;

use crate::lock::TryLock;
use crate::sys;

/// Records the table holds at once, over all unbound sockets of the process.
pub const SLOTS: usize = 128;
/// The longest option value kept (`struct tcp_md5sig`, 216 bytes, fits).
pub const VALUE_MAX: usize = 256;

/// One `setsockopt()` call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub level: c_int,
    pub name: c_int,
    pub value: Value,
}

/// What was passed to `setsockopt()`.
// Inline on purpose: records live in a fixed table written inside setsockopt(), maybe in a
// signal handler, where nothing may be allocated.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Value {
    Bytes {
        len: u16,
        bytes: [u8; VALUE_MAX],
    },
    /// Not kept, so not set again; the bind says so.
    NotKept(NotKept),
}

impl Value {
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes { len, bytes } => Some(&bytes[..usize::from(*len)]),
            Value::NotKept(_) => None,
        }
    }
}

/// Why a value was not kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotKept {
    /// Longer than [`VALUE_MAX`] bytes.
    TooLong(u32),
    /// It points to memory of the program's (a BPF program), which may be gone by `bind()`.
    HoldsPointer,
    /// It names a file descriptor (an eBPF program), which may be closed by `bind()`.
    HoldsFd,
}

/// Why a call could not be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unrecorded {
    /// Every slot holds a record of a live unbound socket.
    Full,
    /// The table stayed locked through every try (a signal handler interrupted its holder).
    Busy,
}

#[derive(Clone, Copy)]
struct Slot {
    used: bool,
    cookie: u64,
    /// The fd it was set through: to find out whether the socket still lives when the table
    /// fills up.
    fd: RawFd,
    /// Order of the calls, so that they are replayed in the program's order.
    seq: u64,
    record: Record,
}

const EMPTY: Slot = Slot {
    used: false,
    cookie: 0,
    fd: -1,
    seq: 0,
    record: Record {
        level: 0,
        name: 0,
        value: Value::NotKept(NotKept::HoldsPointer),
    },
};

struct Table {
    slots: [Slot; SLOTS],
    next_seq: u64,
}

static TABLE: TryLock<Table> = TryLock::new(Table {
    slots: [EMPTY; SLOTS],
    next_seq: 0,
});

/// What to keep of a value set with option `name` at `level`.
fn value_of(level: c_int, name: c_int, value: &[u8]) -> Value {
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_ATTACH_FILTER | libc::SO_ATTACH_REUSEPORT_CBPF) => {
            Value::NotKept(NotKept::HoldsPointer)
        }
        (libc::SOL_SOCKET, libc::SO_ATTACH_BPF | libc::SO_ATTACH_REUSEPORT_EBPF) => {
            Value::NotKept(NotKept::HoldsFd)
        }
        _ if value.len() > VALUE_MAX => Value::NotKept(NotKept::TooLong(value.len() as u32)),
        _ => {
            let mut bytes = [0u8; VALUE_MAX];
            bytes[..value.len()].copy_from_slice(value);
            Value::Bytes {
                len: value.len() as u16,
                bytes,
            }
        }
    }
}

/// Whether the socket a slot was recorded for is gone or bound: closed, its fd reused by
/// another socket, or bound since (the shim passed its bind on, or the kernel bound it by
/// itself in `connect()` or `listen()`).
fn is_stale(slot: &Slot) -> bool {
    sys::cookie(slot.fd).ok() != Some(slot.cookie) || sys::local_port(slot.fd).ok() != Some(0)
}

/// Records that option `name` at `level` of the socket `cookie` (set through `fd`) was set
/// to `value`. A later call for the same option replaces the earlier one: the last value is
/// the one the socket has. Async-signal-safe.
pub fn record(
    fd: RawFd,
    cookie: u64,
    level: c_int,
    name: c_int,
    value: &[u8],
) -> Result<(), Unrecorded> {
    let mut table = TABLE.lock().ok_or(Unrecorded::Busy)?;
    let seq = table.next_seq;
    table.next_seq += 1;
    let same = |slot: &Slot| {
        slot.used && slot.cookie == cookie && slot.record.level == level && slot.record.name == name
    };
    let index = match table.slots.iter().position(same) {
        Some(index) => index,
        None => match table.slots.iter().position(|slot| !slot.used) {
            Some(index) => index,
            None => table
                .slots
                .iter()
                .position(is_stale)
                .ok_or(Unrecorded::Full)?,
        },
    };
    table.slots[index] = Slot {
        used: true,
        cookie,
        fd,
        seq,
        record: Record {
            level,
            name,
            value: value_of(level, name, value),
        },
    };
    Ok(())
}

/// The options recorded for the socket `cookie`, in the order they were set; `None` if the
/// table stayed locked (a signal handler in the middle of recording, on this very thread).
pub fn recorded(cookie: u64) -> Option<Vec<Record>> {
    let table = TABLE.lock()?;
    let mut found: Vec<(u64, Record)> = table
        .slots
        .iter()
        .filter(|slot| slot.used && slot.cookie == cookie)
        .map(|slot| (slot.seq, slot.record))
        .collect();
    drop(table);
    found.sort_by_key(|(seq, _)| *seq);
    Some(found.into_iter().map(|(_, record)| record).collect())
}

/// Drops the records of the socket `cookie`: it is bound now, or closed.
pub fn forget(cookie: u64) {
    if let Some(mut table) = TABLE.lock() {
        for slot in table.slots.iter_mut().filter(|slot| slot.cookie == cookie) {
            slot.used = false;
        }
    }
}

/// `pthread_atfork` child handler. The child keeps the records (its copies of the sockets are
/// the same sockets, and it may bind them), unless another thread was changing the table at
/// the fork: then the table may be half-written, and the child starts afresh.
pub fn after_fork_in_child() {
    if TABLE.unlock_after_fork() {
        if let Some(mut table) = TABLE.lock() {
            table.slots = [EMPTY; SLOTS];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::sync::{Mutex, MutexGuard, PoisonError};

    /// The table is the process's: one test at a time, so that filling it up in one test does
    /// not starve another.
    fn serial() -> MutexGuard<'static, ()> {
        static SERIAL: Mutex<()> = Mutex::new(());
        SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A TCP socket that is not bound (std has none to offer).
    fn unbound_tcp() -> OwnedFd {
        // SAFETY: socket() returns a new fd that nothing else owns, or -1 (checked).
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
        assert!(fd >= 0);
        // SAFETY: fd is a fresh socket owned by nothing else.
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn records_follow_the_socket_and_the_last_value_wins() {
        let _serial = serial();
        let socket = unbound_tcp();
        let fd = socket.as_raw_fd();
        let cookie = sys::cookie(fd).unwrap();
        record(
            fd,
            cookie,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &1000i32.to_ne_bytes(),
        )
        .unwrap();
        record(
            fd,
            cookie,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            &1i32.to_ne_bytes(),
        )
        .unwrap();
        record(
            fd,
            cookie,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &2000i32.to_ne_bytes(),
        )
        .unwrap();
        let found = recorded(cookie).unwrap();
        let summary: Vec<(c_int, Vec<u8>)> = found
            .iter()
            .map(|r| (r.name, r.value.bytes().unwrap().to_vec()))
            .collect();
        assert_eq!(
            summary,
            [
                (libc::TCP_NODELAY, 1i32.to_ne_bytes().to_vec()),
                (libc::SO_RCVBUF, 2000i32.to_ne_bytes().to_vec()),
            ],
            "one record per option, in the order of the last calls"
        );
        forget(cookie);
        assert_eq!(recorded(cookie).unwrap(), []);
    }

    #[test]
    fn a_reused_fd_number_does_not_inherit_records() {
        let _serial = serial();
        let first = unbound_tcp();
        let fd = first.as_raw_fd();
        let old = sys::cookie(fd).unwrap();
        record(
            fd,
            old,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &1i32.to_ne_bytes(),
        )
        .unwrap();
        drop(first);
        let second = unbound_tcp();
        // The kernel hands out the lowest free number: most likely the same one.
        let new = sys::cookie(second.as_raw_fd()).unwrap();
        assert_ne!(old, new);
        assert_eq!(recorded(new).unwrap(), []);
        forget(old);
    }

    #[test]
    fn pointers_and_long_values_are_marked_not_kept() {
        assert_eq!(
            value_of(libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &[0; 16]),
            Value::NotKept(NotKept::HoldsPointer)
        );
        assert_eq!(
            value_of(libc::SOL_SOCKET, libc::SO_ATTACH_BPF, &[0; 4]),
            Value::NotKept(NotKept::HoldsFd)
        );
        assert_eq!(
            value_of(libc::IPPROTO_TCP, libc::TCP_MD5SIG, &[0; VALUE_MAX + 1]),
            Value::NotKept(NotKept::TooLong(VALUE_MAX as u32 + 1))
        );
    }

    #[test]
    fn a_full_table_reclaims_records_of_closed_and_bound_sockets() {
        let _serial = serial();
        // Fill what is free with records of a socket that stays open and unbound, then show
        // that the record of a socket bound since makes room.
        let live = unbound_tcp();
        let live_cookie = sys::cookie(live.as_raw_fd()).unwrap();
        let soon_bound = unbound_tcp();
        let bound_cookie = sys::cookie(soon_bound.as_raw_fd()).unwrap();
        record(
            soon_bound.as_raw_fd(),
            bound_cookie,
            libc::SOL_SOCKET,
            libc::SO_KEEPALIVE,
            &[1, 0, 0, 0],
        )
        .unwrap();
        let mut name = 1000;
        while record(live.as_raw_fd(), live_cookie, 9999, name, &[1]).is_ok() {
            name += 1;
            assert!(name < 1000 + SLOTS as c_int + 1, "the table never filled");
        }
        assert_eq!(
            record(live.as_raw_fd(), live_cookie, 9999, name, &[1]),
            Err(Unrecorded::Full)
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        // SAFETY: addr is a valid sockaddr_in of the size given.
        let rc = unsafe {
            libc::bind(
                soon_bound.as_raw_fd(),
                (&raw const addr).cast(),
                std::mem::size_of_val(&addr) as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0);
        record(live.as_raw_fd(), live_cookie, 9999, name, &[1]).expect("a stale slot reused");
        forget(live_cookie);
        forget(bound_cookie);
    }
}
