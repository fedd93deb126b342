//! An HTTP server (axum) on a port leased from portbrokerd.
//!
//! ```sh
//! cargo run -p portbroker --example axum_server -- tcp:127.0.0.1:0
//! curl http://127.0.0.1:PORT/      # PORT as printed
//! ```
//! The broker is found through `PORTBROKER_SOCKET` or the default socket path. The lease lasts
//! as long as the server: it ends when the program exits.

use axum::routing::get;
use axum::Router;

/// The application: one route. `tests/axum.rs` serves the same thing.
fn app() -> Router {
    Router::new().route("/", get(|| async { "hello from a leased port\n" }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let spec = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp:127.0.0.1:0".to_owned());
    let listener = portbroker::listen(&spec)?;
    println!("serving http://{}/", listener.local_addr()?);

    // axum takes a tokio listener by value; keep the lease in `_lease` until the server ends
    // (a plain `_` would drop it, and end the lease, at once).
    let (listener, _lease) = listener.into_parts();
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    axum::serve(listener, app()).await?;
    Ok(())
}
