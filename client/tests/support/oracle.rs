//! What a daemon must answer to any bytes, worked out from what the protocol crate says they
//! mean: the oracle that the live fuzz test checks every answer against, so that it finds wrong
//! answers, not only crashes.

use portbroker_proto::{
    decode_request, peek_hello_protocol, Failure, FrameSplitter, Listen, Request, Response,
    Transport, MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};

/// One answer the protocol requires, in the order the requests came.
#[derive(Debug)]
pub enum Want {
    Hello,
    DuplicateHello,
    /// Answered, then the connection is closed.
    HelloRequired,
    /// Answered, then the connection is closed.
    VersionMismatch(u32),
    /// Answered, then the connection is closed.
    Malformed,
    /// The answer to a well-formed request after Hello.
    Answer(Request),
}

impl Want {
    pub fn closes(&self) -> bool {
        matches!(
            self,
            Want::HelloRequired | Want::VersionMismatch(_) | Want::Malformed
        )
    }
}

/// What a broker must answer to `input`, read as the broker reads it: frames split by a
/// [`FrameSplitter`], a frame answered only once whole, the connection closed after the first
/// protocol violation.
pub fn predict(input: &[u8]) -> Vec<Want> {
    let mut wants = Vec::new();
    let mut greeted = false;
    let mut frames = FrameSplitter::new(MAX_REQUEST_FRAME);
    frames.push(input);
    loop {
        let payload = match frames.next_payload() {
            Err(_) => {
                wants.push(Want::Malformed);
                break;
            }
            Ok(Some(payload)) => payload,
            Ok(None) => break, // waiting for the rest of the frame
        };
        let want = match decode_request(payload) {
            Err(_) => match peek_hello_protocol(payload) {
                Some(version) if !greeted && version != PROTOCOL_VERSION => {
                    Want::VersionMismatch(version)
                }
                _ => Want::Malformed,
            },
            Ok(Request::Hello { .. }) if greeted => Want::DuplicateHello,
            Ok(Request::Hello { protocol, .. }) if protocol != PROTOCOL_VERSION => {
                Want::VersionMismatch(protocol)
            }
            Ok(Request::Hello { .. }) => {
                greeted = true;
                Want::Hello
            }
            Ok(_) if !greeted => Want::HelloRequired,
            Ok(request) => Want::Answer(request),
        };
        let closes = want.closes();
        wants.push(want);
        if closes {
            break;
        }
    }
    wants
}

/// Whether a response is an answer to a request, rather than a notification the broker may
/// send between answers (such as a revoked lease).
pub fn is_answer(response: &Response) -> bool {
    matches!(
        response,
        Response::Hello { .. }
            | Response::Granted { .. }
            | Response::Refused(_)
            | Response::Released { .. }
            | Response::Leases(_)
            | Response::Status(_)
            | Response::Failed(_)
            | Response::Reloaded { .. }
            | Response::Watching
    )
}

/// Whether `response` is a correct answer to `want` from a daemon whose pool is `pool`.
pub fn answers(want: &Want, response: &Response, pool: (u16, u16)) -> bool {
    use Response as R;
    match (want, response) {
        (Want::Hello, R::Hello { protocol, .. }) => *protocol == PROTOCOL_VERSION,
        (Want::DuplicateHello, R::Failed(Failure::DuplicateHello)) => true,
        (Want::HelloRequired, R::Failed(Failure::HelloRequired)) => true,
        (Want::VersionMismatch(v), R::Failed(Failure::VersionMismatch { broker, client })) => {
            *broker == PROTOCOL_VERSION && client == v
        }
        (Want::Malformed, R::Failed(Failure::Malformed { .. })) => true,
        (Want::Answer(request), response) => match (request, response) {
            (Request::Lease { sockets: specs }, R::Granted { sockets, fds, .. }) => {
                sockets.len() == specs.len()
                    && *fds as usize == specs.len()
                    && specs.iter().zip(sockets).all(|(spec, granted)| {
                        spec.transport == granted.transport
                            && spec.addr.is_none_or(|ip| ip == granted.addr.ip())
                            && if spec.port == 0 {
                                (pool.0..=pool.1).contains(&granted.addr.port())
                            } else {
                                spec.port == granted.addr.port()
                            }
                            && granted.listening
                                == (spec.transport == Transport::Tcp
                                    && spec.listen != Listen::BindOnly)
                    })
            }
            (Request::Lease { .. } | Request::LeaseNamed { .. }, R::Refused(_)) => true,
            (Request::LeaseNamed { .. }, R::Granted { sockets, fds, .. }) => {
                *fds as usize == sockets.len()
            }
            (Request::Release { id }, R::Released { id: released }) => id == released,
            (Request::Release { id }, R::Failed(Failure::UnknownLease { id: unknown })) => {
                id == unknown
            }
            (Request::List, R::Leases(_)) => true,
            (Request::Status, R::Status(status)) => status.protocol == PROTOCOL_VERSION,
            (Request::Reload, R::Reloaded { .. } | R::Failed(_)) => true,
            (Request::Watch, R::Watching) => true,
            // Any other answer to a request this test knows is wrong.
            (
                Request::Lease { .. }
                | Request::LeaseNamed { .. }
                | Request::Release { .. }
                | Request::List
                | Request::Status
                | Request::Reload
                | Request::Watch,
                _,
            ) => false,
            // Requests this test does not model (Revoke, later additions): any answer will do.
            (_, response) => is_answer(response),
        },
        _ => false,
    }
}
