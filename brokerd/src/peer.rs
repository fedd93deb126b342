//! Who is on the other end of a connection, as the kernel says.

use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt};
use portbroker_proto::Holder;

/// The peer's pid, uid and gid from `SO_PEERCRED`, and its name from `/proc/PID/comm`.
pub fn peer_holder(stream: &UnixStream) -> nix::Result<Holder> {
    let creds = getsockopt(stream, sockopt::PeerCredentials)?;
    Ok(Holder {
        pid: creds.pid(),
        uid: creds.uid(),
        gid: creds.gid(),
        name: process_name(creds.pid()).unwrap_or_default(),
    })
}

/// The name the kernel knows a process by; `None` if it is gone or hidden from us.
pub fn process_name(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_owned())
}
