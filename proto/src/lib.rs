//! The wire protocol between `portbrokerd` and its clients.
//!
//! A client connects to the broker's Unix stream socket, says [`Request::Hello`], and then sends
//! requests; every request gets exactly one response, in order (a client may send several before
//! reading their answers). Between answers the broker may also send a notice that answers
//! nothing: [`Response::Revoked`] or [`Response::Expired`], and, on a connection that said
//! [`Request::Watch`], [`Response::Event`] and [`Response::Missed`].
//!
//! # Frames
//!
//! Every message travels in a frame: a 4-byte little-endian payload length, then the payload,
//! which is one [`Request`] or [`Response`] encoded with bincode 2 (`config::standard()`:
//! variable-length integers, little-endian).
//!
//! ```text
//!  0        4                                    4+len
//!  +--------+-------------------------------------+
//!  |  len   |  payload: bincode(Request|Response) |
//!  | u32 LE |  len bytes, 1 ..= max frame size    |
//!  +--------+-------------------------------------+
//! ```
//!
//! The length is checked against [`MAX_REQUEST_FRAME`] or [`MAX_RESPONSE_FRAME`] *before* any
//! buffer is allocated for the payload ([`FrameSplitter`] does this for a byte stream), and the
//! payload is decoded under the same size limit, so a peer that claims 4 GiB costs the receiver
//! nothing. A payload must be consumed exactly: trailing bytes are an error.
//!
//! A [`Response::Granted`] frame carries bound sockets as `SCM_RIGHTS` ancillary data attached to
//! the first byte of its frame, `fds` of them, in the order of [`Response::Granted::sockets`].
//! A stream socket does not keep fds aligned with frames, so a receiver queues every fd it
//! receives and each `Granted` frame takes exactly `fds` from the front of that queue.
//! The sockets are blocking, close-on-exec on the broker's side, and of the granted transport;
//! a listening TCP socket is already listening.
//!
//! One real message, `Release { id: LeaseId(7) }`:
//!
//! ```
//! use portbroker_proto::{encode_request, LeaseId, Request};
//!
//! let frame = encode_request(&Request::Release { id: LeaseId(7) }).unwrap();
//! // length 2, then variant 2 (Release), then the id 7 as a one-byte varint
//! assert_eq!(frame, [2, 0, 0, 0, 2, 7]);
//! ```
//!
//! # Versions
//!
//! [`PROTOCOL_VERSION`] is a number of its own, raised whenever the encoding of any message
//! changes. Variant 0 of both enums is `Hello` and its first field is the protocol version; that
//! prefix never changes, so [`peek_hello_protocol`] can read a peer's version even when the rest
//! of its messages cannot be decoded, and both sides can say "version mismatch" instead of
//! failing on garbage.
//!
//! # Declaration order is the wire format
//!
//! bincode writes no names: an enum variant is encoded as its position in the declaration
//! (`Release` is 2 because it is the third variant of [`Request`]), and a struct's or variant's
//! fields one after the other in declaration order. So the order of the declarations in this
//! crate *is* the wire format:
//!
//! - a new variant goes at the end of its enum, where it changes the bytes of no existing
//!   message (a peer that predates it cannot decode it, and answers it as malformed);
//! - nothing is reordered or removed, and no field is added, removed or retyped, without raising
//!   [`PROTOCOL_VERSION`];
//! - `Hello` stays variant 0 of both enums with `protocol` as its first field, forever.
//!
//! `tests/wire.rs` pins the exact bytes of one message of every variant: reordering fails it,
//! and a new variant does not compile until it has its golden there.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod codec;
mod frames;
mod history;
mod paths;
mod spec;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

pub use codec::{
    decode_request, decode_response, encode_request, encode_response, encode_response_into,
    frame_payload_len, peek_hello_protocol, Error, HEADER_LEN, MAX_REQUEST_FRAME,
    MAX_RESPONSE_FRAME,
};
pub use frames::FrameSplitter;
pub use history::{EndReason, HistoryEntry, HistoryEvent};
pub use paths::{client_socket_paths, default_socket_path, PathError, SOCKET_ENV, SYSTEM_SOCKET};
pub use spec::SpecError;

/// The protocol version this crate speaks. Independent of the crate version.
pub const PROTOCOL_VERSION: u32 = 5;

/// The identifier of a lease, unique for the life of a broker.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub u64);

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A transport; TCP and UDP port numbers are separate spaces.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// A TCP socket (`SOCK_STREAM`).
    Tcp,
    /// A UDP socket (`SOCK_DGRAM`).
    Udp,
}

impl Transport {
    /// `"tcp"` or `"udp"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Udp => "udp",
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the broker does with a TCP socket after binding it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Listen {
    /// Listen with the broker's default backlog (`SOMAXCONN`).
    #[default]
    Default,
    /// Listen with this backlog: at least 1; the broker caps it at `SOMAXCONN`.
    Backlog(u32),
    /// Bind only: the client calls `listen()` itself (TCP only).
    BindOnly,
    /// Hold the port as a number: the broker checks that it can bind it (a probe, closed at
    /// once), answers `Granted` with the address, and passes no socket. The lease lives like
    /// any other and is listed as [`LeaseState::Number`]. A later lease of the same user on
    /// an overlapping address of the same transport and port takes the number over: the
    /// number lease ends as the new one is granted. For a program that must be told a port
    /// number and binds it itself under `portctl wrap`, whose bind then asks the broker. Every
    /// spec of a lease is a number, or none is. (Nothing stops a bind outside the broker: the
    /// broker holds no socket for a number.)
    Number,
}

/// One socket asked for: `PROTO:[ADDR:]PORT` in text, see [`SocketSpec::from_str`](std::str::FromStr).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SocketSpec {
    /// TCP or UDP.
    pub transport: Transport,
    /// The local address; `None` is the broker's default wildcard (`[::]` dual-stack, or
    /// `0.0.0.0` where the host has no IPv6).
    pub addr: Option<IpAddr>,
    /// The port; 0 asks for any free port from the broker's pool.
    pub port: u16,
    /// Listening behaviour for TCP; must be [`Listen::Default`] or [`Listen::Number`] for UDP.
    pub listen: Listen,
    /// For the IPv6 wildcard `[::]`: take IPv6 only (`IPV6_V6ONLY`), leaving the port's IPv4
    /// addresses to others, where `[::]` is otherwise dual-stack. A specific IPv6 address is
    /// always IPv6-only; with an IPv4 address this must be false.
    pub v6_only: bool,
}

impl SocketSpec {
    /// A TCP spec with the default listen behaviour.
    pub fn tcp(addr: Option<IpAddr>, port: u16) -> Self {
        SocketSpec {
            transport: Transport::Tcp,
            addr,
            port,
            listen: Listen::Default,
            v6_only: false,
        }
    }

    /// A UDP spec.
    pub fn udp(addr: Option<IpAddr>, port: u16) -> Self {
        SocketSpec {
            transport: Transport::Udp,
            addr,
            port,
            listen: Listen::Default,
            v6_only: false,
        }
    }
}

/// Who holds a lease, as the broker found it, never as a client describes itself: the peer of
/// the connection that leased or claimed it, as the kernel reported it (`SO_PEERCRED`); after
/// `TieToProcess` the process it was tied to (checked to exist and to be the asker's user's,
/// unless an administrator asked); for a lingering lease the process found holding a copy of
/// its socket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// Process id: the peer's (`SO_PEERCRED`), or that of the process tied to or found holding
    /// the lease.
    pub pid: i32,
    /// User id of the peer that leased or claimed the lease (`SO_PEERCRED`).
    pub uid: u32,
    /// Group id of the peer that leased or claimed the lease (`SO_PEERCRED`).
    pub gid: u32,
    /// Process name (`/proc/PID/comm`), empty if it could not be read.
    pub name: String,
}

/// Shows the name [`escaped`]: a process chooses its own name (`prctl(PR_SET_NAME)`), control
/// characters included, and this text reaches other users' terminals and the broker's log.
///
/// ```
/// use portbroker_proto::Holder;
///
/// let holder = Holder { pid: 4242, uid: 1000, gid: 1000, name: "evil\x1b[2J\n".into() };
/// assert_eq!(holder.to_string(), r"pid 4242 (evil\x1b[2J\n, uid 1000)");
/// ```
impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            write!(f, "pid {} (uid {})", self.pid, self.uid)
        } else {
            write!(
                f,
                "pid {} ({}, uid {})",
                self.pid,
                escaped(&self.name),
                self.uid
            )
        }
    }
}

/// `text` for a terminal or a log line, with every character that is not printable escaped:
/// `\n`, `\r` and `\t`; other ASCII controls (ESC, DEL, ...) as `\x1b`; other characters that
/// do not print on their own (C1 controls, bidirectional overrides and other format characters,
/// combining marks, unassigned code points) as `\u{202e}`; and `\` itself as `\\`, so that the escaped text reads back
/// unambiguously. Printable text, non-ASCII letters included, passes unchanged.
///
/// For text that another user controls, such as a process name, before it is printed: it
/// cannot move the cursor, change colours, rewrite the screen or start a line of its own.
///
/// ```
/// use portbroker_proto::escaped;
///
/// assert_eq!(escaped("nginx").to_string(), "nginx");
/// assert_eq!(escaped("r\u{e9}seau").to_string(), "r\u{e9}seau");
/// assert_eq!(escaped("evil\x1b[31m\n").to_string(), r"evil\x1b[31m\n");
/// assert_eq!(escaped("a\\b\u{202e}").to_string(), r"a\\b\u{202e}");
/// ```
pub fn escaped(text: &str) -> impl fmt::Display + '_ {
    Escaped(text)
}

struct Escaped<'a>(&'a str);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use fmt::Write as _;
        let text = self.0;
        let mut plain = 0;
        for (at, c) in text.char_indices() {
            let escape_ascii = match c {
                '\\' => Some("\\\\"),
                '\n' => Some("\\n"),
                '\r' => Some("\\r"),
                '\t' => Some("\\t"),
                _ => None,
            };
            let printable = escape_ascii.is_none()
                && !c.is_ascii_control()
                && (c.is_ascii() || c.escape_debug().next() != Some('\\'));
            if printable {
                continue;
            }
            f.write_str(&text[plain..at])?;
            plain = at + c.len_utf8();
            match escape_ascii {
                Some(escape) => f.write_str(escape)?,
                None if c.is_ascii() => write!(f, "\\x{:02x}", c as u32)?,
                None => {
                    for e in c.escape_unicode() {
                        f.write_char(e)?;
                    }
                }
            }
        }
        f.write_str(&text[plain..])
    }
}

/// A socket the broker bound for a lease.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantedSocket {
    /// TCP or UDP.
    pub transport: Transport,
    /// The bound address, with the port the broker chose.
    pub addr: SocketAddr,
    /// Whether a TCP socket was handed over listening (always false for UDP).
    pub listening: bool,
    /// Whether an IPv6 socket takes IPv6 only (`IPV6_V6ONLY`): true for a specific IPv6
    /// address, and for `[::]` when the spec asked; false for IPv4 and dual-stack `[::]`.
    /// (Absent from journals written before protocol 5, hence the default.)
    #[serde(default)]
    pub v6_only: bool,
}

impl fmt::Display for GrantedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.transport, self.addr)?;
        if self.v6_only && self.addr.ip().is_unspecified() {
            f.write_str(" (IPv6 only)")?;
        }
        Ok(())
    }
}

/// An inclusive range of port numbers.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port (inclusive).
    pub hi: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn len(&self) -> usize {
        usize::from(self.hi.saturating_sub(self.lo)) + usize::from(self.hi >= self.lo)
    }

    /// Whether the range holds no port.
    pub fn is_empty(&self) -> bool {
        self.hi < self.lo
    }

    /// Whether `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.lo, self.hi)
    }
}

/// A live lease as `List` reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease.
    pub id: LeaseId,
    /// Its holder.
    pub holder: Holder,
    /// When it was granted, in seconds since the Unix epoch.
    pub since: u64,
    /// Its sockets.
    pub sockets: Vec<GrantedSocket>,
    /// When it expires unless renewed (for a [`LeaseState::Kept`] lease: when its ports go back
    /// to the pool), in milliseconds since the Unix epoch; `None` for a lease without a time
    /// limit.
    pub expires_unix_ms: Option<u64>,
    /// What keeps it alive, and so what ends it.
    pub state: LeaseState,
}

/// What keeps a lease alive, as `List` reports it in [`LeaseInfo::state`].
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Held by the client connection that was granted, claimed or re-attached it: it ends when
    /// that connection closes.
    Connection,
    /// Tied to its holder process (`TieToProcess`, `portctl run`, or recovered from the
    /// journal): it ends when that process exits.
    Process,
    /// Its holder is gone but a copy of a socket survives somewhere (a forked child, say): the
    /// port stays out of the pool, and the holder is the process found holding it, until the
    /// last copy closes.
    Lingering,
    /// The ports of a sticky named service whose server ended, kept for the same user and
    /// service until `expires_unix_ms`.
    Kept,
    /// A port handed out as a number ([`Listen::Number`], or the portpicker portserver
    /// protocol, whose numbers are tied to the asking process): the broker holds no socket. A
    /// lease of the same user on the port takes it over.
    Number,
}

impl LeaseState {
    /// `"connection"`, `"process"`, `"lingering"`, `"kept"` or `"number"`: the name in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Connection => "connection",
            LeaseState::Process => "process",
            LeaseState::Lingering => "lingering",
            LeaseState::Kept => "kept",
            LeaseState::Number => "number",
        }
    }
}

impl fmt::Display for LeaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The broker's state as `Status` reports it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct StatusInfo {
    /// The daemon's crate version.
    pub daemon_version: String,
    /// The protocol version it speaks.
    pub protocol: u32,
    /// Seconds since it started.
    pub uptime_secs: u64,
    /// Leases, lingering and kept ones included.
    pub leases: u64,
    /// Live leased sockets.
    pub sockets: u64,
    /// Open client connections, this one included.
    pub connections: u64,
    /// The dynamic pool that port 0 draws from.
    pub pool: PortRange,
    /// The address used when a spec gives none.
    pub default_addr: IpAddr,
    /// Counters and gauges, the same figures as the metrics endpoint.
    pub metrics: MetricsInfo,
}

/// The broker's counters since it started, and the gauges `StatusInfo` does not carry: the
/// figures of its Prometheus endpoint.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct MetricsInfo {
    /// Leases granted.
    pub grants: u64,
    /// Leases refused, per [`Refusal::name`], in the order of [`Refusal::NAMES`].
    pub refusals: Vec<(String, u64)>,
    /// Leases ended by a `Release`.
    pub releases: u64,
    /// Leases ended by their time limit.
    pub expiries: u64,
    /// Leases revoked by an administrator.
    pub revokes: u64,
    /// Leases that linger (counted in `StatusInfo::leases` too).
    pub lingering: u64,
    /// Pool ports leased, TCP.
    pub pool_in_use_tcp: u64,
    /// Pool ports leased, UDP.
    pub pool_in_use_udp: u64,
    /// Time from a `Lease` request's frame being read to its answer being queued.
    pub lease_latency: Histogram,
    /// Where the metrics endpoint listens, if it is on.
    pub listen: Option<SocketAddr>,
}

/// A histogram: `counts[i]` observations were at most `bounds[i]` and above the bound before;
/// the last count, one longer than `bounds`, is those above every bound.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Histogram {
    /// Upper bounds, ascending, in microseconds.
    pub bounds: Vec<u64>,
    /// Observations per bucket (not cumulative); one more than `bounds`.
    pub counts: Vec<u64>,
    /// The sum of the observations, in microseconds.
    pub sum: u64,
}

impl Histogram {
    /// How many observations there are.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl MetricsInfo {
    /// Refusals of all reasons.
    pub fn refused(&self) -> u64 {
        self.refusals.iter().map(|(_, n)| n).sum()
    }
}

/// A request from a client.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// The first request on every connection; the broker closes a connection that does not send
    /// it in time. Variant 0, with `protocol` first: frozen forever.
    Hello {
        /// The client's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// A free-form client name and version, for logs.
        client: String,
    },
    /// Lease one or more sockets, granted or refused as one unit: answered with `Granted` or
    /// `Refused`.
    Lease {
        /// The sockets: 1 to 64.
        sockets: Vec<SocketSpec>,
    },
    /// End a lease: answered with `Released`. Allowed to its holder's uid and to an
    /// administrator (root or a member of the policy's admin groups). A lingering lease is
    /// answered `Released` too, but its port stays out of the pool until its last copy closes.
    Release {
        /// The lease.
        id: LeaseId,
    },
    /// List every lease, lingering and kept ones included: answered with `Leases`.
    List,
    /// Report the broker's state: answered with `Status`.
    Status,
    /// Lease a named service of the broker's policy (its sockets, granted as one unit):
    /// answered with `Granted` or `Refused`.
    LeaseNamed {
        /// The service's name.
        name: String,
    },
    /// Re-read the policy file: answered with `Reloaded`. Allowed to an administrator (root or
    /// a member of the policy's admin groups).
    Reload,
    /// Take a lease away from its holder: its listening sockets stop accepting (a pending
    /// `accept()` fails), the lease ends, and the holder is told with [`Response::Revoked`].
    /// Answered with `Released`. Allowed to an administrator (root or a member of the policy's
    /// admin groups) only.
    Revoke {
        /// The lease.
        id: LeaseId,
    },
    /// Tie a lease to a process instead of this connection: it then lasts exactly as long as
    /// that process (watched through a pidfd), whatever happens to the connection. Allowed to
    /// the lease holder's uid and to an administrator (root or a member of the policy's admin
    /// groups), and the process must belong to the asker's user unless the asker is an
    /// administrator. `portctl run` ties its lease to the program it starts. Answered with
    /// `Tied`.
    TieToProcess {
        /// The lease.
        id: LeaseId,
        /// The process.
        pid: i32,
    },
    /// Offer a lease to another process (the next version of a server, say): answered with a
    /// `HandoverOffered` token that the other process `Claim`s. Until then nothing changes; a
    /// new offer of the same lease replaces the previous one. Allowed to the lease holder's uid
    /// and to an administrator (root or a member of the policy's admin groups).
    Handover {
        /// The lease.
        id: LeaseId,
    },
    /// Take over a lease offered with `Handover`: answered with `Granted` carrying the same
    /// lease id and the *same* sockets (copies of the holder's), so the port is never unbound
    /// and never held by two leases. Allowed to the lease holder's uid and to an administrator
    /// (root or a member of the policy's admin groups).
    Claim {
        /// The token from `HandoverOffered`.
        token: u64,
    },
    /// After a new connection (the broker restarted, say), take these leases of this process
    /// back onto it: notices about them come here, and closing it ends them. Only leases held
    /// by this very process (same pid and uid) are taken; the others are left as they are.
    /// Answered with `Reattached`, naming the leases taken.
    Reattach {
        /// The leases.
        ids: Vec<LeaseId>,
    },
    /// Give a lease a time limit, or extend it: it expires `ttl_ms` from now unless renewed
    /// again; 0 removes the limit. Answered with `Renewed`. Allowed to its holder's uid and to
    /// an administrator (root or a member of the policy's admin groups).
    Renew {
        /// The lease.
        id: LeaseId,
        /// Milliseconds from now.
        ttl_ms: u32,
    },
    /// Subscribe this connection to the broker's events; answered with `Watching`, after which
    /// [`Response::Event`] notices (and [`Response::Missed`] when the subscriber fell behind)
    /// come unasked until the connection closes. Allowed to every user: an event tells no more
    /// than `List` shows. Asking again changes nothing.
    Watch,
    /// The broker's history: the last `max` events of leases (grants, ties, handovers and
    /// ends, with why each ended), oldest first, from the journal it keeps. Answered with
    /// `History`; the broker answers fewer when its history holds fewer, or when the answer
    /// would not fit a frame (it caps `max` at 10,000). A broker that keeps no journal answers
    /// `Failed(NotPermitted)`. Allowed to every user, as `List` and `Watch` are: an event tells
    /// no more than they showed when it happened.
    History {
        /// How many events, at most.
        max: u32,
    },
}

/// Why a lease was refused. A refusal leaves no trace: nothing of the request stays bound.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A live lease holds an overlapping address of the same transport and port.
    InUse {
        /// The transport of the request.
        transport: Transport,
        /// The address asked for.
        requested: SocketAddr,
        /// The address the other lease holds.
        held: SocketAddr,
        /// The other lease.
        lease: LeaseId,
        /// Its holder.
        holder: Holder,
    },
    /// The kernel refused the bind (`EADDRINUSE`) although no lease holds the address: a process
    /// outside the broker has it.
    InUseOutside {
        /// The transport of the request.
        transport: Transport,
        /// The address asked for.
        requested: SocketAddr,
        /// The process that holds it, where the broker could find it.
        holder: Option<Holder>,
    },
    /// Policy does not allow this request.
    NotPermitted {
        /// What forbade it.
        reason: String,
    },
    /// A spec is malformed or contradicts another spec of the same request, or the request
    /// has no spec or too many.
    InvalidSpec {
        /// Index of the spec in the request (0 when the number of specs is wrong).
        index: u32,
        /// What is wrong with it.
        reason: String,
    },
    /// Port 0 was asked for and no port of the pool is free.
    PoolExhausted {
        /// The transport of the request.
        transport: Transport,
        /// The pool.
        pool: PortRange,
    },
    /// The kernel refused to create or bind the socket for another reason.
    BindFailed {
        /// The transport of the request.
        transport: Transport,
        /// The address asked for.
        requested: SocketAddr,
        /// The `errno` the kernel returned.
        errno: i32,
        /// Its text, as the broker's libc describes it.
        message: String,
    },
    /// A quota of the policy is used up.
    QuotaExceeded {
        /// Which quota, as the policy names it (`leases_per_uid`, `leases_total`, ...).
        quota: String,
        /// How much of it is in use.
        used: u64,
        /// The limit.
        limit: u64,
    },
    /// The policy has no service of this name.
    UnknownService {
        /// The name asked for.
        name: String,
    },
}

impl Refusal {
    /// Every [`Refusal::name`], in variant order.
    pub const NAMES: [&'static str; 8] = [
        "in_use",
        "in_use_outside",
        "not_permitted",
        "invalid_spec",
        "pool_exhausted",
        "bind_failed",
        "quota_exceeded",
        "unknown_service",
    ];

    /// The variant's name in snake_case (`in_use`, `quota_exceeded`, ...).
    pub fn name(&self) -> &'static str {
        Self::NAMES[self.index()]
    }

    /// The variant's index in [`Refusal::NAMES`].
    pub fn index(&self) -> usize {
        match self {
            Refusal::InUse { .. } => 0,
            Refusal::InUseOutside { .. } => 1,
            Refusal::NotPermitted { .. } => 2,
            Refusal::InvalidSpec { .. } => 3,
            Refusal::PoolExhausted { .. } => 4,
            Refusal::BindFailed { .. } => 5,
            Refusal::QuotaExceeded { .. } => 6,
            Refusal::UnknownService { .. } => 7,
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::InUse { transport, requested, held, lease, holder } => write!(
                f,
                "{transport}:{requested} is in use: lease {lease} holds {transport}:{held}, held by {holder}"
            ),
            Refusal::InUseOutside { transport, requested, holder: Some(holder) } => write!(
                f,
                "{transport}:{requested} is in use by {holder}, a process outside the broker"
            ),
            Refusal::InUseOutside { transport, requested, holder: None } => write!(
                f,
                "{transport}:{requested} is in use by a process outside the broker"
            ),
            Refusal::NotPermitted { reason } => write!(f, "not permitted: {reason}"),
            Refusal::InvalidSpec { index, reason } => {
                write!(f, "invalid socket spec #{}: {reason}", index + 1)
            }
            Refusal::PoolExhausted { transport, pool } => {
                write!(f, "no free {transport} port left in the pool {pool}")
            }
            Refusal::BindFailed { transport, requested, errno, message } => write!(
                f,
                "binding {transport}:{requested} failed: {message} (errno {errno})"
            ),
            Refusal::QuotaExceeded { quota, used, limit } => {
                write!(f, "quota exceeded ({used} of {limit}): {quota}")
            }
            Refusal::UnknownService { name } => write!(f, "the policy has no service named {name:?}"),
        }
    }
}

/// A request the broker could not serve for a reason other than a refused lease.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The client speaks another protocol version. The broker closes the connection.
    VersionMismatch {
        /// The broker's version.
        broker: u32,
        /// The client's version.
        client: u32,
    },
    /// A request came before `Hello`. The broker closes the connection.
    HelloRequired,
    /// A second `Hello` on the same connection.
    DuplicateHello,
    /// The frame could not be decoded as a request. The broker closes the connection.
    Malformed {
        /// What the decoder said.
        detail: String,
    },
    /// No live lease has this id.
    UnknownLease {
        /// The id asked for.
        id: LeaseId,
    },
    /// The lease belongs to another user and the asker is not an administrator: the answer to
    /// `Release`, `Renew`, `TieToProcess`, `Handover` or `Claim` of someone else's lease.
    NotYourLease {
        /// The id asked for.
        id: LeaseId,
        /// Its holder's uid.
        holder_uid: u32,
    },
    /// The request is not allowed: it needs an administrator (root or a member of the policy's
    /// admin groups), the asker's uid is over a limit of the policy (requests per second, or
    /// connections: then this comes unasked, before `Hello`, and the connection closes), or what
    /// it names does not qualify (a process of another user, an unknown handover token).
    NotPermitted {
        /// What was refused, and why.
        reason: String,
    },
    /// The policy file could not be loaded; the policy in force is unchanged.
    ReloadFailed {
        /// The file's error, with its line and column where known.
        error: String,
    },
    /// The broker could not write the lease journal (a full disk, say), so it did not grant:
    /// a lease it could not record would be lost on a restart. Releases and reads still work.
    JournalUnavailable {
        /// What writing the journal failed with.
        error: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::VersionMismatch { broker, client } => write!(
                f,
                "protocol version mismatch: the broker speaks version {broker}, this client version {client}; \
                 use a client and broker from the same release"
            ),
            Failure::HelloRequired => f.write_str("the first request on a connection must be Hello"),
            Failure::DuplicateHello => f.write_str("Hello was already sent on this connection"),
            Failure::Malformed { detail } => write!(f, "malformed request: {detail}"),
            Failure::UnknownLease { id } => write!(f, "no live lease has id {id}"),
            Failure::NotYourLease { id, holder_uid } => write!(
                f,
                "lease {id} belongs to uid {holder_uid}; only that user or an administrator may act on it"
            ),
            Failure::NotPermitted { reason } => write!(f, "not permitted: {reason}"),
            Failure::ReloadFailed { error } => {
                write!(f, "the policy was not reloaded and stays as it was: {error}")
            }
            Failure::JournalUnavailable { error } => write!(
                f,
                "the broker cannot write its lease journal ({error}), so it grants nothing until \
                 it can; free space in its state directory"
            ),
        }
    }
}

/// A response from the broker.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// The answer to `Hello`. Variant 0, with `protocol` first: frozen forever.
    Hello {
        /// The broker's [`PROTOCOL_VERSION`].
        protocol: u32,
        /// The broker's crate version.
        daemon_version: String,
    },
    /// The answer to `Lease`, `LeaseNamed` and `Claim`: a lease was granted (or, for `Claim`,
    /// handed over); `fds` sockets travel with this frame as `SCM_RIGHTS`.
    Granted {
        /// The lease.
        id: LeaseId,
        /// The bound sockets, in the order of the request's specs and of the fds.
        sockets: Vec<GrantedSocket>,
        /// How many fds this frame carries.
        fds: u32,
    },
    /// The answer to `Lease` and `LeaseNamed`: the lease was refused.
    Refused(Refusal),
    /// The answer to `Release` and `Revoke`: the lease is released (a lingering one keeps its
    /// port until its last copy closes, see `Release`).
    Released {
        /// The lease.
        id: LeaseId,
    },
    /// The answer to `List`, ordered by lease id.
    Leases(Vec<LeaseInfo>),
    /// The answer to `Status`.
    Status(StatusInfo),
    /// The request failed.
    Failed(Failure),
    /// Not an answer: sent to a holder, at any time between answers, when an administrator
    /// revoked one of its leases.
    Revoked {
        /// The lease.
        id: LeaseId,
    },
    /// Not an answer: sent to a holder, at any time between answers, when one of its leases
    /// reached its time limit and ended.
    Expired {
        /// The lease.
        id: LeaseId,
    },
    /// The answer to `Handover`.
    HandoverOffered {
        /// The lease.
        id: LeaseId,
        /// What the next holder claims it with.
        token: u64,
    },
    /// The answer to `Reattach`: the leases now on this connection.
    Reattached {
        /// The leases.
        ids: Vec<LeaseId>,
    },
    /// The answer to `TieToProcess`.
    Tied {
        /// The lease.
        id: LeaseId,
        /// Its holder now.
        holder: Holder,
    },
    /// The answer to `Renew`.
    Renewed {
        /// The lease.
        id: LeaseId,
        /// When it now expires, in milliseconds since the Unix epoch; `None` without a limit.
        expires_unix_ms: Option<u64>,
    },
    /// The policy was reloaded.
    Reloaded {
        /// Rules in the new policy.
        rules: u32,
        /// Named services in the new policy.
        services: u32,
    },
    /// The answer to `Watch`: events follow, unasked, from now on.
    Watching,
    /// Not an answer: sent to a connection that said `Watch`, one per event, in order.
    Event {
        /// The event's number: one more than the last event of the broker's life, watched or
        /// not, so a gap means events this watcher did not get (see `Missed`).
        seq: u64,
        /// What happened.
        event: Event,
    },
    /// Not an answer: sent to a watcher that read too slowly, before the next event it gets
    /// (or once it has read all that was queued): the broker queues a bounded number of
    /// events per watcher and counts, instead of queueing, those that did not fit.
    Missed {
        /// Events this watcher did not get.
        count: u64,
    },
    /// The answer to `History`: the events, oldest first.
    History(Vec<HistoryEntry>),
}

/// Something that happened to a lease or a reserved port, as a watcher sees it
/// ([`Request::Watch`], [`Response::Event`]). Every fact here is one `List` shows anyway.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A lease was granted (`Lease`, `LeaseNamed`).
    Granted {
        /// The lease as `List` would show it.
        lease: LeaseInfo,
    },
    /// A lease (`Lease`, `LeaseNamed`) was refused.
    Refused {
        /// Who asked.
        asker: Holder,
        /// Why it was refused.
        refusal: Refusal,
    },
    /// A lease ended: released by its holder, its holder gone with no copy of its sockets
    /// left, its last copy closed, or handed back to its user's restarted service. A
    /// granted lease that the journal could not record ends this way too.
    Released {
        /// The lease.
        id: LeaseId,
    },
    /// A lease reached its time limit and ended.
    Expired {
        /// The lease.
        id: LeaseId,
    },
    /// An administrator revoked a lease.
    Revoked {
        /// The lease.
        id: LeaseId,
    },
    /// A lease's holder is gone but a copy of one of its sockets survives: the lease lingers
    /// until the last copy closes (then `Released`).
    Lingering {
        /// The lease.
        id: LeaseId,
        /// The process found holding a copy, or the last holder if none was found.
        holder: Holder,
    },
    /// The broker bound a port the policy reserves (again): it holds it until a lease asks.
    ReservationTakenBack {
        /// Its transport.
        transport: Transport,
        /// The port.
        port: u16,
    },
}

impl Event {
    /// The variant's name in `snake_case` (`"granted"`, `"reservation_taken_back"`, ...): the
    /// `event` field of `portctl watch --json`.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Granted { .. } => "granted",
            Event::Refused { .. } => "refused",
            Event::Released { .. } => "released",
            Event::Expired { .. } => "expired",
            Event::Revoked { .. } => "revoked",
            Event::Lingering { .. } => "lingering",
            Event::ReservationTakenBack { .. } => "reservation_taken_back",
        }
    }
}

/// One line for a person; names escaped (see [`escaped`]).
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Granted { lease } => {
                write!(f, "granted lease {}:", lease.id)?;
                for socket in &lease.sockets {
                    write!(f, " {socket}")?;
                }
                write!(f, " to {}", lease.holder)
            }
            Event::Refused { asker, refusal } => write!(f, "refused {asker}: {refusal}"),
            Event::Released { id } => write!(f, "released lease {id}"),
            Event::Expired { id } => write!(f, "expired lease {id}"),
            Event::Revoked { id } => write!(f, "revoked lease {id}"),
            Event::Lingering { id, holder } => {
                write!(f, "lease {id} lingers: {holder} holds a copy")
            }
            Event::ReservationTakenBack { transport, port } => {
                write!(f, "reserved {transport}:{port} taken back")
            }
        }
    }
}

impl Request {
    /// The variant's name (`"Lease"`, `"Release"`, ...), for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Hello { .. } => "Hello",
            Request::Lease { .. } => "Lease",
            Request::Release { .. } => "Release",
            Request::List => "List",
            Request::Status => "Status",
            Request::LeaseNamed { .. } => "LeaseNamed",
            Request::Reload => "Reload",
            Request::Revoke { .. } => "Revoke",
            Request::TieToProcess { .. } => "TieToProcess",
            Request::Handover { .. } => "Handover",
            Request::Claim { .. } => "Claim",
            Request::Reattach { .. } => "Reattach",
            Request::Renew { .. } => "Renew",
            Request::Watch => "Watch",
            Request::History { .. } => "History",
        }
    }
}

impl Response {
    /// The variant's name (`"Granted"`, `"Failed"`, ...), for messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Hello { .. } => "Hello",
            Response::Granted { .. } => "Granted",
            Response::Refused(_) => "Refused",
            Response::Released { .. } => "Released",
            Response::Leases(_) => "Leases",
            Response::Status(_) => "Status",
            Response::Failed(_) => "Failed",
            Response::Revoked { .. } => "Revoked",
            Response::Expired { .. } => "Expired",
            Response::HandoverOffered { .. } => "HandoverOffered",
            Response::Reattached { .. } => "Reattached",
            Response::Tied { .. } => "Tied",
            Response::Renewed { .. } => "Renewed",
            Response::Reloaded { .. } => "Reloaded",
            Response::Watching => "Watching",
            Response::Event { .. } => "Event",
            Response::Missed { .. } => "Missed",
            Response::History(_) => "History",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_leaves_printable_text_alone() {
        for text in [
            "",
            "nginx",
            "python3",
            "a b-c_d.e",
            "r\u{e9}seau",
            "\u{65e5}\u{672c}",
            "\"'{}",
        ] {
            assert_eq!(escaped(text).to_string(), text);
        }
    }

    #[test]
    fn escaped_escapes_every_control_character() {
        let cases = [
            ("ev\x1b[31m\nil", r"ev\x1b[31m\nil"),
            ("\r\t\0\x07\x7f", r"\r\t\x00\x07\x7f"),
            // C1 controls: U+009B is a one-character CSI on some terminals.
            ("\u{9b}2J\u{85}", r"\u{9b}2J\u{85}"),
            // Bidirectional override, zero-width space, byte order mark, line separator.
            (
                "abc\u{202e}fed\u{200b}\u{feff}\u{2028}",
                r"abc\u{202e}fed\u{200b}\u{feff}\u{2028}",
            ),
            // A backslash is escaped, so that escaped text never passes for an escape.
            (r"\x1b", r"\\x1b"),
        ];
        for (text, shown) in cases {
            assert_eq!(escaped(text).to_string(), shown, "{text:?}");
        }
        // Whatever the input, the output holds no control and no non-printable character.
        let all: String = (0..0x3000u32).filter_map(char::from_u32).collect();
        let shown = escaped(&all).to_string();
        let prints = |c: char| match c.is_ascii() {
            true => !c.is_ascii_control(),
            false => c.escape_debug().next() == Some(c),
        };
        assert!(shown.chars().all(prints), "{shown}");
        assert!(shown.contains(r"\x1b") && shown.contains(r"\u{200f}"));
    }

    #[test]
    fn a_holder_shows_its_name_escaped() {
        let holder = Holder {
            pid: 7,
            uid: 1000,
            gid: 1000,
            name: "ev\x1b[31m\nil".into(),
        };
        assert_eq!(holder.to_string(), r"pid 7 (ev\x1b[31m\nil, uid 1000)");
        let refusal = Refusal::InUse {
            transport: Transport::Tcp,
            requested: "127.0.0.1:80".parse().unwrap(),
            held: "0.0.0.0:80".parse().unwrap(),
            lease: LeaseId(3),
            holder: holder.clone(),
        };
        let text = refusal.to_string();
        assert!(
            text.ends_with(r"held by pid 7 (ev\x1b[31m\nil, uid 1000)"),
            "{text}"
        );
        let nameless = Holder {
            name: String::new(),
            ..holder
        };
        assert_eq!(nameless.to_string(), "pid 7 (uid 1000)");
    }
}
