//! Frames and the bincode codec: the only place that knows how messages become bytes.

use bincode::config::{Configuration, Limit, LittleEndian, Varint};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Request, Response};

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;
/// The largest request payload a broker accepts.
pub const MAX_REQUEST_FRAME: u32 = 64 * 1024;
/// The largest response payload a client accepts (a `List` of a very large table).
pub const MAX_RESPONSE_FRAME: u32 = 64 * 1024 * 1024;

type Config<const N: usize> = Configuration<LittleEndian, Varint, Limit<N>>;

const fn config<const N: usize>() -> Config<N> {
    bincode::config::standard().with_limit::<N>()
}

const REQUEST_LIMIT: usize = MAX_REQUEST_FRAME as usize;
const RESPONSE_LIMIT: usize = MAX_RESPONSE_FRAME as usize;

/// A frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The length prefix exceeds the maximum for this direction.
    #[error("frame of {len} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length the prefix claims (or the encoded length).
        len: u64,
        /// The maximum.
        max: u32,
    },
    /// A frame with an empty payload.
    #[error("empty frame")]
    EmptyFrame,
    /// The payload is not a valid message.
    #[error("cannot decode message")]
    Decode(#[source] bincode::error::DecodeError),
    /// The payload holds more bytes than its message.
    #[error("{trailing} trailing bytes after a {consumed}-byte message")]
    TrailingBytes {
        /// Bytes the message used.
        consumed: usize,
        /// Bytes left over.
        trailing: usize,
    },
    /// A message could not be encoded.
    #[error("cannot encode message")]
    Encode(#[source] bincode::error::EncodeError),
}

/// Reads the length prefix at the start of `buf`.
///
/// Returns `Ok(None)` while fewer than [`HEADER_LEN`] bytes are buffered, and an error when the
/// length is 0 or above `max`, so the caller never allocates for a hostile length.
pub fn frame_payload_len(buf: &[u8], max: u32) -> Result<Option<usize>, Error> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes(header.try_into().expect("slice of HEADER_LEN bytes"));
    if len == 0 {
        return Err(Error::EmptyFrame);
    }
    if len > max {
        return Err(Error::FrameTooLarge {
            len: len.into(),
            max,
        });
    }
    Ok(Some(len as usize))
}

fn encode_into<T: Serialize, const N: usize>(msg: &T, out: &mut Vec<u8>) -> Result<(), Error> {
    let start = out.len();
    out.extend_from_slice(&[0; HEADER_LEN]);
    bincode::serde::encode_into_std_write(msg, out, config::<N>()).map_err(Error::Encode)?;
    let len = out.len() - start - HEADER_LEN;
    let len32 = u32::try_from(len)
        .ok()
        .filter(|&l| l as usize <= N)
        .ok_or(Error::FrameTooLarge {
            len: len as u64,
            max: N as u32,
        });
    match len32 {
        Ok(len32) => {
            out[start..start + HEADER_LEN].copy_from_slice(&len32.to_le_bytes());
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(e)
        }
    }
}

fn decode<T: DeserializeOwned, const N: usize>(payload: &[u8]) -> Result<T, Error> {
    let (msg, consumed) =
        bincode::serde::decode_from_slice(payload, config::<N>()).map_err(Error::Decode)?;
    if consumed != payload.len() {
        return Err(Error::TrailingBytes {
            consumed,
            trailing: payload.len() - consumed,
        });
    }
    Ok(msg)
}

/// Encodes a request as a whole frame, length prefix included.
pub fn encode_request(req: &Request) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64);
    encode_into::<_, REQUEST_LIMIT>(req, &mut out)?;
    Ok(out)
}

/// Encodes a response as a whole frame, length prefix included.
pub fn encode_response(resp: &Response) -> Result<Vec<u8>, Error> {
    let mut out = Vec::with_capacity(64);
    encode_response_into(resp, &mut out)?;
    Ok(out)
}

/// Appends a response frame to `out`; on error `out` is left as it was.
pub fn encode_response_into(resp: &Response, out: &mut Vec<u8>) -> Result<(), Error> {
    encode_into::<_, RESPONSE_LIMIT>(resp, out)
}

/// Decodes a request payload (the bytes after the length prefix).
pub fn decode_request(payload: &[u8]) -> Result<Request, Error> {
    decode::<_, REQUEST_LIMIT>(payload)
}

/// Decodes a response payload (the bytes after the length prefix).
pub fn decode_response(payload: &[u8]) -> Result<Response, Error> {
    decode::<_, RESPONSE_LIMIT>(payload)
}

/// Reads the protocol version from a `Hello` payload of any protocol version, request or
/// response, even one this crate cannot decode in full. `None` if the payload is not a `Hello`.
pub fn peek_hello_protocol(payload: &[u8]) -> Option<u32> {
    let ((variant, protocol), _): ((u32, u32), usize) =
        bincode::serde::decode_from_slice(payload, config::<16>()).ok()?;
    (variant == 0).then_some(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn samples() -> Vec<Response> {
        let holder = Holder {
            pid: 42,
            uid: 1000,
            gid: 1000,
            name: "nginx".into(),
        };
        let sock = GrantedSocket {
            transport: Transport::Tcp,
            addr: "127.0.0.1:8080".parse().unwrap(),
            listening: true,
            v6_only: false,
        };
        vec![
            Response::Hello {
                protocol: PROTOCOL_VERSION,
                daemon_version: "0.1.0".into(),
            },
            Response::Granted {
                id: LeaseId(9),
                sockets: vec![sock],
                fds: 1,
            },
            Response::Refused(Refusal::InUse {
                transport: Transport::Tcp,
                requested: "0.0.0.0:8080".parse().unwrap(),
                held: sock.addr,
                lease: LeaseId(9),
                holder: holder.clone(),
            }),
            Response::Leases(vec![LeaseInfo {
                id: LeaseId(1),
                holder,
                since: 17,
                sockets: vec![sock],
                expires_unix_ms: Some(1_764_000_000_123),
                state: LeaseState::Process,
            }]),
            Response::Status(StatusInfo {
                daemon_version: "0.1.0".into(),
                protocol: 1,
                uptime_secs: 3,
                leases: 1,
                sockets: 1,
                connections: 2,
                pool: PortRange {
                    lo: 61000,
                    hi: 65535,
                },
                default_addr: Ipv6Addr::UNSPECIFIED.into(),
                metrics: Default::default(),
            }),
            Response::Failed(Failure::UnknownLease { id: LeaseId(3) }),
        ]
    }

    #[test]
    fn responses_round_trip() {
        for resp in samples() {
            let frame = encode_response(&resp).unwrap();
            let len = frame_payload_len(&frame, MAX_RESPONSE_FRAME)
                .unwrap()
                .unwrap();
            assert_eq!(len + HEADER_LEN, frame.len());
            assert_eq!(decode_response(&frame[HEADER_LEN..]).unwrap(), resp);
        }
    }

    #[test]
    fn requests_round_trip() {
        let reqs = [
            Request::Hello {
                protocol: PROTOCOL_VERSION,
                client: "test".into(),
            },
            Request::Lease {
                sockets: vec![
                    SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), 0),
                    SocketSpec {
                        listen: Listen::Backlog(7),
                        ..SocketSpec::udp(None, 53)
                    },
                ],
            },
            Request::Release {
                id: LeaseId(u64::MAX),
            },
            Request::List,
            Request::Status,
        ];
        for req in reqs {
            let frame = encode_request(&req).unwrap();
            assert_eq!(decode_request(&frame[HEADER_LEN..]).unwrap(), req);
        }
    }

    #[test]
    fn hostile_lengths_are_refused_before_allocation() {
        let frame = u32::MAX.to_le_bytes();
        assert!(matches!(
            frame_payload_len(&frame, MAX_REQUEST_FRAME),
            Err(Error::FrameTooLarge {
                len: 4_294_967_295,
                ..
            })
        ));
        assert!(matches!(
            frame_payload_len(&[0, 0, 0, 0], 10),
            Err(Error::EmptyFrame)
        ));
        assert_eq!(frame_payload_len(&[1, 0], 10).unwrap(), None);
    }

    #[test]
    fn a_string_claiming_terabytes_is_a_decode_error_not_an_abort() {
        // variant 0 (Hello), protocol 1, then a string length of 2^45 as a u64 varint.
        let mut payload = vec![0, 1, 253];
        payload.extend_from_slice(&(1u64 << 45).to_le_bytes());
        assert!(matches!(decode_request(&payload), Err(Error::Decode(_))));
    }

    #[test]
    fn unknown_variants_and_trailing_bytes_are_errors() {
        assert!(matches!(decode_request(&[200]), Err(Error::Decode(_))));
        assert!(matches!(
            decode_request(&[3, 0]),
            Err(Error::TrailingBytes {
                consumed: 1,
                trailing: 1
            })
        ));
    }

    #[test]
    fn hello_version_is_readable_from_a_future_hello() {
        // A Hello from protocol 9 with fields this crate does not know.
        let payload = [0u8, 9, 1, 2, 3, 4, 5];
        assert_eq!(peek_hello_protocol(&payload), Some(9));
        assert_eq!(peek_hello_protocol(&[2, 7]), None);
        let ours = encode_request(&Request::Hello {
            protocol: PROTOCOL_VERSION,
            client: String::new(),
        })
        .unwrap();
        assert_eq!(
            peek_hello_protocol(&ours[HEADER_LEN..]),
            Some(PROTOCOL_VERSION)
        );
    }

    #[test]
    fn oversized_responses_are_refused_when_encoding() {
        let mut out = vec![1, 2, 3];
        let huge = Response::Failed(Failure::Malformed {
            detail: "x".repeat(RESPONSE_LIMIT + 1),
        });
        assert!(matches!(
            encode_response_into(&huge, &mut out),
            Err(Error::Encode(_) | Error::FrameTooLarge { .. })
        ));
        assert_eq!(out, [1, 2, 3]);
    }
}
