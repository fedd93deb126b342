//! The Prometheus endpoint (`[metrics] listen`): `GET /metrics` over HTTP/1.x on a loopback
//! address, served by the event loop like everything else.
//!
//! Its listening socket is a lease of the daemon's own in the table, so `list` shows it and
//! nobody else can lease the port. Sockets are non-blocking, a request head may be at most
//! `MAX_REQUEST` bytes, at most `MAX_SCRAPES` scrapes are open at a time, and each has
//! `SCRAPE_DEADLINE` to send its request and read the answer, after which it is closed. One
//! request per connection; the answer says `Connection: close`.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use portbroker_proto::{EndReason, GrantedSocket, Holder, LeaseId, Listen, Transport};
use tracing::{debug, info, warn};

use crate::bind;
use crate::lease::{unix_now, Keeper};
use crate::procfs;
use crate::side_conns::{SideConn, SideConns};
use crate::state::State;
use crate::table::NewLease;

/// The epoll token of the endpoint's listening socket.
pub const LISTENER_TOKEN: u64 = 3;
/// Set in the epoll token of every scrape connection (client connection ids never reach it).
const SCRAPE_BIT: u64 = 1 << 62;
/// The most scrapes open at a time; more are closed at once.
const MAX_SCRAPES: usize = 8;
/// The longest request head read.
const MAX_REQUEST: usize = 4096;
/// How long a scrape may take, from accept to the last byte of the answer.
const SCRAPE_DEADLINE: Duration = Duration::from_secs(5);

/// Whether an epoll token is a scrape connection's.
pub fn is_scrape(token: u64) -> bool {
    token & SCRAPE_BIT != 0
}

/// A scrape's progress.
#[derive(Default)]
struct Scrape {
    request: Vec<u8>,
    /// The answer, once the request head is in; then `written` of it is sent.
    answer: Option<Vec<u8>>,
    written: usize,
}

type ScrapeConn = SideConn<TcpStream, Scrape>;

pub struct Endpoint {
    listener: Option<TcpListener>,
    lease: LeaseId,
    scrapes: SideConns<TcpStream, Scrape>,
}

/// The lease of the daemon's own listening socket: its holder is the daemon process.
fn own_lease(state: &mut State, addr: SocketAddr, cookie: u64) -> LeaseId {
    let pid = std::process::id() as i32;
    state.table.grant(NewLease {
        keeper: Keeper::Process(pid),
        holder: Rc::new(Holder {
            pid,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
            name: procfs::process_name(pid).unwrap_or_else(|| "portbrokerd".to_owned()),
        }),
        start_time: procfs::start_time(pid).unwrap_or(0),
        since: unix_now(),
        sockets: vec![GrantedSocket {
            transport: Transport::Tcp,
            addr,
            listening: true,
            // As `bind_socket` binds it: only a specific IPv6 address is IPv6-only.
            v6_only: addr.is_ipv6() && !addr.ip().is_unspecified(),
        }],
        cookies: vec![cookie],
        service: None,
    })
}

impl Endpoint {
    /// Leases `addr` to the daemon itself and listens on it.
    pub fn open(epoll: &Epoll, state: &mut State, addr: SocketAddr) -> Result<Endpoint> {
        if let Some(conflict) = state.table.conflict(Transport::Tcp, addr) {
            bail!(
                "lease {} of {} holds tcp:{}",
                conflict.lease.id,
                conflict.lease.holder,
                conflict.held
            );
        }
        let fd = bind::bind_socket(Transport::Tcp, addr, false, Listen::Default)
            .with_context(|| format!("cannot bind tcp:{addr}"))?;
        let cookie = bind::cookie(&fd).context("cannot read the socket's cookie")?;
        let listener = TcpListener::from(fd);
        listener
            .set_nonblocking(true)
            .context("cannot make the listener non-blocking")?;
        epoll
            .add(
                listener.as_fd(),
                EpollEvent::new(EpollFlags::EPOLLIN, LISTENER_TOKEN),
            )
            .context("cannot watch the metrics listener")?;
        let lease = own_lease(state, addr, cookie);
        state.metrics_listen = Some(addr);
        state.metrics_lease = Some(lease);
        info!(lease = lease.0, "serving metrics on http://{addr}/metrics");
        Ok(Endpoint {
            listener: Some(listener),
            lease,
            scrapes: SideConns::new(SCRAPE_BIT, MAX_SCRAPES, SCRAPE_DEADLINE),
        })
    }

    /// Closes the listener and every scrape.
    pub fn stop(mut self, epoll: &Epoll) {
        if let Some(listener) = self.listener.take() {
            let _ = epoll.delete(listener.as_fd());
        }
        self.scrapes.close_all(epoll);
    }

    /// The earliest scrape deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.scrapes.next_deadline()
    }

    /// Accepts the waiting scrapes.
    pub fn accept_all(&mut self, epoll: &Epoll, state: &mut State) {
        for _ in 0..MAX_SCRAPES * 2 {
            let Some(listener) = &self.listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, _)) => {
                    if self.scrapes.is_full() {
                        debug!("too many scrapes open: closing a new one");
                        continue;
                    }
                    self.scrapes.add(epoll, stream, Scrape::default());
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err)
                    if matches!(
                        err.raw_os_error(),
                        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                            | Some(libc::ECONNABORTED)
                    ) =>
                {
                    debug!("metrics accept: {err}");
                    return;
                }
                Err(err) => {
                    // Its lease was revoked (the socket shut down) or worse: stop serving
                    // rather than spin on a listener that will never accept again.
                    warn!("the metrics endpoint stops: accept failed: {err}");
                    if let Some(listener) = self.listener.take() {
                        let _ = epoll.delete(listener.as_fd());
                    }
                    if state.table.get(self.lease).is_some() {
                        state.table.end(self.lease, EndReason::MetricsStopped);
                    }
                    state.metrics_listen = None;
                    state.metrics_lease = None;
                    return;
                }
            }
        }
    }

    /// Serves scrape `token`: reads its request and, once the head is in, writes the answer,
    /// `render` giving the body of `GET /metrics`.
    pub fn serve(
        &mut self,
        epoll: &Epoll,
        token: u64,
        events: EpollFlags,
        render: impl FnOnce() -> String,
    ) {
        let Some(scrape) = self.scrapes.get_mut(token) else {
            return;
        };
        let done = if scrape.state.answer.is_none() {
            match read_head(scrape) {
                Ok(true) => {
                    scrape.state.answer = Some(answer(&scrape.state.request, render));
                    let event = EpollEvent::new(EpollFlags::EPOLLOUT, token);
                    let mut event = event;
                    let _ = epoll.modify(scrape.stream.as_fd(), &mut event);
                    write_answer(scrape)
                }
                Ok(false) => events.contains(EpollFlags::EPOLLHUP),
                Err(()) => true,
            }
        } else {
            write_answer(scrape)
        };
        if done {
            self.scrapes.close(epoll, token);
        }
    }

    /// Closes the scrapes past their deadline.
    pub fn expire(&mut self, epoll: &Epoll, now: Instant) {
        let closed = self.scrapes.expire(epoll, now);
        if closed > 0 {
            debug!("closed {closed} metrics scrapes past their deadline");
        }
    }
}

/// Reads what the socket has; `Ok(true)` once the request head is complete, `Err` when the
/// scrape is to be closed (peer closed, error, head too long).
fn read_head(scrape: &mut ScrapeConn) -> Result<bool, ()> {
    let mut chunk = [0u8; 1024];
    let request = &mut scrape.state.request;
    loop {
        match scrape.stream.read(&mut chunk) {
            Ok(0) => return Err(()),
            Ok(n) => {
                request.extend_from_slice(&chunk[..n]);
                if head_complete(request) {
                    return Ok(true);
                }
                if request.len() > MAX_REQUEST {
                    return Err(());
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

fn head_complete(request: &[u8]) -> bool {
    request.windows(4).any(|w| w == b"\r\n\r\n") || request.windows(2).any(|w| w == b"\n\n")
}

/// Writes what the socket takes; true when the answer is out (or cannot be sent).
fn write_answer(scrape: &mut ScrapeConn) -> bool {
    let Scrape {
        answer: Some(answer),
        written,
        ..
    } = &mut scrape.state
    else {
        return false;
    };
    while *written < answer.len() {
        match scrape.stream.write(&answer[*written..]) {
            Ok(0) => return true,
            Ok(n) => *written += n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return false,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
    let _ = scrape.stream.shutdown(std::net::Shutdown::Write);
    true
}

/// The answer to a request head: the metrics for `GET /metrics`, 404 for anything else.
fn answer(request: &[u8], render: impl FnOnce() -> String) -> Vec<u8> {
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_ascii_whitespace();
    let (method, target, version) = (words.next(), words.next(), words.next());
    let path = target.map(|t| t.split('?').next().unwrap_or_default());
    let ok = method == Some("GET")
        && path == Some("/metrics")
        && version.is_some_and(|v| v.starts_with("HTTP/1."));
    let (status, content_type, body) = if ok {
        (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            render(),
        )
    } else {
        (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found: the metrics are at GET /metrics\n".to_owned(),
        )
    };
    let mut out = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(request: &str) -> String {
        String::from_utf8(answer(request.as_bytes(), || "figures\n".to_owned())).unwrap()
    }

    #[test]
    fn only_get_metrics_is_served() {
        let ok = text("GET /metrics HTTP/1.0\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 8\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nfigures\n"), "{ok}");
        assert!(text("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").contains(" 200 OK"));
        for other in [
            "GET / HTTP/1.0\r\n\r\n",
            "POST /metrics HTTP/1.0\r\n\r\n",
            "GET /metricsx HTTP/1.0\r\n\r\n",
            "GET /metrics\r\n\r\n",
            "\r\n\r\n",
        ] {
            assert!(
                text(other).starts_with("HTTP/1.0 404 Not Found\r\n"),
                "{other:?}"
            );
        }
    }

    #[test]
    fn a_head_ends_with_an_empty_line() {
        assert!(!head_complete(b"GET /metrics HTTP/1.0\r\n"));
        assert!(head_complete(b"GET /metrics HTTP/1.0\r\n\r\n"));
        assert!(head_complete(b"GET /metrics HTTP/1.0\n\n"));
    }
}
