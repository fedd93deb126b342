//! Request handlers: one function per request kind, each in a file of its own. A handler
//! reads and changes the [`State`] and *returns* its [`Reply`]; it never touches a client
//! socket. The connections module sends every reply, from one place.

mod claim;
mod handover;
mod hello;
mod history;
mod lease;
mod lease_named;
mod list;
mod reattach;
mod release;
mod reload;
mod renew;
mod revoke;
mod status;
mod tie;
mod watch;

#[cfg(test)]
pub mod fixture;

use std::os::fd::OwnedFd;

use portbroker_proto::{Failure, LeaseId, Request, Response};

use crate::peer::Peer;

use crate::state::{Notice, State};
pub use status::info as status_info;

/// What a request gets: its answer, the sockets that travel with it, and notices for other
/// connections.
#[derive(Debug)]
pub struct Reply {
    pub response: Response,
    /// Passed with the answer as `SCM_RIGHTS`.
    pub fds: Vec<OwnedFd>,
    /// Sent (before the answer) to the connections they name.
    pub notices: Vec<Notice>,
    /// A protocol violation: the connection closes once this answer is sent.
    pub then_close: bool,
    /// The lease this reply grants, when it grants a new one: it stands only if the journal
    /// records it (see `Connections::release_answers`).
    pub new_lease: Option<LeaseId>,
    /// The work done, in units of one ordinary request: the binds a lease attempted. The
    /// asker's request budget and its share of an event-loop turn are charged this much; 0
    /// (the default) counts as 1.
    pub work: u32,
}

impl Reply {
    pub fn answer(response: Response) -> Reply {
        Reply {
            response,
            fds: Vec::new(),
            notices: Vec::new(),
            then_close: false,
            new_lease: None,
            work: 0,
        }
    }

    pub fn failed(failure: Failure) -> Reply {
        Reply::answer(Response::Failed(failure))
    }

    /// The answer to a protocol violation, after which the connection closes.
    pub fn closing(failure: Failure) -> Reply {
        Reply {
            then_close: true,
            ..Reply::failed(failure)
        }
    }
}

/// What a handler may need to know of the connection it serves.
pub struct Context<'a> {
    pub peer: &'a Peer,
    /// Whether this connection has said Hello.
    pub greeted: bool,
    /// Open client connections, this one included.
    pub connections: usize,
}

/// Serves one request.
pub fn dispatch(state: &mut State, context: &Context<'_>, request: Request) -> Reply {
    let peer = context.peer;
    match request {
        Request::Hello { protocol, client } => hello::hello(context, protocol, &client),
        Request::Lease { sockets } => lease::lease(state, peer, &sockets),
        Request::Release { id } => release::release(state, peer, id),
        Request::List => list::list(state),
        Request::Status => status::status(state, context.connections),
        Request::LeaseNamed { name } => lease_named::lease_named(state, peer, &name),
        Request::Reload => reload::reload(state, peer),
        Request::Revoke { id } => revoke::revoke(state, peer, id),
        Request::TieToProcess { id, pid } => tie::tie(state, peer, id, pid),
        Request::Handover { id } => handover::handover(state, peer, id),
        Request::Claim { token } => claim::claim(state, peer, token),
        Request::Reattach { ids } => reattach::reattach(state, peer, &ids),
        Request::Renew { id, ttl_ms } => renew::renew(state, peer, id, ttl_ms),
        Request::Watch => watch::watch(state, peer),
        Request::History { max } => history::history(state, max),
    }
}
