//! `portctl run`: lease sockets, run CMD with them, release when CMD ends.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::{getpgrp, Pid};
use portbroker::{ErrorKind, GrantedSocket, LeasedSocket, SocketSpec};

use crate::cli::RunArgs;
use crate::exit::{describe, UsageError};
use crate::relay::{self, Record, SignalRelay, Wakeup};
use crate::spawn::{self, Program};
use crate::talk::{self, warn};

/// A spec from the command line, `[NAME=]PROTO:[ADDR:]PORT`.
#[derive(Debug, PartialEq)]
pub struct NamedSpec {
    pub name: Option<String>,
    pub spec: SocketSpec,
}

/// What `run` leases: the sockets of specs, or a service of the broker's policy.
#[derive(Debug, PartialEq)]
pub enum Target {
    /// `[NAME=]PROTO:[ADDR:]PORT` arguments, leased together.
    Specs(Vec<NamedSpec>),
    /// A service name, given alone.
    Service(String),
}

/// Sorts the SPEC arguments out. An argument with neither ':' nor '=' names a service (every
/// socket spec has a ':', and one with '=' but no ':' is a spec gone wrong); a service is
/// leased alone, so it must be the only argument.
pub fn parse_target(args: &[String]) -> Result<Target> {
    let is_service = |arg: &&String| !arg.contains([':', '=']);
    let services: Vec<&String> = args.iter().filter(is_service).collect();
    match services[..] {
        [] => Ok(Target::Specs(
            args.iter()
                .map(|text| parse_spec(text))
                .collect::<Result<_>>()?,
        )),
        [name] if args.len() == 1 => {
            check_name(name, "service name")?;
            Ok(Target::Service(name.clone()))
        }
        [name] => Err(UsageError(format!(
            "{name:?} is a service name, and a service is leased on its own: give either one \
             service name or socket specs ([NAME=]PROTO:[ADDR:]PORT), not both"
        ))
        .into()),
        [first, second, ..] => Err(UsageError(format!(
            "{first:?} and {second:?} are both service names: run leases one service at a time"
        ))
        .into()),
    }
}

pub fn parse_spec(text: &str) -> Result<NamedSpec> {
    let (name, spec) = match text.split_once('=') {
        Some((name, spec)) => {
            check_name(name, "socket name")?;
            (Some(name.to_owned()), spec)
        }
        None => (None, text),
    };
    let spec = spec
        .parse::<SocketSpec>()
        .map_err(portbroker::Error::from)?;
    Ok(NamedSpec { name, spec })
}

/// `LISTEN_FDNAMES` is `:`-separated, and systemd accepts 1 to 255 printable ASCII characters.
/// A service's name becomes its sockets' name, so it must pass too.
fn check_name(name: &str, what: &str) -> Result<(), UsageError> {
    let printable = |b: u8| (b' '..=b'~').contains(&b) && b != b':';
    if name.is_empty() || name.len() > 255 || !name.bytes().all(printable) {
        return Err(UsageError(format!(
            "bad {what} {name:?}: a name is 1 to 255 printable ASCII characters without ':'"
        )));
    }
    Ok(())
}

/// A service name that is a port number is most likely a spec without its protocol: say so.
fn unknown_service_hint(err: portbroker::Error, name: &str) -> anyhow::Error {
    if err.kind() == ErrorKind::UnknownService && name.parse::<u16>().is_ok() {
        // The context quotes the error, so `describe` does not repeat it; the exit code still
        // comes from the library error underneath.
        let text = format!("{err} (to lease port {name}, write tcp:{name} or udp:{name})");
        anyhow::Error::new(err).context(text)
    } else {
        err.into()
    }
}

fn default_name(granted: &GrantedSocket) -> String {
    format!("{}-{}", granted.transport, granted.addr.port())
}

pub fn run(socket: Option<PathBuf>, args: RunArgs) -> Result<u8> {
    // Everything that can be wrong with the command line is found before leasing anything.
    let target = parse_target(&args.specs)?;
    let program = Program::resolve(&args.command)?;

    let broker = talk::connect(socket)?;
    let (mut lease, names) = match &target {
        Target::Specs(specs) => {
            let lease = broker.lease(specs.iter().map(|named| named.spec))?;
            let names: Vec<String> = specs
                .iter()
                .zip(lease.granted())
                .map(|(named, granted)| named.name.clone().unwrap_or_else(|| default_name(granted)))
                .collect();
            (lease, names)
        }
        Target::Service(name) => {
            let lease = broker
                .lease_named(name)
                .map_err(|err| unknown_service_hint(err, name))?;
            // systemd allows a name to repeat: every socket of the service carries its name.
            let names = vec![name.clone(); lease.granted().len()];
            (lease, names)
        }
    };
    if !args.quiet {
        for (index, (granted, name)) in lease.granted().iter().zip(&names).enumerate() {
            warn(&format!(
                "lease {}: {granted} as fd {} ({name})",
                lease.id(),
                3 + index
            ));
        }
    }

    // Before the fork, so that no signal meant for CMD and no exit of CMD goes unseen.
    let relay = SignalRelay::install()?;
    let sockets: Vec<OwnedFd> = lease
        .take_sockets()
        .into_iter()
        .map(LeasedSocket::into_owned_fd)
        .collect();
    if args.restart_on_exit || args.restart_on_hup {
        // The lease stays on our connection, untied: a lease tied to CMD ends the moment CMD
        // exits, and another process could take the port before the next CMD runs. We keep our
        // copies of the sockets for every next CMD, and end the lease once the last one ended.
        let policy = RestartPolicy {
            on_exit: args.restart_on_exit,
            max_restarts: args.max_restarts,
            on_hup: args.restart_on_hup,
            ready_timeout: Duration::from_secs_f64(args.ready_timeout),
        };
        let status = Supervisor::new(&program, sockets, &names, policy, args.quiet)?.run(&relay)?;
        drop(relay);
        let id = lease.id();
        if let Err(err) = lease.release() {
            warn(&format!(
                "warning: cannot release lease {id}: {}",
                describe(&err.into())
            ));
        }
        return Ok(status);
    }
    // The lease (and its connection) stays with us: it lasts exactly as long as CMD.
    let child = spawn::spawn(&program, sockets, &names)?;
    // Tied to CMD, the lease outlives this process if it is killed, and ends with CMD.
    let tied = match lease.tie_to_process(child.as_raw()) {
        Ok(_) => true,
        Err(err) => {
            warn(&format!(
                "warning: lease {} stays tied to portctl, not to the program: {}",
                lease.id(),
                describe(&err.into())
            ));
            false
        }
    };
    let status = relay.forward_until_exit(child)?;
    drop(relay);

    let id = lease.id();
    if tied {
        // The broker ends it as CMD exits (or keeps it for a sticky service's restart).
        lease.detach();
    } else if let Err(err) = lease.release() {
        warn(&format!(
            "warning: cannot release lease {id}: {}",
            describe(&err.into())
        ));
    }
    Ok(status)
}

/// When `run` starts CMD again.
#[derive(Debug, Clone, Copy)]
struct RestartPolicy {
    /// After CMD exited, whatever its status.
    on_exit: bool,
    /// At most this many times after an exit (graceful restarts do not count).
    max_restarts: Option<u32>,
    /// On SIGHUP, gracefully: the old CMD runs until the new one is ready.
    on_hup: bool,
    /// How long a new CMD may take to send READY=1 before it counts as ready anyway.
    ready_timeout: Duration,
}

/// The first wait before starting CMD again; it doubles with each exit, up to the maximum.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A CMD that ran this long before it exited starts again after the first backoff.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(10);

/// The wait before the next start, given the last one and how long CMD ran.
fn next_backoff(last: Option<Duration>, ran: Duration) -> Duration {
    match last {
        Some(last) if ran < BACKOFF_RESET_AFTER => (last * 2).min(BACKOFF_MAX),
        _ => BACKOFF_FIRST,
    }
}

/// One started CMD.
#[derive(Debug, Clone, Copy)]
struct Generation {
    pid: Pid,
    started: Instant,
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Pid 0: a CMD that could not be started at all.
        match self.pid.as_raw() {
            0 => write!(f, "CMD"),
            pid => write!(f, "CMD (pid {pid})"),
        }
    }
}

/// Runs CMD again and again on the same sockets, as its [`RestartPolicy`] says.
struct Supervisor<'a> {
    program: &'a Program,
    /// Our copies of the sockets, for every next CMD.
    sockets: Vec<OwnedFd>,
    names: &'a [String],
    policy: RestartPolicy,
    quiet: bool,
    notify: Option<NotifySocket>,
    env: Vec<String>,
    /// The CMD that serves.
    current: Option<Generation>,
    /// A new CMD of a graceful restart, until it is ready or its ready timeout passes.
    pending: Option<(Generation, Instant)>,
    /// Old CMDs told to stop, waited for before portctl exits.
    retired: Vec<Pid>,
    /// When to start CMD again after it exited.
    restart_at: Option<Instant>,
    backoff: Option<Duration>,
    restarts: u32,
    /// SIGTERM or SIGINT came: no more restarts.
    stopping: bool,
    last_status: u8,
}

impl<'a> Supervisor<'a> {
    fn new(
        program: &'a Program,
        sockets: Vec<OwnedFd>,
        names: &'a [String],
        policy: RestartPolicy,
        quiet: bool,
    ) -> Result<Self> {
        let notify = policy.on_hup.then(NotifySocket::create).transpose()?;
        let env = notify
            .iter()
            .map(|notify| format!("NOTIFY_SOCKET={}", notify.address))
            .collect();
        Ok(Supervisor {
            program,
            sockets,
            names,
            policy,
            quiet,
            notify,
            env,
            current: None,
            pending: None,
            retired: Vec::new(),
            restart_at: None,
            backoff: None,
            restarts: 0,
            stopping: false,
            last_status: 0,
        })
    }

    fn say(&self, text: &str) {
        if !self.quiet {
            warn(text);
        }
    }

    fn start(&self) -> Result<Generation> {
        let pid = spawn::spawn_with(self.program, &self.sockets, self.names, &self.env)?;
        Ok(Generation {
            pid,
            started: Instant::now(),
        })
    }

    /// Supervises until CMD ended for good and every old CMD is gone; returns CMD's last status.
    fn run(mut self, relay: &SignalRelay) -> Result<u8> {
        // The first start fails as a plain `run` does (126 or 127); later ones count as exits.
        self.current = Some(self.start()?);
        let our_group = getpgrp();
        loop {
            self.reap()?;
            self.fire_timers();
            if self.current.is_none()
                && self.pending.is_none()
                && self.restart_at.is_none()
                && self.retired.is_empty()
            {
                return Ok(self.last_status);
            }
            let next = [self.restart_at, self.pending.map(|(_, ready_by)| ready_by)]
                .into_iter()
                .flatten()
                .min();
            let timeout = next.map(|at| at.saturating_duration_since(Instant::now()));
            let notify = self.notify.as_ref().map(|notify| notify.fd.as_fd());
            match relay.wait(notify, timeout)? {
                Wakeup::Signal(record) => self.on_signal(record, our_group),
                Wakeup::Readable => self.on_notify()?,
                Wakeup::Timeout => {}
            }
        }
    }

    fn reap(&mut self) -> Result<()> {
        if let Some(current) = self.current {
            if let Some(status) = relay::reap(current.pid).context("cannot wait for CMD")? {
                self.current = None;
                self.ended(current, status);
            }
        }
        if let Some((pending, _)) = self.pending {
            if let Some(status) = relay::reap(pending.pid).context("cannot wait for CMD")? {
                self.pending = None;
                if !self.stopping {
                    warn(&format!(
                        "the new CMD (pid {}) exited with status {status} before it was ready; \
                         the old one keeps serving",
                        pending.pid
                    ));
                }
            }
        }
        let mut still_running = Vec::with_capacity(self.retired.len());
        for pid in std::mem::take(&mut self.retired) {
            if relay::reap(pid).context("cannot wait for CMD")?.is_none() {
                still_running.push(pid);
            }
        }
        self.retired = still_running;
        Ok(())
    }

    /// The serving CMD ended with `status`: hand over to a new one being started, restart it
    /// after the backoff, or stop.
    fn ended(&mut self, generation: Generation, status: u8) {
        self.last_status = status;
        if let Some((next, _)) = self.pending.take() {
            self.say(&format!(
                "{generation} exited with status {status}; the new one (pid {}) takes over",
                next.pid
            ));
            self.current = Some(next);
            return;
        }
        if self.stopping || !self.policy.on_exit {
            return;
        }
        if self
            .policy
            .max_restarts
            .is_some_and(|max| self.restarts >= max)
        {
            warn(&format!(
                "{generation} exited with status {status}; not restarting it after {} restarts",
                self.restarts
            ));
            return;
        }
        let backoff = next_backoff(self.backoff, generation.started.elapsed());
        self.backoff = Some(backoff);
        self.restart_at = Some(Instant::now() + backoff);
        self.say(&format!(
            "{generation} exited with status {status}; restarting it in {} ms",
            backoff.as_millis()
        ));
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        if self.pending.is_some_and(|(_, ready_by)| now >= ready_by) {
            self.promote("did not say READY=1 in time, taken as ready");
        }
        if self.restart_at.is_some_and(|at| now >= at) {
            self.restart_at = None;
            self.restarts += 1;
            match self.start() {
                Ok(generation) => self.current = Some(generation),
                Err(err) => {
                    warn(&describe(&err));
                    let failed = Generation {
                        pid: Pid::from_raw(0),
                        started: now,
                    };
                    self.ended(failed, crate::exit::code_for(&err));
                }
            }
        }
    }

    /// The pending CMD takes over; the old one is told to stop.
    fn promote(&mut self, how: &str) {
        let Some((next, _)) = self.pending.take() else {
            return;
        };
        match self.current.replace(next) {
            Some(old) => {
                self.say(&format!(
                    "new CMD (pid {}) {how}; stopping the old one (pid {})",
                    next.pid, old.pid
                ));
                // ESRCH: it has just exited; the next reap collects it.
                let _ = kill(old.pid, Signal::SIGTERM);
                self.retired.push(old.pid);
            }
            None => self.say(&format!("new CMD (pid {}) {how}", next.pid)),
        }
    }

    fn on_signal(&mut self, record: Record, our_group: Pid) {
        let from_terminal = record.code == libc::SI_KERNEL;
        match record.signal {
            libc::SIGCHLD => return,
            libc::SIGHUP if self.policy.on_hup && !from_terminal => {
                self.graceful_restart();
                return;
            }
            // SIGTERM and SIGINT stop CMD for good, and so does a terminal's hangup; a SIGHUP
            // sent with kill (to reload, say) only reaches CMD.
            libc::SIGTERM | libc::SIGINT => {
                self.stopping = true;
                self.restart_at = None;
            }
            libc::SIGHUP if from_terminal => {
                self.stopping = true;
                self.restart_at = None;
            }
            _ => {}
        }
        let Ok(signal) = Signal::try_from(record.signal) else {
            return;
        };
        let running = self
            .current
            .iter()
            .chain(self.pending.iter().map(|(g, _)| g));
        for generation in running {
            if relay::should_forward(record, generation.pid, our_group) {
                let _ = kill(generation.pid, signal);
            }
        }
    }

    fn graceful_restart(&mut self) {
        if self.stopping {
            return;
        }
        if self.pending.is_some() {
            warn("SIGHUP: a restart is under way already");
            return;
        }
        if self.current.is_none() {
            // Waiting out a backoff: start at once.
            if self.restart_at.is_some() {
                self.restart_at = Some(Instant::now());
            }
            return;
        }
        match self.start() {
            Ok(generation) => {
                self.say(&format!(
                    "SIGHUP: started a new CMD (pid {}), waiting for it to be ready",
                    generation.pid
                ));
                self.pending = Some((generation, Instant::now() + self.policy.ready_timeout));
            }
            Err(err) => warn(&format!(
                "SIGHUP: {}; the old CMD keeps serving",
                describe(&err)
            )),
        }
    }

    fn on_notify(&mut self) -> Result<()> {
        let Some(notify) = &self.notify else {
            return Ok(());
        };
        let mut ready_from = Vec::new();
        while let Some((sender, text)) = notify.receive()? {
            if text.lines().any(|line| line == "READY=1") {
                ready_from.extend(sender);
            }
        }
        let Some((pending, _)) = self.pending else {
            return Ok(());
        };
        // Only the new CMD (or a process it started) says when it is ready; the old one
        // has the same NOTIFY_SOCKET and may well repeat itself.
        if ready_from
            .iter()
            .any(|&pid| descends_from(pid, pending.pid))
        {
            self.promote("is ready");
        }
        Ok(())
    }
}

/// Whether process `pid` is `ancestor` or one of its descendants (by /proc's parent links).
fn descends_from(pid: libc::pid_t, ancestor: Pid) -> bool {
    let mut pid = pid;
    for _ in 0..64 {
        if pid == ancestor.as_raw() {
            return true;
        }
        if pid <= 1 {
            return false;
        }
        let Some(parent) = parent_of(pid) else {
            return false;
        };
        pid = parent;
    }
    false
}

fn parent_of(pid: libc::pid_t) -> Option<libc::pid_t> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so count from its closing paren.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The datagram socket that CMD's `READY=1` comes through (sd_notify's protocol), in the
/// abstract namespace so that nothing is left behind in the file system. It passes each
/// sender's credentials, so that a message is known to come from the new CMD.
struct NotifySocket {
    fd: OwnedFd,
    /// As NOTIFY_SOCKET gives it: `@` for the abstract namespace.
    address: String,
}

impl NotifySocket {
    fn create() -> Result<NotifySocket> {
        use nix::sys::socket::{bind, setsockopt, socket, sockopt, AddressFamily, SockFlag};
        use nix::sys::socket::{SockType, UnixAddr};
        let fd = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .context("cannot create the notify socket")?;
        setsockopt(&fd, sockopt::PassCred, &true).context("cannot set SO_PASSCRED")?;
        // Someone may have taken a name (abstract names belong to nobody): try a few.
        let mut last_err = Errno::EADDRINUSE;
        for attempt in 0..16u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .subsec_nanos();
            let name = format!("portctl/{}/{nanos:x}{attempt}", std::process::id());
            let addr = UnixAddr::new_abstract(name.as_bytes())?;
            match bind(fd.as_raw_fd(), &addr) {
                Ok(()) => {
                    return Ok(NotifySocket {
                        fd,
                        address: format!("@{name}"),
                    })
                }
                Err(errno) => last_err = errno,
            }
        }
        Err(anyhow::Error::new(last_err).context("cannot bind the notify socket"))
    }

    /// The next waiting message, with its sender's pid if the kernel says; `None` when none
    /// waits.
    fn receive(&self) -> Result<Option<(Option<libc::pid_t>, String)>> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixCredentials};
        let mut buf = [0u8; 4096];
        let mut cmsg = nix::cmsg_space!(UnixCredentials);
        loop {
            let mut iov = [std::io::IoSliceMut::new(&mut buf)];
            let received = recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            );
            let (sender, len) = match received {
                Ok(msg) => {
                    let sender = msg.cmsgs()?.find_map(|cmsg| match cmsg {
                        ControlMessageOwned::ScmCredentials(creds) => Some(creds.pid()),
                        _ => None,
                    });
                    (sender, msg.bytes)
                }
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(errno) => {
                    return Err(anyhow::Error::new(errno).context("cannot read the notify socket"))
                }
            };
            let text = String::from_utf8_lossy(&buf[..len]).into_owned();
            return Ok(Some((sender, text)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit;
    use portbroker::Transport;

    #[test]
    fn specs_may_carry_a_name() {
        let named = parse_spec("http=tcp:127.0.0.1:0").unwrap();
        assert_eq!(named.name.as_deref(), Some("http"));
        assert_eq!(named.spec, "tcp:127.0.0.1:0".parse().unwrap());
        let plain = parse_spec("udp:[::1]:5353").unwrap();
        assert_eq!(plain.name, None);
        assert_eq!(plain.spec.transport, Transport::Udp);
    }

    #[test]
    fn bad_specs_and_names_are_usage_errors() {
        for text in [
            "tcp:nope:80",
            "sctp:80",
            "a:b=tcp:80",
            "=tcp:80",
            "ä=tcp:80",
            "8080",
        ] {
            let err = parse_spec(text).unwrap_err();
            assert_eq!(exit::code_for(&err), exit::USAGE, "{text}: {err}");
        }
    }

    fn target(args: &[&str]) -> Result<Target> {
        parse_target(&args.iter().map(|&arg| arg.to_owned()).collect::<Vec<_>>())
    }

    #[test]
    fn an_argument_without_a_colon_is_a_service() {
        assert_eq!(target(&["web"]).unwrap(), Target::Service("web".into()));
        assert_eq!(target(&["8080"]).unwrap(), Target::Service("8080".into()));
        assert_eq!(
            target(&["tcp:80", "dns=udp:[::1]:53"]).unwrap(),
            Target::Specs(vec![
                parse_spec("tcp:80").unwrap(),
                parse_spec("dns=udp:[::1]:53").unwrap()
            ])
        );
        // With '=' it is a spec gone wrong, and the spec's error says what is wrong with it.
        let err = target(&["http=8080"]).unwrap_err();
        assert_eq!(exit::code_for(&err), exit::USAGE);
        assert!(err.to_string().contains("8080"), "{err}");
    }

    #[test]
    fn a_service_is_leased_alone() {
        for args in [
            &["web", "tcp:80"][..],
            &["tcp:80", "web"],
            &["web", "http=tcp:0"],
        ] {
            let err = target(args).unwrap_err();
            assert_eq!(exit::code_for(&err), exit::USAGE, "{args:?}");
            let text = err.to_string();
            assert!(text.contains("\"web\" is a service name"), "{text}");
            assert!(text.contains("not both"), "{text}");
        }
        let err = target(&["web", "mail"]).unwrap_err();
        assert_eq!(exit::code_for(&err), exit::USAGE);
        assert!(err.to_string().contains("one service at a time"), "{err}");
    }

    #[test]
    fn service_names_must_fit_listen_fdnames() {
        for name in ["", "ä", &"x".repeat(256)] {
            let err = target(&[name]).unwrap_err();
            assert_eq!(exit::code_for(&err), exit::USAGE, "{name:?}");
            assert!(err.to_string().starts_with("bad service name"), "{err}");
        }
        assert!(target(&[&"x".repeat(255)]).is_ok());
    }

    #[test]
    fn an_unknown_numeric_service_hints_at_a_spec() {
        let unknown = |name: &str| {
            portbroker::Error::Refused(portbroker::Refusal::UnknownService { name: name.into() })
        };
        let err = unknown_service_hint(unknown("8080"), "8080");
        assert_eq!(exit::code_for(&err), exit::CONFIG);
        let text = exit::describe(&err);
        assert!(
            text.ends_with("(to lease port 8080, write tcp:8080 or udp:8080)"),
            "{text}"
        );
        assert_eq!(text.matches("no service named").count(), 1, "{text}");

        let err = unknown_service_hint(unknown("web"), "web");
        assert_eq!(exit::code_for(&err), exit::CONFIG);
        assert!(!exit::describe(&err).contains("write tcp:"), "{err}");
    }

    #[test]
    fn the_backoff_doubles_up_to_its_maximum_and_resets_after_a_long_run() {
        let short = Duration::from_millis(50);
        assert_eq!(next_backoff(None, short), BACKOFF_FIRST);
        let mut backoff = BACKOFF_FIRST;
        let mut seen = vec![backoff];
        for _ in 0..8 {
            backoff = next_backoff(Some(backoff), short);
            seen.push(backoff);
        }
        assert_eq!(seen[..4], [100, 200, 400, 800].map(Duration::from_millis));
        assert_eq!(*seen.last().unwrap(), BACKOFF_MAX);
        assert_eq!(
            next_backoff(Some(BACKOFF_MAX), BACKOFF_RESET_AFTER),
            BACKOFF_FIRST
        );
    }

    #[test]
    fn a_process_descends_from_itself_and_its_ancestors() {
        let me = std::process::id() as libc::pid_t;
        assert!(descends_from(me, Pid::from_raw(me)));
        assert!(descends_from(me, nix::unistd::getppid()));
        assert!(!descends_from(1, Pid::from_raw(me)));
        assert!(!descends_from(me, Pid::from_raw(i32::MAX)));
    }

    #[test]
    fn the_notify_socket_passes_on_the_senders_pid() {
        use nix::sys::socket::UnixAddr;
        use nix::sys::socket::{sendto, socket, AddressFamily, MsgFlags, SockFlag, SockType};
        let notify = NotifySocket::create().unwrap();
        assert!(
            notify.address.starts_with("@portctl/"),
            "{}",
            notify.address
        );
        assert!(notify.receive().unwrap().is_none());
        let sender = socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        let addr = UnixAddr::new_abstract(&notify.address.as_bytes()[1..]).unwrap();
        sendto(
            sender.as_raw_fd(),
            b"STATUS=x\nREADY=1\n",
            &addr,
            MsgFlags::empty(),
        )
        .unwrap();
        let (pid, text) = notify.receive().unwrap().unwrap();
        assert_eq!(pid, Some(std::process::id() as libc::pid_t));
        assert_eq!(text, "STATUS=x\nREADY=1\n");
    }

    #[test]
    fn default_names_use_the_granted_port() {
        let granted = GrantedSocket {
            transport: Transport::Udp,
            addr: "[::]:40123".parse().unwrap(),
            listening: false,
            v6_only: false,
        };
        assert_eq!(default_name(&granted), "udp-40123");
    }
}
