//! One connection to the broker: framed requests out, framed responses and fds in.

use std::collections::VecDeque;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::errno::Errno;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::socket::{recvmsg, send, MsgFlags};
use nix::sys::time::TimeSpec;
use portbroker_proto::{
    decode_response, encode_request, peek_hello_protocol, Failure, FrameSplitter, LeaseId, Request,
    Response, MAX_RESPONSE_FRAME, PROTOCOL_VERSION,
};
// Lease ids come from a broker this process trusts (see `trust`): a fast hash is safe here.
use rustc_hash::FxHashMap as HashMap;

use crate::error::Error;
use crate::received_fds::adopt_scm_rights;

/// The most fds one `recvmsg` makes room for; a lease holds at most 64 sockets.
const MAX_FDS_PER_READ: usize = 64;
/// Smallest and largest amount of buffer offered to one `recvmsg`.
const MIN_READ: usize = 4096;
const MAX_READ: usize = 1 << 20;

/// How the broker ended a lease by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    Revoked,
    Expired,
}

/// Whether a request that failed reached the broker: what decides if it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Not as a whole: the send failed, or the connection was unusable before it. The broker
    /// acts only on whole frames, so it did nothing with the request.
    NotSent,
    /// Sent whole; the answer did not come (a timeout, a broken connection, a bad frame). The
    /// broker may have acted on it.
    Sent,
}

/// A response with the fds that belong to it (only `Granted` carries any).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) response: Response,
    pub(crate) fds: Vec<OwnedFd>,
}

/// The client end of a broker connection.
///
/// Requests and responses strictly alternate. If a request fails half-way (timeout, I/O error,
/// undecodable frame) the stream may hold the rest of an answer nobody will read, so the
/// connection refuses further requests instead of pairing a stale answer with a new request.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: UnixStream,
    path: PathBuf,
    /// Received bytes not yet consumed: the start of the next frame, or more.
    frames: FrameSplitter,
    /// Where one `recvmsg` puts its bytes before they join `frames`; kept to spare an
    /// allocation per read.
    read_buf: Vec<u8>,
    /// Received fds not yet claimed by a `Granted` frame, oldest first.
    fds: VecDeque<OwnedFd>,
    cmsg_buf: Vec<u8>,
    /// Set while a request is in flight; still set afterwards if it did not complete.
    out_of_step: bool,
    /// Requests sent without waiting for their answers (releases by dropped leases). Their
    /// answers come first, in order, and are read before the next request's answer.
    unanswered: usize,
    /// Leases the broker said it ended by itself (it says so between answers, unasked).
    ended: HashMap<LeaseId, Ended>,
    /// How long one wait for the broker's bytes may last, in nanoseconds; `WAIT_FOREVER` has no
    /// limit. Atomic so that a shared [`crate::Watch`] can change it.
    read_timeout_ns: AtomicU64,
}

/// `read_timeout_ns` of a connection that waits as long as it takes.
const WAIT_FOREVER: u64 = u64::MAX;

/// Unanswered requests allowed before the next one waits for their answers, so that the
/// answers never fill the socket while nobody reads them.
const MAX_UNANSWERED: usize = 64;

impl Connection {
    pub(crate) fn new(stream: UnixStream, path: PathBuf) -> Self {
        Connection {
            stream,
            path,
            frames: FrameSplitter::new(MAX_RESPONSE_FRAME),
            read_buf: Vec::new(),
            fds: VecDeque::new(),
            cmsg_buf: nix::cmsg_space!([RawFd; MAX_FDS_PER_READ]),
            out_of_step: false,
            unanswered: 0,
            ended: HashMap::default(),
            read_timeout_ns: AtomicU64::new(WAIT_FOREVER),
        }
    }

    /// Sets how long one send and one wait for an answer may each take; `None` has no limit.
    pub(crate) fn set_timeouts(&self, timeout: Option<Duration>) -> io::Result<()> {
        // std refuses a zero timeout here, before anything changes.
        self.stream.set_write_timeout(timeout)?;
        self.set_read_timeout(timeout)
    }

    /// Sets how long one wait for the broker's bytes may take; `None` has no limit.
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        let ns = match timeout {
            Some(Duration::ZERO) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "a timeout of zero would never wait",
                ))
            }
            Some(timeout) => u64::try_from(timeout.as_nanos())
                .unwrap_or(WAIT_FOREVER)
                .min(WAIT_FOREVER - 1),
            None => WAIT_FOREVER,
        };
        self.read_timeout_ns.store(ns, Ordering::Relaxed);
        Ok(())
    }

    /// Sends one request and waits for its response.
    pub(crate) fn round_trip(&mut self, request: &Request) -> Result<Reply, Error> {
        self.exchange(request).map_err(|failed| failed.0)
    }

    /// [`Connection::round_trip`], telling on failure whether the request left whole.
    pub(crate) fn exchange(&mut self, request: &Request) -> Result<Reply, Box<(Error, Delivery)>> {
        let frame = self
            .begin(request)
            .map_err(|e| Box::new((e, Delivery::NotSent)))?;
        if let Err(send_error) = self.send_all(&frame) {
            // A broker that refuses a connection (a limit) answers and hangs up without reading:
            // its answer, already here, says why better than the broken pipe does.
            return match self.next_frame(false) {
                Ok(Some(reply)) if matches!(reply.response, Response::Failed(_)) => Ok(reply),
                _ => Err(Box::new((send_error, Delivery::NotSent))),
            };
        }
        let sent = |e| Box::new((e, Delivery::Sent));
        self.read_unanswered().map_err(sent)?;
        let reply = self.receive().map_err(sent)?;
        self.out_of_step = false;
        Ok(reply)
    }

    /// Whether the connection can take another request: false once a request failed half-way
    /// or the connection broke.
    pub(crate) fn is_usable(&self) -> bool {
        !self.out_of_step
    }

    /// Encodes a request and marks the connection busy until the request completes; refuses
    /// when an earlier request failed half-way.
    fn begin(&mut self, request: &Request) -> Result<Vec<u8>, Error> {
        self.refuse_if_out_of_step()?;
        let frame = encode_request(request).map_err(|e| Error::Protocol {
            detail: "cannot encode the request".into(),
            source: Some(e),
        })?;
        self.out_of_step = true;
        Ok(frame)
    }

    fn refuse_if_out_of_step(&self) -> Result<(), Error> {
        if self.out_of_step {
            return Err(self.lost(io::Error::other(
                "an earlier request on this connection failed half-way; connect again",
            )));
        }
        Ok(())
    }

    /// Sends a request whose answer nobody waits for: a release by a dropped lease. Its answer
    /// is read (and checked) before the answer of a later request.
    pub(crate) fn send_unanswered(&mut self, request: &Request) -> Result<(), Error> {
        let frame = self.begin(request)?;
        if self.unanswered >= MAX_UNANSWERED {
            self.read_unanswered()?;
        }
        self.send_all(&frame)?;
        self.unanswered += 1;
        self.out_of_step = false;
        Ok(())
    }

    fn read_unanswered(&mut self) -> Result<(), Error> {
        while self.unanswered > 0 {
            match self.receive()?.response {
                // A release that failed has nobody left to tell; the lease is gone either way.
                Response::Released { .. } | Response::Failed(_) => self.unanswered -= 1,
                other => {
                    return Err(Error::protocol(format!(
                        "the broker answered a release with {}",
                        other.name()
                    )))
                }
            }
        }
        Ok(())
    }

    pub(crate) fn lost(&self, source: io::Error) -> Error {
        Error::ConnectionLost {
            path: self.path.clone(),
            source,
        }
    }

    fn os_error(&self, errno: Errno) -> Error {
        // SO_RCVTIMEO/SO_SNDTIMEO expiry shows up as EAGAIN on a blocking socket.
        let source = if errno == Errno::EAGAIN {
            io::Error::new(io::ErrorKind::TimedOut, "the broker did not answer in time")
        } else {
            io::Error::from(errno)
        };
        self.lost(source)
    }

    fn send_all(&mut self, mut bytes: &[u8]) -> Result<(), Error> {
        while !bytes.is_empty() {
            // MSG_NOSIGNAL: a library must not kill its host with SIGPIPE when the broker is gone.
            match send(self.stream.as_raw_fd(), bytes, MsgFlags::MSG_NOSIGNAL) {
                Ok(sent) => bytes = &bytes[sent..],
                Err(Errno::EINTR) => {}
                Err(errno) => return Err(self.os_error(errno)),
            }
        }
        Ok(())
    }

    /// The next answer; notices of leases the broker ended, met on the way, are recorded.
    pub(crate) fn receive(&mut self) -> Result<Reply, Error> {
        loop {
            let reply = self
                .next_frame(true)?
                .expect("a waiting read returns a frame");
            if !self.record_notice(&reply.response) {
                return Ok(reply);
            }
        }
    }

    /// Records a notice of a lease the broker ended; false for anything else.
    fn record_notice(&mut self, response: &Response) -> bool {
        let (id, how) = match response {
            Response::Revoked { id } => (*id, Ended::Revoked),
            Response::Expired { id } => (*id, Ended::Expired),
            _ => return false,
        };
        self.ended.insert(id, how);
        true
    }

    /// Reads, without waiting, what has arrived: notices of revoked leases and the answers to
    /// releases nobody waited for. Anything else would be an answer to nothing. An error leaves
    /// the connection unusable.
    pub(crate) fn poll_notices(&mut self) -> Result<(), Error> {
        self.refuse_if_out_of_step()?;
        self.out_of_step = true;
        self.read_notices()?;
        self.out_of_step = false;
        Ok(())
    }

    fn read_notices(&mut self) -> Result<(), Error> {
        while let Some(reply) = self.next_frame(false)? {
            if self.record_notice(&reply.response) {
                continue;
            }
            match reply.response {
                Response::Released { .. } | Response::Failed(_) if self.unanswered > 0 => {
                    self.unanswered -= 1;
                }
                other => {
                    return Err(Error::protocol(format!(
                        "the broker sent {} unasked",
                        other.name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Takes over what `old`, the connection this one replaces, learnt of leases the broker
    /// ended by itself, reading first (without waiting) whatever of that it still holds.
    pub(crate) fn inherit_notices(&mut self, mut old: Connection) {
        // Best effort: a broken connection may still hold notices before its end, or the late
        // answer of a request that timed out, where reading stops.
        let _ = old.read_notices();
        for (id, how) in old.ended {
            self.ended.entry(id).or_insert(how);
        }
    }

    /// How the broker ended lease `id` by itself, if it did.
    pub(crate) fn ended(&self, id: LeaseId) -> Option<Ended> {
        self.ended.get(&id).copied()
    }

    /// Reads until one whole frame is buffered, then decodes it and hands it the fds it
    /// announces. Bytes and fds beyond it stay buffered for the next call. Without `wait`,
    /// `None` when no whole frame has arrived yet.
    fn next_frame(&mut self, wait: bool) -> Result<Option<Reply>, Error> {
        let bad_frame = |e| Error::Protocol {
            detail: "bad frame from the broker".into(),
            source: Some(e),
        };
        loop {
            if let Some(payload) = self.frames.next_payload().map_err(bad_frame)? {
                let decoded = decode_response(payload);
                let hello_version = peek_hello_protocol(payload);
                let reply = self.take_frame(decoded, hello_version);
                self.shrink_when_idle();
                return reply.map(Some);
            }
            // A read sized by what the frame still needs: a large answer comes in few reads, and
            // little beyond one frame is ever held. Fds that come with the bytes of a later
            // frame wait in the queue for that frame.
            let wanted = self.frames.missing().map_err(bad_frame)?;
            if !self.fill(wanted.clamp(MIN_READ, MAX_READ), wait)? {
                return Ok(None);
            }
        }
    }

    /// Gives back the memory of a very large answer (a long `List`) once nothing is buffered.
    fn shrink_when_idle(&mut self) {
        self.frames.shrink_when_idle(MIN_READ);
        if self.read_buf.len() > MIN_READ {
            self.read_buf = Vec::new();
        }
    }

    /// The reply to a frame's payload, decoded (`decoded`, and the Hello version it announces
    /// if it is a Hello), with the fds it announces taken from the queue.
    fn take_frame(
        &mut self,
        decoded: Result<Response, portbroker_proto::Error>,
        hello_version: Option<u32>,
    ) -> Result<Reply, Error> {
        let response = match (decoded, hello_version) {
            (Ok(response), _) => response,
            // A Hello of another version may not decode with our types; say what it is.
            (Err(_), Some(broker)) if broker != PROTOCOL_VERSION => {
                return Err(Error::VersionMismatch {
                    broker,
                    client: PROTOCOL_VERSION,
                })
            }
            (Err(e), _) => {
                return Err(Error::Protocol {
                    detail: "cannot decode the broker's response".into(),
                    source: Some(e),
                })
            }
        };
        let fds = match &response {
            Response::Granted { id, fds, .. } => {
                // An id is granted once in a broker's life: a notice about an earlier lease of
                // this id came from an earlier life of the broker.
                self.ended.remove(id);
                let wanted = *fds as usize;
                if self.fds.len() < wanted {
                    return Err(Error::protocol(format!(
                        "the broker announced {wanted} sockets but sent {} file descriptors",
                        self.fds.len()
                    )));
                }
                self.fds.drain(..wanted).collect()
            }
            _ => Vec::new(),
        };
        // Whatever was asked, this answer means the broker is closing the connection.
        if let Response::Failed(Failure::VersionMismatch { broker, client }) = response {
            return Err(Error::VersionMismatch { broker, client });
        }
        Ok(Reply { response, fds })
    }

    /// Passes what one `recvmsg` of at most `max` bytes returns to the frame splitter; `false`
    /// when nothing had arrived and `wait` was not asked for.
    fn fill(&mut self, max: usize, wait: bool) -> Result<bool, Error> {
        if self.read_buf.len() < max {
            self.read_buf.resize(max, 0);
        }
        match self.recv_into_read_buf(max, wait)? {
            None => Ok(false),
            Some(0) => Err(self.lost(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the broker closed the connection",
            ))),
            Some(received) => {
                self.frames.push(&self.read_buf[..received]);
                Ok(true)
            }
        }
    }

    /// One `recvmsg` into `read_buf[..max]`; the fds it brings join the queue. Without `wait`,
    /// `None` when nothing has arrived.
    fn recv_into_read_buf(&mut self, max: usize, wait: bool) -> Result<Option<usize>, Error> {
        loop {
            if wait {
                self.wait_readable()?;
            }
            let mut iov = [IoSliceMut::new(&mut self.read_buf[..max])];
            let msg = match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut self.cmsg_buf),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
            ) {
                Ok(msg) => msg,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) if wait => continue,
                Err(Errno::EAGAIN) => return Ok(None),
                Err(errno) => return Err(self.os_error(errno)),
            };
            // With MSG_CTRUNC the kernel closed the fds that did not fit (and nix will not
            // parse the rest): a lease would come back without its sockets.
            let cmsgs = msg
                .cmsgs()
                .ok()
                .filter(|_| !msg.flags.contains(MsgFlags::MSG_CTRUNC))
                .ok_or_else(|| {
                    Error::protocol(format!(
                        "more file descriptors arrived than fit in one read \
                         ({MAX_FDS_PER_READ}); some were lost (MSG_CTRUNC)"
                    ))
                })?;
            for cmsg in cmsgs {
                adopt_scm_rights(cmsg, &mut self.fds);
            }
            return Ok(Some(msg.bytes));
        }
    }

    /// Waits until the broker's bytes (or its hang-up) can be read, at most the read timeout.
    ///
    /// A `poll`, not a blocking `recvmsg`: a reader blocked in `recvmsg` sleeps on the socket's
    /// wait queue unfiltered, so it is also woken each time the broker reads a request of ours
    /// (the kernel tells a Unix socket's writers that room came free), finds nothing, and sleeps
    /// again. `poll` waits for readable only. That spurious wake-up cost the broker a second
    /// wake-up per lease: a fifth of its CPU with 16 clients (README, Performance).
    fn wait_readable(&self) -> Result<(), Error> {
        let timeout = match self.read_timeout_ns.load(Ordering::Relaxed) {
            WAIT_FOREVER => None,
            ns => Some(TimeSpec::from_duration(Duration::from_nanos(ns))),
        };
        loop {
            let mut ready = [PollFd::new(self.stream.as_fd(), PollFlags::POLLIN)];
            match ppoll(&mut ready, timeout, None) {
                // What a blocking read past SO_RCVTIMEO says, as it said before.
                Ok(0) => return Err(self.os_error(Errno::EAGAIN)),
                Ok(_) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(errno) => return Err(self.os_error(errno)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::IoSlice;
    use std::net::{TcpListener, UdpSocket};
    use std::os::fd::AsFd;

    use nix::sys::socket::{sendmsg, ControlMessage};
    use portbroker_proto::{encode_response, GrantedSocket, LeaseId, Transport};

    fn send_with_fds(stream: &UnixStream, bytes: &[u8], fds: &[RawFd]) {
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(fds)]
        };
        let sent = sendmsg::<()>(
            stream.as_raw_fd(),
            &[IoSlice::new(bytes)],
            &cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
        assert_eq!(sent, bytes.len());
    }

    fn granted(id: u64, addrs: &[std::net::SocketAddr]) -> Vec<u8> {
        encode_response(&Response::Granted {
            id: LeaseId(id),
            sockets: addrs
                .iter()
                .map(|&addr| GrantedSocket {
                    transport: Transport::Tcp,
                    addr,
                    listening: true,
                    v6_only: false,
                })
                .collect(),
            fds: addrs.len() as u32,
        })
        .unwrap()
    }

    fn pair() -> (Connection, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        (Connection::new(ours, "/test.sock".into()), theirs)
    }

    fn local_port(fd: &OwnedFd) -> u16 {
        TcpListener::from(fd.try_clone().unwrap())
            .local_addr()
            .unwrap()
            .port()
    }

    /// The client thread's `voluntary_ctxt_switches`: how often it went to sleep.
    fn sleeps_of(tid: i32) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Whether thread `tid` is asleep (state `S`).
    fn is_asleep(tid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
        // The state follows the command name's closing parenthesis.
        stat.rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('S'))
    }

    fn wait_until_asleep(tid: i32) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !is_asleep(tid) {
            assert!(
                std::time::Instant::now() < deadline,
                "the client did not sleep in 10 s"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_waiting_client_is_woken_by_its_answer_only() {
        // A reader blocked in recvmsg is also woken when the broker reads its request (the
        // kernel tells a Unix socket's writer that room came free), finds nothing and sleeps
        // again: a second wake-up per request, which cost the broker a fifth of its CPU.
        const ROUND_TRIPS: u64 = 40;
        let (mut conn, mut broker) = pair();
        // Should the broker thread fail, the client fails too instead of waiting forever.
        conn.set_timeouts(Some(Duration::from_secs(20))).unwrap();
        let client = nix::unistd::gettid().as_raw();
        let answer = encode_response(&Response::Released { id: LeaseId(7) }).unwrap();
        let broker = std::thread::spawn(move || {
            let mut request = [0u8; 256];
            for _ in 0..ROUND_TRIPS {
                // Wait for the client to sleep on its answer, then read its request.
                wait_until_asleep(client);
                let read = io::Read::read(&mut broker, &mut request).unwrap();
                assert!(read > 0);
                // A client the read woke is runnable before the read returns: answer once it
                // sleeps again.
                wait_until_asleep(client);
                io::Write::write_all(&mut broker, &answer).unwrap();
            }
        });
        let before = sleeps_of(client);
        for _ in 0..ROUND_TRIPS {
            let reply = conn
                .round_trip(&Request::Release { id: LeaseId(7) })
                .unwrap();
            assert_eq!(reply.response, Response::Released { id: LeaseId(7) });
        }
        let slept = sleeps_of(client) - before;
        broker.join().unwrap();
        // One sleep per answer; room for the allocator, a page fault or another test's thread
        // on a lock, well short of the two per answer of a spurious wake-up.
        assert!(
            slept < ROUND_TRIPS * 3 / 2,
            "{slept} sleeps for {ROUND_TRIPS} answers"
        );
    }

    #[test]
    fn a_frame_split_over_many_reads_is_reassembled() {
        let (mut conn, broker) = pair();
        let frame = encode_response(&Response::Released { id: LeaseId(300) }).unwrap();
        let second = encode_response(&Response::Released { id: LeaseId(301) }).unwrap();
        // Byte by byte, and the second frame glued to the end of the first.
        for byte in &frame[..frame.len() - 1] {
            send_with_fds(&broker, &[*byte], &[]);
        }
        let mut tail = vec![frame[frame.len() - 1]];
        tail.extend_from_slice(&second);
        send_with_fds(&broker, &tail, &[]);

        let first = conn.receive().unwrap();
        assert_eq!(first.response, Response::Released { id: LeaseId(300) });
        assert!(first.fds.is_empty());
        let second = conn.receive().unwrap();
        assert_eq!(second.response, Response::Released { id: LeaseId(301) });
    }

    #[test]
    fn fds_arriving_with_an_earlier_frame_wait_for_theirs() {
        let (mut conn, broker) = pair();
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let b = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpListener::bind("127.0.0.1:0").unwrap();
        let first = granted(1, &[a.local_addr().unwrap()]);
        let second = granted(2, &[b.local_addr().unwrap(), c.local_addr().unwrap()]);

        // The first message holds the first frame's head with its fd; the second message holds
        // the first frame's tail, the second frame, and the second frame's fds: they arrive
        // before the first frame is complete.
        send_with_fds(&broker, &first[..3], &[a.as_raw_fd()]);
        let mut rest = first[3..].to_vec();
        rest.extend_from_slice(&second);
        send_with_fds(&broker, &rest, &[b.as_raw_fd(), c.as_raw_fd()]);

        let reply = conn.receive().unwrap();
        assert!(matches!(
            reply.response,
            Response::Granted { id: LeaseId(1), .. }
        ));
        assert_eq!(reply.fds.len(), 1);
        assert_eq!(local_port(&reply.fds[0]), a.local_addr().unwrap().port());

        let reply = conn.receive().unwrap();
        assert!(matches!(
            reply.response,
            Response::Granted { id: LeaseId(2), .. }
        ));
        let ports: Vec<u16> = reply.fds.iter().map(local_port).collect();
        assert_eq!(
            ports,
            [
                b.local_addr().unwrap().port(),
                c.local_addr().unwrap().port()
            ]
        );
    }

    #[test]
    fn received_fds_are_close_on_exec() {
        let (mut conn, broker) = pair();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        send_with_fds(
            &broker,
            &granted(5, &[udp.local_addr().unwrap()]),
            &[udp.as_raw_fd()],
        );
        let reply = conn.receive().unwrap();
        let flags = nix::fcntl::fcntl(reply.fds[0].as_fd(), nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(flags & nix::libc::FD_CLOEXEC, 0);
    }

    #[test]
    fn more_fds_than_the_control_buffer_holds_is_a_protocol_error() {
        let (mut conn, broker) = pair();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let fds = vec![udp.as_raw_fd(); MAX_FDS_PER_READ + 1];
        send_with_fds(&broker, &granted(1, &[udp.local_addr().unwrap()]), &fds);
        let err = conn.receive().unwrap_err();
        assert!(err.to_string().contains("MSG_CTRUNC"), "{err}");
    }

    #[test]
    fn a_granted_frame_without_its_fds_is_a_protocol_error() {
        let (mut conn, broker) = pair();
        let addr = "127.0.0.1:1".parse().unwrap();
        send_with_fds(&broker, &granted(1, &[addr, addr]), &[]);
        let err = conn.receive().unwrap_err();
        assert!(matches!(err, Error::Protocol { .. }), "{err}");
    }

    #[test]
    fn hostile_lengths_are_refused_before_reading_on() {
        let (mut conn, broker) = pair();
        send_with_fds(&broker, &u32::MAX.to_le_bytes(), &[]);
        let err = conn.receive().unwrap_err();
        assert!(
            matches!(
                err,
                Error::Protocol {
                    source: Some(_),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_closed_connection_is_reported_as_lost() {
        let (mut conn, broker) = pair();
        drop(broker);
        let err = conn.round_trip(&Request::Status).unwrap_err();
        assert!(matches!(err, Error::ConnectionLost { .. }), "{err}");
        // The connection is out of step now and refuses to pair a late answer with a new request.
        let err = conn.round_trip(&Request::List).unwrap_err();
        assert!(err.to_string().contains("half-way"), "{err}");
    }

    #[test]
    fn a_timeout_is_a_lost_connection_of_kind_timed_out() {
        let (mut conn, _broker) = pair();
        conn.set_read_timeout(Some(std::time::Duration::from_millis(1)))
            .unwrap();
        match conn.round_trip(&Request::Status).unwrap_err() {
            Error::ConnectionLost { source, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::TimedOut)
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn a_future_hello_is_a_version_mismatch() {
        let (mut conn, broker) = pair();
        // A Hello of protocol 9 with fields this client cannot decode.
        send_with_fds(&broker, &[5, 0, 0, 0, 0, 9, 0xff, 0xff, 0xff], &[]);
        let err = conn.receive().unwrap_err();
        assert!(
            matches!(
                err,
                Error::VersionMismatch {
                    broker: 9,
                    client: PROTOCOL_VERSION
                }
            ),
            "{err}"
        );
    }
}
