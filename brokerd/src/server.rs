//! The event loop: one thread owns the listener, every client connection and the lease table.
//!
//! Connections are non-blocking with bounded buffers; the requests of a turn are served, their
//! grants written to the journal with one `write`, and then the answers sent, so one slow or
//! hostile client only ever delays itself. This file is the loop: start-up and recovery,
//! waiting, timers, signals and the journal turn. Connections, handlers and the table live in
//! modules of their own.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use portbroker_proto::{EndReason, Holder, LeaseId, PortRange, PROTOCOL_VERSION};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::backend::SignalDelivery;
use signal_hook::iterator::exfiltrator::SignalOnly;
use tracing::{debug, info, warn};

use crate::connections::{Connections, LISTENER_TOKEN};
use crate::handlers;
use crate::journal::{Change, Entry, Journal, Recovered};
use crate::lease::{Keeper, Lease};
use crate::log_buffer;
use crate::metrics;
use crate::metrics_http::{self, Endpoint};
use crate::policy::Policy;
use crate::portserver::{self, PortServer};
use crate::socket_copies;
use crate::socket_file::SocketFile;
use crate::state::State;
use crate::summary::{Figures, Summary};
use crate::systemd::{Notifier, Passed};
use crate::table::NewLease;
use crate::throttle::Throttle;

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

const SIGNAL_TOKEN: u64 = 1;
const WATCHES_TOKEN: u64 = 2;

/// Microseconds since the Unix epoch.
fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}

/// Milliseconds since the Unix epoch: when the journal says a turn's events happened.
fn unix_millis() -> u64 {
    unix_micros() / 1000
}

/// A lease as the journal keeps it.
fn journal_entry(lease: &Lease) -> Entry {
    Entry {
        id: lease.id.0,
        pid: lease.holder.pid,
        start_time: lease.start_time,
        uid: lease.holder.uid,
        gid: lease.holder.gid,
        name: lease.holder.name.clone(),
        since: lease.since,
        sockets: lease.sockets.to_vec(),
        service: lease.service.as_deref().map(str::to_owned),
        cookies: lease.cookies.to_vec(),
        number: lease.number,
    }
}

/// How long a logged line may wait in the buffer before it is written.
const LOG_DELAY: Duration = Duration::from_millis(50);

/// The least time between two `STATUS=` notifications: systemd shows the status, it need not
/// follow every lease.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

pub struct Server {
    epoll: Epoll,
    signals: SignalDelivery<UnixStream, SignalOnly>,
    conns: Connections,
    state: State,
    journal: Option<Journal>,
    journal_warning: Throttle,
    release_on_exit: bool,
    log_flush_due: Option<Instant>,
    shutting_down: bool,
    /// Reservations systemd's fd store kept for us, taken back at start-up.
    stored: Vec<(String, std::os::fd::OwnedFd)>,
    /// The (leases, connections) systemd was last told, when, and when to tell it again.
    status_shown: Option<(usize, usize)>,
    status_sent: Option<Instant>,
    status_due: Option<Instant>,
    /// When the next `WATCHDOG=1` is due: a timer of this loop, so a stuck loop stops pinging
    /// and systemd restarts the daemon.
    watchdog_due: Option<Instant>,
    /// The Prometheus endpoint, when the policy has `[metrics] listen`.
    metrics: Option<Endpoint>,
    /// The portserver (portpicker's protocol), when the policy has it on and it could listen.
    portserver: Option<PortServer>,
    /// The portserver address last tried (the policy's, `None`: off); a reload that changes it
    /// moves the portserver.
    portserver_tried: Option<String>,
    /// The log's summary of leases granted, ended and refused, once a minute at most.
    summary: Summary,
    /// The table's changes of the turn being journaled; kept, with their room, from turn to
    /// turn (see `Table::swap_changes`).
    turn_changed: Vec<(LeaseId, Change)>,
    turn_ended: Vec<(LeaseId, EndReason)>,
}

impl Server {
    pub fn new(config: Config, passed: Passed, notify: Notifier) -> Result<Self> {
        let socket = match passed.listener {
            // Socket activation: systemd made the socket and keeps its file.
            Some(fd) => SocketFile::inherited(fd, &config.socket),
            None => SocketFile::create(
                &config.socket,
                config.policy.socket_mode,
                config.policy.socket_gid,
            )?,
        };
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).context("epoll_create")?;
        let (read, write) = UnixStream::pair().context("cannot create the signal pipe")?;
        read.set_nonblocking(true)
            .context("cannot make the signal pipe non-blocking")?;
        let signals = SignalDelivery::with_pipe(read, write, SignalOnly, [SIGINT, SIGTERM, SIGHUP])
            .context("cannot install the SIGINT/SIGTERM/SIGHUP handlers")?;
        let mut state = State::new(config.pool, config.default_addr, config.policy)
            .context("cannot create the epoll set for process watches")?;
        state.notify = notify;
        let conns = Connections::new(socket, config.max_connections, config.max_queued_fds);
        let watch = |fd: &dyn std::os::fd::AsFd, token: u64, what: &str| {
            epoll
                .add(fd.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
                .with_context(|| format!("cannot watch {what}"))
        };
        watch(conns.listener(), LISTENER_TOKEN, "the listening socket")?;
        watch(signals.get_read(), SIGNAL_TOKEN, "the signal pipe")?;
        watch(&state.watches, WATCHES_TOKEN, "the process watches")?;
        let journal = match &config.journal {
            Some(path) => Some(
                Journal::open(path)
                    .with_context(|| format!("cannot open the journal {}", path.display()))?,
            ),
            None => None,
        };
        let mut server = Server {
            epoll,
            signals,
            conns,
            state,
            journal: None,
            journal_warning: Throttle::default(),
            release_on_exit: config.release_on_exit,
            log_flush_due: None,
            shutting_down: false,
            stored: passed.stored,
            status_shown: None,
            status_sent: None,
            status_due: None,
            watchdog_due: None,
            metrics: None,
            portserver: None,
            portserver_tried: None,
            summary: Summary::default(),
            turn_changed: Vec::new(),
            turn_ended: Vec::new(),
        };
        match journal {
            Some((journal, recovered)) => {
                server.state.history = match journal.history() {
                    Ok(history) => Some(history),
                    // The journal works without it; `portctl log` says there is no history.
                    Err(err) => {
                        warn!("the history cannot be read (portctl log): {err}");
                        None
                    }
                };
                server.journal = Some(journal);
                server.recover(recovered);
            }
            // Nothing remembers the last life's ids: start from the clock, in microseconds,
            // so that a stale handle of a client never names a new lease.
            None => server.state.table.skip_ids_below(unix_micros()),
        }
        // After recovery: the endpoint's port is leased to the daemon in the table, which
        // must know the recovered leases first (and one of the last life's own ended).
        if let Some(addr) = server.state.policy.metrics_listen {
            let endpoint = Endpoint::open(&server.epoll, &mut server.state, addr)
                .with_context(|| format!("cannot serve metrics on {addr} ([metrics] listen)"))?;
            server.metrics = Some(endpoint);
        }
        server.open_portserver();
        Ok(server)
    }

    pub fn run(mut self) -> Result<()> {
        // After recovery, so that a stored reservation is checked against the leases.
        let stored = std::mem::take(&mut self.stored);
        self.state.adopt_stored(stored);
        self.state.maintain_reservations();
        // Listening, journal recovered, reservations bound: systemd may start what needs us.
        self.state.notify.ready();
        if let Some(interval) = self.state.notify.watchdog() {
            info!("systemd's watchdog expects a sign of life every {interval:?}");
        }
        self.watchdog_due = self.state.notify.watchdog().map(|_| Instant::now());
        info!(
            socket = %self.conns.socket_path().display(),
            pool = %self.state.table.pool(),
            default_addr = %self.state.default_addr,
            "portbrokerd {} ready (protocol {PROTOCOL_VERSION})",
            env!("CARGO_PKG_VERSION"),
        );
        let mut events = vec![EpollEvent::empty(); 256];
        while !self.shutting_down {
            // What timers and closes ended since the last turn.
            let _ = self.journal_turn();
            // Events of what timers and closes ended, now that their records are written.
            self.conns.pump_watchers(&mut self.state);
            self.conns.settle_served(&self.epoll, &mut self.state);
            self.summary.log_when_due(
                Instant::now(),
                self.figures(),
                self.state.table.lease_count(),
            );
            self.flush_log_when_due();
            self.notify_turn();
            let timeout = self.next_timeout();
            let ready = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(err).context("epoll_wait"),
            };
            for event in &events[..ready] {
                match event.data() {
                    LISTENER_TOKEN => self.conns.accept_all(&self.epoll, &self.state.policy),
                    SIGNAL_TOKEN => self.take_signals(),
                    WATCHES_TOKEN => {
                        for pid in self.state.watches.exited() {
                            self.state.process_exited(pid);
                        }
                    }
                    metrics_http::LISTENER_TOKEN => {
                        if let Some(endpoint) = &mut self.metrics {
                            endpoint.accept_all(&self.epoll, &mut self.state);
                        }
                    }
                    portserver::LISTENER_TOKEN => {
                        if let Some(portserver) = &mut self.portserver {
                            portserver.accept_all(&self.epoll);
                        }
                    }
                    id if portserver::is_client(id) => {
                        if let Some(portserver) = &mut self.portserver {
                            portserver.serve(&self.epoll, &mut self.state, id);
                        }
                    }
                    id if metrics_http::is_scrape(id) => {
                        if let Some(endpoint) = &mut self.metrics {
                            let (state, conns) = (&self.state, &self.conns);
                            endpoint.serve(&self.epoll, id, event.events(), || {
                                metrics::render(&handlers::status_info(state, conns.len()))
                            });
                        }
                    }
                    id => self.conns.serve(&mut self.state, id, event.events()),
                }
            }
            self.conns.serve_ready(&mut self.state);
            self.stop_metrics_if_revoked();
            self.state.prune_watches();
            // Group commit: the turn's grants reach the journal before any answer leaves, and
            // a grant the journal could not record is answered with a failure instead.
            let journal = self.journal_turn();
            self.conns
                .release_answers(&mut self.state, journal.as_ref().err().map(String::as_str));
            if let Some(portserver) = &mut self.portserver {
                portserver.send_answers(&self.epoll, &mut self.state, journal.is_err());
            }
            if self.state.policy.portserver != self.portserver_tried {
                // A reload (SIGHUP or `portctl reload`) moved or turned off the portserver; this
                // turn's answers are sent.
                if let Some(portserver) = self.portserver.take() {
                    portserver.stop(&self.epoll);
                }
                self.open_portserver();
            }
            self.conns.pump_watchers(&mut self.state);
            self.conns.settle_served(&self.epoll, &mut self.state);
            // One reading of the clock for the turn's timers.
            let now = Instant::now();
            self.conns.expire_hellos(&self.epoll, &mut self.state, now);
            let expired = self.state.expire_due(now);
            if !expired.is_empty() {
                self.conns.deliver_notices(expired);
                self.conns.release_answers(&mut self.state, None);
                self.conns.settle_served(&self.epoll, &mut self.state);
            }
            if self.state.next_linger_check.is_some_and(|t| t <= now) {
                self.state.check_lingering();
            }
            self.conns.run_timers(&self.epoll, &mut self.state, now);
            if let Some(endpoint) = &mut self.metrics {
                endpoint.expire(&self.epoll, now);
            }
            if let Some(portserver) = &mut self.portserver {
                portserver.expire(&self.epoll, now);
            }
        }
        self.state.notify.stopping();
        let (leases, conns) = (self.state.table.lease_count(), self.conns.len());
        let _ = self.journal_turn();
        match &mut self.journal {
            Some(journal) if self.release_on_exit => {
                // Their ends go to the history, which the emptied journal keeps.
                let now = unix_millis();
                for lease in self.state.table.leases() {
                    journal.end(lease.id.0, EndReason::DaemonStopped, now);
                }
                journal
                    .rewrite(std::iter::empty(), self.state.table.next_id())
                    .context("cannot empty the journal")?;
                info!("shutting down: closing {conns} connections and ending {leases} leases");
            }
            Some(_) => info!(
                "shutting down: closing {conns} connections; {leases} leases stay in the journal for the next start"
            ),
            None => info!("shutting down: closing {conns} connections and ending {leases} leases"),
        }
        Ok(())
    }

    /// Writes this turn's grants, changes and ends to the journal with one `write` (group
    /// commit; no fsync: see `journal`), compacting it now and then. The error says why the
    /// turn's records could not be written (they are kept and retried next turn).
    fn journal_turn(&mut self) -> Result<(), String> {
        let Some(journal) = self.journal.as_mut() else {
            return Ok(());
        };
        let table = &mut self.state.table;
        let (changed, ended) = (&mut self.turn_changed, &mut self.turn_ended);
        table.swap_changes(changed, ended);
        // One clock read for the turn's records (a vDSO call, no syscall).
        let at_ms = match changed.is_empty() && ended.is_empty() {
            true => 0,
            false => unix_millis(),
        };
        for (id, change) in changed.drain(..) {
            if let Some(lease) = table.get(id) {
                journal.grant(journal_entry(lease), change, at_ms);
            }
        }
        for (id, why) in ended.drain(..) {
            journal.end(id.0, why, at_ms);
        }
        let result = if journal.wants_compaction(table.lease_count()) {
            let entries: Vec<Entry> = table.leases().map(journal_entry).collect();
            journal.rewrite(entries.iter(), table.next_id())
        } else {
            journal.commit()
        };
        result.map_err(|err| {
            if self.journal_warning.due() {
                warn!(
                    "cannot write the journal: {err}; granting nothing until it can, releases \
                     and reads go on"
                );
            }
            err.to_string()
        })
    }

    /// Puts back the leases of the journal. A lease whose holder still runs (same pid and
    /// start time) and still holds every one of its sockets (same cookies) is tied to that
    /// process; the others end once a probe shows their ports free, and linger until then.
    fn recover(&mut self, recovered: Recovered) {
        let (mut kept, mut ended, mut lingering) = (0, 0, 0);
        // Records the journal refused to read back count as dropped too.
        let mut dropped = recovered.dropped;
        // Ids of leases that ended before the restart are not given out again.
        self.state.table.skip_ids_below(recovered.next_id);
        // Each holder's sockets are read once, however many leases it has.
        let mut held: HashMap<(i32, u64), Option<HashSet<u64>>> = HashMap::new();
        for entry in recovered.leases {
            let id = LeaseId(entry.id);
            let cookies = held
                .entry((entry.pid, entry.start_time))
                .or_insert_with(|| socket_copies::cookies_held_by(entry.pid, entry.start_time));
            // A number has no socket to find: its holder's life is what keeps it, as it did
            // before the restart (a process told a port binds it later, if at all).
            let number = entry.number;
            let still_held = if number {
                cookies.is_some()
            } else {
                !entry.cookies.is_empty()
                    && cookies
                        .as_ref()
                        .is_some_and(|held| entry.cookies.iter().all(|c| held.contains(c)))
            };
            let restored = self.state.table.restore(
                id,
                NewLease {
                    keeper: Keeper::Process(entry.pid),
                    holder: Rc::new(Holder {
                        pid: entry.pid,
                        uid: entry.uid,
                        gid: entry.gid,
                        name: entry.name,
                    }),
                    start_time: entry.start_time,
                    since: entry.since,
                    sockets: entry.sockets,
                    cookies: entry.cookies,
                    service: entry.service.as_deref().map(Rc::from),
                },
            );
            if let Err(reason) = restored {
                warn!("the journal's lease {id} was dropped: {reason}");
                dropped += 1;
                continue;
            }
            if number {
                self.state.table.mark_number(id);
            }
            let watched = still_held && self.state.watches.watch(entry.pid).is_ok();
            if watched {
                kept += 1;
                continue;
            }
            let why = if still_held {
                "its holder could not be watched"
            } else if cookies.is_some() {
                "its holder no longer holds its sockets"
            } else {
                "its holder exited while the daemon was down"
            };
            self.state
                .end_truthfully(id, EndReason::HolderGoneAtRestart, why);
            if self.state.table.get(id).is_some() {
                lingering += 1;
            } else {
                ended += 1;
            }
        }
        // Restoring is no change for the journal (it was just rewritten as what it held), but
        // the leases ended here are: the first turn writes their ends, so that the next start
        // does not end them again.
        info!(
            "recovered from the journal: {kept} leases kept, {ended} ended, {lingering} lingering, \
             {dropped} dropped"
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

    /// Serves the portserver where the policy says, if it says so. Not being able to listen
    /// (another daemon of this network namespace has the address, say) is no reason to stop:
    /// portpicker clients then reach that one, or pick ports themselves.
    fn open_portserver(&mut self) {
        self.portserver_tried = self.state.policy.portserver.clone();
        let Some(address) = self.state.policy.portserver.clone() else {
            info!("the portserver is off ([portserver] enabled = false)");
            return;
        };
        match PortServer::open(&self.epoll, &address) {
            Ok(portserver) => self.portserver = Some(portserver),
            Err(err) => warn!(
                "not serving the portserver at {address} ([portserver] address): {err:#}; \
                 portpicker clients asking there pick their ports themselves"
            ),
        }
    }

    /// Closes the metrics endpoint once its lease was revoked (or its listener failed).
    fn stop_metrics_if_revoked(&mut self) {
        if self.state.metrics_lease.is_some() {
            return;
        }
        if let Some(endpoint) = self.metrics.take() {
            endpoint.stop(&self.epoll);
            self.state.metrics_listen = None;
            warn!("the metrics endpoint is closed: its lease was revoked; it opens again at the next start");
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

    /// What systemd hears from the loop: the watchdog when due (half its interval, so one late
    /// turn is no miss), and the status when the number of leases or connections changed, at
    /// most once per `STATUS_INTERVAL`. Datagrams that never wait.
    fn notify_turn(&mut self) {
        if !self.state.notify.enabled() {
            return;
        }
        let now = Instant::now();
        if let (Some(due), Some(interval)) = (self.watchdog_due, self.state.notify.watchdog()) {
            if due <= now {
                self.state.notify.watchdog_ping();
                self.watchdog_due = Some(now + interval / 2);
            }
        }
        let current = (self.state.table.lease_count(), self.conns.len());
        if self.status_shown == Some(current) {
            self.status_due = None;
            return;
        }
        match self.status_sent.map(|sent| sent + STATUS_INTERVAL) {
            Some(next) if next > now => self.status_due = Some(next),
            _ => {
                self.state.notify.status(current.0, current.1);
                self.status_shown = Some(current);
                self.status_sent = Some(now);
                self.status_due = None;
            }
        }
    }

    /// What the log's summary counts.
    fn figures(&self) -> Figures {
        let (granted, ended) = self.state.table.totals();
        Figures {
            granted,
            ended,
            refused: self.state.refusals.leases(),
        }
    }

    fn next_timeout(&self) -> EpollTimeout {
        if self.conns.has_ready() {
            // Requests wait in buffers: serve them without sleeping.
            return EpollTimeout::ZERO;
        }
        let deadlines = [
            self.conns.next_deadline(),
            self.state.table.next_deadline(),
            self.state.next_linger_check,
            self.log_flush_due,
            self.summary.next_deadline(),
            self.status_due,
            self.watchdog_due,
            self.metrics.as_ref().and_then(Endpoint::next_deadline),
            self.portserver.as_ref().and_then(PortServer::next_deadline),
        ];
        let Some(deadline) = deadlines.into_iter().flatten().min() else {
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
                // Operators send SIGHUP to reload; the signal must not kill the daemon (its
                // default action).
                SIGHUP => {
                    info!("received SIGHUP: reloading the policy");
                    if let Err(err) = self.state.reload() {
                        warn!("the policy was not reloaded and stays as it was: {err}");
                    }
                }
                other => debug!("ignoring signal {other}"),
            }
        }
    }
}
