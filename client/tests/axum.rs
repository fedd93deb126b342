//! An axum app served on a leased listener, in process, answering a plain HTTP request.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use support::Daemon;

fn app() -> Router {
    Router::new().route("/", get(|| async { "hello from a leased port\n" }))
}

/// One `GET /` over loopback with a plain socket; returns the whole response.
fn get_root(addr: std::net::SocketAddr) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

#[test]
fn an_axum_app_serves_http_on_a_leased_listener() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let listener = broker.listen("tcp:127.0.0.1:0").unwrap();
    assert!(listener.is_leased());
    assert!(listener.warning().is_none());
    let addr = listener.local_addr().unwrap();
    let id = listener.lease().unwrap().id();
    assert_eq!(listener.lease().unwrap().local_addr(), addr);
    assert!(broker.list().unwrap().iter().any(|l| l.id == id));

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let (std_listener, lease) = listener.into_parts();
    std_listener.set_nonblocking(true).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        axum::serve(listener, app())
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await
            .unwrap();
    });
    // The request runs on another thread; the runtime drives the server meanwhile.
    let response = runtime.block_on(async {
        tokio::task::spawn_blocking(move || get_root(addr))
            .await
            .unwrap()
    });
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "response: {response:?}\n{}",
        daemon.log()
    );
    assert!(
        response.ends_with("\r\n\r\nhello from a leased port\n"),
        "response: {response:?}"
    );
    tx.send(()).unwrap();
    runtime.block_on(server).unwrap();

    // The lease lived as long as the server; released, it is gone from the table.
    assert!(broker.list().unwrap().iter().any(|l| l.id == id));
    lease.unwrap().release().unwrap();
    assert!(!broker.list().unwrap().iter().any(|l| l.id == id));
}

/// The same through the `tokio` feature's conversion, which keeps the lease in the listener.
#[cfg(feature = "tokio")]
#[test]
fn into_tokio_keeps_the_lease() {
    let daemon = Daemon::start();
    let broker = daemon.broker();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = broker
            .listen("tcp:127.0.0.1:0")
            .unwrap()
            .into_tokio()
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let id = listener.lease().unwrap().id();
        let client = tokio::task::spawn_blocking(move || TcpStream::connect(addr).unwrap());
        let (_stream, _) = listener.accept().await.unwrap();
        client.await.unwrap();
        assert!(broker.list().unwrap().iter().any(|l| l.id == id));
        drop(listener);
        assert!(support::wait_until(Duration::from_secs(5), || !broker
            .list()
            .unwrap()
            .iter()
            .any(|l| l.id == id)));
    });
}
