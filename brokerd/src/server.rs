//! The event loop: one thread owns the listener, every client connection and the lease table.
//!
//! Connections are non-blocking with bounded buffers; a request is read, served and answered
//! with one `sendmsg` in the same turn, so one slow or hostile client only ever delays itself.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use portbroker_proto::{
    decode_request, encode_response_into, frame_payload_len, peek_hello_protocol, Failure,
    GrantedSocket, Holder, LeaseId, Listen, PortRange, Refusal, Request, Response, SocketSpec,
    StatusInfo, Transport, HEADER_LEN, MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;
use tracing::{debug, info, warn};

use crate::bind::bind_socket;
use crate::journal::{Entry, Journal, Recovered};
use crate::log_buffer;
use crate::peer::peer_holder;
use crate::policy::{groups_of, Identity, Policy};
use crate::socket_file::SocketFile;
use crate::table::{addrs_overlap, ConnId, Table};

/// Everything the daemon is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket: PathBuf,
    pub pool: PortRange,
    pub default_addr: IpAddr,
    pub max_connections: usize,
    /// Granted sockets the broker may hold for clients that do not read them, in all.
    pub max_queued_fds: usize,
    /// Who may lease what, and the limits; replaced by a reload.
    pub policy: Policy,
    /// Where the lease journal lives; `None` keeps no journal.
    pub journal: Option<PathBuf>,
    /// On a clean shutdown, end every lease instead of keeping them for the next start.
    pub release_on_exit: bool,
}

const LISTENER_TOKEN: u64 = 0;
const SIGNAL_TOKEN: u64 = 1;
const FIRST_CONN_ID: ConnId = 2;
/// Tokens with this bit set are pidfds of processes leases are tied to; the rest is the lease id.
const PROCESS_TOKEN: u64 = 1 << 63;
/// The connection of a lease tied to a process: none.
const NO_CONN: ConnId = 0;

const READ_CHUNK: usize = 16 * 1024;
/// Frames served from one connection per wakeup, so a pipelining client cannot starve others.
const FRAMES_PER_WAKEUP: usize = 64;
/// Accepts per wakeup, for the same reason.
const ACCEPTS_PER_WAKEUP: usize = 256;
/// Above this much unsent output, the broker stops reading a connection's requests until the
/// client reads its answers.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// A read buffer that grew for a large frame is shrunk back to this once it is empty.
const IDLE_BUFFER: usize = 1024;
const MAX_SOCKETS_PER_LEASE: usize = 64;
/// How many pool ports held by processes outside the broker one "any port" lease may skip.
const POOL_TRIES: usize = 64;
/// How long a logged line may wait in the buffer before it is written.
const LOG_DELAY: Duration = Duration::from_millis(50);
/// The most leases one `Reattach` takes.
const MAX_REATTACH: usize = 65_536;
/// How often lingering leases are probed again.
const LINGER_CHECK: Duration = Duration::from_millis(100);
/// How often connections are checked against the idle timeout.
const IDLE_SWEEP: Duration = Duration::from_secs(1);

struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    /// Sent as SCM_RIGHTS with the first byte; dropped (closed) as soon as that byte is out.
    fds: Vec<OwnedFd>,
}

struct Conn {
    stream: UnixStream,
    holder: Rc<Holder>,
    identity: Rc<Identity>,
    /// The peer's start time, journaled with its leases (see `journal::start_time`).
    start_time: u64,
    /// When the last request came, for the idle timeout.
    last_request: Instant,
    rbuf: Vec<u8>,
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    greeted: bool,
    /// Serve nothing more; close once the output is flushed.
    closing: bool,
    /// The peer is gone or the stream failed: close now.
    broken: bool,
    leases: Vec<LeaseId>,
    interest: EpollFlags,
    /// Granted sockets not yet sent. Requests wait while a lease's worth are queued, or while
    /// the socket refused output (`output_blocked`), so a client that does not read can hold
    /// at most one lease's worth of sockets in the broker.
    queued_fds: usize,
    output_blocked: bool,
    /// A sent chunk's buffer, kept for the next one: no allocation per response.
    spare: Vec<u8>,
    /// Complete frames may be left in `rbuf` after a turn's quota was used.
    in_ready_queue: bool,
}

impl Conn {
    fn wanted_interest(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.wants_requests() {
            flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if !self.out.is_empty() {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }

    fn wants_requests(&self) -> bool {
        !self.closing
            && !self.broken
            && !self.output_blocked
            && self.out_bytes < OUTPUT_HIGH_WATER
            && self.queued_fds < MAX_SOCKETS_PER_LEASE
    }

    /// Queues a response; `flush` sends what a turn queued in as few `sendmsg` calls as the
    /// fds allow (one, usually). Fds travel with the first byte of their chunk, which is at or
    /// before their frame, and a chunk carries at most one lease's worth, as clients expect.
    fn send(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) {
        if self.broken {
            return;
        }
        self.out_bytes += bytes.len();
        self.queued_fds += fds.len();
        if let Some(last) = self.out.back_mut() {
            if last.sent == 0 && last.fds.len() + fds.len() <= MAX_SOCKETS_PER_LEASE {
                last.bytes.extend_from_slice(bytes);
                last.fds.extend(fds);
                return;
            }
        }
        let mut chunk = std::mem::take(&mut self.spare);
        chunk.extend_from_slice(bytes);
        self.out.push_back(Outgoing {
            bytes: chunk,
            sent: 0,
            fds,
        });
    }

    fn flush(&mut self) {
        while let Some(front) = self.out.front_mut() {
            match send_some(
                self.stream.as_raw_fd(),
                &front.bytes[front.sent..],
                &front.fds,
            ) {
                Ok(n) => {
                    self.queued_fds -= front.fds.len();
                    front.fds.clear();
                    front.sent += n;
                    self.out_bytes -= n;
                    if front.sent == front.bytes.len() {
                        let mut done = self.out.pop_front().expect("front exists").bytes;
                        if done.capacity() <= IDLE_BUFFER {
                            done.clear();
                            self.spare = done;
                        }
                    }
                }
                Err(Errno::EAGAIN) => {
                    self.output_blocked = true;
                    return;
                }
                Err(err) => {
                    debug!("send to {} failed: {err}", self.holder);
                    self.broken = true;
                    return;
                }
            }
        }
        self.output_blocked = false;
    }
}

/// One `sendmsg`, with `fds` attached when there are any. Retries EINTR.
fn send_some(fd: RawFd, bytes: &[u8], fds: &[OwnedFd]) -> nix::Result<usize> {
    let mut raw = [0 as RawFd; MAX_SOCKETS_PER_LEASE];
    for (slot, fd) in raw.iter_mut().zip(fds) {
        *slot = fd.as_raw_fd();
    }
    let rights = [ControlMessage::ScmRights(&raw[..fds.len()])];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    loop {
        match sendmsg::<()>(fd, &[IoSlice::new(bytes)], cmsgs, flags, None) {
            Err(Errno::EINTR) => continue,
            result => return result,
        }
    }
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub struct Server {
    config: Config,
    socket: SocketFile,
    epoll: Epoll,
    signals: SignalDelivery<UnixStream, SignalOnly>,
    table: Table,
    conns: HashMap<ConnId, Conn>,
    next_conn_id: ConnId,
    /// In accept order, hence in deadline order.
    hello_deadlines: VecDeque<(Instant, ConnId)>,
    started: Instant,
    read_chunk: Box<[u8]>,
    encoded: Vec<u8>,
    last_full_warning: Option<Instant>,
    last_budget_warning: Option<Instant>,
    /// Connections with complete frames left over from their quota of a turn.
    ready: VecDeque<ConnId>,
    /// Granted sockets waiting in connections' output queues, over all connections.
    queued_fds: usize,
    /// Set while accept() fails for lack of fds: the listener is unwatched until then.
    accept_paused_until: Option<Instant>,
    last_accept_warning: Option<Instant>,
    log_flush_due: Option<Instant>,
    /// Open connections per uid, for `connections_per_uid`.
    conns_by_uid: HashMap<u32, u64>,
    /// Request budget per uid: (tokens left, when last refilled).
    request_budget: HashMap<u32, (f64, Instant)>,
    next_idle_sweep: Instant,
    /// Time limits of leases, earliest first. An entry is stale when its lease was renewed or
    /// has ended; it is dropped when it comes up.
    expiries: BinaryHeap<Reverse<(Instant, LeaseId)>>,
    journal: Option<Journal>,
    /// Processes leases are tied to: one pidfd each, and the leases.
    watched: HashMap<i32, (OwnedFd, Vec<LeaseId>)>,
    /// Connections served this turn, settled (answers sent) after the journal commit.
    unsettled: Vec<ConnId>,
    /// Offered handovers: token to lease.
    handovers: HashMap<u64, LeaseId>,
    /// Reserved ports the broker holds now (see `Policy::reserved`); a leased one is taken
    /// back when its lease has ended and no copy survives (`maintain_reservations`).
    reservations: HashMap<(Transport, u16), OwnedFd>,
    /// Ended leases whose sockets live on somewhere; probed again at `next_linger_check`.
    lingering: Vec<LeaseId>,
    next_linger_check: Option<Instant>,
    shutting_down: bool,
}

/// Whether a rate-limited warning is due (at most one a second), updating `last`.
fn warning_due(last: &mut Option<Instant>) -> bool {
    let now = Instant::now();
    let due = last.is_none_or(|t| now - t >= Duration::from_secs(1));
    if due {
        *last = Some(now);
    }
    due
}

impl Server {
    pub fn new(config: Config) -> Result<Self> {
        let socket = SocketFile::create(
            &config.socket,
            config.policy.socket_mode,
            config.policy.socket_gid,
        )?;
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
        let (read, write) = UnixStream::pair().context("cannot create the signal pipe")?;
        read.set_nonblocking(true)
            .context("cannot make the signal pipe non-blocking")?;
        let signals = SignalDelivery::with_pipe(read, write, SignalOnly, [SIGINT, SIGTERM, SIGHUP])
            .context("cannot install the SIGINT/SIGTERM/SIGHUP handlers")?;
        epoll
            .add(
                socket.listener(),
                EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_TOKEN),
            )
            .context("cannot watch the listening socket")?;
        epoll
            .add(
                signals.get_read(),
                EpollEvent::new(EpollFlags::EPOLLIN, SIGNAL_TOKEN),
            )
            .context("cannot watch the signal pipe")?;
        let journal = match &config.journal {
            Some(path) => Some(
                Journal::open(path)
                    .with_context(|| format!("cannot open the journal {}", path.display()))?,
            ),
            None => None,
        };
        let mut server = Server {
            table: Table::new(config.pool),
            config,
            socket,
            epoll,
            signals,
            conns: HashMap::new(),
            next_conn_id: FIRST_CONN_ID,
            hello_deadlines: VecDeque::new(),
            started: Instant::now(),
            read_chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            encoded: Vec::with_capacity(256),
            last_full_warning: None,
            last_budget_warning: None,
            ready: VecDeque::new(),
            queued_fds: 0,
            accept_paused_until: None,
            last_accept_warning: None,
            log_flush_due: None,
            conns_by_uid: HashMap::new(),
            request_budget: HashMap::new(),
            next_idle_sweep: Instant::now() + IDLE_SWEEP,
            expiries: BinaryHeap::new(),
            handovers: HashMap::new(),
            unsettled: Vec::new(),
            watched: HashMap::new(),
            journal: None,
            reservations: HashMap::new(),
            lingering: Vec::new(),
            next_linger_check: None,
            shutting_down: false,
        };
        if let Some((journal, recovered)) = journal {
            server.journal = Some(journal);
            server.recover(recovered);
        }
        Ok(server)
    }

    pub fn run(mut self) -> Result<()> {
        self.maintain_reservations();
        info!(
            socket = %self.socket.path().display(),
            pool = %self.config.pool,
            default_addr = %self.config.default_addr,
            "portbrokerd {} ready (protocol {PROTOCOL_VERSION})",
            env!("CARGO_PKG_VERSION"),
        );
        let mut events = vec![EpollEvent::empty(); 256];
        while !self.shutting_down {
            self.journal_turn();
            self.flush_log_when_due();
            let timeout = self.next_timeout();
            let ready = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(err).context("epoll_wait"),
            };
            for event in &events[..ready] {
                match event.data() {
                    LISTENER_TOKEN => self.accept_all(),
                    SIGNAL_TOKEN => self.take_signals(),
                    token if token & PROCESS_TOKEN != 0 => {
                        self.process_exited((token & !PROCESS_TOKEN) as i32)
                    }
                    id => self.serve(id, event.events()),
                }
            }
            for id in std::mem::take(&mut self.ready) {
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.in_ready_queue = false;
                    self.read_requests(id);
                    self.unsettled.push(id);
                }
            }
            // Group commit: the turn's grants reach the journal before any answer leaves.
            self.journal_turn();
            for id in std::mem::take(&mut self.unsettled) {
                self.settle(id);
            }
            self.expire_hellos();
            self.expire_leases();
            if self.next_linger_check.is_some_and(|t| t <= Instant::now()) {
                self.check_lingering();
            }
            if self.next_idle_sweep <= Instant::now() {
                self.close_idle();
            }
            if self
                .accept_paused_until
                .is_some_and(|t| t <= Instant::now())
            {
                self.resume_accepting();
            }
        }
        let (leases, conns) = (self.table.lease_count(), self.conns.len());
        self.journal_turn();
        match &mut self.journal {
            Some(journal) if self.config.release_on_exit => {
                journal.rewrite(std::iter::empty()).context("cannot empty the journal")?;
                info!("shutting down: closing {conns} connections and ending {leases} leases");
            }
            Some(_) => info!(
                "shutting down: closing {conns} connections; {leases} leases stay in the journal for the next start"
            ),
            None => info!("shutting down: closing {conns} connections and ending {leases} leases"),
        }
        Ok(())
    }

    /// Writes this turn's grants, changes and ends to the journal with one write and one
    /// fdatasync (group commit), compacting it now and then.
    fn journal_turn(&mut self) {
        let Some(journal) = self.journal.as_mut() else {
            return;
        };
        let (changed, ended) = self.table.take_changes();
        for id in changed {
            if let Some(lease) = self.table.get(id) {
                journal.grant(journal_entry(lease));
            }
        }
        for id in ended {
            journal.end(id.0);
        }
        let result = if journal.wants_compaction(self.table.lease_count()) {
            let entries: Vec<Entry> = self.table.leases().map(journal_entry).collect();
            journal.rewrite(entries.iter())
        } else {
            journal.commit()
        };
        if let Err(err) = result {
            if warning_due(&mut self.last_full_warning) {
                warn!("cannot write the journal: {err}; leases may not survive a restart");
            }
        }
    }

    /// Puts back the leases of the journal: those whose holder still runs (same pid and start
    /// time) are tied to that process; the others end once a probe shows their ports free,
    /// and linger until then.
    fn recover(&mut self, recovered: Recovered) {
        let (mut kept, mut ended, mut lingering) = (0, 0, 0);
        for entry in recovered.leases {
            let id = LeaseId(entry.id);
            let alive = crate::journal::start_time(entry.pid) == Some(entry.start_time);
            let holder = Holder {
                pid: entry.pid,
                uid: entry.uid,
                gid: entry.gid,
                name: entry.name.clone(),
            };
            self.table
                .restore(id, Rc::new(holder), entry.since, entry.sockets.clone());
            if let Some(lease) = self.table.get_mut(id) {
                lease.conn = NO_CONN;
                lease.start_time = entry.start_time;
                lease.service = entry.service.as_deref().map(Rc::from);
            }
            let tied = alive && self.watch(entry.pid, id).is_ok();
            if tied {
                kept += 1;
                continue;
            }
            self.end_truthfully(id, "its holder exited while the daemon was down");
            if self.table.get(id).is_some() {
                lingering += 1;
            } else {
                ended += 1;
            }
        }
        // The journal was just rewritten as what it held; restoring is no change.
        self.table.take_changes();
        info!(
            "recovered from the journal: {kept} leases kept, {ended} ended, {lingering} lingering"
        );
        if let Some((line, unread)) = recovered.damage {
            warn!(
                "the journal is damaged at line {line}: that line and the {} after it were not \
                 read. Leases they named are unknown; their ports are refused by the kernel while \
                 any holder keeps them, and every grant binds (probes) its port first.",
                unread.saturating_sub(1)
            );
        }
    }

    /// Logged lines wait up to `LOG_DELAY`, so that one `write` carries many of them.
    fn flush_log_when_due(&mut self) {
        if !log_buffer::pending() {
            return;
        }
        let now = Instant::now();
        match self.log_flush_due {
            Some(due) if due <= now => {
                log_buffer::flush();
                self.log_flush_due = None;
            }
            Some(_) => {}
            None => self.log_flush_due = Some(now + LOG_DELAY),
        }
    }

    fn next_timeout(&self) -> EpollTimeout {
        if !self.ready.is_empty() {
            return EpollTimeout::ZERO;
        }
        let hello = self.hello_deadlines.front().map(|&(deadline, _)| deadline);
        let next_expiry = self.expiries.peek().map(|Reverse((at, _))| *at);
        let deadlines = [
            next_expiry,
            self.next_linger_check,
            self.accept_paused_until,
            self.log_flush_due,
            Some(self.next_idle_sweep),
        ];
        let Some(deadline) = hello
            .into_iter()
            .chain(deadlines.into_iter().flatten())
            .min()
        else {
            return EpollTimeout::NONE;
        };
        // Round up so the deadline has passed when we wake.
        let wait = deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(1);
        EpollTimeout::try_from(wait).unwrap_or(EpollTimeout::MAX)
    }

    fn take_signals(&mut self) {
        for signal in self.signals.pending() {
            match signal {
                SIGINT | SIGTERM => {
                    info!("received signal {signal}");
                    self.shutting_down = true;
                }
                // Operators send SIGHUP to reload; without a policy file there is nothing to
                // reload yet, but the signal must not kill the daemon (its default action).
                SIGHUP => {
                    info!("received SIGHUP: reloading the policy");
                    if let Err(err) = self.reload() {
                        warn!("the policy was not reloaded and stays as it was: {err}");
                    }
                }
                other => debug!("ignoring signal {other}"),
            }
        }
    }

    fn accept_all(&mut self) {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            let stream = match self.socket.listener().accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of fds: the backlog keeps new clients waiting. Stop watching the
                    // listener (it stays readable and would spin the loop) until a connection
                    // closes or a moment has passed.
                    if warning_due(&mut self.last_accept_warning) {
                        warn!("accept failed: {err}; new connections wait until fds free up");
                    }
                    self.pause_accepting();
                    return;
                }
                Err(err) => {
                    warn!("accept failed: {err}");
                    return;
                }
            };
            if let Err(err) = self.admit(stream) {
                warn!("dropping a new connection: {err:#}");
            }
        }
    }

    fn pause_accepting(&mut self) {
        self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
        let mut none = EpollEvent::new(EpollFlags::empty(), LISTENER_TOKEN);
        if let Err(err) = self.epoll.modify(self.socket.listener(), &mut none) {
            warn!("cannot pause the listener: {err}");
        }
    }

    fn resume_accepting(&mut self) {
        self.accept_paused_until = None;
        let mut readable = EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_TOKEN);
        if let Err(err) = self.epoll.modify(self.socket.listener(), &mut readable) {
            warn!("cannot resume the listener: {err}");
        }
    }

    fn admit(&mut self, stream: UnixStream) -> Result<()> {
        if self.conns.len() >= self.config.max_connections {
            if warning_due(&mut self.last_full_warning) {
                warn!(
                    "refusing connections: {} are open, the maximum",
                    self.config.max_connections
                );
            }
            return Ok(());
        }
        stream
            .set_nonblocking(true)
            .context("cannot make the connection non-blocking")?;
        let holder = peer_holder(&stream).context("cannot read the peer's credentials")?;
        let identity = Identity {
            uid: holder.uid,
            groups: groups_of(holder.pid, holder.gid),
        };
        let limit = self.config.policy.limits.connections_per_uid;
        let open = self.conns_by_uid.get(&holder.uid).copied().unwrap_or(0);
        if holder.uid != 0 && open >= limit {
            warn!("refusing a connection of {holder}: it has {open} open, the limit (connections_per_uid)");
            let refusal = Response::Failed(Failure::NotPermitted {
                reason: format!(
                    "uid {} has {open} connections open, the limit (connections_per_uid)",
                    holder.uid
                ),
            });
            // A courtesy: the client may not be reading yet, and nothing waits for this write.
            if let Ok(frame) = portbroker_proto::encode_response(&refusal) {
                let _ = (&stream).write(&frame);
            }
            return Ok(());
        }
        *self.conns_by_uid.entry(holder.uid).or_default() += 1;
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        self.epoll
            .add(&stream, EpollEvent::new(interest, id))
            .context("cannot watch the connection")?;
        debug!(conn = id, "connection from {holder}");
        self.hello_deadlines
            .push_back((Instant::now() + self.hello_timeout(), id));
        self.conns.insert(
            id,
            Conn {
                stream,
                start_time: crate::journal::start_time(holder.pid).unwrap_or(0),
                identity: Rc::new(identity),
                last_request: Instant::now(),
                holder: Rc::new(holder),
                rbuf: Vec::new(),
                out: VecDeque::new(),
                out_bytes: 0,
                greeted: false,
                closing: false,
                broken: false,
                leases: Vec::new(),
                interest,
                queued_fds: 0,
                output_blocked: false,
                spare: Vec::new(),
                in_ready_queue: false,
            },
        );
        Ok(())
    }

    fn expire_hellos(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, id)) = self.hello_deadlines.front() {
            if deadline > now {
                break;
            }
            self.hello_deadlines.pop_front();
            if let Some(conn) = self.conns.get(&id).filter(|c| !c.greeted) {
                warn!(
                    conn = id,
                    "closing the connection of {}: no Hello within {:?}",
                    conn.holder,
                    self.hello_timeout()
                );
                self.close(id);
            }
        }
    }

    fn serve(&mut self, id: ConnId, events: EpollFlags) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if events.contains(EpollFlags::EPOLLOUT) {
            let queued = conn.queued_fds;
            conn.flush();
            self.queued_fds -= queued - conn.queued_fds;
        }
        let readable = EpollFlags::EPOLLIN
            | EpollFlags::EPOLLHUP
            | EpollFlags::EPOLLERR
            | EpollFlags::EPOLLRDHUP;
        // Requests held back by backpressure may wait in the buffer with nothing new to read.
        if events.intersects(readable) || !conn.rbuf.is_empty() {
            self.read_requests(id);
        }
        self.unsettled.push(id);
    }

    /// Closes the connection if it is done, or brings its epoll interest up to date.
    fn settle(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.broken && !conn.out.is_empty() {
            let queued = conn.queued_fds;
            conn.flush();
            self.queued_fds -= queued - conn.queued_fds;
            if conn.queued_fds > 0 && self.queued_fds > self.config.max_queued_fds {
                // Granted sockets pile up in the broker for clients that do not read them:
                // drop this one (and its leases) rather than run out of fds for everyone.
                warn!(
                    conn = id,
                    "closing the connection of {}: it does not read its granted sockets and {} are waiting in all",
                    conn.holder,
                    self.queued_fds
                );
                conn.broken = true;
            }
        }
        if conn.broken || (conn.closing && conn.out.is_empty()) {
            self.close(id);
            return;
        }
        if conn.wants_requests() && !conn.rbuf.is_empty() && !conn.in_ready_queue {
            // Requests held back until this flush: serve them without waiting for new input.
            conn.in_ready_queue = true;
            self.ready.push_back(id);
        }
        let wanted = conn.wanted_interest();
        if wanted != conn.interest {
            let mut event = EpollEvent::new(wanted, id);
            match self.epoll.modify(&conn.stream, &mut event) {
                Ok(()) => conn.interest = wanted,
                Err(err) => {
                    warn!(conn = id, "cannot update epoll interest: {err}");
                    self.close(id);
                }
            }
        }
    }

    fn read_requests(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let mut rbuf = std::mem::take(&mut conn.rbuf);
        let mut start = 0;
        let mut served = 0;
        let mut drained = false;
        'reading: loop {
            // Serve every complete frame in the buffer.
            loop {
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                if !conn.wants_requests() {
                    break 'reading;
                }
                if served >= FRAMES_PER_WAKEUP {
                    // Fair share used: come back after the other ready connections.
                    if !conn.in_ready_queue {
                        self.ready.push_back(id);
                    }
                    if let Some(conn) = self.conns.get_mut(&id) {
                        conn.in_ready_queue = true;
                    }
                    break 'reading;
                }
                match frame_payload_len(&rbuf[start..], MAX_REQUEST_FRAME) {
                    Ok(Some(len)) if rbuf.len() - start >= HEADER_LEN + len => {
                        let payload = start + HEADER_LEN..start + HEADER_LEN + len;
                        self.handle_frame(id, &rbuf[payload]);
                        start += HEADER_LEN + len;
                        served += 1;
                    }
                    Ok(_) => break,
                    Err(err) => {
                        self.violation(
                            id,
                            Failure::Malformed {
                                detail: error_chain(&err),
                            },
                        );
                        break 'reading;
                    }
                }
            }
            rbuf.drain(..start);
            start = 0;
            if drained {
                // A short read emptied the socket; level-triggered epoll says when more comes,
                // which spares a read that would only return EAGAIN (measured: a little faster
                // than reading on, with 1 and with 16 clients).
                break;
            }
            let Some(conn) = self.conns.get_mut(&id) else {
                return;
            };
            match conn.stream.read(&mut self.read_chunk) {
                Ok(0) => {
                    if !rbuf.is_empty() {
                        warn!(
                            conn = id,
                            "{} closed the connection in the middle of a frame", conn.holder
                        );
                    }
                    // Every whole request before the end is served by now: send the answers
                    // (a client may close only its sending side), then close.
                    conn.closing = true;
                    break;
                }
                Ok(n) => {
                    rbuf.extend_from_slice(&self.read_chunk[..n]);
                    drained = n < self.read_chunk.len();
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!(conn = id, "read from {} failed: {err}", conn.holder);
                    conn.broken = true;
                    break;
                }
            }
        }
        rbuf.drain(..start);
        if rbuf.is_empty() && rbuf.capacity() > IDLE_BUFFER {
            rbuf = Vec::new();
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.rbuf = rbuf;
        }
    }

    /// Answers a protocol violation with `failure` and closes the connection after it.
    fn violation(&mut self, id: ConnId, failure: Failure) {
        if let Some(conn) = self.conns.get_mut(&id) {
            warn!(
                conn = id,
                "closing the connection of {}: {failure}", conn.holder
            );
            conn.closing = true;
        }
        self.respond(id, &Response::Failed(failure), Vec::new());
    }

    fn handle_frame(&mut self, id: ConnId, payload: &[u8]) {
        let greeted = self.conns.get(&id).is_some_and(|c| c.greeted);
        let request = match decode_request(payload) {
            Ok(request) => request,
            Err(err) => {
                let failure = match peek_hello_protocol(payload) {
                    Some(client) if !greeted && client != PROTOCOL_VERSION => {
                        Failure::VersionMismatch {
                            broker: PROTOCOL_VERSION,
                            client,
                        }
                    }
                    _ => Failure::Malformed {
                        detail: error_chain(&err),
                    },
                };
                return self.violation(id, failure);
            }
        };
        if !greeted && !matches!(request, Request::Hello { .. }) {
            return self.violation(id, Failure::HelloRequired);
        }
        if let Some(failure) = self.over_request_budget(id) {
            return self.respond(id, &Response::Failed(failure), Vec::new());
        }
        match request {
            Request::Hello { protocol, client } => self.hello(id, protocol, &client),
            Request::Lease { sockets } => self.grant(id, &sockets, true),
            Request::LeaseNamed { name } => self.lease_named(id, &name),
            Request::Release { id: lease } => self.release(id, lease),
            Request::Revoke { id: lease } => self.revoke(id, lease),
            Request::Renew { id: lease, ttl_ms } => self.renew(id, lease, ttl_ms),
            Request::TieToProcess { id: lease, pid } => self.tie(id, lease, pid),
            Request::Handover { id: lease } => self.offer_handover(id, lease),
            Request::Claim { token } => self.claim(id, token),
            Request::Reattach { ids } => self.reattach(id, &ids),
            Request::Reload => {
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                let response = if !self.config.policy.is_admin(&conn.identity) {
                    warn!(
                        "refused to reload the policy for {}: not an administrator",
                        conn.holder
                    );
                    Response::Failed(Failure::NotPermitted {
                        reason: "reloading the policy needs root or a member of an [admin] group"
                            .into(),
                    })
                } else {
                    match self.reload() {
                        Ok((rules, services)) => Response::Reloaded { rules, services },
                        Err(error) => {
                            warn!("the policy was not reloaded and stays as it was: {error}");
                            Response::Failed(Failure::ReloadFailed { error })
                        }
                    }
                };
                self.respond(id, &response, Vec::new());
            }
            Request::List => {
                let leases = self.table.leases().map(|lease| lease.info()).collect();
                self.respond(id, &Response::Leases(leases), Vec::new());
            }
            Request::Status => {
                let status = StatusInfo {
                    daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
                    protocol: PROTOCOL_VERSION,
                    uptime_secs: self.started.elapsed().as_secs(),
                    leases: self.table.lease_count() as u64,
                    sockets: self.table.socket_count() as u64,
                    connections: self.conns.len() as u64,
                    pool: self.table.pool(),
                    default_addr: self.config.default_addr,
                };
                self.respond(id, &Response::Status(status), Vec::new());
            }
        }
    }

    fn hello(&mut self, id: ConnId, protocol: u32, client: &str) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if conn.greeted {
            return self.respond(id, &Response::Failed(Failure::DuplicateHello), Vec::new());
        }
        if protocol != PROTOCOL_VERSION {
            return self.violation(
                id,
                Failure::VersionMismatch {
                    broker: PROTOCOL_VERSION,
                    client: protocol,
                },
            );
        }
        conn.greeted = true;
        debug!(conn = id, "hello from {} ({client:?})", conn.holder);
        let hello = Response::Hello {
            protocol: PROTOCOL_VERSION,
            daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        self.respond(id, &hello, Vec::new());
    }

    /// Grants `specs` as one lease, or refuses them. `by_rules`: whether the policy's rules
    /// decide (false for a named service whose own `who` list already admitted the client).
    fn grant(&mut self, id: ConnId, specs: &[SocketSpec], by_rules: bool) {
        self.grant_as(id, specs, by_rules, None);
    }

    /// [`Server::grant`], recording the named service the lease is for.
    fn grant_as(
        &mut self,
        id: ConnId,
        specs: &[SocketSpec],
        by_rules: bool,
        service: Option<&str>,
    ) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (holder, identity) = (Rc::clone(&conn.holder), Rc::clone(&conn.identity));
        let start_time = conn.start_time;
        match self.bind_all(&identity, specs, by_rules) {
            Ok(bound) => {
                let (sockets, fds): (Vec<GrantedSocket>, Vec<OwnedFd>) = bound.into_iter().unzip();
                let lease = self
                    .table
                    .insert(id, holder.clone(), unix_now(), sockets.clone());
                if let Some(entry) = self.table.get_mut(lease) {
                    entry.service = service.map(Rc::from);
                    entry.start_time = start_time;
                }
                info!(
                    lease = lease.0,
                    "granted {} to {holder}",
                    SocketList(&sockets)
                );
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.leases.push(lease);
                }
                let granted = Response::Granted {
                    id: lease,
                    sockets,
                    fds: fds.len() as u32,
                };
                self.respond(id, &granted, fds);
            }
            Err(refusal) => {
                info!("refused {holder}: {refusal}");
                self.respond(id, &Response::Refused(refusal), Vec::new());
            }
        }
    }

    fn lease_named(&mut self, id: ConnId, name: &str) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let policy = &self.config.policy;
        let checked = match policy.services.get(name) {
            None => Err(Refusal::UnknownService {
                name: name.to_owned(),
            }),
            Some(service) => match policy.may_use_service(&conn.identity, name, service) {
                Ok(admitted) => Ok((service.sockets.clone(), !admitted)),
                Err(reason) => Err(Refusal::NotPermitted { reason }),
            },
        };
        match checked {
            Ok((specs, by_rules)) => {
                // A restarted server gets back the ports kept for it since its crash.
                let uid = conn.identity.uid;
                let kept: Vec<LeaseId> = self
                    .table
                    .leases()
                    .filter(|l| {
                        l.sticky && l.holder.uid == uid && l.service.as_deref() == Some(name)
                    })
                    .map(|l| l.id)
                    .collect();
                for lease in kept {
                    self.table.remove(lease);
                    info!(
                        lease = lease.0,
                        "kept ports of service {name:?} go back to uid {uid}"
                    );
                }
                self.grant_as(id, &specs, by_rules, Some(name));
            }
            Err(refusal) => {
                info!("refused {}: {refusal}", conn.holder);
                self.respond(id, &Response::Refused(refusal), Vec::new());
            }
        }
    }

    fn check_quotas(&self, who: &Identity) -> Result<(), Refusal> {
        let limits = &self.config.policy.limits;
        let total = self.table.lease_count() as u64;
        if total >= limits.leases_total {
            return Err(Refusal::QuotaExceeded {
                quota: "leases_total".into(),
                used: total,
                limit: limits.leases_total,
            });
        }
        if who.uid == 0 {
            return Ok(());
        }
        let mine = self.table.leases_of(who.uid);
        if mine >= limits.leases_per_uid {
            return Err(Refusal::QuotaExceeded {
                quota: "leases_per_uid".into(),
                used: mine,
                limit: limits.leases_per_uid,
            });
        }
        Ok(())
    }

    /// Takes one request from the uid's budget (`requests_per_sec_per_uid`, root exempt);
    /// the failure to answer with when it is spent.
    fn over_request_budget(&mut self, id: ConnId) -> Option<Failure> {
        let conn = self.conns.get_mut(&id)?;
        let now = Instant::now();
        conn.last_request = now;
        let uid = conn.identity.uid;
        if uid == 0 {
            return None;
        }
        let rate = self.config.policy.limits.requests_per_sec_per_uid as f64;
        let (tokens, refilled) = self.request_budget.entry(uid).or_insert((rate, now));
        *tokens = (*tokens + now.duration_since(*refilled).as_secs_f64() * rate).min(rate);
        *refilled = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            return None;
        }
        if warning_due(&mut self.last_budget_warning) {
            warn!("uid {uid} is over its request budget ({rate} per second)");
        }
        Some(Failure::NotPermitted {
            reason: format!(
                "more than {rate} requests per second from uid {uid} (requests_per_sec_per_uid)"
            ),
        })
    }

    fn hello_timeout(&self) -> Duration {
        Duration::from_secs(self.config.policy.limits.hello_timeout_secs)
    }

    /// Closes connections that hold no lease and sent nothing for `idle_timeout_secs` (0: never).
    fn close_idle(&mut self) {
        let now = Instant::now();
        self.next_idle_sweep = now + IDLE_SWEEP;
        let idle = Duration::from_secs(self.config.policy.limits.idle_timeout_secs);
        if idle.is_zero() {
            return;
        }
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.greeted && c.leases.is_empty() && now - c.last_request >= idle)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(conn) = self.conns.get(&id) {
                info!(
                    conn = id,
                    "closing the idle connection of {}: no lease and no request for {idle:?}",
                    conn.holder
                );
            }
            self.close(id);
        }
    }

    /// Re-reads the policy file; on any error the policy in force stays as it was.
    fn reload(&mut self) -> Result<(u32, u32), String> {
        let old = &self.config.policy;
        let Some(path) = old.source.clone() else {
            return Err("the daemon runs on the built-in policy; start it with --config FILE to have a file to reload".into());
        };
        let new = Policy::load(&path).map_err(|e| e.to_string())?;
        if (&new.socket_path, new.socket_mode, new.socket_gid, new.pool)
            != (&old.socket_path, old.socket_mode, old.socket_gid, old.pool)
        {
            warn!(
                "{}: changes to [socket] and [pool] take effect at the next start",
                path.display()
            );
        }
        let counts = (new.rule_count() as u32, new.services.len() as u32);
        info!(
            "reloaded {}: {} rules, {} services",
            path.display(),
            counts.0,
            counts.1
        );
        self.config.policy = new;
        Ok(counts)
    }

    /// Checks and binds every spec; all or nothing (sockets bound so far close on refusal).
    fn bind_all(
        &mut self,
        who: &Identity,
        specs: &[SocketSpec],
        by_rules: bool,
    ) -> Result<Vec<(GrantedSocket, OwnedFd)>, Refusal> {
        if specs.is_empty() || specs.len() > MAX_SOCKETS_PER_LEASE {
            return Err(Refusal::InvalidSpec {
                index: 0,
                reason: format!(
                    "a lease holds 1 to {MAX_SOCKETS_PER_LEASE} sockets, not {}",
                    specs.len()
                ),
            });
        }
        // Every spec is checked before anything is bound, and the rules before the quotas: a
        // request no rule allows is "not permitted", whatever the user's count.
        for (index, spec) in specs.iter().enumerate() {
            self.check_spec(who, spec, by_rules)
                .map_err(|problem| match problem {
                    SpecProblem::Invalid(reason) => Refusal::InvalidSpec {
                        index: index as u32,
                        reason,
                    },
                    SpecProblem::Refused(refusal) => refusal,
                })?;
        }
        self.check_quotas(who)?;
        let mut bound: Vec<(GrantedSocket, OwnedFd)> = Vec::with_capacity(specs.len());
        for (index, spec) in specs.iter().enumerate() {
            let invalid = |reason: String| Refusal::InvalidSpec {
                index: index as u32,
                reason,
            };
            let ip = spec.addr.unwrap_or(self.config.default_addr);
            let taken_here = |port: u16| {
                bound.iter().position(|(g, _)| {
                    g.transport == spec.transport
                        && g.addr.port() == port
                        && addrs_overlap(g.addr.ip(), ip)
                })
            };
            let (addr, fd) = if spec.port == 0 {
                self.bind_from_pool(spec, ip, |port| taken_here(port).is_some())?
            } else {
                let addr = SocketAddr::new(ip, spec.port);
                if let Some(other) = taken_here(spec.port) {
                    return Err(invalid(format!(
                        "{spec} overlaps socket #{} of the same lease",
                        other + 1
                    )));
                }
                if let Some(conflict) = self.table.conflict(spec.transport, addr) {
                    return Err(Refusal::InUse {
                        transport: spec.transport,
                        requested: addr,
                        held: conflict.held,
                        lease: conflict.lease.id,
                        holder: Holder::clone(&conflict.lease.holder),
                    });
                }
                let reservation = self.reservations.remove(&(spec.transport, spec.port));
                if reservation.is_some() {
                    // Watch for the lease's end, to take the port back.
                    self.next_linger_check
                        .get_or_insert(Instant::now() + LINGER_CHECK);
                }
                let fd = match reservation {
                    // The held socket itself: the port is never unbound on the way.
                    Some(held) if ip == self.config.default_addr => {
                        crate::bind::take_reservation(held, spec.transport, spec.listen)
                    }
                    // Another address: the reservation (on every address) must go first.
                    Some(held) => {
                        drop(held);
                        bind_socket(spec.transport, addr, spec.listen)
                    }
                    None => bind_socket(spec.transport, addr, spec.listen),
                }
                .map_err(|errno| bind_refusal(spec.transport, addr, errno))?;
                (addr, fd)
            };
            let listening = spec.transport == Transport::Tcp && spec.listen != Listen::BindOnly;
            bound.push((
                GrantedSocket {
                    transport: spec.transport,
                    addr,
                    listening,
                },
                fd,
            ));
        }
        Ok(bound)
    }

    fn check_spec(
        &self,
        who: &Identity,
        spec: &SocketSpec,
        by_rules: bool,
    ) -> Result<(), SpecProblem> {
        match (spec.transport, spec.listen) {
            (Transport::Udp, Listen::Backlog(_) | Listen::BindOnly) => {
                return Err(SpecProblem::Invalid(
                    "listen options apply to TCP only".into(),
                ));
            }
            (Transport::Tcp, Listen::Backlog(0)) => {
                return Err(SpecProblem::Invalid("a backlog must be at least 1".into()));
            }
            _ => {}
        }
        if let Some(IpAddr::V6(v6)) = spec.addr {
            if v6.to_ipv4_mapped().is_some() {
                return Err(SpecProblem::Invalid(
                    "IPv4-mapped IPv6 addresses are not supported; use the IPv4 address".into(),
                ));
            }
        }
        if spec.addr.is_some_and(|ip| ip.is_ipv6()) && self.config.default_addr.is_ipv4() {
            return Err(SpecProblem::Invalid("this host has no IPv6".into()));
        }
        if by_rules {
            let ip = spec.addr.unwrap_or(self.config.default_addr);
            self.config
                .policy
                .permits(who, spec, ip)
                .map_err(|reason| SpecProblem::Refused(Refusal::NotPermitted { reason }))?;
        }
        Ok(())
    }

    /// Binds the next free pool port, skipping ports that a process outside the broker holds.
    fn bind_from_pool(
        &mut self,
        spec: &SocketSpec,
        ip: IpAddr,
        taken_by_this_lease: impl Fn(u16) -> bool,
    ) -> Result<(SocketAddr, OwnedFd), Refusal> {
        let mut result = None;
        let mut failure = None;
        self.table
            .free_pool_port(spec.transport, POOL_TRIES, |port| {
                if taken_by_this_lease(port) {
                    return true;
                }
                let addr = SocketAddr::new(ip, port);
                match bind_socket(spec.transport, addr, spec.listen) {
                    Ok(fd) => {
                        result = Some((addr, fd));
                        false
                    }
                    Err(Errno::EADDRINUSE) => {
                        debug!(
                            "pool port {}:{addr} is held outside the broker; skipping it",
                            spec.transport
                        );
                        true
                    }
                    Err(errno) => {
                        failure = Some(bind_refusal(spec.transport, addr, errno));
                        false
                    }
                }
            });
        if let Some(refusal) = failure {
            return Err(refusal);
        }
        result.ok_or(Refusal::PoolExhausted {
            transport: spec.transport,
            pool: self.table.pool(),
        })
    }

    fn release(&mut self, id: ConnId, lease_id: LeaseId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let asker = Rc::clone(&conn.holder);
        let response = match self
            .may_act_on(id, lease_id)
            .map(|()| self.table.get(lease_id))
        {
            Err(failure) => {
                warn!("refused to release lease {lease_id} for {asker}: {failure}");
                Response::Failed(failure)
            }
            Ok(None) => Response::Failed(Failure::UnknownLease { id: lease_id }),
            Ok(Some(lease)) if lease.lingering => {
                // Its holder is done with it already; the port returns when the last copy
                // closes, not before.
                info!(
                    lease = lease_id.0,
                    "release by {asker}: lingers until its last copy closes"
                );
                Response::Released { id: lease_id }
            }
            Ok(Some(_)) => {
                let lease = self.table.remove(lease_id).expect("lease looked up above");
                if let Some(owner) = self.conns.get_mut(&lease.conn) {
                    owner.leases.retain(|&l| l != lease_id);
                }
                info!(lease = lease_id.0, "released by {asker}");
                Response::Released { id: lease_id }
            }
        };
        self.respond(id, &response, Vec::new());
    }

    /// Whether the peer of connection `asker` may act on lease `lease_id` (release, renew, tie,
    /// hand over, claim): the lease holder's uid, or an administrator.
    fn may_act_on(&self, asker: ConnId, lease_id: LeaseId) -> Result<(), Failure> {
        let unknown = Failure::UnknownLease { id: lease_id };
        let lease = self.table.get(lease_id).ok_or(unknown.clone())?;
        let conn = self.conns.get(&asker).ok_or(unknown)?;
        if lease.holder.uid == conn.identity.uid || self.config.policy.is_admin(&conn.identity) {
            Ok(())
        } else {
            Err(Failure::NotYourLease {
                id: lease_id,
                holder_uid: lease.holder.uid,
            })
        }
    }

    /// Ties a lease to process `pid`: it ends when the process exits, not with the connection.
    fn tie(&mut self, id: ConnId, lease_id: LeaseId, pid: i32) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let admin = self.config.policy.is_admin(&conn.identity);
        let asker = Rc::clone(&conn.holder);
        let response = match self.tie_checked(id, lease_id, pid, &asker, admin) {
            Ok((holder, old_conn)) => {
                if let Some(conn) = self.conns.get_mut(&old_conn) {
                    conn.leases.retain(|&l| l != lease_id);
                }
                info!(lease = lease_id.0, "tied to {holder} by {asker}");
                Response::Tied {
                    id: lease_id,
                    holder,
                }
            }
            Err(failure) => Response::Failed(failure),
        };
        self.respond(id, &response, Vec::new());
    }

    /// The lease's new holder and the connection it leaves.
    fn tie_checked(
        &mut self,
        id: ConnId,
        lease_id: LeaseId,
        pid: i32,
        asker: &Holder,
        admin: bool,
    ) -> Result<(Holder, ConnId), Failure> {
        self.may_act_on(id, lease_id)?;
        let not_permitted = |reason: String| Failure::NotPermitted { reason };
        let owner =
            process_uid(pid).ok_or_else(|| not_permitted(format!("there is no process {pid}")))?;
        if owner != asker.uid && !admin {
            return Err(not_permitted(format!(
                "process {pid} belongs to uid {owner}, not to uid {}",
                asker.uid
            )));
        }
        self.watch(pid, lease_id)
            .map_err(|e| not_permitted(format!("cannot watch process {pid}: {e}")))?;
        let lease = self.table.get_mut(lease_id).expect("looked up above");
        let holder = Holder {
            pid,
            name: crate::peer::process_name(pid).unwrap_or_default(),
            ..Holder::clone(&lease.holder)
        };
        lease.holder = Rc::new(holder.clone());
        lease.start_time = crate::journal::start_time(pid).unwrap_or(0);
        let old_conn = std::mem::replace(&mut lease.conn, NO_CONN);
        self.table.touch(lease_id);
        Ok((holder, old_conn))
    }

    /// Ties a lease to process `pid`, watching the process through one pidfd however many of
    /// its leases are tied to it.
    fn watch(&mut self, pid: i32, lease_id: LeaseId) -> Result<(), String> {
        if let Some((_, leases)) = self.watched.get_mut(&pid) {
            leases.push(lease_id);
        } else {
            let pidfd = rustix::process::Pid::from_raw(pid)
                .ok_or_else(|| format!("{pid} is not a process id"))
                .and_then(|p| {
                    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                        .map_err(|e| e.to_string())
                })?;
            let token = PROCESS_TOKEN | u64::from(pid as u32);
            self.epoll
                .add(&pidfd, EpollEvent::new(EpollFlags::EPOLLIN, token))
                .map_err(|e| e.to_string())?;
            self.watched.insert(pid, (pidfd, vec![lease_id]));
        }
        if let Some(lease) = self.table.get_mut(lease_id) {
            lease.tied = true;
        }
        Ok(())
    }

    /// A process leases were tied to has exited: those still tied to it end.
    fn process_exited(&mut self, pid: i32) {
        let Some((_pidfd, leases)) = self.watched.remove(&pid) else {
            return;
        };
        for lease_id in leases {
            let Some(lease) = self.table.get(lease_id) else {
                continue;
            };
            if lease.tied && lease.holder.pid == pid {
                let why = format!("{} exited", lease.holder);
                self.end_truthfully(lease_id, &why);
            }
        }
    }

    /// Ends a lease whose holder is gone (connection closed, process exited). The port goes
    /// back only once a probe bind shows that no copy of a socket survives; until then the
    /// lease lingers, held by the process found holding a copy, and is probed again.
    fn end_truthfully(&mut self, lease_id: LeaseId, why: &str) {
        let Some(lease) = self.table.get(lease_id) else {
            return;
        };
        if lease
            .sockets
            .iter()
            .all(|s| crate::bind::is_free(s.transport, s.addr))
        {
            let grace = lease
                .service
                .as_deref()
                .and_then(|name| self.config.policy.services.get(name))
                .map_or(Duration::ZERO, |service| service.sticky);
            if grace.is_zero() {
                self.table.remove(lease_id);
                info!(lease = lease_id.0, "released: {why}");
            } else {
                self.keep_for_owner(lease_id, grace, why);
            }
            return;
        }
        let inodes = crate::revoke::inodes_of(&lease.sockets);
        let survivor = crate::revoke::a_holder_of(&inodes);
        let lease = self.table.get_mut(lease_id).expect("looked up above");
        lease.lingering = true;
        lease.conn = NO_CONN;
        lease.expires = None;
        lease.tied = false;
        if let Some(pid) = survivor {
            lease.holder = Rc::new(Holder {
                pid,
                name: crate::peer::process_name(pid).unwrap_or_default(),
                ..Holder::clone(&lease.holder)
            });
        }
        warn!(
            lease = lease_id.0,
            "lingering: {why}, but {} still holds a copy of {}",
            lease.holder,
            SocketList(&lease.sockets)
        );
        self.lingering.push(lease_id);
        self.next_linger_check
            .get_or_insert(Instant::now() + LINGER_CHECK);
    }

    /// Keeps the ports of a named service whose holder ended for the same user, so that the
    /// restarted server gets them back and nobody else takes them meanwhile.
    fn keep_for_owner(&mut self, lease_id: LeaseId, grace: Duration, why: &str) {
        let Some(lease) = self.table.get_mut(lease_id) else {
            return;
        };
        let (at, unix_ms) = deadline_after(grace);
        lease.sticky = true;
        lease.conn = NO_CONN;
        lease.tied = false;
        lease.expires = Some((at, unix_ms));
        self.expiries.push(Reverse((at, lease_id)));
        info!(
            lease = lease_id.0,
            "{why}: its service {:?} keeps {} for uid {} for {grace:?}",
            lease.service.as_deref().unwrap_or_default(),
            SocketList(&lease.sockets),
            lease.holder.uid
        );
    }

    /// Binds every reserved port the broker does not hold and no lease has. While any is not
    /// held (leased, a holder's socket lives on, or a process outside the broker has it), this
    /// runs again with the lingering check, every 100 ms: at most a few thousand hash lookups.
    fn maintain_reservations(&mut self) {
        let wildcard = self.config.default_addr;
        let mut missing = 0;
        for &(transport, port) in &self.config.policy.reserved {
            let addr = SocketAddr::new(wildcard, port);
            if self.reservations.contains_key(&(transport, port)) {
                continue;
            }
            if self.table.conflict(transport, addr).is_some() {
                missing += 1; // leased: taken back once the lease has ended
                continue;
            }
            match crate::bind::reserve(transport, addr) {
                Ok(fd) => {
                    self.reservations.insert((transport, port), fd);
                }
                Err(errno) => {
                    missing += 1;
                    debug!("cannot reserve {transport}:{addr} yet: {errno}");
                }
            }
        }
        if missing > 0 {
            self.next_linger_check
                .get_or_insert(Instant::now() + LINGER_CHECK);
        }
    }

    /// Probes the lingering leases again; those whose last copy closed end.
    fn check_lingering(&mut self) {
        let table = &mut self.table;
        self.lingering.retain(|&id| {
            let Some(lease) = table.get(id) else {
                return false; // released or revoked meanwhile
            };
            if !lease
                .sockets
                .iter()
                .all(|s| crate::bind::is_free(s.transport, s.addr))
            {
                return true;
            }
            table.remove(id);
            info!(
                lease = id.0,
                "released: the last copy of its sockets closed"
            );
            false
        });
        self.next_linger_check =
            (!self.lingering.is_empty()).then(|| Instant::now() + LINGER_CHECK);
        self.maintain_reservations();
    }

    fn offer_handover(&mut self, id: ConnId, lease_id: LeaseId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let asker = Rc::clone(&conn.holder);
        let response = match self.may_act_on(id, lease_id) {
            Err(failure) => Response::Failed(failure),
            Ok(()) => {
                let token = random_token();
                self.handovers.retain(|_, offered| *offered != lease_id);
                self.handovers.insert(token, lease_id);
                info!(lease = lease_id.0, "offered for handover by {asker}");
                Response::HandoverOffered {
                    id: lease_id,
                    token,
                }
            }
        };
        self.respond(id, &response, Vec::new());
    }

    /// Hands an offered lease to this connection, with copies of the very sockets its holder
    /// has: the port is never unbound, and the lease (same id) changes hands at once.
    fn claim(&mut self, id: ConnId, token: u64) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let claimant = Rc::clone(&conn.holder);
        let offered = self.handovers.get(&token).and_then(|l| self.table.get(*l));
        let outcome = match offered.map(|lease| (lease, self.may_act_on(id, lease.id))) {
            None => Err(Failure::NotPermitted {
                reason: "no lease is offered with this token".into(),
            }),
            Some((_, Err(failure))) => Err(failure),
            Some((lease, Ok(()))) => lease
                .sockets
                .iter()
                .map(|socket| {
                    crate::revoke::inodes_of(std::slice::from_ref(socket))
                        .first()
                        .and_then(|&inode| crate::revoke::copy_of(inode))
                })
                .collect::<Option<Vec<OwnedFd>>>()
                .map(|fds| (lease.id, lease.conn, lease.sockets.clone(), fds))
                .ok_or_else(|| Failure::NotPermitted {
                    reason: "the lease's sockets cannot be found with any process".into(),
                }),
        };
        let (lease_id, old_conn, sockets, fds) = match outcome {
            Ok(found) => found,
            Err(failure) => return self.respond(id, &Response::Failed(failure), Vec::new()),
        };
        self.handovers.remove(&token);
        let lease = self.table.get_mut(lease_id).expect("looked up above");
        let from = std::mem::replace(&mut lease.holder, Rc::clone(&claimant));
        lease.conn = id;
        lease.tied = false;
        lease.start_time = self.conns.get(&id).map_or(0, |c| c.start_time);
        self.table.touch(lease_id);
        if let Some(old) = self.conns.get_mut(&old_conn) {
            old.leases.retain(|&l| l != lease_id);
        }
        if let Some(new) = self.conns.get_mut(&id) {
            new.leases.push(lease_id);
        }
        info!(lease = lease_id.0, "handed over from {from} to {claimant}");
        let granted = Response::Granted {
            id: lease_id,
            sockets,
            fds: fds.len() as u32,
        };
        self.respond(id, &granted, fds);
    }

    /// Takes leases of the asking process (same pid and uid) onto this connection.
    fn reattach(&mut self, id: ConnId, ids: &[LeaseId]) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let asker = Rc::clone(&conn.holder);
        let mut taken = Vec::new();
        for &lease_id in ids.iter().take(MAX_REATTACH) {
            let Some(lease) = self.table.get_mut(lease_id) else {
                continue;
            };
            if lease.holder.pid != asker.pid || lease.holder.uid != asker.uid {
                continue;
            }
            let old = std::mem::replace(&mut lease.conn, id);
            if let Some(old) = self.conns.get_mut(&old) {
                old.leases.retain(|&l| l != lease_id);
            }
            taken.push(lease_id);
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.leases.extend(&taken);
        }
        info!(
            "re-attached {} of {} leases to {asker}",
            taken.len(),
            ids.len()
        );
        self.respond(id, &Response::Reattached { ids: taken }, Vec::new());
    }

    /// Gives a lease a time limit from now, or removes it (`ttl_ms` 0).
    fn renew(&mut self, id: ConnId, lease_id: LeaseId, ttl_ms: u32) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let asker = Rc::clone(&conn.holder);
        let allowed = self.may_act_on(id, lease_id);
        let response = match allowed.map(|()| self.table.get_mut(lease_id)) {
            Err(failure) => Response::Failed(failure),
            Ok(None) => Response::Failed(Failure::UnknownLease { id: lease_id }),
            Ok(Some(lease)) => {
                lease.expires =
                    (ttl_ms > 0).then(|| deadline_after(Duration::from_millis(u64::from(ttl_ms))));
                if let Some((at, _)) = lease.expires {
                    self.expiries.push(Reverse((at, lease_id)));
                }
                debug!(
                    lease = lease_id.0,
                    "time limit set to {ttl_ms} ms by {asker}"
                );
                Response::Renewed {
                    id: lease_id,
                    expires_unix_ms: lease.expires.map(|(_, ms)| ms),
                }
            }
        };
        self.respond(id, &response, Vec::new());
    }

    /// Ends the leases whose time limit has passed, and tells their holders.
    fn expire_leases(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((at, lease_id))) = self.expiries.peek() {
            if at > now {
                break;
            }
            self.expiries.pop();
            let current = self
                .table
                .get(lease_id)
                .is_some_and(|l| l.expires.is_some_and(|(a, _)| a == at));
            if !current {
                continue; // renewed since, or ended
            }
            let lease = self.table.remove(lease_id).expect("looked up above");
            info!(
                lease = lease_id.0,
                "expired: {} of {}",
                SocketList(&lease.sockets),
                lease.holder
            );
            if let Some(owner) = self.conns.get_mut(&lease.conn) {
                owner.leases.retain(|&l| l != lease_id);
            }
            self.respond(lease.conn, &Response::Expired { id: lease_id }, Vec::new());
            self.settle(lease.conn);
        }
    }

    /// Takes a lease away from its holder (admins only): its sockets stop accepting, the lease
    /// ends, and the holder's connection is told.
    fn revoke(&mut self, id: ConnId, lease_id: LeaseId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let asker = Rc::clone(&conn.holder);
        let response = if !self.config.policy.is_admin(&conn.identity) {
            warn!("refused to revoke lease {lease_id} for {asker}: not an administrator");
            Response::Failed(Failure::NotPermitted {
                reason: "revoking a lease needs root or a member of an [admin] group".into(),
            })
        } else if let Some(lease) = self.table.remove(lease_id) {
            let inodes = crate::revoke::inodes_of(&lease.sockets);
            let found = crate::revoke::shut_down_everywhere(&inodes);
            warn!(
                lease = lease_id.0,
                "revoked by {asker}: {} of {}, {found} of {} sockets found and shut down",
                SocketList(&lease.sockets),
                lease.holder,
                lease.sockets.len()
            );
            if let Some(owner) = self.conns.get_mut(&lease.conn) {
                owner.leases.retain(|&l| l != lease_id);
            }
            self.respond(lease.conn, &Response::Revoked { id: lease_id }, Vec::new());
            if lease.conn != id {
                self.settle(lease.conn);
            }
            Response::Released { id: lease_id }
        } else {
            Response::Failed(Failure::UnknownLease { id: lease_id })
        };
        self.respond(id, &response, Vec::new());
    }

    fn respond(&mut self, id: ConnId, response: &Response, fds: Vec<OwnedFd>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        self.encoded.clear();
        if let Err(err) = encode_response_into(response, &mut self.encoded) {
            // Only a response beyond the frame limit can fail; the client cannot be answered.
            warn!(
                conn = id,
                "cannot encode a response for {}: {}",
                conn.holder,
                error_chain(&err)
            );
            conn.broken = true;
            return;
        }
        let queued = conn.queued_fds;
        conn.send(&self.encoded, fds);
        self.queued_fds += conn.queued_fds - queued;
    }

    fn close(&mut self, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.queued_fds -= conn.queued_fds;
        if let Some(open) = self.conns_by_uid.get_mut(&conn.identity.uid) {
            *open -= 1;
            if *open == 0 {
                self.conns_by_uid.remove(&conn.identity.uid);
            }
        }
        if self.accept_paused_until.is_some() {
            self.resume_accepting();
        }
        if let Err(err) = self.epoll.delete(conn.stream.as_fd()) {
            debug!(conn = id, "epoll delete: {err}");
        }
        let why = format!("{} closed its connection", conn.holder);
        for &lease in &conn.leases {
            self.end_truthfully(lease, &why);
        }
        debug!(conn = id, "closed the connection of {}", conn.holder);
    }
}

/// Sockets as `tcp:127.0.0.1:8080 udp:[::]:53`, formatted only if the log line is written.
struct SocketList<'a>(&'a [GrantedSocket]);

impl std::fmt::Display for SocketList<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, socket) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{socket}")?;
        }
        Ok(())
    }
}

/// The moment `after` from now: on the loop's clock, and for clients in milliseconds since the
/// Unix epoch.
fn deadline_after(after: Duration) -> (Instant, u64) {
    let unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| (d + after).as_millis() as u64);
    (Instant::now() + after, unix_ms)
}

/// A lease as the journal keeps it.
fn journal_entry(lease: &crate::table::Lease) -> Entry {
    Entry {
        id: lease.id.0,
        pid: lease.holder.pid,
        start_time: lease.start_time,
        uid: lease.holder.uid,
        gid: lease.holder.gid,
        name: lease.holder.name.clone(),
        since: lease.since,
        sockets: lease.sockets.clone(),
        service: lease.service.as_deref().map(str::to_owned),
    }
}

/// An unguessable handover token (from the kernel's random pool).
fn random_token() -> u64 {
    let mut bytes = [0u8; 8];
    if let Ok(mut urandom) = std::fs::File::open("/dev/urandom") {
        let _ = urandom.read_exact(&mut bytes);
    }
    u64::from_ne_bytes(bytes) ^ unix_now().rotate_left(32)
}

/// The real uid of a process, from `/proc/PID/status`.
fn process_uid(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

enum SpecProblem {
    Invalid(String),
    Refused(Refusal),
}

fn bind_refusal(transport: Transport, requested: SocketAddr, errno: Errno) -> Refusal {
    match errno {
        Errno::EADDRINUSE => Refusal::InUseOutside {
            transport,
            requested,
            holder: None,
        },
        errno => Refusal::BindFailed {
            transport,
            requested,
            errno: errno as i32,
            message: errno.desc().to_owned(),
        },
    }
}
