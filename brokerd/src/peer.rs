//! Who is on the other end of a connection, as the kernel says.

use std::os::unix::net::UnixStream;
use std::rc::Rc;

use nix::sys::socket::{getsockopt, sockopt};
use portbroker_proto::Holder;

use crate::lease::ConnId;
use crate::policy::Identity;
use crate::procfs;

/// A connected client: what its leases record as their holder, and what the policy decides
/// by. Read once per connection, never from what the client claims.
#[derive(Debug, Clone)]
pub struct Peer {
    pub conn: ConnId,
    pub holder: Rc<Holder>,
    pub identity: Rc<Identity>,
    /// The peer's start time, journaled with its leases (see `procfs::start_time`).
    pub start_time: u64,
}

impl Peer {
    /// The peer of `stream`: pid, uid and gid from `SO_PEERCRED`, and its name, groups and
    /// start time from `/proc`.
    pub fn of(conn: ConnId, stream: &UnixStream) -> nix::Result<Peer> {
        let creds = getsockopt(stream, sockopt::PeerCredentials)?;
        let pid = creds.pid();
        Ok(Peer {
            conn,
            holder: Rc::new(Holder {
                pid,
                uid: creds.uid(),
                gid: creds.gid(),
                name: procfs::process_name(pid).unwrap_or_default(),
            }),
            identity: Rc::new(Identity {
                uid: creds.uid(),
                groups: procfs::groups(pid, creds.uid(), creds.gid()),
            }),
            start_time: procfs::start_time(pid).unwrap_or(0),
        })
    }
}
