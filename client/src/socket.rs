//! The sockets a lease hands over, typed by transport and state.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use portbroker_proto::{GrantedSocket, Transport};

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
    /// Wraps an fd the broker granted, according to what the broker said it is. The broker
    /// hands out blocking sockets of the granted transport (a protocol guarantee), so nothing
    /// is checked or changed and this costs no syscall.
    pub(crate) fn from_granted(fd: OwnedFd, granted: &GrantedSocket) -> Self {
        match (granted.transport, granted.listening) {
            (Transport::Tcp, true) => LeasedSocket::TcpListener(fd.into()),
            (Transport::Tcp, false) => LeasedSocket::TcpBound(fd.into()),
            (Transport::Udp, _) => LeasedSocket::Udp(fd.into()),
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
