//! Ports as numbers (`Listen::Number`) and IPv6-only wildcards, through a real daemon: what a
//! server that binds a number itself (under `portctl wrap`) and binds `0.0.0.0` and `[::]`
//! separately (redis, memcached) needs of the broker.

mod support;

use std::net::{TcpListener, TcpStream};

use portbroker::{LeaseState, Listen, Refusal, SocketSpec};
use support::Daemon;

fn number(text: &str) -> SocketSpec {
    SocketSpec {
        listen: Listen::Number,
        ..text.parse().unwrap()
    }
}

fn state_of(daemon: &Daemon, id: portbroker::LeaseId) -> Option<LeaseState> {
    let leases = daemon.broker().list().unwrap();
    leases.iter().find(|l| l.id == id).map(|l| l.state)
}

#[test]
fn a_number_holds_the_port_for_its_user_whose_lease_then_takes_it_over() {
    let daemon = Daemon::start();
    let test = daemon.broker();
    let held = test.lease([number("tcp:127.0.0.1:0")]).unwrap();
    assert!(held.sockets().is_empty(), "a number comes with no socket");
    let port = held.local_addr().port();
    assert_ne!(port, 0);
    assert_eq!(state_of(&daemon, held.id()), Some(LeaseState::Number));
    let listed = daemon.portctl().arg("list").output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.contains(&format!(":{port}")) && listed.contains("number"),
        "{listed}"
    );

    // The broker holds no socket: the server that was told the number binds it (through the
    // broker, on another connection of the same user), and the number ends as it does.
    let server = daemon.broker();
    let lease = server
        .lease_str(&[&format!("tcp:0.0.0.0:{port}")])
        .expect("the user's own lease takes the number over");
    let listener = lease.tcp_listener().expect("a listening socket");
    let _client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    listener.accept().unwrap();
    assert_eq!(state_of(&daemon, held.id()), None, "the number ended");
    // Releasing the number afterwards is not an error the caller must handle specially:
    // the broker says it has no such lease.
    let err = held.release().unwrap_err();
    assert!(err.to_string().contains("no live lease"), "{err}");
    assert!(
        state_of(&daemon, lease.id()).is_some(),
        "the server's lease lives on"
    );
}

#[test]
fn an_ipv6_only_wildcard_shares_its_port_with_the_ipv4_wildcard() {
    if TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this host has no IPv6");
        return;
    }
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let v4 = broker.lease_str(&["tcp:0.0.0.0:0"]).unwrap();
    let port = v4.local_addr().port();
    let dual = broker
        .lease_str(&[&format!("tcp:[::]:{port}")])
        .unwrap_err();
    assert!(
        matches!(&dual, portbroker::Error::Refused(Refusal::InUse { lease, .. }) if *lease == v4.id()),
        "{dual}"
    );
    let v6_only = SocketSpec {
        v6_only: true,
        ..format!("tcp:[::]:{port}").parse().unwrap()
    };
    let v6 = broker.lease([v6_only]).unwrap();
    assert!(v6.granted()[0].v6_only);
    for (lease, addr) in [(&v4, "127.0.0.1"), (&v6, "::1")] {
        let _client = TcpStream::connect((addr, port)).unwrap();
        let (_, peer) = lease.tcp_listener().unwrap().accept().unwrap();
        assert_eq!(peer.ip().to_string(), addr);
    }
}
