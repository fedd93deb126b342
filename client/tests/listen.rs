//! The one-line API (`portbroker::listen`, `bind_udp`, `listen_or_bind`) through the
//! environment, as applications use it: with no broker reachable, and with one.
//!
//! One test, because it sets `PORTBROKER_SOCKET`: the process environment is shared by the
//! test threads of a binary, and this binary has no other.

mod support;

use std::net::{TcpStream, UdpSocket};

use portbroker::{ErrorKind, Fallback};
use support::Daemon;

#[test]
fn listen_needs_a_broker_and_falls_back_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let nowhere = dir.path().join("nobody-listens-here.sock");
    std::env::set_var("PORTBROKER_SOCKET", &nowhere);

    // No broker: the plain calls fail, and say so.
    let err = portbroker::listen("tcp:127.0.0.1:0").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    let err = portbroker::bind_udp("udp:127.0.0.1:0").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    let err = portbroker::listen_or_bind("tcp:127.0.0.1:0", Fallback::Never).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");

    // Asked to, the fallback binds directly and says that it is not leased.
    let listener = portbroker::listen_or_bind("tcp:127.0.0.1:0", Fallback::BindDirectly).unwrap();
    assert!(!listener.is_leased());
    assert!(listener.lease().is_none());
    let warning = listener.warning().expect("an unleased listener says why");
    assert!(warning.contains("not leased"), "{warning}");
    assert!(
        warning.contains(&nowhere.display().to_string()),
        "{warning}"
    );
    let addr = listener.local_addr().unwrap();
    assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    let _client = TcpStream::connect(addr).unwrap();
    listener.accept().unwrap();

    // No address in the spec: the wildcard, as the broker would bind.
    let wildcard = portbroker::listen_or_bind("tcp:0", Fallback::BindDirectly).unwrap();
    assert!(!wildcard.is_leased());
    assert!(wildcard.local_addr().unwrap().ip().is_unspecified());
    drop(wildcard);

    // Specs are checked before anything is bound, fallback or not.
    let err = portbroker::listen_or_bind("udp:127.0.0.1:0", Fallback::BindDirectly).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    let err = portbroker::listen_or_bind("tcp:nonsense", Fallback::BindDirectly).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");
    // A direct bind that fails is an error, not a silent success.
    let taken = format!("tcp:{addr}");
    let err = portbroker::listen_or_bind(&taken, Fallback::BindDirectly).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::BindFailed, "{err}");
    drop(listener);

    // With a broker: leased, and the fallback is not used even when allowed.
    let daemon = Daemon::start();
    std::env::set_var("PORTBROKER_SOCKET", &daemon.socket);
    let broker = daemon.broker();
    let listener = portbroker::listen_or_bind("tcp:127.0.0.1:0", Fallback::BindDirectly).unwrap();
    assert!(listener.is_leased());
    assert!(listener.warning().is_none());
    let addr = listener.local_addr().unwrap();
    let port = addr.port();
    assert!(
        (daemon.pool.0..=daemon.pool.1).contains(&port),
        "{port} is from the broker's pool"
    );
    let id = listener.lease().unwrap().id();
    assert!(broker.list().unwrap().iter().any(|l| l.id == id));
    let _client = TcpStream::connect(addr).unwrap();
    listener.accept().unwrap();

    let plain = portbroker::listen("tcp:127.0.0.1:0").unwrap();
    assert!(plain.is_leased());
    // The port is the lease's: asking for it again is refused as in use.
    let err = portbroker::listen(&format!("tcp:{addr}")).unwrap_err();
    assert!(err.is_in_use(), "{err}");
    // ... and the fallback does not bypass a refusal.
    let err =
        portbroker::listen_or_bind(&format!("tcp:{addr}"), Fallback::BindDirectly).unwrap_err();
    assert!(err.is_in_use(), "{err}");

    let udp = portbroker::bind_udp("udp:127.0.0.1:0").unwrap();
    assert!(udp.is_leased());
    let udp_addr = udp.local_addr().unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender.send_to(b"ping", udp_addr).unwrap();
    let mut buf = [0; 16];
    let (n, _) = udp.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"ping");
    let err = portbroker::bind_udp("tcp:127.0.0.1:0").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec, "{err}");

    // Dropping a listener closes its socket and ends its lease.
    let udp_id = udp.lease().unwrap().id();
    drop((listener, plain, udp));
    assert!(support::wait_until(
        std::time::Duration::from_secs(5),
        || {
            let leases = broker.list().unwrap();
            !leases.iter().any(|l| l.id == id || l.id == udp_id)
        }
    ));
    // ... and the port is free for the next lease.
    let again = broker.listen(&format!("tcp:{addr}")).unwrap();
    assert_eq!(again.local_addr().unwrap(), addr);
}
