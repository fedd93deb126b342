//! The sockets a lease hands over, typed by transport and state.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt, SockType};
use portbroker_proto::{GrantedSocket, Transport};

use crate::Error;

/// A bound socket received from the broker.
#[derive(Debug)]
pub enum LeasedSocket {
    /// A listening TCP socket: call `accept()`.
    TcpListener(TcpListener),
    /// A TCP socket that is bound but not listening yet ([`Listen::BindOnly`]); call `listen()`
    /// on it (for example through `socket2` or `nix`) before accepting.
    ///
    /// [`Listen::BindOnly`]: crate::Listen::BindOnly
    TcpBound(TcpListener),
    /// A bound UDP socket.
    Udp(UdpSocket),
}

impl LeasedSocket {
    /// Wraps a received fd according to what the broker said it is, after checking that the
    /// socket type agrees. The socket is put in blocking mode, as std's types expect.
    pub(crate) fn from_granted(fd: OwnedFd, granted: &GrantedSocket) -> Result<Self, Error> {
        let expected = match granted.transport {
            Transport::Tcp => SockType::Stream,
            Transport::Udp => SockType::Datagram,
        };
        let actual = getsockopt(&fd, sockopt::SockType).map_err(|errno| {
            Error::protocol(format!(
                "the broker sent an fd for {granted} that is not a socket: {errno}"
            ))
        })?;
        if actual != expected {
            return Err(Error::protocol(format!(
                "the broker sent a {actual:?} socket for {granted}"
            )));
        }
        let socket = match (granted.transport, granted.listening) {
            (Transport::Tcp, true) => LeasedSocket::TcpListener(fd.into()),
            (Transport::Tcp, false) => LeasedSocket::TcpBound(fd.into()),
            (Transport::Udp, _) => LeasedSocket::Udp(fd.into()),
        };
        socket.set_blocking().map_err(|e| {
            Error::protocol(format!(
                "cannot make the socket for {granted} blocking: {e}"
            ))
        })?;
        Ok(socket)
    }

    fn set_blocking(&self) -> io::Result<()> {
        match self {
            LeasedSocket::TcpListener(s) | LeasedSocket::TcpBound(s) => s.set_nonblocking(false),
            LeasedSocket::Udp(s) => s.set_nonblocking(false),
        }
    }

    /// The address the socket is bound to, as the kernel reports it.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            LeasedSocket::TcpListener(s) | LeasedSocket::TcpBound(s) => s.local_addr(),
            LeasedSocket::Udp(s) => s.local_addr(),
        }
    }

    /// TCP or UDP.
    pub fn transport(&self) -> Transport {
        match self {
            LeasedSocket::TcpListener(_) | LeasedSocket::TcpBound(_) => Transport::Tcp,
            LeasedSocket::Udp(_) => Transport::Udp,
        }
    }

    /// Gives up the typed wrapper and returns the file descriptor.
    pub fn into_owned_fd(self) -> OwnedFd {
        match self {
            LeasedSocket::TcpListener(s) | LeasedSocket::TcpBound(s) => s.into(),
            LeasedSocket::Udp(s) => s.into(),
        }
    }
}

impl AsFd for LeasedSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            LeasedSocket::TcpListener(s) | LeasedSocket::TcpBound(s) => s.as_fd(),
            LeasedSocket::Udp(s) => s.as_fd(),
        }
    }
}

impl AsRawFd for LeasedSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.as_fd().as_raw_fd()
    }
}

impl From<LeasedSocket> for OwnedFd {
    fn from(socket: LeasedSocket) -> OwnedFd {
        socket.into_owned_fd()
    }
}
