//! A server that knows nothing of portbroker: it takes its listening socket from the systemd
//! `LISTEN_FDS` convention through the `listenfd` crate, answers one connection and exits.
//!
//! ```sh
//! portctl run tcp:127.0.0.1:0 -- target/debug/examples/listenfd_server
//! ```

use std::io::Write;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // listenfd checks LISTEN_PID against our own pid, so this also proves portctl set it right.
    let mut fds = listenfd::ListenFd::from_env();
    let listener = fds
        .take_tcp_listener(0)?
        .ok_or("no TCP listener at fd 3 (LISTEN_FDS unset?)")?;
    let (mut conn, peer) = listener.accept()?;
    writeln!(
        conn,
        "listenfd_server on {} says hello to {peer}",
        listener.local_addr()?
    )?;
    Ok(())
}
