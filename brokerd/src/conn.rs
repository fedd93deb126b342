//! One client connection: its peer, its unparsed input, and its outgoing queue with the
//! granted sockets waiting to travel.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::epoll::EpollFlags;
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use portbroker_proto::{FrameSplitter, MAX_REQUEST_FRAME};
use tracing::debug;

use crate::lease::MAX_SOCKETS_PER_LEASE;
use crate::peer::Peer;

/// Above this much unsent output, the broker stops reading a connection's requests until the
/// client reads its answers.
const OUTPUT_HIGH_WATER: usize = 256 * 1024;
/// A buffer that grew for a large frame is given back once it is empty and larger than this.
pub const IDLE_BUFFER: usize = 1024;

struct Outgoing {
    bytes: Vec<u8>,
    sent: usize,
    /// Sent as SCM_RIGHTS with the first byte; dropped (closed) as soon as that byte is out.
    fds: Vec<OwnedFd>,
}

pub struct Conn {
    pub stream: UnixStream,
    pub peer: Peer,
    /// When the last request came, for the idle timeout.
    pub last_request: Instant,
    /// Received bytes not yet served.
    pub frames: FrameSplitter,
    out: VecDeque<Outgoing>,
    out_bytes: usize,
    pub greeted: bool,
    /// Serve nothing more; close once the output is flushed.
    pub closing: bool,
    /// The peer is gone or the stream failed: close now.
    pub broken: bool,
    /// The epoll interest registered now.
    pub interest: EpollFlags,
    /// Granted sockets not yet sent. Requests wait while a lease's worth are queued, or while
    /// the socket refused output (`output_blocked`), so a client that does not read can hold
    /// at most one lease's worth of sockets in the broker.
    pub queued_fds: usize,
    output_blocked: bool,
    /// A sent chunk's buffer, kept for the next one: no allocation per response.
    spare: Vec<u8>,
    /// Complete frames may be left in `frames` after a turn's quota was used.
    pub in_ready_queue: bool,
}

impl Conn {
    pub fn new(stream: UnixStream, peer: Peer, interest: EpollFlags) -> Conn {
        Conn {
            stream,
            peer,
            last_request: Instant::now(),
            frames: FrameSplitter::new(MAX_REQUEST_FRAME),
            out: VecDeque::new(),
            out_bytes: 0,
            greeted: false,
            closing: false,
            broken: false,
            interest,
            queued_fds: 0,
            output_blocked: false,
            spare: Vec::new(),
            in_ready_queue: false,
        }
    }

    /// Bytes queued and not yet sent.
    pub fn unsent(&self) -> usize {
        self.out_bytes
    }

    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    pub fn wanted_interest(&self) -> EpollFlags {
        let mut flags = EpollFlags::empty();
        if self.wants_requests() {
            flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if !self.out.is_empty() {
            flags |= EpollFlags::EPOLLOUT;
        }
        flags
    }

    pub fn wants_requests(&self) -> bool {
        !self.closing
            && !self.broken
            && !self.output_blocked
            && self.out_bytes < OUTPUT_HIGH_WATER
            && self.queued_fds < MAX_SOCKETS_PER_LEASE
    }

    /// Queues an encoded frame; `flush` sends what a turn queued in as few `sendmsg` calls as
    /// the fds allow (one, usually). Fds travel with the first byte of their chunk, which is
    /// at or before their frame, and a chunk carries at most one lease's worth, as clients
    /// expect.
    pub fn send(&mut self, bytes: &[u8], fds: Vec<OwnedFd>) {
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

    /// Sends as much of the queue as the socket takes.
    pub fn flush(&mut self) {
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
                    debug!("send to {} failed: {err}", self.peer.holder);
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
