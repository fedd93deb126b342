//! Lease a TCP port from portbrokerd and answer one connection on it.
//!
//! ```sh
//! cargo run -p portbroker --example lease_and_serve -- tcp:127.0.0.1:0
//! ```
//! The broker is found through `PORTBROKER_SOCKET` or the default socket path.

use std::io::Write;

use portbroker::Broker;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp:127.0.0.1:0".to_owned());
    let broker = Broker::connect()?;
    let lease = match broker.lease_str(&[&spec]) {
        Ok(lease) => lease,
        Err(err) if err.is_in_use() => {
            eprintln!("{spec} is taken: {err}");
            std::process::exit(75);
        }
        Err(err) => return Err(err.into()),
    };
    println!("lease {} on {}", lease.id(), lease.local_addr());
    let listener = lease
        .tcp_listener()
        .ok_or("the spec was not a TCP socket")?;
    let (mut conn, peer) = listener.accept()?;
    writeln!(conn, "hello {peer}, this is lease {}", lease.id())?;
    lease.release()?;
    Ok(())
}
