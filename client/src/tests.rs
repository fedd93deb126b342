//! Tests of the whole client against a scripted broker on a real Unix socket.

use std::io::{IoSlice, Read};
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use portbroker_proto::{
    decode_request, encode_response, Failure, FrameSplitter, GrantedSocket, LeaseId, PortRange,
    Refusal, Request, Response, StatusInfo, Transport, MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};

use crate::{Broker, Error, ErrorKind, Lease, LeasedSocket};

type Handler = Box<dyn FnMut(Request) -> (Response, Vec<OwnedFd>) + Send>;

struct FakeBroker {
    _dir: tempfile::TempDir,
    path: PathBuf,
    thread: JoinHandle<Vec<Request>>,
}

impl FakeBroker {
    /// Serves one connection: answers Hello itself, everything else with `handler`.
    fn start(mut handler: Handler) -> FakeBroker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let thread = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut seen = Vec::new();
            while let Some(request) = read_request(&mut stream) {
                let (response, fds) = match &request {
                    Request::Hello { .. } => (hello(PROTOCOL_VERSION), Vec::new()),
                    other => handler(other.clone()),
                };
                seen.push(request);
                if !send_response(&stream, &response, &fds) {
                    break; // the client hung up without reading (a dropped lease's release)
                }
            }
            seen
        });
        FakeBroker {
            _dir: dir,
            path,
            thread,
        }
    }

    /// Waits for the client to hang up and returns every request it sent.
    fn requests(self) -> Vec<Request> {
        self.thread.join().expect("the fake broker panicked")
    }
}

fn hello(protocol: u32) -> Response {
    Response::Hello {
        protocol,
        daemon_version: "9.9.9".into(),
    }
}

/// The next request; `None` once the client hung up (or its connection broke) between requests.
fn read_request(stream: &mut UnixStream) -> Option<Request> {
    let mut frames = FrameSplitter::new(MAX_REQUEST_FRAME);
    loop {
        if let Some(payload) = frames.next_payload().unwrap() {
            return Some(decode_request(payload).unwrap());
        }
        // No more than the frame needs, so that nothing of the next request is left behind.
        let mut chunk = vec![0; frames.missing().unwrap()];
        let received = stream.read(&mut chunk).unwrap_or(0);
        if received == 0 {
            assert!(
                frames.is_empty(),
                "the client hung up in the middle of a request"
            );
            return None;
        }
        frames.push(&chunk[..received]);
    }
}

/// Whether the client was still there to take the response.
fn send_response(stream: &UnixStream, response: &Response, fds: &[OwnedFd]) -> bool {
    let frame = encode_response(response).unwrap();
    let raw: Vec<_> = fds.iter().map(|fd| fd.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    match sendmsg::<()>(
        stream.as_raw_fd(),
        &[IoSlice::new(&frame)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    ) {
        Ok(sent) => {
            assert_eq!(sent, frame.len());
            true
        }
        Err(nix::errno::Errno::EPIPE | nix::errno::Errno::ECONNRESET) => false,
        Err(err) => panic!("sendmsg: {err}"),
    }
}

/// Binds sockets of these transports on 127.0.0.1 and grants them as lease `id`.
fn grant(id: u64, transports: impl IntoIterator<Item = Transport>) -> (Response, Vec<OwnedFd>) {
    let mut granted = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    for transport in transports {
        let (addr, fd): (_, OwnedFd) = match transport {
            Transport::Tcp => {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                (l.local_addr().unwrap(), l.into())
            }
            Transport::Udp => {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                (s.local_addr().unwrap(), s.into())
            }
        };
        granted.push(GrantedSocket {
            transport,
            addr,
            listening: transport == Transport::Tcp,
            v6_only: false,
        });
        fds.push(fd);
    }
    let response = Response::Granted {
        id: LeaseId(id),
        fds: fds.len() as u32,
        sockets: granted,
    };
    (response, fds)
}

/// Binds what a Lease asks for on 127.0.0.1 and grants it; grants the service "web" as a TCP
/// and a UDP socket and refuses other names; answers Release.
fn granting_handler() -> Handler {
    let mut next_id = 0;
    Box::new(move |request| match request {
        Request::Lease { sockets } => {
            next_id += 1;
            grant(next_id, sockets.iter().map(|spec| spec.transport))
        }
        Request::LeaseNamed { name } if name == "web" => {
            next_id += 1;
            grant(next_id, [Transport::Tcp, Transport::Udp])
        }
        Request::LeaseNamed { name } => (
            Response::Refused(Refusal::UnknownService { name }),
            Vec::new(),
        ),
        Request::Release { id } => (Response::Released { id }, Vec::new()),
        other => panic!("unexpected request {other:?}"),
    })
}

#[test]
fn broker_and_lease_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Broker>();
    check::<Lease>();
    check::<Error>();
}

#[test]
fn hello_then_lease_then_release() {
    let fake = FakeBroker::start(granting_handler());
    let broker = Broker::connect_to(&fake.path).unwrap();
    assert_eq!(broker.daemon_version(), "9.9.9");
    assert_eq!(broker.socket_path(), fake.path);

    let lease = broker
        .lease_str(&["tcp:127.0.0.1:0", "udp:127.0.0.1:0"])
        .unwrap();
    assert_eq!(lease.id(), LeaseId(1));
    assert_eq!(lease.granted().len(), 2);
    assert!(matches!(lease.sockets()[0], LeasedSocket::TcpListener(_)));
    assert!(matches!(lease.sockets()[1], LeasedSocket::Udp(_)));
    let tcp = lease.tcp_listener().unwrap();
    assert_eq!(tcp.local_addr().unwrap(), lease.local_addr());
    assert_eq!(
        lease.udp_socket().unwrap().local_addr().unwrap(),
        lease.granted()[1].addr
    );
    // The listener really listens: a client connects and is accepted.
    let _client = std::net::TcpStream::connect(lease.local_addr()).unwrap();
    tcp.accept().unwrap();

    lease.release().unwrap();
    drop(broker);

    let requests = fake.requests();
    assert!(matches!(
        &requests[0],
        Request::Hello { protocol: PROTOCOL_VERSION, client } if client.starts_with("portbroker-rs/")
    ));
    assert!(matches!(requests[1], Request::Lease { .. }));
    assert_eq!(requests[2], Request::Release { id: LeaseId(1) });
    assert_eq!(requests.len(), 3);
}

#[test]
fn a_named_lease_takes_the_sockets_the_broker_grants() {
    let fake = FakeBroker::start(granting_handler());
    let broker = Broker::connect_to(&fake.path).unwrap();
    let lease = broker.lease_named("web").unwrap();
    assert_eq!(lease.id(), LeaseId(1));
    assert_eq!(lease.granted().len(), 2);
    assert!(matches!(lease.sockets()[0], LeasedSocket::TcpListener(_)));
    assert!(matches!(lease.sockets()[1], LeasedSocket::Udp(_)));
    assert_eq!(
        lease.udp_socket().unwrap().local_addr().unwrap(),
        lease.granted()[1].addr
    );
    let tcp = lease.tcp_listener().unwrap();
    assert_eq!(tcp.local_addr().unwrap(), lease.local_addr());
    let _client = std::net::TcpStream::connect(lease.local_addr()).unwrap();
    tcp.accept().unwrap();

    let err = broker.lease_named("mail").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownService);
    assert!(err.to_string().contains("\"mail\""), "{err}");

    lease.release().unwrap();
    drop(broker);
    assert_eq!(
        fake.requests()[1..],
        [
            Request::LeaseNamed { name: "web".into() },
            Request::LeaseNamed {
                name: "mail".into()
            },
            Request::Release { id: LeaseId(1) },
        ]
    );
}

#[test]
fn a_named_grant_without_its_sockets_is_a_protocol_error_and_released() {
    let fake = FakeBroker::start(Box::new(|request| match request {
        // Two sockets announced, one fd sent.
        Request::LeaseNamed { .. } => {
            let (response, mut fds) = grant(5, [Transport::Udp, Transport::Udp]);
            let Response::Granted { id, sockets, .. } = response else {
                unreachable!()
            };
            fds.pop();
            (
                Response::Granted {
                    id,
                    sockets,
                    fds: 1,
                },
                fds,
            )
        }
        Request::Release { id } => (Response::Released { id }, Vec::new()),
        other => panic!("unexpected request {other:?}"),
    }));
    let broker = Broker::connect_to(&fake.path).unwrap();
    let err = broker.lease_named("dns").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(
        err.to_string().contains("granted 2 sockets and sent 1"),
        "{err}"
    );
    drop(broker);
    assert_eq!(
        fake.requests().last(),
        Some(&Request::Release { id: LeaseId(5) })
    );
}

#[test]
fn reload_reports_the_new_policy_or_why_not() {
    let mut answers = vec![
        Response::Failed(Failure::NotPermitted {
            reason: "uid 1000 is not an administrator".into(),
        }),
        Response::Failed(Failure::ReloadFailed {
            error: "/etc/portbroker/policy.toml, line 7: unknown key `prot`".into(),
        }),
        Response::Reloaded {
            rules: 3,
            services: 2,
        },
    ];
    let fake = FakeBroker::start(Box::new(move |request| {
        assert_eq!(request, Request::Reload);
        (answers.pop().expect("three answers"), Vec::new())
    }));
    let broker = Broker::connect_to(&fake.path).unwrap();
    assert_eq!(broker.reload().unwrap(), (3, 2));

    let err = broker.reload().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ReloadFailed);
    assert!(!err.is_not_permitted());
    assert!(err.to_string().contains("line 7"), "{err}");

    let err = broker.reload().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotPermitted);
    assert!(err.is_not_permitted(), "{err}");
    drop(broker);
    assert_eq!(fake.requests().len(), 4);
}

#[test]
fn release_closes_the_sockets_before_asking() {
    let mut grant = granting_handler();
    let mut held = None;
    let fake = FakeBroker::start(Box::new(move |request| {
        if let Request::Release { .. } = request {
            // The client must have closed its copy: the exact address binds again.
            TcpListener::bind(held.expect("granted before released"))
                .expect("the released address is free");
        }
        let (response, fds) = grant(request);
        if let Response::Granted { sockets, .. } = &response {
            held = Some(sockets[0].addr);
        }
        (response, fds)
    }));
    let broker = Broker::connect_to(&fake.path).unwrap();
    let lease = broker.lease_str(&["tcp:127.0.0.1:0"]).unwrap();
    drop(broker);
    // The lease keeps the connection: it still works without the Broker.
    lease.release().unwrap();
    assert_eq!(fake.requests().len(), 3);
}

#[test]
fn dropping_a_lease_releases_it_but_taken_sockets_stay_open() {
    let fake = FakeBroker::start(granting_handler());
    let broker = Broker::connect_to(&fake.path).unwrap();
    let mut lease = broker.lease_str(&["udp:127.0.0.1:0"]).unwrap();
    let sockets = lease.take_sockets();
    assert!(lease.sockets().is_empty());
    assert!(lease.udp_socket().is_none());
    let granted = lease.granted()[0].addr;
    drop(lease);
    // Still open and bound after the lease ended.
    assert_eq!(sockets[0].local_addr().unwrap(), granted);
    drop(broker);
    let requests = fake.requests();
    assert_eq!(requests.last(), Some(&Request::Release { id: LeaseId(1) }));
}

#[test]
fn a_bad_spec_contacts_nothing() {
    let fake = FakeBroker::start(granting_handler());
    let broker = Broker::connect_to(&fake.path).unwrap();
    let err = broker
        .lease_str(&["tcp:80", "tcp:nonsense:80"])
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    assert!(matches!(err, Error::Spec(_)));
    let err = broker.lease([]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidSpec);
    drop(broker);
    assert_eq!(fake.requests().len(), 1, "only Hello was sent");
}

#[test]
fn refusals_and_failures_come_back_as_errors() {
    let fake = FakeBroker::start(Box::new(|request| {
        let response = match request {
            Request::Lease { .. } => Response::Refused(Refusal::NotPermitted {
                reason: "uid 1000 may not bind port 80".into(),
            }),
            Request::Release { id } => Response::Failed(Failure::UnknownLease { id }),
            other => panic!("unexpected request {other:?}"),
        };
        (response, Vec::new())
    }));
    let broker = Broker::connect_to(&fake.path).unwrap();
    let err = broker.lease_str(&["tcp:80"]).unwrap_err();
    assert!(err.is_not_permitted(), "{err}");
    assert_eq!(
        err.to_string(),
        "lease refused: not permitted: uid 1000 may not bind port 80"
    );
    let err = broker.release(LeaseId(12)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownLease);
    // Errors answered in full leave the connection usable.
    let err = broker.release(LeaseId(13)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::UnknownLease);
}

#[test]
fn an_unexpected_answer_is_a_protocol_error() {
    let fake = FakeBroker::start(Box::new(|request| match request {
        Request::Status => (Response::Leases(Vec::new()), Vec::new()),
        _ => (
            Response::Reloaded {
                rules: 0,
                services: 0,
            },
            Vec::new(),
        ),
    }));
    let broker = Broker::connect_to(&fake.path).unwrap();
    let err = broker.status().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Protocol);
    assert!(
        err.to_string().contains("answered Status with Leases"),
        "{err}"
    );
    let err = broker.lease_named("web").unwrap_err();
    assert!(
        err.to_string()
            .contains("answered LeaseNamed with Reloaded"),
        "{err}"
    );
}

fn handshake_answered_with(response: Response) -> Error {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broker.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        read_request(&mut stream).unwrap();
        send_response(&stream, &response, &[]);
    });
    let err = Broker::connect_to(&path).unwrap_err();
    thread.join().unwrap();
    err
}

#[test]
fn version_mismatches_are_reported_as_such() {
    let err = handshake_answered_with(Response::Failed(Failure::VersionMismatch {
        broker: PROTOCOL_VERSION + 1,
        client: PROTOCOL_VERSION,
    }));
    assert!(
        matches!(err, Error::VersionMismatch { broker, client: PROTOCOL_VERSION } if broker == PROTOCOL_VERSION + 1),
        "{err}"
    );
    let err = handshake_answered_with(hello(PROTOCOL_VERSION + 7));
    assert_eq!(err.kind(), ErrorKind::VersionMismatch, "{err}");
}

#[test]
fn nothing_listening_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let err = Broker::connect_to(dir.path().join("none.sock")).unwrap_err();
    assert!(err.is_unreachable());
    assert!(
        matches!(&err, Error::Unreachable { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    );
}

/// What a [`ScriptedBroker`] does with a request.
enum Act {
    Answer(Response, Vec<OwnedFd>),
    /// Answers, then closes the connection.
    AnswerThenHangUp(Response, Vec<OwnedFd>),
    /// Closes the connection without answering.
    HangUp,
    /// Never answers (the client times out), and goes on reading.
    Ignore,
}

/// An answer without fds.
fn answer(response: Response) -> Act {
    Act::Answer(response, Vec::new())
}

type Script = Box<dyn FnMut(usize, &Request) -> Act + Send>;

/// A broker that serves `connections` connections at once, each on a thread of its own, and
/// does with each request (Hello included) what `script` says, given the connection's index.
struct ScriptedBroker {
    _dir: tempfile::TempDir,
    path: PathBuf,
    thread: JoinHandle<Vec<Vec<Request>>>,
    /// The index of each connection the broker closed, as it closes it.
    hang_ups: mpsc::Receiver<usize>,
}

impl ScriptedBroker {
    fn start(connections: usize, script: Script) -> ScriptedBroker {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let script = Arc::new(Mutex::new(script));
        let (hung_up, hang_ups) = mpsc::channel();
        let thread = std::thread::spawn(move || {
            let served: Vec<_> = (0..connections)
                .map(|index| {
                    let (mut stream, _) = listener.accept().unwrap();
                    let (script, hung_up) = (Arc::clone(&script), hung_up.clone());
                    std::thread::spawn(move || {
                        let mut seen = Vec::new();
                        while let Some(request) = read_request(&mut stream) {
                            let act = (script.lock().unwrap())(index, &request);
                            seen.push(request);
                            match act {
                                Act::Answer(response, fds) => {
                                    send_response(&stream, &response, &fds);
                                }
                                Act::AnswerThenHangUp(response, fds) => {
                                    send_response(&stream, &response, &fds);
                                    break;
                                }
                                Act::HangUp => break,
                                Act::Ignore => {}
                            }
                        }
                        drop(stream);
                        let _ = hung_up.send(index);
                        seen
                    })
                })
                .collect();
            served
                .into_iter()
                .map(|thread| thread.join().expect("a scripted connection panicked"))
                .collect()
        });
        ScriptedBroker {
            _dir: dir,
            path,
            thread,
            hang_ups,
        }
    }

    /// Waits until the broker has closed connection `index`.
    fn wait_hang_up(&self, index: usize) {
        loop {
            let closed = self
                .hang_ups
                .recv_timeout(Duration::from_secs(10))
                .expect("the scripted broker did not close the connection within 10 s");
            if closed == index {
                return;
            }
        }
    }

    /// Waits for the clients to hang up and returns the requests of each connection.
    fn requests(self) -> Vec<Vec<Request>> {
        self.thread.join().expect("the scripted broker panicked")
    }
}

fn status() -> Response {
    Response::Status(StatusInfo {
        daemon_version: "9.9.9".into(),
        protocol: PROTOCOL_VERSION,
        uptime_secs: 1,
        leases: 0,
        sockets: 0,
        connections: 1,
        pool: PortRange { lo: 1, hi: 2 },
        default_addr: Ipv4Addr::UNSPECIFIED.into(),
        metrics: Default::default(),
    })
}

/// Whether a request names lease `id`.
fn names_lease(request: &Request, id: LeaseId) -> bool {
    match request {
        Request::Release { id: named }
        | Request::Revoke { id: named }
        | Request::TieToProcess { id: named, .. }
        | Request::Handover { id: named }
        | Request::Renew { id: named, .. } => *named == id,
        Request::Reattach { ids } => ids.contains(&id),
        _ => false,
    }
}

/// Leases 1 and 2 on the first connection, which then breaks; on the second, the broker gives
/// back lease 2 only. Lease 1's handle says its lease is lost and never names its id on the
/// new connection, where it could be another holder's lease 1.
#[test]
fn after_a_reconnect_only_the_leases_given_back_stay_live() {
    let fake = ScriptedBroker::start(
        2,
        Box::new(|conn, request| match (conn, request) {
            (_, Request::Hello { .. }) => answer(hello(PROTOCOL_VERSION)),
            (0, Request::Lease { .. }) => {
                let (response, fds) = grant(1, [Transport::Tcp]);
                Act::Answer(response, fds)
            }
            (0, Request::LeaseNamed { .. }) => {
                let (response, fds) = grant(2, [Transport::Udp]);
                Act::AnswerThenHangUp(response, fds)
            }
            (1, Request::Reattach { .. }) => answer(Response::Reattached {
                ids: vec![LeaseId(2)],
            }),
            // As a broker answers for a lease 1 that is now someone else's.
            (1, Request::Renew { id, .. }) => answer(Response::Renewed {
                id: *id,
                expires_unix_ms: Some(1),
            }),
            (1, Request::Release { id }) => answer(Response::Released { id: *id }),
            (1, Request::Status) => answer(status()),
            other => panic!("unexpected {other:?}"),
        }),
    );
    let broker = Broker::connect_to(&fake.path).unwrap();
    let lost = broker.lease_str(&["tcp:127.0.0.1:0"]).unwrap();
    let kept = broker.lease_named("dns").unwrap();
    fake.wait_hang_up(0);

    // The first request after the break reconnects; lease 1 is not given back.
    let err = lost
        .renew(Duration::from_secs(60))
        .expect_err("the handle of a lease not given back renewed it");
    assert_eq!(err.kind(), ErrorKind::LeaseLost, "{err}");
    let text = err.to_string();
    assert!(text.contains("lease 1"), "{text}");
    assert!(text.contains(&fake.path.display().to_string()), "{text}");
    assert!(lost.tie_to_process(1).is_err());
    assert_eq!(lost.is_revoked().unwrap_err().kind(), ErrorKind::LeaseLost);
    // Lease 2 is live on the new connection.
    assert!(kept.renew(Duration::from_secs(60)).is_ok());
    assert!(!kept.is_revoked().unwrap());
    let err = lost.release().expect_err("released a lease not given back");
    assert_eq!(err.kind(), ErrorKind::LeaseLost, "{err}");
    kept.release().unwrap();
    broker.status().unwrap();
    drop(broker);

    let requests = fake.requests();
    assert!(
        matches!(&requests[1][1], Request::Reattach { ids } if ids.len() == 2),
        "{:?}",
        requests[1]
    );
    let named: Vec<&Request> = requests[1][2..]
        .iter()
        .filter(|request| names_lease(request, LeaseId(1)))
        .collect();
    assert!(
        named.is_empty(),
        "lease 1 was named on the new connection: {named:?}"
    );
    assert_eq!(
        requests[1][2..],
        [
            Request::Renew {
                id: LeaseId(2),
                ttl_ms: 60_000
            },
            Request::Release { id: LeaseId(2) },
            Request::Status,
        ]
    );
}

/// A lease request whose answer did not come in time may have been granted: it is not sent
/// again on a new connection (which would lease twice), the caller gets the error.
#[test]
fn a_timed_out_lease_request_is_not_sent_again() {
    let fake = ScriptedBroker::start(
        2,
        Box::new(|conn, request| match (conn, request) {
            (_, Request::Hello { .. }) => answer(hello(PROTOCOL_VERSION)),
            (0, Request::Lease { .. }) => Act::Ignore,
            (1, Request::Lease { .. }) => {
                let (response, fds) = grant(7, [Transport::Tcp]);
                Act::Answer(response, fds)
            }
            (1, Request::Status) => answer(status()),
            other => panic!("unexpected {other:?}"),
        }),
    );
    let broker = Broker::connect_to(&fake.path).unwrap();
    broker
        .set_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let err = broker
        .lease_str(&["tcp:127.0.0.1:0"])
        .expect_err("the lease request was sent again and granted");
    assert_eq!(err.kind(), ErrorKind::ConnectionLost, "{err}");
    // The next request connects again and goes through.
    broker.status().unwrap();
    drop(broker);
    let requests = fake.requests();
    assert_eq!(requests[0].len(), 2, "{:?}", requests[0]);
    assert!(
        matches!(requests[1][..], [Request::Hello { .. }, Request::Status]),
        "{:?}",
        requests[1]
    );
}

/// `set_timeout` holds for the connection made after a break, too.
#[test]
fn the_timeout_survives_a_reconnect() {
    let fake = ScriptedBroker::start(
        2,
        Box::new(|conn, request| match (conn, request) {
            (_, Request::Hello { .. }) => answer(hello(PROTOCOL_VERSION)),
            (0, Request::Status) => Act::HangUp,
            (1, Request::Status) => Act::Ignore,
            other => panic!("unexpected {other:?}"),
        }),
    );
    let broker = Broker::connect_to(&fake.path).unwrap();
    broker
        .set_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let started = Instant::now();
    // The first connection breaks, Status is asked again on a second, which never answers.
    let err = broker.status().unwrap_err();
    let waited = started.elapsed();
    assert!(
        matches!(&err, Error::ConnectionLost { source, .. } if source.kind() == std::io::ErrorKind::TimedOut),
        "{err}"
    );
    assert!(
        waited < Duration::from_secs(10),
        "waited {waited:?}: the new connection forgot the 200 ms timeout"
    );
    drop(broker);
    assert_eq!(fake.requests().len(), 2);
}

/// A read is asked again on a new connection when the old one broke under it; a request that
/// never left (the broker had gone before it was sent) is sent on the new connection.
#[test]
fn reads_and_unsent_requests_go_through_a_reconnect() {
    let fake = ScriptedBroker::start(
        3,
        Box::new(|conn, request| match (conn, request) {
            (0, Request::Hello { .. }) => answer(hello(PROTOCOL_VERSION)),
            (0, Request::List) => Act::HangUp,
            (1, Request::Hello { .. }) => answer(hello(PROTOCOL_VERSION)),
            (1, Request::List) => Act::AnswerThenHangUp(Response::Leases(Vec::new()), Vec::new()),
            (2, Request::Hello { .. }) => answer(hello(PROTOCOL_VERSION)),
            (2, Request::Lease { .. }) => {
                let (response, fds) = grant(1, [Transport::Tcp]);
                Act::Answer(response, fds)
            }
            (2, Request::Release { id }) => answer(Response::Released { id: *id }),
            other => panic!("unexpected {other:?}"),
        }),
    );
    let broker = Broker::connect_to(&fake.path).unwrap();
    assert!(broker.list().unwrap().is_empty());
    fake.wait_hang_up(1);
    let lease = broker.lease_str(&["tcp:127.0.0.1:0"]).unwrap();
    lease.release().unwrap();
    drop(broker);
    let requests = fake.requests();
    assert_eq!(requests[1].len(), 2, "{:?}", requests[1]);
    assert!(
        matches!(
            requests[2][1..],
            [Request::Lease { .. }, Request::Release { .. }]
        ),
        "{:?}",
        requests[2]
    );
}
