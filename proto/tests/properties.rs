//! Properties of the codec over generated input: no byte string makes it panic, and every
//! message survives a round trip.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use portbroker_proto::*;
use proptest::prelude::*;

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
        any::<u32>().prop_map(Listen::Backlog)
    ];
    (
        transport(),
        proptest::option::of(ip()),
        any::<u16>(),
        listen,
    )
        .prop_map(|(transport, addr, port, listen)| SocketSpec {
            transport,
            addr,
            port,
            listen,
        })
}

fn request() -> impl Strategy<Value = Request> {
    prop_oneof![
        (any::<u32>(), ".{0,40}")
            .prop_map(|(protocol, client)| Request::Hello { protocol, client }),
        proptest::collection::vec(spec(), 0..70).prop_map(|sockets| Request::Lease { sockets }),
        any::<u64>().prop_map(|id| Request::Release { id: LeaseId(id) }),
        Just(Request::List),
        Just(Request::Status),
    ]
}

fn granted() -> impl Strategy<Value = GrantedSocket> {
    (transport(), ip(), any::<u16>(), any::<bool>()).prop_map(|(transport, ip, port, listening)| {
        GrantedSocket {
            transport,
            addr: SocketAddr::new(ip, port),
            listening,
        }
    })
}

fn holder() -> impl Strategy<Value = Holder> {
    (any::<i32>(), any::<u32>(), any::<u32>(), ".{0,16}").prop_map(|(pid, uid, gid, name)| Holder {
        pid,
        uid,
        gid,
        name,
    })
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u32>(), ".{0,20}").prop_map(|(protocol, daemon_version)| Response::Hello {
            protocol,
            daemon_version
        }),
        (
            any::<u64>(),
            proptest::collection::vec(granted(), 0..8),
            any::<u32>()
        )
            .prop_map(|(id, sockets, fds)| Response::Granted {
                id: LeaseId(id),
                sockets,
                fds
            }),
        (transport(), granted(), granted(), any::<u64>(), holder()).prop_map(
            |(transport, a, b, lease, holder)| {
                Response::Refused(Refusal::InUse {
                    transport,
                    requested: a.addr,
                    held: b.addr,
                    lease: LeaseId(lease),
                    holder,
                })
            }
        ),
        (
            any::<u64>(),
            holder(),
            any::<u64>(),
            proptest::collection::vec(granted(), 0..4),
            proptest::option::of(any::<u64>())
        )
            .prop_map(
                |(id, holder, since, sockets, expires_unix_ms)| Response::Leases(vec![LeaseInfo {
                    id: LeaseId(id),
                    holder,
                    since,
                    sockets,
                    expires_unix_ms,
                    lingering: false,
                }])
            ),
        (any::<u64>(), any::<u32>()).prop_map(|(id, holder_uid)| Response::Failed(
            Failure::NotYourLease {
                id: LeaseId(id),
                holder_uid
            }
        )),
    ]
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
    fn every_request_round_trips(request in request()) {
        let frame = encode_request(&request).unwrap();
        let len = frame_payload_len(&frame, MAX_REQUEST_FRAME).unwrap().unwrap();
        prop_assert_eq!(len + HEADER_LEN, frame.len());
        prop_assert_eq!(decode_request(&frame[HEADER_LEN..]).unwrap(), request);
    }

    #[test]
    fn every_response_round_trips(response in response()) {
        let frame = encode_response(&response).unwrap();
        prop_assert_eq!(decode_response(&frame[HEADER_LEN..]).unwrap(), response);
    }

    #[test]
    fn truncated_frames_are_errors_not_panics(request in request(), cut in any::<prop::sample::Index>()) {
        let frame = encode_request(&request).unwrap();
        let payload = &frame[HEADER_LEN..];
        let cut = cut.index(payload.len());
        prop_assert!(decode_request(&payload[..cut]).is_err());
    }
}
