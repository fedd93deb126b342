//! The client connections: accepting and admitting them, reading and framing their requests,
//! handing each to the dispatcher and sending every reply, from one place, with backpressure;
//! the Hello and idle deadlines, and closing (which ends the leases a connection keeps).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use portbroker_proto::{
    decode_request, encode_response_into, peek_hello_protocol, Failure, Request, Response,
    PROTOCOL_VERSION,
};
use rustc_hash::FxHashMap as HashMap;
use tracing::{debug, info, warn};

use crate::conn::{Conn, IDLE_BUFFER};
use crate::handlers::{dispatch, Context, Reply};
use crate::lease::ConnId;
use crate::peer::Peer;
use crate::policy::Policy;
use crate::socket_file::SocketFile;
use crate::state::{Notice, State};
use crate::throttle::{Throttle, Throttled};

/// The epoll token of the listening socket; connection ids start above the loop's tokens.
pub const LISTENER_TOKEN: u64 = 0;
const FIRST_CONN_ID: ConnId = 16;

const READ_CHUNK: usize = 16 * 1024;
/// Frames served from one connection per wakeup, so a pipelining client cannot starve others.
/// A request counts as the work it did (`Reply::work`): one that made 64 binds uses up the
/// whole share.
const FRAMES_PER_WAKEUP: usize = 64;
/// Accepts per wakeup, for the same reason.
const ACCEPTS_PER_WAKEUP: usize = 256;
/// How often connections are checked against the idle timeout.
const IDLE_SWEEP: Duration = Duration::from_secs(1);
/// A watcher's events move from its bounded queue (see `watchers`) to its connection's output
/// only while less than this is unsent there.
const WATCH_OUTPUT: usize = 64 * 1024;
/// How long the listener rests after accept() ran out of fds.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// The whole causal chain of an error, for a client's `Malformed` answer.
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

/// An answer held until the turn's journal commit.
struct Answer {
    conn: ConnId,
    response: Response,
    fds: Vec<OwnedFd>,
    /// The lease this answer grants, if it grants a new one.
    new_lease: Option<portbroker_proto::LeaseId>,
    /// For the answer to a `Lease`, when its frame was read: the lease latency ends when the
    /// answer is queued.
    lease_read_at: Option<Instant>,
}

pub struct Connections {
    listener: SocketFile,
    conns: HashMap<ConnId, Conn>,
    next_conn_id: ConnId,
    max_connections: usize,
    /// Granted sockets the broker may hold for clients that do not read them, in all.
    max_queued_fds: usize,
    /// Granted sockets waiting in connections' output queues, over all connections.
    queued_fds: usize,
    /// In accept order, hence in deadline order.
    hello_deadlines: VecDeque<(Instant, ConnId)>,
    /// Connections with complete frames left over from their quota of a turn.
    ready: VecDeque<ConnId>,
    /// Connections served this turn, settled (answers sent) after the journal commit.
    unsettled: Vec<ConnId>,
    /// The turn's answers, in order, until the journal commit.
    held: Vec<Answer>,
    /// Open connections per uid, for `connections_per_uid`.
    per_uid: HashMap<u32, u64>,
    next_idle_sweep: Instant,
    /// Set while accept() fails for lack of fds: the listener is unwatched until then.
    accept_paused_until: Option<Instant>,
    read_chunk: Box<[u8]>,
    encoded: Vec<u8>,
    full_warning: Throttle,
    accept_warning: Throttle,
    /// What a client's connection did wrong (over its uid's limit, no Hello, a broken frame,
    /// closed mid-frame): any local process can do it at every connect.
    troubles: Throttled,
}

impl Connections {
    pub fn new(listener: SocketFile, max_connections: usize, max_queued_fds: usize) -> Self {
        Connections {
            listener,
            conns: HashMap::default(),
            next_conn_id: FIRST_CONN_ID,
            max_connections,
            max_queued_fds,
            queued_fds: 0,
            hello_deadlines: VecDeque::new(),
            ready: VecDeque::new(),
            unsettled: Vec::new(),
            held: Vec::new(),
            per_uid: HashMap::default(),
            next_idle_sweep: Instant::now() + IDLE_SWEEP,
            accept_paused_until: None,
            read_chunk: vec![0; READ_CHUNK].into_boxed_slice(),
            encoded: Vec::with_capacity(256),
            full_warning: Throttle::default(),
            accept_warning: Throttle::default(),
            troubles: Throttled::new("connection"),
        }
    }

    pub fn listener(&self) -> &std::os::unix::net::UnixListener {
        self.listener.listener()
    }

    pub fn socket_path(&self) -> &Path {
        self.listener.path()
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// Whether connections have requests left over from their share of the last turn.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The earliest moment one of the connections' timers is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let hello = self.hello_deadlines.front().map(|&(deadline, _)| deadline);
        [hello, self.accept_paused_until, Some(self.next_idle_sweep)]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn accept_all(&mut self, epoll: &Epoll, policy: &Policy) {
        for _ in 0..ACCEPTS_PER_WAKEUP {
            let stream = match self.listener.listener().accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    // Out of fds: the backlog keeps new clients waiting. Stop watching the
                    // listener (it stays readable and would spin the loop) until a connection
                    // closes or a moment has passed.
                    if self.accept_warning.due() {
                        warn!("accept failed: {err}; new connections wait until fds free up");
                    }
                    self.pause_accepting(epoll);
                    return;
                }
                Err(err) => {
                    warn!("accept failed: {err}");
                    return;
                }
            };
            if let Err(err) = self.admit(epoll, policy, stream) {
                warn!("dropping a new connection: {err:#}");
            }
        }
    }

    fn pause_accepting(&mut self, epoll: &Epoll) {
        self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
        let mut none = EpollEvent::new(EpollFlags::empty(), LISTENER_TOKEN);
        if let Err(err) = epoll.modify(self.listener.listener(), &mut none) {
            warn!("cannot pause the listener: {err}");
        }
    }

    fn resume_accepting(&mut self, epoll: &Epoll) {
        self.accept_paused_until = None;
        let mut readable = EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_TOKEN);
        if let Err(err) = epoll.modify(self.listener.listener(), &mut readable) {
            warn!("cannot resume the listener: {err}");
        }
    }

    fn admit(&mut self, epoll: &Epoll, policy: &Policy, stream: UnixStream) -> Result<()> {
        if self.conns.len() >= self.max_connections {
            if self.full_warning.due() {
                warn!(
                    "refusing connections: {} are open, the maximum",
                    self.max_connections
                );
            }
            return Ok(());
        }
        stream
            .set_nonblocking(true)
            .context("cannot make the connection non-blocking")?;
        let id = self.next_conn_id;
        let peer = Peer::of(id, &stream).context("cannot read the peer's credentials")?;
        let uid = peer.identity.uid;
        let limit = policy.limits.connections_per_uid;
        let open = self.per_uid.get(&uid).copied().unwrap_or(0);
        if uid != 0 && open >= limit {
            self.troubles.warn(format_args!(
                "refusing a connection of {}: it has {open} open, the limit (connections_per_uid)",
                peer.holder
            ));
            let refusal = Response::Failed(Failure::NotPermitted {
                reason: format!(
                    "uid {uid} has {open} connections open, the limit (connections_per_uid)"
                ),
            });
            // A courtesy: the client may not be reading yet, and nothing waits for this write.
            if let Ok(frame) = portbroker_proto::encode_response(&refusal) {
                let _ = (&stream).write(&frame);
            }
            return Ok(());
        }
        let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        epoll
            .add(&stream, EpollEvent::new(interest, id))
            .context("cannot watch the connection")?;
        self.next_conn_id += 1;
        *self.per_uid.entry(uid).or_default() += 1;
        debug!(conn = id, "connection from {}", peer.holder);
        let hello_timeout = Duration::from_secs(policy.limits.hello_timeout_secs);
        self.hello_deadlines
            .push_back((Instant::now() + hello_timeout, id));
        self.conns.insert(id, Conn::new(stream, peer, interest));
        Ok(())
    }

    /// Closes the connections that did not say Hello in time.
    pub fn expire_hellos(&mut self, epoll: &Epoll, state: &mut State, now: Instant) {
        let timeout = Duration::from_secs(state.policy.limits.hello_timeout_secs);
        while let Some(&(deadline, id)) = self.hello_deadlines.front() {
            if deadline > now {
                break;
            }
            self.hello_deadlines.pop_front();
            if let Some(conn) = self.conns.get(&id).filter(|c| !c.greeted) {
                self.troubles.warn(format_args!(
                    "closing the connection of {}: no Hello within {timeout:?} (connection {id})",
                    conn.peer.holder
                ));
                self.close(epoll, state, id);
            }
        }
    }

    /// Serves a connection epoll reported: sends what waits, reads and serves requests.
    pub fn serve(&mut self, state: &mut State, id: ConnId, events: EpollFlags) {
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
        if events.intersects(readable) || !conn.frames.is_empty() {
            self.read_requests(state, id);
        }
        self.unsettled.push(id);
    }

    /// Moves the events waiting for watchers to their connections' output, as far as each
    /// connection has room ([`WATCH_OUTPUT`]); the rest waits in the watcher's bounded queue
    /// until the connection drains. Call only after the turn's answers are released (after the
    /// journal commit), then `settle_served`.
    pub fn pump_watchers(&mut self, state: &mut State) {
        let pending: Vec<ConnId> = state.watchers.pending().collect();
        for id in pending {
            let Some(conn) = self.conns.get_mut(&id) else {
                state.watchers.remove(id);
                continue;
            };
            if conn.broken || conn.closing {
                continue;
            }
            let mut sent = false;
            while self.conns[&id].unsent() < WATCH_OUTPUT {
                let Some(frame) = state.watchers.next_for(id) else {
                    break;
                };
                self.send(id, &frame, Vec::new());
                sent = true;
            }
            // A connection that has no room is flushed when epoll says it can take more.
            if sent {
                self.unsettled.push(id);
            }
        }
    }

    /// Serves the connections whose requests were left over from their share of the turn.
    pub fn serve_ready(&mut self, state: &mut State) {
        for id in std::mem::take(&mut self.ready) {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.in_ready_queue = false;
                self.read_requests(state, id);
                self.unsettled.push(id);
            }
        }
    }

    /// Sends the answers of every connection served since the last call (after the journal
    /// commit), and closes or re-arms each.
    pub fn settle_served(&mut self, epoll: &Epoll, state: &mut State) {
        for id in std::mem::take(&mut self.unsettled) {
            self.settle(epoll, state, id);
        }
    }

    /// Closes the connection if it is done, or brings its epoll interest up to date.
    fn settle(&mut self, epoll: &Epoll, state: &mut State, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        if !conn.broken && conn.has_output() {
            let queued = conn.queued_fds;
            conn.flush();
            self.queued_fds -= queued - conn.queued_fds;
            if conn.queued_fds > 0 && self.queued_fds > self.max_queued_fds {
                // Granted sockets pile up in the broker for clients that do not read them:
                // drop this one (and its leases) rather than run out of fds for everyone.
                warn!(
                    conn = id,
                    "closing the connection of {}: it does not read its granted sockets and {} are waiting in all",
                    conn.peer.holder,
                    self.queued_fds
                );
                conn.broken = true;
            }
        }
        if conn.broken || (conn.closing && !conn.has_output()) {
            self.close(epoll, state, id);
            return;
        }
        if conn.wants_requests() && !conn.frames.is_empty() && !conn.in_ready_queue {
            // Requests held back until this flush: serve them without waiting for new input.
            conn.in_ready_queue = true;
            self.ready.push_back(id);
        }
        let wanted = conn.wanted_interest();
        if wanted != conn.interest {
            let mut event = EpollEvent::new(wanted, id);
            match epoll.modify(&conn.stream, &mut event) {
                Ok(()) => conn.interest = wanted,
                Err(err) => {
                    warn!(conn = id, "cannot update epoll interest: {err}");
                    self.close(epoll, state, id);
                }
            }
        }
    }

    fn read_requests(&mut self, state: &mut State, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        // Taken out while its frames are served, which needs `self`; put back below.
        let mut frames = std::mem::replace(
            &mut conn.frames,
            portbroker_proto::FrameSplitter::new(portbroker_proto::MAX_REQUEST_FRAME),
        );
        let mut served = 0;
        let mut drained = false;
        'reading: loop {
            // Serve every complete frame in the buffer.
            loop {
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                if !conn.wants_requests() {
                    break 'reading;
                }
                if served >= FRAMES_PER_WAKEUP {
                    // Fair share used: come back after the other ready connections.
                    if !conn.in_ready_queue {
                        conn.in_ready_queue = true;
                        self.ready.push_back(id);
                    }
                    break 'reading;
                }
                match frames.next_payload() {
                    Ok(Some(payload)) => {
                        served += self.handle_frame(state, id, payload);
                    }
                    Ok(None) => break,
                    Err(err) => {
                        let failure = Failure::Malformed {
                            detail: error_chain(&err),
                        };
                        self.deliver(id, Reply::closing(failure));
                        break 'reading;
                    }
                }
            }
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
                    if !frames.is_empty() {
                        self.troubles.warn(format_args!(
                            "{} closed the connection in the middle of a frame (connection {id})",
                            conn.peer.holder
                        ));
                    }
                    // Every whole request before the end is served by now: send the answers
                    // (a client may close only its sending side), then close.
                    conn.closing = true;
                    break;
                }
                Ok(n) => {
                    frames.push(&self.read_chunk[..n]);
                    drained = n < self.read_chunk.len();
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!(conn = id, "read from {} failed: {err}", conn.peer.holder);
                    conn.broken = true;
                    break;
                }
            }
        }
        frames.shrink_when_idle(IDLE_BUFFER);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.frames = frames;
        }
    }

    /// Decodes one request, checks it may be served here and now, and serves it; returns the
    /// work it did, in requests (at least 1).
    fn handle_frame(&mut self, state: &mut State, id: ConnId, payload: &[u8]) -> usize {
        let connections = self.conns.len();
        let Some(conn) = self.conns.get_mut(&id) else {
            return 1;
        };
        let read_at = Instant::now();
        let mut is_lease = false;
        let reply = match decode_request(payload) {
            Err(err) => Reply::closing(match peek_hello_protocol(payload) {
                Some(client) if !conn.greeted && client != PROTOCOL_VERSION => {
                    Failure::VersionMismatch {
                        broker: PROTOCOL_VERSION,
                        client,
                    }
                }
                _ => Failure::Malformed {
                    detail: error_chain(&err),
                },
            }),
            Ok(request) if !conn.greeted && !matches!(request, Request::Hello { .. }) => {
                Reply::closing(Failure::HelloRequired)
            }
            Ok(request) => {
                // The clock was just read: one read a request is enough.
                let now = read_at;
                conn.last_request = now;
                let rate = state.policy.limits.requests_per_sec_per_uid;
                let uid = conn.peer.identity.uid;
                match state.budgets.take(uid, rate, now) {
                    Some(failure) => Reply::failed(failure),
                    None => {
                        let context = Context {
                            peer: &conn.peer,
                            greeted: conn.greeted,
                            connections,
                        };
                        is_lease = matches!(request, Request::Lease { .. });
                        let reply = dispatch(state, &context, request);
                        // The binds beyond the first are paid for after the fact, from the
                        // same budget: it may go below zero, refusing what comes next.
                        state
                            .budgets
                            .charge(uid, rate, reply.work.saturating_sub(1), now);
                        reply
                    }
                }
            }
        };
        if matches!(reply.response, Response::Hello { .. }) {
            conn.greeted = true;
        }
        let work = reply.work.max(1) as usize;
        self.deliver_timed(id, reply, is_lease.then_some(read_at));
        work
    }

    /// Takes a reply: its notices for their connections, then its answer (with its sockets)
    /// for connection `id`, in order. Nothing leaves before `release_answers`, after the
    /// turn's journal commit. Every answer the broker gives goes through here.
    fn deliver(&mut self, id: ConnId, reply: Reply) {
        self.deliver_timed(id, reply, None);
    }

    /// `deliver`, for the answer to a `Lease` whose frame was read at `lease_read_at`.
    fn deliver_timed(&mut self, id: ConnId, reply: Reply, lease_read_at: Option<Instant>) {
        self.deliver_notices(reply.notices);
        if reply.then_close {
            if let (Some(conn), Response::Failed(failure)) =
                (self.conns.get_mut(&id), &reply.response)
            {
                self.troubles.warn(format_args!(
                    "closing the connection of {}: {failure} (connection {id})",
                    conn.peer.holder
                ));
                conn.closing = true;
            }
        }
        self.hold(Answer {
            conn: id,
            response: reply.response,
            fds: reply.fds,
            new_lease: reply.new_lease,
            lease_read_at,
        });
    }

    /// Takes notices for their connections; they leave with the turn's answers.
    pub fn deliver_notices(&mut self, notices: Vec<Notice>) {
        for notice in notices {
            self.hold(Answer {
                conn: notice.conn,
                response: notice.response,
                fds: Vec::new(),
                new_lease: None,
                lease_read_at: None,
            });
            self.unsettled.push(notice.conn);
        }
    }

    /// Holds an answer until the journal commit. Its sockets count as queued at once, so the
    /// backpressure that keeps a non-reading client to one lease's worth holds meanwhile.
    fn hold(&mut self, answer: Answer) {
        if let Some(conn) = self.conns.get_mut(&answer.conn) {
            conn.queued_fds += answer.fds.len();
            self.queued_fds += answer.fds.len();
        }
        self.held.push(answer);
    }

    /// Queues the held answers on their connections, in order. `journal_error`: the turn's
    /// records could not be written, so no lease granted in it may stand (a restart would
    /// forget it): each is ended, its sockets closed, and its client told why instead.
    pub fn release_answers(&mut self, state: &mut State, journal_error: Option<&str>) {
        // Drained from a Vec that goes back afterwards, so that its capacity serves every turn
        // instead of being allocated anew.
        let mut held = std::mem::take(&mut self.held);
        for mut answer in held.drain(..) {
            if let Some(conn) = self.conns.get_mut(&answer.conn) {
                conn.queued_fds -= answer.fds.len();
                self.queued_fds -= answer.fds.len();
            }
            if let (Some(error), Some(lease)) = (journal_error, answer.new_lease) {
                state
                    .table
                    .end(lease, portbroker_proto::EndReason::JournalFailed);
                state
                    .watchers
                    .emit(|| portbroker_proto::Event::Released { id: lease });
                warn!(
                    lease = lease.0,
                    "not granted after all: the journal could not record it ({error})"
                );
                answer.fds.clear();
                answer.response = Response::Failed(Failure::JournalUnavailable {
                    error: error.to_owned(),
                });
            }
            match &answer.response {
                Response::Granted { .. } if answer.new_lease.is_some() => {
                    state.counters.grants += 1;
                }
                Response::Refused(refusal) => state.counters.refused(refusal),
                _ => {}
            }
            self.send(answer.conn, &answer.response, answer.fds);
            if let Some(read_at) = answer.lease_read_at {
                let micros = read_at.elapsed().as_micros();
                state
                    .counters
                    .lease_latency
                    .observe(u64::try_from(micros).unwrap_or(u64::MAX));
            }
        }
        self.held = held;
    }

    fn send(&mut self, id: ConnId, response: &Response, fds: Vec<OwnedFd>) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        self.encoded.clear();
        if let Err(err) = encode_response_into(response, &mut self.encoded) {
            // Only a response beyond the frame limit can fail; the client cannot be answered.
            warn!(
                conn = id,
                "cannot encode a {} response for {}: {}",
                response.name(),
                conn.peer.holder,
                error_chain(&err)
            );
            conn.broken = true;
            return;
        }
        let queued = conn.queued_fds;
        conn.send(&self.encoded, fds);
        self.queued_fds += conn.queued_fds - queued;
    }

    /// Closes connection `id`; the leases it kept end (truthfully: see
    /// `State::end_truthfully`).
    pub fn close(&mut self, epoll: &Epoll, state: &mut State, id: ConnId) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        self.queued_fds -= conn.queued_fds;
        let uid = conn.peer.identity.uid;
        if let Some(open) = self.per_uid.get_mut(&uid) {
            *open -= 1;
            if *open == 0 {
                self.per_uid.remove(&uid);
            }
        }
        if self.accept_paused_until.is_some() {
            self.resume_accepting(epoll);
        }
        if let Err(err) = epoll.delete(conn.stream.as_fd()) {
            debug!(conn = id, "epoll delete: {err}");
        }
        state.watchers.remove(id);
        let why = format!("{} closed its connection", conn.peer.holder);
        for lease in state.table.kept_by_connection(id).to_vec() {
            state.end_truthfully(lease, portbroker_proto::EndReason::ConnectionClosed, &why);
        }
        debug!(conn = id, "closed the connection of {}", conn.peer.holder);
    }

    /// The timers that are due: idle connections are closed, a paused listener resumes.
    pub fn run_timers(&mut self, epoll: &Epoll, state: &mut State, now: Instant) {
        if self.next_idle_sweep <= now {
            self.close_idle(epoll, state, now);
        }
        if self.accept_paused_until.is_some_and(|t| t <= now) {
            self.resume_accepting(epoll);
        }
    }

    /// Closes connections that hold no lease and sent nothing for `idle_timeout_secs` (0: never).
    fn close_idle(&mut self, epoll: &Epoll, state: &mut State, now: Instant) {
        self.next_idle_sweep = now + IDLE_SWEEP;
        let idle = Duration::from_secs(state.policy.limits.idle_timeout_secs);
        if idle.is_zero() {
            return;
        }
        let stale: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(id, c)| {
                c.greeted
                    && !state.watchers.is_watching(**id)
                    && state.table.kept_by_connection(**id).is_empty()
                    && now - c.last_request >= idle
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(conn) = self.conns.get(&id) {
                info!(
                    conn = id,
                    "closing the idle connection of {}: no lease and no request for {idle:?}",
                    conn.peer.holder
                );
            }
            self.close(epoll, state, id);
        }
    }
}
