//! Properties of the codec over generated input: no byte string makes it panic, every message
//! of every variant survives a round trip, and a frame splitter yields the same payloads however
//! the stream is cut.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portbroker_proto::*;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

fn ip() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<u32>().prop_map(|v| IpAddr::V4(Ipv4Addr::from(v))),
        any::<u128>().prop_map(|v| IpAddr::V6(Ipv6Addr::from(v))),
    ]
}

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![Just(Transport::Tcp), Just(Transport::Udp)]
}

fn spec() -> impl Strategy<Value = SocketSpec> {
    let listen = prop_oneof![
        Just(Listen::Default),
        Just(Listen::BindOnly),
        Just(Listen::Number),
        any::<u32>().prop_map(Listen::Backlog)
    ];
    (
        transport(),
        proptest::option::of(ip()),
        any::<u16>(),
        listen,
        any::<bool>(),
    )
        .prop_map(|(transport, addr, port, listen, v6_only)| SocketSpec {
            transport,
            addr,
            port,
            listen,
            v6_only,
        })
}

fn lease_id() -> impl Strategy<Value = LeaseId> {
    any::<u64>().prop_map(LeaseId)
}

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

fn request() -> impl Strategy<Value = Request> {
    // One arm per variant: `every_variant_is_generated` checks that none is missing.
    prop_oneof![
        (any::<u32>(), ".{0,40}")
            .prop_map(|(protocol, client)| Request::Hello { protocol, client }),
        proptest::collection::vec(spec(), 0..70).prop_map(|sockets| Request::Lease { sockets }),
        lease_id().prop_map(|id| Request::Release { id }),
        Just(Request::List),
        Just(Request::Status),
        text().prop_map(|name| Request::LeaseNamed { name }),
        Just(Request::Reload),
        lease_id().prop_map(|id| Request::Revoke { id }),
        (lease_id(), any::<i32>()).prop_map(|(id, pid)| Request::TieToProcess { id, pid }),
        lease_id().prop_map(|id| Request::Handover { id }),
        any::<u64>().prop_map(|token| Request::Claim { token }),
        proptest::collection::vec(lease_id(), 0..70).prop_map(|ids| Request::Reattach { ids }),
        (lease_id(), any::<u32>()).prop_map(|(id, ttl_ms)| Request::Renew { id, ttl_ms }),
        Just(Request::Watch),
        any::<u32>().prop_map(|max| Request::History { max }),
    ]
}

fn socket_addr() -> impl Strategy<Value = SocketAddr> {
    (ip(), any::<u16>()).prop_map(|(ip, port)| SocketAddr::new(ip, port))
}

fn granted() -> impl Strategy<Value = GrantedSocket> {
    (transport(), socket_addr(), any::<bool>(), any::<bool>()).prop_map(
        |(transport, addr, listening, v6_only)| GrantedSocket {
            transport,
            addr,
            listening,
            v6_only,
        },
    )
}

fn holder() -> impl Strategy<Value = Holder> {
    (any::<i32>(), any::<u32>(), any::<u32>(), ".{0,16}").prop_map(|(pid, uid, gid, name)| Holder {
        pid,
        uid,
        gid,
        name,
    })
}

fn port_range() -> impl Strategy<Value = PortRange> {
    (any::<u16>(), any::<u16>()).prop_map(|(lo, hi)| PortRange { lo, hi })
}

fn lease_state() -> impl Strategy<Value = LeaseState> {
    prop_oneof![
        Just(LeaseState::Connection),
        Just(LeaseState::Process),
        Just(LeaseState::Lingering),
        Just(LeaseState::Kept),
        Just(LeaseState::Number),
    ]
}

fn lease_info() -> impl Strategy<Value = LeaseInfo> {
    (
        lease_id(),
        holder(),
        any::<u64>(),
        proptest::collection::vec(granted(), 0..4),
        proptest::option::of(any::<u64>()),
        lease_state(),
    )
        .prop_map(
            |(id, holder, since, sockets, expires_unix_ms, state)| LeaseInfo {
                id,
                holder,
                since,
                sockets,
                expires_unix_ms,
                state,
            },
        )
}

fn status_info() -> impl Strategy<Value = StatusInfo> {
    (
        ".{0,20}",
        any::<u32>(),
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        port_range(),
        ip(),
        metrics_info(),
    )
        .prop_map(
            |(
                daemon_version,
                protocol,
                (uptime_secs, leases, sockets, connections),
                pool,
                default_addr,
                metrics,
            )| {
                StatusInfo {
                    daemon_version,
                    protocol,
                    uptime_secs,
                    leases,
                    sockets,
                    connections,
                    pool,
                    default_addr,
                    metrics,
                }
            },
        )
}

fn metrics_info() -> impl Strategy<Value = MetricsInfo> {
    (
        (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
        proptest::collection::vec(("[a-z_]{0,16}", any::<u64>()), 0..9),
        (any::<u64>(), any::<u64>(), any::<u64>()),
        (
            proptest::collection::vec(any::<u64>(), 0..11),
            proptest::collection::vec(any::<u64>(), 0..12),
            any::<u64>(),
        ),
        proptest::option::of(socket_addr()),
    )
        .prop_map(
            |(
                (grants, releases, expiries, revokes),
                refusals,
                (lingering, pool_in_use_tcp, pool_in_use_udp),
                (bounds, counts, sum),
                listen,
            )| MetricsInfo {
                grants,
                refusals,
                releases,
                expiries,
                revokes,
                lingering,
                pool_in_use_tcp,
                pool_in_use_udp,
                lease_latency: Histogram {
                    bounds,
                    counts,
                    sum,
                },
                listen,
            },
        )
}

fn refusal() -> impl Strategy<Value = Refusal> {
    prop_oneof![
        (
            transport(),
            socket_addr(),
            socket_addr(),
            lease_id(),
            holder()
        )
            .prop_map(
                |(transport, requested, held, lease, holder)| Refusal::InUse {
                    transport,
                    requested,
                    held,
                    lease,
                    holder,
                }
            ),
        (transport(), socket_addr(), proptest::option::of(holder())).prop_map(
            |(transport, requested, holder)| Refusal::InUseOutside {
                transport,
                requested,
                holder,
            }
        ),
        text().prop_map(|reason| Refusal::NotPermitted { reason }),
        (any::<u32>(), text()).prop_map(|(index, reason)| Refusal::InvalidSpec { index, reason }),
        (transport(), port_range())
            .prop_map(|(transport, pool)| Refusal::PoolExhausted { transport, pool }),
        (transport(), socket_addr(), any::<i32>(), text()).prop_map(
            |(transport, requested, errno, message)| Refusal::BindFailed {
                transport,
                requested,
                errno,
                message,
            }
        ),
        (text(), any::<u64>(), any::<u64>())
            .prop_map(|(quota, used, limit)| Refusal::QuotaExceeded { quota, used, limit }),
        text().prop_map(|name| Refusal::UnknownService { name }),
    ]
}

fn failure() -> impl Strategy<Value = Failure> {
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(broker, client)| Failure::VersionMismatch { broker, client }),
        Just(Failure::HelloRequired),
        Just(Failure::DuplicateHello),
        text().prop_map(|detail| Failure::Malformed { detail }),
        lease_id().prop_map(|id| Failure::UnknownLease { id }),
        (lease_id(), any::<u32>())
            .prop_map(|(id, holder_uid)| Failure::NotYourLease { id, holder_uid }),
        text().prop_map(|reason| Failure::NotPermitted { reason }),
        text().prop_map(|error| Failure::ReloadFailed { error }),
        text().prop_map(|error| Failure::JournalUnavailable { error }),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    // One arm per variant: `every_variant_is_generated` checks that none is missing.
    prop_oneof![
        (any::<u32>(), ".{0,20}").prop_map(|(protocol, daemon_version)| Response::Hello {
            protocol,
            daemon_version
        }),
        (
            lease_id(),
            proptest::collection::vec(granted(), 0..8),
            any::<u32>()
        )
            .prop_map(|(id, sockets, fds)| Response::Granted { id, sockets, fds }),
        refusal().prop_map(Response::Refused),
        lease_id().prop_map(|id| Response::Released { id }),
        proptest::collection::vec(lease_info(), 0..4).prop_map(Response::Leases),
        status_info().prop_map(Response::Status),
        failure().prop_map(Response::Failed),
        lease_id().prop_map(|id| Response::Revoked { id }),
        lease_id().prop_map(|id| Response::Expired { id }),
        (lease_id(), any::<u64>()).prop_map(|(id, token)| Response::HandoverOffered { id, token }),
        proptest::collection::vec(lease_id(), 0..70).prop_map(|ids| Response::Reattached { ids }),
        (lease_id(), holder()).prop_map(|(id, holder)| Response::Tied { id, holder }),
        (lease_id(), proptest::option::of(any::<u64>())).prop_map(|(id, expires_unix_ms)| {
            Response::Renewed {
                id,
                expires_unix_ms,
            }
        }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(rules, services)| Response::Reloaded { rules, services }),
        Just(Response::Watching),
        (any::<u64>(), event()).prop_map(|(seq, event)| Response::Event { seq, event }),
        any::<u64>().prop_map(|count| Response::Missed { count }),
        proptest::collection::vec(history_entry(), 0..4).prop_map(Response::History),
    ]
}

fn end_reason() -> impl Strategy<Value = EndReason> {
    proptest::sample::select(EndReason::ALL.to_vec())
}

fn history_event() -> impl Strategy<Value = HistoryEvent> {
    prop_oneof![
        Just(HistoryEvent::Granted),
        Just(HistoryEvent::Tied),
        Just(HistoryEvent::HandedOver),
        end_reason().prop_map(HistoryEvent::Ended),
    ]
}

fn history_entry() -> impl Strategy<Value = HistoryEntry> {
    (
        any::<u64>(),
        lease_id(),
        history_event(),
        proptest::option::of(holder()),
        proptest::collection::vec(granted(), 0..4),
    )
        .prop_map(|(at_unix_ms, id, event, holder, sockets)| HistoryEntry {
            at_unix_ms,
            id,
            event,
            holder,
            sockets,
        })
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        lease_info().prop_map(|lease| Event::Granted { lease }),
        (holder(), refusal()).prop_map(|(asker, refusal)| Event::Refused { asker, refusal }),
        lease_id().prop_map(|id| Event::Released { id }),
        lease_id().prop_map(|id| Event::Expired { id }),
        lease_id().prop_map(|id| Event::Revoked { id }),
        (lease_id(), holder()).prop_map(|(id, holder)| Event::Lingering { id, holder }),
        (transport(), any::<u16>())
            .prop_map(|(transport, port)| Event::ReservationTakenBack { transport, port }),
    ]
}

/// A frame of `payload`, length prefix included.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = u32::try_from(payload.len()).unwrap().to_le_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

/// `stream` cut at `cuts` (indices into it, in any order) and pushed piece by piece into a
/// splitter, drained after every push as a reader would: the payloads, then the error if any.
fn split(stream: &[u8], cuts: &[prop::sample::Index], max: u32) -> (Vec<Vec<u8>>, Option<Error>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
    cuts.push(stream.len());
    cuts.sort_unstable();
    let mut frames = FrameSplitter::new(max);
    let mut payloads = Vec::new();
    let mut at = 0;
    for cut in cuts {
        frames.push(&stream[at..cut]);
        at = cut;
        loop {
            let missing = frames.missing();
            match frames.next_payload() {
                Ok(Some(payload)) => {
                    assert_eq!(missing.unwrap(), 0);
                    payloads.push(payload.to_vec());
                }
                Ok(None) => {
                    assert!(missing.unwrap() >= 1);
                    break;
                }
                Err(e) => {
                    assert!(missing.is_err());
                    return (payloads, Some(e));
                }
            }
        }
    }
    assert!(frames.is_empty(), "{} bytes left over", frames.buffered());
    (payloads, None)
}

// The position of each variant, by an exhaustive `match` with no catch-all arm: a new variant
// does not compile until it is counted here, and `every_variant_is_generated` then fails until
// the strategies above generate it.

const REQUEST_VARIANTS: usize = 15;

fn request_variant(request: &Request) -> usize {
    match request {
        Request::Hello { .. } => 0,
        Request::Lease { .. } => 1,
        Request::Release { .. } => 2,
        Request::List => 3,
        Request::Status => 4,
        Request::LeaseNamed { .. } => 5,
        Request::Reload => 6,
        Request::Revoke { .. } => 7,
        Request::TieToProcess { .. } => 8,
        Request::Handover { .. } => 9,
        Request::Claim { .. } => 10,
        Request::Reattach { .. } => 11,
        Request::Renew { .. } => 12,
        Request::Watch => 13,
        Request::History { .. } => 14,
    }
}

const RESPONSE_VARIANTS: usize = 18;

fn response_variant(response: &Response) -> usize {
    match response {
        Response::Hello { .. } => 0,
        Response::Granted { .. } => 1,
        Response::Refused(_) => 2,
        Response::Released { .. } => 3,
        Response::Leases(_) => 4,
        Response::Status(_) => 5,
        Response::Failed(_) => 6,
        Response::Revoked { .. } => 7,
        Response::Expired { .. } => 8,
        Response::HandoverOffered { .. } => 9,
        Response::Reattached { .. } => 10,
        Response::Tied { .. } => 11,
        Response::Renewed { .. } => 12,
        Response::Reloaded { .. } => 13,
        Response::Watching => 14,
        Response::Event { .. } => 15,
        Response::Missed { .. } => 16,
        Response::History(_) => 17,
    }
}

const EVENT_VARIANTS: usize = 7;

fn event_variant(event: &Event) -> usize {
    match event {
        Event::Granted { .. } => 0,
        Event::Refused { .. } => 1,
        Event::Released { .. } => 2,
        Event::Expired { .. } => 3,
        Event::Revoked { .. } => 4,
        Event::Lingering { .. } => 5,
        Event::ReservationTakenBack { .. } => 6,
    }
}

const HISTORY_EVENT_VARIANTS: usize = 4;

fn history_event_variant(event: HistoryEvent) -> usize {
    match event {
        HistoryEvent::Granted => 0,
        HistoryEvent::Tied => 1,
        HistoryEvent::HandedOver => 2,
        HistoryEvent::Ended(_) => 3,
    }
}

const END_REASON_VARIANTS: usize = 13;

fn end_reason_variant(reason: EndReason) -> usize {
    match reason {
        EndReason::Released => 0,
        EndReason::ConnectionClosed => 1,
        EndReason::ProcessExited => 2,
        EndReason::CopiesClosed => 3,
        EndReason::Expired => 4,
        EndReason::Revoked => 5,
        EndReason::TakenOver => 6,
        EndReason::KeptExpired => 7,
        EndReason::KeptReturned => 8,
        EndReason::JournalFailed => 9,
        EndReason::HolderGoneAtRestart => 10,
        EndReason::DaemonStopped => 11,
        EndReason::MetricsStopped => 12,
    }
}

const REFUSAL_VARIANTS: usize = 8;

fn refusal_variant(refusal: &Refusal) -> usize {
    match refusal {
        Refusal::InUse { .. } => 0,
        Refusal::InUseOutside { .. } => 1,
        Refusal::NotPermitted { .. } => 2,
        Refusal::InvalidSpec { .. } => 3,
        Refusal::PoolExhausted { .. } => 4,
        Refusal::BindFailed { .. } => 5,
        Refusal::QuotaExceeded { .. } => 6,
        Refusal::UnknownService { .. } => 7,
    }
}

const FAILURE_VARIANTS: usize = 9;

fn failure_variant(failure: &Failure) -> usize {
    match failure {
        Failure::VersionMismatch { .. } => 0,
        Failure::HelloRequired => 1,
        Failure::DuplicateHello => 2,
        Failure::Malformed { .. } => 3,
        Failure::UnknownLease { .. } => 4,
        Failure::NotYourLease { .. } => 5,
        Failure::NotPermitted { .. } => 6,
        Failure::ReloadFailed { .. } => 7,
        Failure::JournalUnavailable { .. } => 8,
    }
}

const LEASE_STATE_VARIANTS: usize = 5;

fn lease_state_variant(state: LeaseState) -> usize {
    match state {
        LeaseState::Connection => 0,
        LeaseState::Process => 1,
        LeaseState::Lingering => 2,
        LeaseState::Kept => 3,
        LeaseState::Number => 4,
    }
}

#[test]
fn every_variant_is_generated() {
    let mut runner = TestRunner::deterministic();
    let mut requests = BTreeSet::new();
    let mut responses = BTreeSet::new();
    let mut refusals = BTreeSet::new();
    let mut failures = BTreeSet::new();
    let mut states = BTreeSet::new();
    let mut events = BTreeSet::new();
    let mut history_events = BTreeSet::new();
    let mut end_reasons = BTreeSet::new();
    let (request, response) = (request(), response());
    for _ in 0..5000 {
        requests.insert(request_variant(
            &request.new_tree(&mut runner).unwrap().current(),
        ));
        let response = response.new_tree(&mut runner).unwrap().current();
        responses.insert(response_variant(&response));
        match &response {
            Response::Refused(refusal) => {
                refusals.insert(refusal_variant(refusal));
            }
            Response::Failed(failure) => {
                failures.insert(failure_variant(failure));
            }
            Response::Leases(leases) => {
                states.extend(leases.iter().map(|lease| lease_state_variant(lease.state)))
            }
            Response::Event { event, .. } => {
                events.insert(event_variant(event));
            }
            Response::History(entries) => {
                for entry in entries {
                    history_events.insert(history_event_variant(entry.event));
                    if let HistoryEvent::Ended(reason) = entry.event {
                        end_reasons.insert(end_reason_variant(reason));
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(requests, (0..REQUEST_VARIANTS).collect());
    assert_eq!(responses, (0..RESPONSE_VARIANTS).collect());
    assert_eq!(refusals, (0..REFUSAL_VARIANTS).collect());
    assert_eq!(failures, (0..FAILURE_VARIANTS).collect());
    assert_eq!(states, (0..LEASE_STATE_VARIANTS).collect());
    assert_eq!(events, (0..EVENT_VARIANTS).collect());
    assert_eq!(history_events, (0..HISTORY_EVENT_VARIANTS).collect());
    assert_eq!(end_reasons, (0..END_REASON_VARIANTS).collect());
    // `EndReason::ALL` names every reason, in declaration order.
    let all: Vec<usize> = EndReason::ALL
        .iter()
        .map(|r| end_reason_variant(*r))
        .collect();
    assert_eq!(all, (0..END_REASON_VARIANTS).collect::<Vec<_>>());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(&bytes);
        let _ = decode_response(&bytes);
        let _ = peek_hello_protocol(&bytes);
        let _ = frame_payload_len(&bytes, MAX_REQUEST_FRAME);
    }

    #[test]
    fn corrupted_messages_never_panic_the_decoders(
        request in request(),
        response in response(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        // Arbitrary bytes seldom get past the first variant tag; one wrong byte in a real
        // message reaches every field's decoder.
        let mut payload = encode_request(&request).unwrap().split_off(HEADER_LEN);
        let at_request = at.index(payload.len());
        payload[at_request] = byte;
        let _ = decode_request(&payload);
        let _ = decode_response(&payload);
        let mut payload = encode_response(&response).unwrap().split_off(HEADER_LEN);
        let at_response = at.index(payload.len());
        payload[at_response] = byte;
        let _ = decode_request(&payload);
        let _ = decode_response(&payload);
    }

    #[test]
    fn every_request_round_trips(request in request()) {
        let frame = encode_request(&request).unwrap();
        let len = frame_payload_len(&frame, MAX_REQUEST_FRAME).unwrap().unwrap();
        prop_assert_eq!(len + HEADER_LEN, frame.len());
        prop_assert_eq!(decode_request(&frame[HEADER_LEN..]).unwrap(), request);
    }

    #[test]
    fn every_response_round_trips(response in response()) {
        let frame = encode_response(&response).unwrap();
        let len = frame_payload_len(&frame, MAX_RESPONSE_FRAME).unwrap().unwrap();
        prop_assert_eq!(len + HEADER_LEN, frame.len());
        prop_assert_eq!(decode_response(&frame[HEADER_LEN..]).unwrap(), response);
    }

    #[test]
    fn truncated_frames_are_errors_not_panics(request in request(), cut in any::<prop::sample::Index>()) {
        let frame = encode_request(&request).unwrap();
        let payload = &frame[HEADER_LEN..];
        let cut = cut.index(payload.len());
        prop_assert!(decode_request(&payload[..cut]).is_err());
    }

    #[test]
    fn truncated_responses_are_errors_not_panics(
        response in response(),
        cut in any::<prop::sample::Index>(),
    ) {
        let frame = encode_response(&response).unwrap();
        let payload = &frame[HEADER_LEN..];
        let cut = cut.index(payload.len());
        prop_assert!(decode_response(&payload[..cut]).is_err());
    }

    #[test]
    fn any_chunking_of_frames_yields_the_same_payloads(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let stream: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        let (split_payloads, error) = split(&stream, &cuts, 300);
        prop_assert!(error.is_none(), "{:?}", error);
        prop_assert_eq!(split_payloads, payloads);
    }

    #[test]
    fn a_bad_prefix_stops_the_stream_whatever_the_chunking(
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
        bad_len in prop_oneof![Just(0u32), 301..=u32::MAX],
        tail in proptest::collection::vec(any::<u8>(), 0..64),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
    ) {
        let mut stream: Vec<u8> = payloads.iter().flat_map(|p| frame(p)).collect();
        stream.extend_from_slice(&bad_len.to_le_bytes());
        stream.extend_from_slice(&tail);
        let (split_payloads, error) = split(&stream, &cuts, 300);
        prop_assert_eq!(split_payloads, payloads);
        match error {
            Some(Error::EmptyFrame) => prop_assert_eq!(bad_len, 0),
            Some(Error::FrameTooLarge { len, max: 300 }) => {
                prop_assert_eq!(len, u64::from(bad_len))
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }
}
