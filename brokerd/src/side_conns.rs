//! The short connections of the daemon's side endpoints (the metrics scrapes, the portserver's
//! clients): each watched by the loop's epoll under a token of its own, at most so many at a
//! time, and closed at its deadline. What each protocol keeps per connection is `T`.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

/// One connection: its stream, when it is closed at the latest, and its protocol's state.
pub struct SideConn<S, T> {
    pub stream: S,
    deadline: Instant,
    pub state: T,
}

pub struct SideConns<S, T> {
    conns: HashMap<u64, SideConn<S, T>>,
    next_token: u64,
    max: usize,
    lifetime: Duration,
}

impl<S: AsFd, T> SideConns<S, T> {
    /// Connections with tokens from `first_token` on (a range no other source of the loop's
    /// tokens reaches), at most `max` at a time, each closed `lifetime` after it is kept.
    pub fn new(first_token: u64, max: usize, lifetime: Duration) -> Self {
        SideConns {
            conns: HashMap::new(),
            next_token: first_token,
            max,
            lifetime,
        }
    }

    /// Whether `max` are open: a new one is to be closed at once.
    pub fn is_full(&self) -> bool {
        self.conns.len() >= self.max
    }

    /// Keeps an accepted `stream`, made non-blocking and watched for input, with `state`; false
    /// when that failed (the stream is closed).
    pub fn add(&mut self, epoll: &Epoll, stream: S, state: T) -> bool {
        if rustix::io::ioctl_fionbio(&stream, true).is_err() {
            return false;
        }
        let token = self.next_token;
        if epoll
            .add(stream.as_fd(), EpollEvent::new(EpollFlags::EPOLLIN, token))
            .is_err()
        {
            return false;
        }
        self.next_token += 1;
        self.conns.insert(
            token,
            SideConn {
                stream,
                deadline: Instant::now() + self.lifetime,
                state,
            },
        );
        true
    }

    pub fn get_mut(&mut self, token: u64) -> Option<&mut SideConn<S, T>> {
        self.conns.get_mut(&token)
    }

    /// Stops watching connection `token` and closes it.
    pub fn close(&mut self, epoll: &Epoll, token: u64) {
        if let Some(conn) = self.conns.remove(&token) {
            let _ = epoll.delete(conn.stream.as_fd());
        }
    }

    pub fn close_all(&mut self, epoll: &Epoll) {
        for (_, conn) in self.conns.drain() {
            let _ = epoll.delete(conn.stream.as_fd());
        }
    }

    /// Closes the connections past their deadline at `now`; how many.
    pub fn expire(&mut self, epoll: &Epoll, now: Instant) -> usize {
        let before = self.conns.len();
        self.conns.retain(|_, conn| {
            let late = conn.deadline <= now;
            if late {
                let _ = epoll.delete(conn.stream.as_fd());
            }
            !late
        });
        before - self.conns.len()
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.values().map(|conn| conn.deadline).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn epoll() -> Epoll {
        Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC).unwrap()
    }

    #[test]
    fn connections_are_watched_under_tokens_of_their_own_and_closed_at_their_deadline() {
        let epoll = epoll();
        let mut conns: SideConns<UnixStream, u32> = SideConns::new(1 << 61, 2, Duration::ZERO);
        let (a, peer_a) = UnixStream::pair().unwrap();
        let (b, _peer_b) = UnixStream::pair().unwrap();
        assert!(conns.add(&epoll, a, 7) && conns.add(&epoll, b, 8));
        assert!(conns.is_full());
        let first = conns.get_mut(1 << 61).unwrap();
        assert_eq!(first.state, 7);
        let flags = nix::fcntl::fcntl(&first.stream, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert!(
            nix::fcntl::OFlag::from_bits_truncate(flags).contains(nix::fcntl::OFlag::O_NONBLOCK),
            "a kept connection must not block the loop"
        );

        // Input on the first one wakes the loop with its token.
        std::io::Write::write_all(&mut &peer_a, b"x").unwrap();
        let mut events = [EpollEvent::empty(); 4];
        let ready = epoll
            .wait(&mut events, nix::sys::epoll::EpollTimeout::ZERO)
            .unwrap();
        assert_eq!(ready, 1);
        assert_eq!(events[0].data(), 1 << 61);
        let first = conns.get_mut(1 << 61).unwrap();
        std::io::Read::read_exact(&mut first.stream, &mut [0; 1]).unwrap();

        // Both are past a deadline of zero: closed and no longer watched.
        assert_eq!(
            conns.next_deadline().map(|d| d <= Instant::now()),
            Some(true)
        );
        assert_eq!(conns.expire(&epoll, Instant::now()), 2);
        assert!(!conns.is_full() && conns.get_mut(1 << 61).is_none());
        // The peer sees its end closed.
        peer_a
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        assert_eq!(std::io::Read::read(&mut &peer_a, &mut [0; 1]).unwrap(), 0);
    }
}
