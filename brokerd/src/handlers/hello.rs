//! `Hello`: the first request of every connection, which agrees on the protocol version.

use portbroker_proto::{Failure, Response, PROTOCOL_VERSION};
use tracing::debug;

use super::{Context, Reply};

pub fn hello(context: &Context<'_>, protocol: u32, client: &str) -> Reply {
    if context.greeted {
        return Reply::failed(Failure::DuplicateHello);
    }
    if protocol != PROTOCOL_VERSION {
        return Reply::closing(Failure::VersionMismatch {
            broker: PROTOCOL_VERSION,
            client: protocol,
        });
    }
    debug!(
        conn = context.peer.conn,
        "hello from {} ({client:?})", context.peer.holder
    );
    Reply::answer(Response::Hello {
        protocol: PROTOCOL_VERSION,
        daemon_version: env!("CARGO_PKG_VERSION").to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::me;

    fn context(peer: &crate::peer::Peer, greeted: bool) -> Context<'_> {
        Context {
            peer,
            greeted,
            connections: 1,
        }
    }

    #[test]
    fn hello_agrees_on_the_version_once() {
        let peer = me(1);
        let reply = hello(&context(&peer, false), PROTOCOL_VERSION, "test");
        assert!(
            matches!(reply.response, Response::Hello { protocol, .. } if protocol == PROTOCOL_VERSION)
        );
        assert!(!reply.then_close);
        let again = hello(&context(&peer, true), PROTOCOL_VERSION, "test");
        assert_eq!(again.response, Response::Failed(Failure::DuplicateHello));
        assert!(!again.then_close);
    }

    #[test]
    fn another_version_is_told_and_closed() {
        let peer = me(1);
        let reply = hello(&context(&peer, false), PROTOCOL_VERSION + 1, "future");
        assert_eq!(
            reply.response,
            Response::Failed(Failure::VersionMismatch {
                broker: PROTOCOL_VERSION,
                client: PROTOCOL_VERSION + 1
            })
        );
        assert!(reply.then_close);
    }
}
