//! One-line leasing for the common case: a listener (or UDP socket) that carries its lease.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::ops::{Deref, DerefMut};

use portbroker_proto::{Listen, Refusal, SocketSpec, Transport};

use crate::{Broker, Error, ErrorKind, Lease, LeasedSocket};

/// A socket together with the lease that reserves its address, if any: what [`listen`],
/// [`bind_udp`] and [`listen_or_bind`] return. It dereferences to the socket (`S` is
/// [`std::net::TcpListener`] for a [`Listener`], [`std::net::UdpSocket`] for a [`BoundUdp`]),
/// and holds the lease (with its broker connection) for as long as it lives: dropping it closes
/// the socket, then ends the lease.
///
/// Only [`listen_or_bind`] with [`Fallback::BindDirectly`] makes one without a lease; then
/// [`Bound::is_leased`] is false and [`Bound::warning`] says why.
pub struct Bound<S> {
    // Declared before `lease`, so dropped first: the address is free once the lease ends.
    socket: S,
    lease: Option<Lease>,
    warning: Option<String>,
}

/// A listening TCP socket and its lease: see [`Bound`] and [`listen`].
pub type Listener = Bound<TcpListener>;

/// A bound UDP socket and its lease: see [`Bound`] and [`bind_udp`].
pub type BoundUdp = Bound<UdpSocket>;

/// What [`listen_or_bind`] does when no broker is reachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// Nothing: fail with [`ErrorKind::Unreachable`], as [`listen`] does.
    #[default]
    Never,
    /// Bind the spec's address directly, without a lease. The result says so
    /// ([`Bound::is_leased`] is false, [`Bound::warning`] explains). Port 0 then gets a port
    /// from the kernel's ephemeral range, not from a broker's pool, and a spec without an
    /// address binds `[::]`, or `0.0.0.0` where the host has no IPv6.
    ///
    /// Only an unreachable broker falls back: a broker that refuses (the port is in use, the
    /// policy forbids it) or that cannot be trusted is an error as usual.
    BindDirectly,
}

/// Leases `spec` (`tcp:8080`, `tcp:127.0.0.1:0`, ...) from the broker that
/// [`Broker::connect`] finds, and returns its listening socket with the lease.
///
/// ```no_run
/// # fn main() -> Result<(), portbroker::Error> {
/// let listener = portbroker::listen("tcp:127.0.0.1:0")?;
/// println!("serving on {}", listener.local_addr().unwrap());
/// for stream in listener.incoming() {
///     let _stream = stream.expect("accept");
///     // ...
/// #   break;
/// }
/// // Dropping `listener` closes the socket and ends the lease.
/// # Ok(())
/// # }
/// ```
///
/// Without a broker this fails with [`ErrorKind::Unreachable`]; [`listen_or_bind`] can bind
/// directly instead, when the caller says so.
pub fn listen(spec: &str) -> Result<Listener, Error> {
    Broker::connect()?.listen(spec)
}

/// Leases the UDP `spec` (`udp:5353`, `udp:127.0.0.1:0`, ...) from the broker that
/// [`Broker::connect`] finds, and returns its socket with the lease.
///
/// ```no_run
/// # fn main() -> Result<(), portbroker::Error> {
/// let socket = portbroker::bind_udp("udp:127.0.0.1:0")?;
/// let mut buf = [0; 1500];
/// let (n, peer) = socket.recv_from(&mut buf).expect("recv");
/// socket.send_to(&buf[..n], peer).expect("send");
/// # Ok(())
/// # }
/// ```
pub fn bind_udp(spec: &str) -> Result<BoundUdp, Error> {
    Broker::connect()?.bind_udp(spec)
}

/// [`listen`], or, when no broker is reachable and `fallback` is [`Fallback::BindDirectly`],
/// a socket bound directly, without a lease. Nothing falls back unless the caller asks: use it
/// for programs that must also run where no broker is installed, and show the warning.
///
/// ```no_run
/// use portbroker::Fallback;
///
/// # fn main() -> Result<(), portbroker::Error> {
/// let listener = portbroker::listen_or_bind("tcp:127.0.0.1:8080", Fallback::BindDirectly)?;
/// if let Some(warning) = listener.warning() {
///     eprintln!("warning: {warning}");
/// }
/// assert_eq!(listener.is_leased(), listener.lease().is_some());
/// # Ok(())
/// # }
/// ```
///
/// A failed direct bind is [`ErrorKind::BindFailed`] (its message says the broker was not
/// reachable); a malformed or non-TCP spec is refused before anything else is tried.
pub fn listen_or_bind(spec: &str, fallback: Fallback) -> Result<Listener, Error> {
    let parsed = tcp_spec(spec)?;
    match Broker::connect().and_then(|broker| broker.listen(spec)) {
        Err(err) if err.kind() == ErrorKind::Unreachable && fallback == Fallback::BindDirectly => {
            bind_directly(&parsed, &err)
        }
        other => other,
    }
}

/// Parses `text` and checks that it asks for a listening TCP socket.
pub(crate) fn tcp_spec(text: &str) -> Result<SocketSpec, Error> {
    let spec: SocketSpec = text.parse()?;
    if spec.transport != Transport::Tcp || spec.listen == Listen::BindOnly {
        return Err(invalid(format!(
            "{text}: a listener needs a listening TCP spec"
        )));
    }
    Ok(spec)
}

/// Parses `text` and checks that it asks for a UDP socket.
pub(crate) fn udp_spec(text: &str) -> Result<SocketSpec, Error> {
    let spec: SocketSpec = text.parse()?;
    if spec.transport != Transport::Udp {
        return Err(invalid(format!("{text}: a UDP socket needs a UDP spec")));
    }
    Ok(spec)
}

fn invalid(reason: String) -> Error {
    Error::Refused(Refusal::InvalidSpec { index: 0, reason })
}

impl Broker {
    /// Leases the TCP `spec` and returns its listening socket with the lease (see [`listen`],
    /// which connects to the default broker). A malformed or non-TCP spec is refused without
    /// asking the broker.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), portbroker::Error> {
    /// let broker = portbroker::Broker::connect_to("/run/portbroker/portbroker.sock")?;
    /// let listener = broker.listen("tcp:127.0.0.1:0")?;
    /// assert!(listener.is_leased());
    /// # Ok(())
    /// # }
    /// ```
    pub fn listen(&self, spec: &str) -> Result<Listener, Error> {
        let mut lease = self.lease([tcp_spec(spec)?])?;
        match lease.take_sockets().pop() {
            Some(LeasedSocket::TcpListener(socket)) => Ok(Bound::leased(socket, lease)),
            other => Err(Error::protocol(format!(
                "asked for a listening TCP socket for {spec}, the broker sent {other:?}"
            ))),
        }
    }

    /// Leases the UDP `spec` and returns its socket with the lease (see [`bind_udp`]).
    pub fn bind_udp(&self, spec: &str) -> Result<BoundUdp, Error> {
        let mut lease = self.lease([udp_spec(spec)?])?;
        match lease.take_sockets().pop() {
            Some(LeasedSocket::Udp(socket)) => Ok(Bound::leased(socket, lease)),
            other => Err(Error::protocol(format!(
                "asked for a UDP socket for {spec}, the broker sent {other:?}"
            ))),
        }
    }
}

/// Binds `spec` without a broker, for [`Fallback::BindDirectly`]; `why` is the connect error.
fn bind_directly(spec: &SocketSpec, why: &Error) -> Result<Listener, Error> {
    let first: IpAddr = spec.addr.unwrap_or(Ipv6Addr::UNSPECIFIED.into());
    let mut at = SocketAddr::new(first, spec.port);
    let mut bound = TcpListener::bind(at);
    if let Err(err) = &bound {
        // No IPv6 on this host: the wildcard is IPv4's, as for the broker.
        if spec.addr.is_none() && err.raw_os_error() == Some(nix::errno::Errno::EAFNOSUPPORT as i32)
        {
            at = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), spec.port);
            bound = TcpListener::bind(at);
        }
    }
    match bound {
        Ok(socket) => {
            let warning = format!(
                "not leased: no broker is reachable ({why}); bound tcp:{} directly, so the \
                 broker neither reserves nor guards this port",
                socket.local_addr().unwrap_or(at)
            );
            Ok(Bound {
                socket,
                lease: None,
                warning: Some(warning),
            })
        }
        Err(err) => Err(Error::Refused(Refusal::BindFailed {
            transport: Transport::Tcp,
            requested: at,
            errno: err.raw_os_error().unwrap_or(0),
            message: format!("{err} (binding directly, since no broker is reachable: {why})"),
        })),
    }
}

impl<S> Bound<S> {
    fn leased(socket: S, lease: Lease) -> Self {
        Bound {
            socket,
            lease: Some(lease),
            warning: None,
        }
    }

    /// Whether a broker leased the address: false only for a socket bound directly by
    /// [`Fallback::BindDirectly`].
    pub fn is_leased(&self) -> bool {
        self.lease.is_some()
    }

    /// The lease, if leased: its id, its granted address, [`Lease::renew`] and so on.
    pub fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Why the socket is not leased, to show the user; `None` when it is leased.
    pub fn warning(&self) -> Option<&str> {
        self.warning.as_deref()
    }

    /// The socket.
    pub fn socket(&self) -> &S {
        &self.socket
    }

    /// Splits into the socket and the lease. Keep the lease as long as the socket serves:
    /// dropping it ends the lease, and the broker may then grant the address to someone else
    /// once the socket is closed. Bind it to a name (`let (socket, _lease) = ...`), not to `_`,
    /// which drops it at once.
    pub fn into_parts(self) -> (S, Option<Lease>) {
        (self.socket, self.lease)
    }
}

impl<S> Deref for Bound<S> {
    type Target = S;

    fn deref(&self) -> &S {
        &self.socket
    }
}

impl<S> DerefMut for Bound<S> {
    fn deref_mut(&mut self) -> &mut S {
        &mut self.socket
    }
}

impl<S> AsRef<S> for Bound<S> {
    fn as_ref(&self) -> &S {
        &self.socket
    }
}

impl<S: std::os::fd::AsFd> std::os::fd::AsFd for Bound<S> {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

impl<S: std::os::fd::AsRawFd> std::os::fd::AsRawFd for Bound<S> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }
}

impl<S: fmt::Debug> fmt::Debug for Bound<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bound")
            .field("socket", &self.socket)
            .field("lease", &self.lease.as_ref().map(Lease::id))
            .field("warning", &self.warning)
            .finish()
    }
}

#[cfg(feature = "tokio")]
impl Bound<TcpListener> {
    /// Converts into a tokio listener (in non-blocking mode) that keeps the lease.
    /// For `axum::serve`, which takes the listener itself, split it with [`Bound::into_parts`]
    /// and keep the lease:
    ///
    /// ```no_run
    /// # async fn serve() -> Result<(), Box<dyn std::error::Error>> {
    /// let listener = portbroker::listen("tcp:127.0.0.1:0")?.into_tokio()?;
    /// let (stream, peer) = listener.accept().await?;
    /// # drop((stream, peer));
    /// let (_listener, _lease) = listener.into_parts();
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Must be called from within a tokio runtime with I/O enabled; outside one, tokio panics.
    pub fn into_tokio(self) -> std::io::Result<Bound<tokio::net::TcpListener>> {
        self.socket.set_nonblocking(true)?;
        Ok(Bound {
            socket: tokio::net::TcpListener::from_std(self.socket)?,
            lease: self.lease,
            warning: self.warning,
        })
    }
}

#[cfg(feature = "tokio")]
impl Bound<UdpSocket> {
    /// Converts into a tokio UDP socket (in non-blocking mode) that keeps the lease.
    ///
    /// Must be called from within a tokio runtime with I/O enabled; outside one, tokio panics.
    pub fn into_tokio(self) -> std::io::Result<Bound<tokio::net::UdpSocket>> {
        self.socket.set_nonblocking(true)?;
        Ok(Bound {
            socket: tokio::net::UdpSocket::from_std(self.socket)?,
            lease: self.lease,
            warning: self.warning,
        })
    }
}
