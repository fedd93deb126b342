//! Wire-format goldens: one fixed value of every message variant and its exact frame bytes,
//! checked both ways (the value encodes to the bytes, the bytes decode to the value).
//!
//! bincode encodes an enum variant by its position, so reordering, removing or changing a
//! variant breaks a golden here, and a new variant does not compile until it has one: each
//! `goldens!` block below is an exhaustive `match` with no catch-all arm. A golden that changes
//! is a protocol change: raise `PROTOCOL_VERSION`. The start of a `Hello` (variant 0, then the
//! protocol version) never changes at all.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portbroker_proto::*;

/// For each variant of an enum: a test named `$test`, and an arm `$pattern => golden` in the
/// exhaustive match of `$golden`. Each test looks its own value up through that match, so a
/// pattern that does not select its golden's variant fails, and then checks the golden with
/// `$check`.
macro_rules! goldens {
    (
        $golden:ident($type:ty), $check:ident:
        $($test:ident: $pattern:pat => $value:expr, $frame:expr;)*
    ) => {
        /// The golden of each variant. No catch-all arm: a new variant does not compile until it
        /// has a golden here.
        fn $golden(message: &$type) -> (&'static str, $type, &'static [u8]) {
            match message {
                $($pattern => (stringify!($test), $value, &$frame),)*
            }
        }

        $(
            #[test]
            fn $test() {
                let (test, value, frame) = $golden(&$value);
                assert_eq!(
                    test,
                    stringify!($test),
                    "the value of {} is selected by the pattern of {test}",
                    stringify!($test),
                );
                $check(&value, frame);
            }
        )*
    };
}

fn check_request(request: &Request, frame: &[u8]) {
    let encoded = encode_request(request).unwrap();
    assert_eq!(encoded, frame, "the encoding of {request:?} changed");
    let mut frames = FrameSplitter::new(MAX_REQUEST_FRAME);
    frames.push(frame);
    let payload = frames.next_payload().unwrap().expect("a whole frame");
    assert_eq!(&decode_request(payload).unwrap(), request);
    assert!(frames.is_empty());
}

fn check_response(response: &Response, frame: &[u8]) {
    let encoded = encode_response(response).unwrap();
    assert_eq!(encoded, frame, "the encoding of {response:?} changed");
    let mut frames = FrameSplitter::new(MAX_RESPONSE_FRAME);
    frames.push(frame);
    let payload = frames.next_payload().unwrap().expect("a whole frame");
    assert_eq!(&decode_response(payload).unwrap(), response);
    assert!(frames.is_empty());
}

fn check_refusal(refusal: &Refusal, frame: &[u8]) {
    check_response(&Response::Refused(refusal.clone()), frame);
}

fn check_failure(failure: &Failure, frame: &[u8]) {
    check_response(&Response::Failed(failure.clone()), frame);
}

fn check_event(event: &Event, frame: &[u8]) {
    check_response(
        &Response::Event {
            seq: 1,
            event: event.clone(),
        },
        frame,
    );
}

fn check_history_event(event: &HistoryEvent, frame: &[u8]) {
    check_response(
        &Response::History(vec![HistoryEntry {
            event: *event,
            ..history_entry()
        }]),
        frame,
    );
}

/// An end whose grant the broker no longer has: no holder, no sockets.
fn check_end_reason(reason: &EndReason, frame: &[u8]) {
    check_response(
        &Response::History(vec![HistoryEntry {
            event: HistoryEvent::Ended(*reason),
            holder: None,
            sockets: Vec::new(),
            ..history_entry()
        }]),
        frame,
    );
}

fn check_lease_state(state: &LeaseState, frame: &[u8]) {
    check_response(&Response::Leases(vec![lease_info(*state)]), frame);
}

fn check_listen(listen: &Listen, frame: &[u8]) {
    let spec = SocketSpec {
        listen: *listen,
        ..SocketSpec::tcp(None, 80)
    };
    check_request(
        &Request::Lease {
            sockets: vec![spec],
        },
        frame,
    );
}

fn check_transport(transport: &Transport, frame: &[u8]) {
    let spec = SocketSpec {
        transport: *transport,
        ..SocketSpec::tcp(None, 80)
    };
    check_request(
        &Request::Lease {
            sockets: vec![spec],
        },
        frame,
    );
}

fn holder() -> Holder {
    Holder {
        pid: 4242,
        uid: 1000,
        gid: 100,
        name: "nginx".into(),
    }
}

fn lease_info(state: LeaseState) -> LeaseInfo {
    LeaseInfo {
        id: LeaseId(5),
        holder: holder(),
        since: 1_764_000_000,
        sockets: vec![GrantedSocket {
            transport: Transport::Tcp,
            addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 8080),
            listening: true,
            v6_only: false,
        }],
        expires_unix_ms: None,
        state,
    }
}

fn history_entry() -> HistoryEntry {
    HistoryEntry {
        at_unix_ms: 1_764_000_000_123,
        id: LeaseId(5),
        event: HistoryEvent::Granted,
        holder: Some(holder()),
        sockets: lease_info(LeaseState::Connection).sockets,
    }
}

fn v4(a: [u8; 4], port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::from(a).into(), port)
}

goldens! { request_golden(Request), check_request:
    // Variant 0 with the protocol first, frozen whatever PROTOCOL_VERSION becomes: a peer of
    // another version still reads it (see peek_hello_protocol).
    request_hello: Request::Hello { .. } =>
        Request::Hello { protocol: 3, client: "portctl 0.1.0".into() },
        [16, 0, 0, 0, 0, 3, 13, 112, 111, 114, 116, 99, 116, 108, 32, 48, 46, 49, 46, 48];
    request_lease: Request::Lease { .. } =>
        Request::Lease {
            sockets: vec![
                SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), 8080),
                SocketSpec::udp(Some(Ipv6Addr::LOCALHOST.into()), 0),
                SocketSpec {
                    v6_only: true,
                    ..SocketSpec::tcp(Some(Ipv6Addr::UNSPECIFIED.into()), 6379)
                },
            ],
        },
        [
            60, 0, 0, 0, 1, 3, 0, 1, 0, 127, 0, 0, 1, 251, 144, 31, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 251, 235, 24, 0, 1,
        ];
    // The frame the crate documentation shows.
    request_release: Request::Release { .. } =>
        Request::Release { id: LeaseId(7) },
        [2, 0, 0, 0, 2, 7];
    request_list: Request::List => Request::List, [1, 0, 0, 0, 3];
    request_status: Request::Status => Request::Status, [1, 0, 0, 0, 4];
    request_lease_named: Request::LeaseNamed { .. } =>
        Request::LeaseNamed { name: "web".into() },
        [5, 0, 0, 0, 5, 3, 119, 101, 98];
    request_reload: Request::Reload => Request::Reload, [1, 0, 0, 0, 6];
    request_revoke: Request::Revoke { .. } =>
        Request::Revoke { id: LeaseId(300) },
        [4, 0, 0, 0, 7, 251, 44, 1];
    request_tie_to_process: Request::TieToProcess { .. } =>
        Request::TieToProcess { id: LeaseId(7), pid: 4242 },
        [5, 0, 0, 0, 8, 7, 251, 36, 33];
    request_handover: Request::Handover { .. } =>
        Request::Handover { id: LeaseId(7) },
        [2, 0, 0, 0, 9, 7];
    request_claim: Request::Claim { .. } =>
        Request::Claim { token: 0x0123_4567_89ab_cdef },
        [10, 0, 0, 0, 10, 253, 239, 205, 171, 137, 103, 69, 35, 1];
    request_reattach: Request::Reattach { .. } =>
        Request::Reattach { ids: vec![LeaseId(1), LeaseId(70_000)] },
        [8, 0, 0, 0, 11, 2, 1, 252, 112, 17, 1, 0];
    request_renew: Request::Renew { .. } =>
        Request::Renew { id: LeaseId(7), ttl_ms: 30_000 },
        [5, 0, 0, 0, 12, 7, 251, 48, 117];
    request_watch: Request::Watch => Request::Watch, [1, 0, 0, 0, 13];
    request_history: Request::History { .. } =>
        Request::History { max: 100 },
        [2, 0, 0, 0, 14, 100];
}

goldens! { response_golden(Response), check_response:
    // Frozen like the request's Hello.
    response_hello: Response::Hello { .. } =>
        Response::Hello { protocol: 3, daemon_version: "0.1.0".into() },
        [8, 0, 0, 0, 0, 3, 5, 48, 46, 49, 46, 48];
    response_granted: Response::Granted { .. } =>
        Response::Granted {
            id: LeaseId(9),
            sockets: vec![
                GrantedSocket {
                    transport: Transport::Tcp,
                    addr: SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 8080),
                    listening: true,
                    v6_only: true,
                },
                GrantedSocket {
                    transport: Transport::Udp,
                    addr: v4([0, 0, 0, 0], 5353),
                    listening: false,
                    v6_only: false,
                },
            ],
            fds: 2,
        },
        [
            38, 0, 0, 0, 1, 9, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 251, 144,
            31, 1, 1, 1, 0, 0, 0, 0, 0, 251, 233, 20, 0, 0, 2,
        ];
    response_refused: Response::Refused(_) =>
        Response::Refused(Refusal::UnknownService { name: "db".into() }),
        [5, 0, 0, 0, 2, 7, 2, 100, 98];
    response_released: Response::Released { .. } =>
        Response::Released { id: LeaseId(7) },
        [2, 0, 0, 0, 3, 7];
    response_leases: Response::Leases(_) =>
        Response::Leases(vec![lease_info(LeaseState::Connection)]),
        [
            35, 0, 0, 0, 4, 1, 5, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120, 252, 0,
            129, 36, 105, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0, 0, 0,
        ];
    response_status: Response::Status(_) =>
        Response::Status(StatusInfo {
            daemon_version: "0.1.0".into(),
            protocol: 3,
            uptime_secs: 3600,
            leases: 2,
            sockets: 3,
            connections: 1,
            pool: PortRange { lo: 61000, hi: 65535 },
            default_addr: Ipv6Addr::UNSPECIFIED.into(),
            metrics: MetricsInfo {
                grants: 5,
                refusals: vec![("in_use".into(), 2)],
                releases: 1,
                expiries: 0,
                revokes: 0,
                lingering: 0,
                pool_in_use_tcp: 1,
                pool_in_use_udp: 0,
                lease_latency: Histogram { bounds: vec![10, 25], counts: vec![1, 2, 3], sum: 300 },
                listen: Some("127.0.0.1:9464".parse().unwrap()),
            },
        }),
        [
            72, 0, 0, 0, 5, 5, 48, 46, 49, 46, 48, 3, 251, 16, 14, 2, 3, 1, 251, 72, 238, 251, 255,
            255, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 6, 105, 110, 95, 117,
            115, 101, 2, 1, 0, 0, 0, 1, 0, 2, 10, 25, 3, 1, 2, 3, 251, 44, 1, 1, 0, 127, 0, 0, 1,
            251, 248, 36,
        ];
    response_failed: Response::Failed(_) =>
        Response::Failed(Failure::UnknownLease { id: LeaseId(3) }),
        [3, 0, 0, 0, 6, 4, 3];
    response_revoked: Response::Revoked { .. } =>
        Response::Revoked { id: LeaseId(7) },
        [2, 0, 0, 0, 7, 7];
    response_expired: Response::Expired { .. } =>
        Response::Expired { id: LeaseId(7) },
        [2, 0, 0, 0, 8, 7];
    response_handover_offered: Response::HandoverOffered { .. } =>
        Response::HandoverOffered { id: LeaseId(7), token: u64::MAX },
        [11, 0, 0, 0, 9, 7, 253, 255, 255, 255, 255, 255, 255, 255, 255];
    response_reattached: Response::Reattached { .. } =>
        Response::Reattached { ids: vec![LeaseId(1), LeaseId(2)] },
        [4, 0, 0, 0, 10, 2, 1, 2];
    response_tied: Response::Tied { .. } =>
        Response::Tied { id: LeaseId(7), holder: holder() },
        [15, 0, 0, 0, 11, 7, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120];
    response_renewed: Response::Renewed { .. } =>
        Response::Renewed { id: LeaseId(7), expires_unix_ms: Some(1_764_000_030_000) },
        [12, 0, 0, 0, 12, 7, 1, 253, 48, 93, 152, 182, 154, 1, 0, 0];
    response_reloaded: Response::Reloaded { .. } =>
        Response::Reloaded { rules: 4, services: 2 },
        [3, 0, 0, 0, 13, 4, 2];
    response_watching: Response::Watching => Response::Watching, [1, 0, 0, 0, 14];
    response_event: Response::Event { .. } =>
        Response::Event { seq: 300, event: Event::Released { id: LeaseId(7) } },
        [6, 0, 0, 0, 15, 251, 44, 1, 2, 7];
    response_missed: Response::Missed { .. } =>
        Response::Missed { count: 1024 },
        [4, 0, 0, 0, 16, 251, 0, 4];
    response_history: Response::History(_) =>
        Response::History(vec![
            history_entry(),
            HistoryEntry {
                event: HistoryEvent::Ended(EndReason::Released),
                holder: None,
                sockets: Vec::new(),
                ..history_entry()
            },
        ]),
        [
            53, 0, 0, 0, 17, 2, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 0, 1, 251, 36, 33, 251,
            232, 3, 100, 5, 110, 103, 105, 110, 120, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0, 253,
            123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 0, 0, 0,
        ];
}

goldens! { history_event_golden(HistoryEvent), check_history_event:
    history_event_granted: HistoryEvent::Granted =>
        HistoryEvent::Granted,
        [
            39, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 0, 1, 251, 36, 33, 251,
            232, 3, 100, 5, 110, 103, 105, 110, 120, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0,
        ];
    history_event_tied: HistoryEvent::Tied =>
        HistoryEvent::Tied,
        [
            39, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 1, 1, 251, 36, 33, 251,
            232, 3, 100, 5, 110, 103, 105, 110, 120, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0,
        ];
    history_event_handed_over: HistoryEvent::HandedOver =>
        HistoryEvent::HandedOver,
        [
            39, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 2, 1, 251, 36, 33, 251,
            232, 3, 100, 5, 110, 103, 105, 110, 120, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0,
        ];
    history_event_ended: HistoryEvent::Ended(_) =>
        HistoryEvent::Ended(EndReason::Expired),
        [
            40, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 4, 1, 251, 36, 33, 251,
            232, 3, 100, 5, 110, 103, 105, 110, 120, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0,
        ];
}

goldens! { end_reason_golden(EndReason), check_end_reason:
    end_reason_released: EndReason::Released =>
        EndReason::Released,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 0, 0, 0];
    end_reason_connection_closed: EndReason::ConnectionClosed =>
        EndReason::ConnectionClosed,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 1, 0, 0];
    end_reason_process_exited: EndReason::ProcessExited =>
        EndReason::ProcessExited,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 2, 0, 0];
    end_reason_copies_closed: EndReason::CopiesClosed =>
        EndReason::CopiesClosed,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 3, 0, 0];
    end_reason_expired: EndReason::Expired =>
        EndReason::Expired,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 4, 0, 0];
    end_reason_revoked: EndReason::Revoked =>
        EndReason::Revoked,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 5, 0, 0];
    end_reason_taken_over: EndReason::TakenOver =>
        EndReason::TakenOver,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 6, 0, 0];
    end_reason_kept_expired: EndReason::KeptExpired =>
        EndReason::KeptExpired,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 7, 0, 0];
    end_reason_kept_returned: EndReason::KeptReturned =>
        EndReason::KeptReturned,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 8, 0, 0];
    end_reason_journal_failed: EndReason::JournalFailed =>
        EndReason::JournalFailed,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 9, 0, 0];
    end_reason_holder_gone_at_restart: EndReason::HolderGoneAtRestart =>
        EndReason::HolderGoneAtRestart,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 10, 0, 0];
    end_reason_daemon_stopped: EndReason::DaemonStopped =>
        EndReason::DaemonStopped,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 11, 0, 0];
    end_reason_metrics_stopped: EndReason::MetricsStopped =>
        EndReason::MetricsStopped,
        [16, 0, 0, 0, 17, 1, 253, 123, 232, 151, 182, 154, 1, 0, 0, 5, 3, 12, 0, 0];
}

goldens! { event_golden(Event), check_event:
    event_granted: Event::Granted { .. } =>
        Event::Granted { lease: lease_info(LeaseState::Connection) },
        [
            36, 0, 0, 0, 15, 1, 0, 5, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120,
            252, 0, 129, 36, 105, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0, 0, 0,
        ];
    event_refused: Event::Refused { .. } =>
        Event::Refused {
            asker: holder(),
            refusal: Refusal::UnknownService { name: "db".into() },
        },
        [
            20, 0, 0, 0, 15, 1, 1, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120, 7,
            2, 100, 98,
        ];
    event_released: Event::Released { .. } =>
        Event::Released { id: LeaseId(7) },
        [4, 0, 0, 0, 15, 1, 2, 7];
    event_expired: Event::Expired { .. } =>
        Event::Expired { id: LeaseId(7) },
        [4, 0, 0, 0, 15, 1, 3, 7];
    event_revoked: Event::Revoked { .. } =>
        Event::Revoked { id: LeaseId(7) },
        [4, 0, 0, 0, 15, 1, 4, 7];
    event_lingering: Event::Lingering { .. } =>
        Event::Lingering { id: LeaseId(7), holder: holder() },
        [17, 0, 0, 0, 15, 1, 5, 7, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120];
    event_reservation_taken_back: Event::ReservationTakenBack { .. } =>
        Event::ReservationTakenBack { transport: Transport::Udp, port: 53 },
        [5, 0, 0, 0, 15, 1, 6, 1, 53];
}

goldens! { refusal_golden(Refusal), check_refusal:
    refusal_in_use: Refusal::InUse { .. } =>
        Refusal::InUse {
            transport: Transport::Tcp,
            requested: v4([0, 0, 0, 0], 8080),
            held: v4([127, 0, 0, 1], 8080),
            lease: LeaseId(5),
            holder: holder(),
        },
        [
            33, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 251, 144, 31, 0, 127, 0, 0, 1, 251, 144, 31, 5,
            251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120,
        ];
    refusal_in_use_outside: Refusal::InUseOutside { .. } =>
        Refusal::InUseOutside {
            transport: Transport::Udp,
            requested: v4([10, 0, 0, 1], 53),
            holder: Some(holder()),
        },
        [
            23, 0, 0, 0, 2, 1, 1, 0, 10, 0, 0, 1, 53, 1, 251, 36, 33, 251, 232, 3, 100, 5, 110,
            103, 105, 110, 120,
        ];
    refusal_not_permitted: Refusal::NotPermitted { .. } =>
        Refusal::NotPermitted { reason: "port 22".into() },
        [10, 0, 0, 0, 2, 2, 7, 112, 111, 114, 116, 32, 50, 50];
    refusal_invalid_spec: Refusal::InvalidSpec { .. } =>
        Refusal::InvalidSpec { index: 1, reason: "dup".into() },
        [7, 0, 0, 0, 2, 3, 1, 3, 100, 117, 112];
    refusal_pool_exhausted: Refusal::PoolExhausted { .. } =>
        Refusal::PoolExhausted {
            transport: Transport::Udp,
            pool: PortRange { lo: 61000, hi: 61001 },
        },
        [9, 0, 0, 0, 2, 4, 1, 251, 72, 238, 251, 73, 238];
    refusal_bind_failed: Refusal::BindFailed { .. } =>
        Refusal::BindFailed {
            transport: Transport::Tcp,
            requested: SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 443),
            errno: 13,
            message: "EACCES".into(),
        },
        [
            31, 0, 0, 0, 2, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 251, 187, 1,
            26, 6, 69, 65, 67, 67, 69, 83,
        ];
    refusal_quota_exceeded: Refusal::QuotaExceeded { .. } =>
        Refusal::QuotaExceeded { quota: "leases_total".into(), used: 64, limit: 64 },
        [17, 0, 0, 0, 2, 6, 12, 108, 101, 97, 115, 101, 115, 95, 116, 111, 116, 97, 108, 64, 64];
    refusal_unknown_service: Refusal::UnknownService { .. } =>
        Refusal::UnknownService { name: "db".into() },
        [5, 0, 0, 0, 2, 7, 2, 100, 98];
}

goldens! { failure_golden(Failure), check_failure:
    failure_version_mismatch: Failure::VersionMismatch { .. } =>
        Failure::VersionMismatch { broker: 3, client: 2 },
        [4, 0, 0, 0, 6, 0, 3, 2];
    failure_hello_required: Failure::HelloRequired => Failure::HelloRequired, [2, 0, 0, 0, 6, 1];
    failure_duplicate_hello: Failure::DuplicateHello => Failure::DuplicateHello, [2, 0, 0, 0, 6, 2];
    failure_malformed: Failure::Malformed { .. } =>
        Failure::Malformed { detail: "eof".into() },
        [6, 0, 0, 0, 6, 3, 3, 101, 111, 102];
    failure_unknown_lease: Failure::UnknownLease { .. } =>
        Failure::UnknownLease { id: LeaseId(3) },
        [3, 0, 0, 0, 6, 4, 3];
    failure_not_your_lease: Failure::NotYourLease { .. } =>
        Failure::NotYourLease { id: LeaseId(3), holder_uid: 1000 },
        [6, 0, 0, 0, 6, 5, 3, 251, 232, 3];
    failure_not_permitted: Failure::NotPermitted { .. } =>
        Failure::NotPermitted { reason: "reload".into() },
        [9, 0, 0, 0, 6, 6, 6, 114, 101, 108, 111, 97, 100];
    failure_reload_failed: Failure::ReloadFailed { .. } =>
        Failure::ReloadFailed { error: "line 3".into() },
        [9, 0, 0, 0, 6, 7, 6, 108, 105, 110, 101, 32, 51];
    failure_journal_unavailable: Failure::JournalUnavailable { .. } =>
        Failure::JournalUnavailable { error: "full".into() },
        [7, 0, 0, 0, 6, 8, 4, 102, 117, 108, 108];
}

goldens! { lease_state_golden(LeaseState), check_lease_state:
    lease_state_connection: LeaseState::Connection =>
        LeaseState::Connection,
        [
            35, 0, 0, 0, 4, 1, 5, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120, 252, 0,
            129, 36, 105, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0, 0, 0,
        ];
    lease_state_process: LeaseState::Process =>
        LeaseState::Process,
        [
            35, 0, 0, 0, 4, 1, 5, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120, 252, 0,
            129, 36, 105, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0, 0, 1,
        ];
    lease_state_lingering: LeaseState::Lingering =>
        LeaseState::Lingering,
        [
            35, 0, 0, 0, 4, 1, 5, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120, 252, 0,
            129, 36, 105, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0, 0, 2,
        ];
    lease_state_kept: LeaseState::Kept =>
        LeaseState::Kept,
        [
            35, 0, 0, 0, 4, 1, 5, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120, 252, 0,
            129, 36, 105, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0, 0, 3,
        ];
    lease_state_number: LeaseState::Number =>
        LeaseState::Number,
        [
            35, 0, 0, 0, 4, 1, 5, 251, 36, 33, 251, 232, 3, 100, 5, 110, 103, 105, 110, 120, 252, 0,
            129, 36, 105, 1, 0, 0, 127, 0, 0, 1, 251, 144, 31, 1, 0, 0, 4,
        ];
}

goldens! { listen_golden(Listen), check_listen:
    listen_default: Listen::Default => Listen::Default, [7, 0, 0, 0, 1, 1, 0, 0, 80, 0, 0];
    listen_backlog: Listen::Backlog(_) =>
        Listen::Backlog(4096),
        [10, 0, 0, 0, 1, 1, 0, 0, 80, 1, 251, 0, 16, 0];
    listen_bind_only: Listen::BindOnly => Listen::BindOnly, [7, 0, 0, 0, 1, 1, 0, 0, 80, 2, 0];
    listen_number: Listen::Number => Listen::Number, [7, 0, 0, 0, 1, 1, 0, 0, 80, 3, 0];
}

goldens! { transport_golden(Transport), check_transport:
    transport_tcp: Transport::Tcp => Transport::Tcp, [7, 0, 0, 0, 1, 1, 0, 0, 80, 0, 0];
    transport_udp: Transport::Udp => Transport::Udp, [7, 0, 0, 0, 1, 1, 1, 0, 80, 0, 0];
}
