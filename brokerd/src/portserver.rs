//! The portserver: Google portpicker's protocol (`PORTSERVER_ADDRESS`), so that test farms
//! using `portpicker.pick_unused_port()` draw their ports from the broker's pool unchanged.
//!
//! A client connects (stream socket), sends `"<pid>\n"` and reads `"<port>\n"`; on a refusal
//! it reads `"0\n"`, the protocol's failure, and portpicker falls back to picking a port
//! itself (an empty answer would do the same, with a "Portserver failed" line on stderr). A
//! request that is not a pid is closed without an answer.
//! The port is drawn exactly as a `tcp:0` lease would be, for the peer's uid (rules and quotas
//! apply), and its probe socket closed: the broker holds no socket for a number. The lease is
//! tied to the process the port is for, so it ends when that process exits (and the port is
//! free). The claimed pid is used only if that process exists and belongs to the peer's uid
//! (root may name any); else the peer's own pid, from `SO_PEERCRED`.
//!
//! Served on the event loop: non-blocking sockets, a request of at most `MAX_REQUEST` bytes,
//! at most `MAX_CLIENTS` open at a time, each given `DEADLINE` to ask; one request per
//! connection.

use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::socket::{getsockopt, sockopt};
use portbroker_proto::{EndReason, Event, Holder, LeaseId};
use tracing::{debug, info, warn};

use crate::grant;
use crate::policy::Identity;
use crate::procfs;
use crate::side_conns::SideConns;
use crate::state::State;
use crate::throttle::Throttled;

/// The epoll token of the portserver's listening socket.
pub const LISTENER_TOKEN: u64 = 4;
/// Set in the epoll token of every portserver connection (client connection ids and scrape
/// tokens never reach it).
const CLIENT_BIT: u64 = 1 << 61;
/// The most portserver connections open at a time; more are closed at once (portpicker then
/// picks a port itself).
const MAX_CLIENTS: usize = 256;
/// The longest request: a pid and its newline, with room to spare.
const MAX_REQUEST: usize = 32;
/// How long a client may take to send its request.
const DEADLINE: Duration = Duration::from_secs(2);

/// Whether an epoll token is a portserver connection's.
pub fn is_client(token: u64) -> bool {
    token & CLIENT_BIT != 0 && token & (1 << 62) == 0
}

/// The pid a request names: decimal digits (portpicker's `"%d\n"`), surrounding whitespace
/// allowed. `Ok(None)`: the line is not complete yet.
pub fn parse_request(buf: &[u8]) -> Result<Option<i32>, String> {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        if buf.len() >= MAX_REQUEST {
            return Err(format!("no newline in the first {MAX_REQUEST} bytes"));
        }
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| "the request is not text")?;
    let text = line.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a pid"));
    }
    match text.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(Some(pid)),
        _ => Err(format!("{text:?} is not a pid")),
    }
}

/// The pid the port is for: the claimed one if that process exists and belongs to the
/// peer's uid (root may name any process), else the peer's own. `owner_of` gives a process's
/// uid, `None` if there is no such process. The text says why the claim was not taken.
pub fn choose_pid(
    claimed: i32,
    peer_pid: i32,
    peer_uid: u32,
    owner_of: impl Fn(i32) -> Option<u32>,
) -> (i32, Option<String>) {
    if claimed == peer_pid {
        return (peer_pid, None);
    }
    match owner_of(claimed) {
        None => (peer_pid, Some(format!("there is no process {claimed}"))),
        Some(owner) if owner == peer_uid || peer_uid == 0 => (claimed, None),
        Some(owner) => (
            peer_pid,
            Some(format!(
                "process {claimed} belongs to uid {owner}, not to uid {peer_uid}"
            )),
        ),
    }
}

/// A client's progress.
#[derive(Default)]
struct Client {
    request: Vec<u8>,
    /// Asked and decided: waits for the journal turn before its answer leaves.
    answered: bool,
}

pub struct PortServer {
    listener: UnixListener,
    address: String,
    clients: SideConns<UnixStream, Client>,
    /// This turn's decisions, answered once the journal has recorded their leases: the
    /// client's token, and the lease and port (`None`: refused).
    pending: Vec<(u64, Option<(LeaseId, u16)>)>,
    /// The lines any local process can provoke (a bad request, a full house, someone else's
    /// pid named): at most one a second, as the lease refusals are.
    provoked: Throttled,
}

/// The socket address of `address`: `@name` is abstract, anything else a path.
fn socket_addr(address: &str) -> io::Result<SocketAddr> {
    match address.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(address),
    }
}

impl PortServer {
    /// Listens on `address` (`@name` or a path; a stale socket file at the path is replaced).
    pub fn open(epoll: &Epoll, address: &str) -> Result<PortServer> {
        if !address.starts_with('@') {
            let path = std::path::Path::new(address);
            use std::os::unix::fs::FileTypeExt;
            if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(path);
            }
        }
        let addr = socket_addr(address).context("not a Unix socket address")?;
        let listener = UnixListener::bind_addr(&addr).context("cannot bind")?;
        if !address.starts_with('@') {
            // Anyone may ask, as with the abstract address; the policy decides.
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(address, std::fs::Permissions::from_mode(0o666));
        }
        listener
            .set_nonblocking(true)
            .context("cannot make the listener non-blocking")?;
        epoll
            .add(
                listener.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_TOKEN),
            )
            .context("cannot watch the portserver listener")?;
        info!("serving portpicker's portserver protocol at {address}");
        Ok(PortServer {
            listener,
            address: address.to_owned(),
            clients: SideConns::new(CLIENT_BIT, MAX_CLIENTS, DEADLINE),
            pending: Vec::new(),
            provoked: Throttled::new("portserver"),
        })
    }

    /// Closes the listener (and its socket file) and every connection.
    pub fn stop(mut self, epoll: &Epoll) {
        let _ = epoll.delete(self.listener.as_fd());
        self.clients.close_all(epoll);
        if !self.address.starts_with('@') {
            let _ = std::fs::remove_file(&self.address);
        }
    }

    /// The earliest client deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.next_deadline()
    }

    /// Accepts the waiting clients.
    pub fn accept_all(&mut self, epoll: &Epoll) {
        for _ in 0..MAX_CLIENTS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.clients.is_full() {
                        self.provoked.info(format_args!("portserver: {MAX_CLIENTS} clients open; closing a new one (it picks a port itself)"),
                        );
                        continue;
                    }
                    self.clients.add(epoll, stream, Client::default());
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!("portserver accept: {err}");
                    return;
                }
            }
        }
    }

    /// Reads client `token`'s request and, once it is in, answers and closes.
    pub fn serve(&mut self, epoll: &Epoll, state: &mut State, token: u64) {
        let Some(client) = self.clients.get_mut(token) else {
            return;
        };
        if client.state.answered {
            return;
        }
        let mut buf = [0u8; MAX_REQUEST];
        let room = MAX_REQUEST - client.state.request.len();
        let pid = loop {
            match client.stream.read(&mut buf[..room.max(1)]) {
                Ok(0) => {
                    debug!("portserver: a client closed before asking");
                    return self.clients.close(epoll, token);
                }
                Ok(n) => {
                    client.state.request.extend_from_slice(&buf[..n]);
                    match parse_request(&client.state.request) {
                        Ok(Some(pid)) => break pid,
                        Ok(None) => return,
                        Err(why) => {
                            self.provoked.info(format_args!(
                                "portserver: a bad request ({why}); closing without a port"
                            ));
                            return self.clients.close(epoll, token);
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    debug!("portserver read: {err}");
                    return self.clients.close(epoll, token);
                }
            }
        };
        client.state.answered = true;
        let granted = answer(state, &client.stream, pid, &mut self.provoked);
        self.pending.push((token, granted));
    }

    /// Sends this turn's answers, now that the journal turn is done; `journal_failed`: it could
    /// not record them, so the leases end and the clients read `0`, as a `Lease` is refused.
    pub fn send_answers(&mut self, epoll: &Epoll, state: &mut State, journal_failed: bool) {
        for (token, granted) in std::mem::take(&mut self.pending) {
            let port = match granted {
                Some((id, _)) if journal_failed => {
                    if state.table.end(id, EndReason::JournalFailed).is_some() {
                        warn!(
                            lease = id.0,
                            "not granted after all: the journal could not record it"
                        );
                        state.watchers.emit(|| Event::Released { id });
                    }
                    0
                }
                Some((_, port)) => port,
                None => 0,
            };
            if let Some(client) = self.clients.get_mut(token) {
                // The protocol's failure is `0`: portpicker then picks a port itself, quietly.
                let line = format!("{port}\n");
                // A few bytes into a fresh socket's empty buffer: one write takes them all.
                match client.stream.write(line.as_bytes()) {
                    Ok(n) if n == line.len() => {}
                    Ok(_) | Err(_) => {
                        // A lease stays tied to its process, which ends it.
                        self.provoked.info(format_args!("portserver: could not send port {port}; its lease ends with its process"
                            ),
                        );
                    }
                }
            }
            self.clients.close(epoll, token);
        }
    }

    /// Closes the clients whose deadline passed.
    pub fn expire(&mut self, epoll: &Epoll, now: Instant) {
        let closed = self.clients.expire(epoll, now);
        if closed > 0 {
            debug!("portserver: closed {closed} clients that sent no request within {DEADLINE:?}");
        }
    }
}

/// The port for a request naming `claimed`, leased to the process it is for; `None` (logged
/// why) when refused: the client reads `0` and portpicker picks a port itself.
fn answer(
    state: &mut State,
    stream: &UnixStream,
    claimed: i32,
    provoked: &mut Throttled,
) -> Option<(LeaseId, u16)> {
    let creds = match getsockopt(stream, sockopt::PeerCredentials) {
        Ok(creds) => creds,
        Err(err) => {
            provoked.info(format_args!(
                "portserver: cannot read the peer's credentials: {err}; no port"
            ));
            return None;
        }
    };
    let (peer_pid, uid, gid) = (creds.pid(), creds.uid(), creds.gid());
    // The same budget as the broker's socket: the portserver is no way around it.
    let rate = state.policy.limits.requests_per_sec_per_uid;
    if let Some(failure) = state.budgets.take(uid, rate, Instant::now()) {
        provoked.info(format_args!(
            "portserver: no port for process {peer_pid}: {failure}"
        ));
        return None;
    }
    let (pid, why) = choose_pid(claimed, peer_pid, uid, procfs::process_uid);
    if let Some(why) = why {
        provoked.info(format_args!("portserver: process {peer_pid} asked for process {claimed}, but {why}: the port is for {peer_pid}"),
        );
    }
    let holder = Rc::new(Holder {
        pid,
        uid,
        gid,
        name: procfs::process_name(pid).unwrap_or_default(),
    });
    // The policy decides by the peer: its uid, and its groups.
    let identity = Identity {
        uid,
        groups: procfs::groups(peer_pid, uid, gid),
    };
    if let Err(err) = state.watches.watch(pid) {
        provoked.info(format_args!(
            "portserver: cannot watch process {pid}: {err}; no port for {holder}"
        ));
        return None;
    }
    let start_time = procfs::start_time(pid).unwrap_or(0);
    let mut binds = 0;
    let granted = grant::grant_number(state, holder, &identity, start_time, &mut binds);
    // The binds beyond the first are paid for after the fact, as for a lease.
    state
        .budgets
        .charge(uid, rate, binds.saturating_sub(1), Instant::now());
    match granted {
        Ok(granted) => Some(granted),
        Err(refusal) => {
            // Logged (rate-limited) with the refusal.
            debug!("portserver: no port for process {pid}: {refusal}; portpicker picks one itself");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_a_pid_and_a_newline() {
        assert_eq!(parse_request(b"1234\n"), Ok(Some(1234)));
        assert_eq!(parse_request(b" 42 \r\n"), Ok(Some(42)));
        assert_eq!(parse_request(b"12"), Ok(None));
        assert_eq!(parse_request(b""), Ok(None));
        for bad in [
            &b"\n"[..],
            b"-1\n",
            b"0\n",
            b"12a\n",
            b"+5\n",
            b"99999999999\n",
            b"\xff\n",
        ] {
            assert!(parse_request(bad).is_err(), "{bad:?}");
        }
        assert!(parse_request(&[b'1'; MAX_REQUEST]).is_err());
    }

    #[test]
    fn the_claimed_pid_counts_only_if_it_is_the_peers_users() {
        let owners = |pid: i32| match pid {
            100 => Some(1000),
            200 => Some(2000),
            300 => Some(0),
            _ => None,
        };
        // Its own pid, or a process of its own user.
        assert_eq!(choose_pid(100, 100, 1000, owners), (100, None));
        assert_eq!(choose_pid(100, 50, 1000, owners), (100, None));
        // Another user's process, or none: the peer's own pid.
        let (pid, why) = choose_pid(200, 50, 1000, owners);
        assert_eq!(pid, 50);
        assert!(why.unwrap().contains("uid 2000"));
        let (pid, why) = choose_pid(999, 50, 1000, owners);
        assert_eq!(pid, 50);
        assert!(why.unwrap().contains("no process 999"));
        assert_eq!(choose_pid(300, 50, 1000, owners).0, 50);
        // Root may name any process that exists.
        assert_eq!(choose_pid(200, 1, 0, owners), (200, None));
        assert_eq!(choose_pid(999, 1, 0, owners).0, 1);
    }

    #[test]
    fn tokens_do_not_collide() {
        assert!(is_client(CLIENT_BIT + 5));
        assert!(!is_client(LISTENER_TOKEN));
        assert!(!is_client(16));
        assert!(!crate::metrics_http::is_scrape(CLIENT_BIT + 5));
    }
}
