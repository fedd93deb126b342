//! The client processes of the benchmark. Each connects first, says `ready`, waits for its
//! stdin to close (the start signal shared by all workers of a run), works for a bounded time
//! and count, and prints one JSON line of results.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use portbroker::{Broker, Lease, SocketSpec};
use serde::{Deserialize, Serialize};

/// What a worker reports.
#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerResult {
    pub ops: u64,
    pub elapsed_ns: u64,
    /// Latency of every operation, in nanoseconds.
    pub latencies_ns: Vec<u32>,
}

pub fn wait_for_start() -> Result<()> {
    std::io::stdin()
        .read_to_end(&mut Vec::new())
        .context("reading the start signal")?;
    Ok(())
}

pub fn report(result: &WorkerResult) -> Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, result)?;
    writeln!(out)?;
    Ok(())
}

/// Runs `op` until `duration` passes or `max_ops` are done, timing each call.
pub fn timed_loop(
    duration: Duration,
    max_ops: u64,
    mut op: impl FnMut() -> Result<()>,
) -> Result<WorkerResult> {
    let mut latencies_ns = Vec::with_capacity(max_ops.min(1 << 20) as usize);
    let started = Instant::now();
    let mut ops = 0;
    while ops < max_ops && started.elapsed() < duration {
        let t = Instant::now();
        op()?;
        latencies_ns.push(t.elapsed().as_nanos().min(u32::MAX as u128) as u32);
        ops += 1;
    }
    Ok(WorkerResult {
        ops,
        elapsed_ns: started.elapsed().as_nanos() as u64,
        latencies_ns,
    })
}

fn any_loopback_port() -> SocketSpec {
    SocketSpec::tcp(Some(Ipv4Addr::LOCALHOST.into()), 0)
}

/// Lease one TCP socket on any port, receive its fd, release it; again and again.
pub fn lease_loop(socket: &Path, duration: Duration, max_ops: u64) -> Result<()> {
    let broker = Broker::connect_to(socket)?;
    println!("ready");
    wait_for_start()?;
    let result = timed_loop(duration, max_ops, || {
        let lease = broker.lease([any_loopback_port()])?;
        if lease.tcp_listener().is_none() {
            bail!("the lease came without its listener");
        }
        // Dropped, as most code ends a lease: the release goes out without a wait, and its
        // answer is read with the next lease's.
        drop(lease);
        Ok(())
    })?;
    report(&result)
}

/// Hold `count` any-port leases until stdin closes.
pub fn hold(socket: &Path, count: usize) -> Result<()> {
    let broker = Broker::connect_to(socket)?;
    let mut leases: Vec<Lease> = Vec::with_capacity(count);
    for _ in 0..count {
        leases.push(
            broker
                .lease([any_loopback_port()])
                .context("filling the pool")?,
        );
    }
    println!("ready");
    wait_for_start()?;
    Ok(())
}

/// One portserver request: connect, send our pid, read the port it assigns.
fn portserver_request(addr: &UnixAddr, pid: u32) -> Result<u16> {
    let mut stream = UnixStream::connect_addr(addr).context("connect to portserver")?;
    // One write: portserver reads once, and a second write would meet a closed socket.
    stream.write_all(format!("{pid}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&mut stream).read_line(&mut line)?;
    line.trim()
        .parse()
        .with_context(|| format!("portserver answered {line:?}"))
}

/// Ask Google's portserver for ports, the way portpicker does (a connection per request).
pub fn portserver_loop(abstract_name: &str, duration: Duration, max_ops: u64) -> Result<()> {
    let addr = UnixAddr::from_abstract_name(abstract_name.as_bytes())?;
    let pid = std::process::id();
    portserver_request(&addr, pid).context("first portserver request")?;
    println!("ready");
    wait_for_start()?;
    let result = timed_loop(duration, max_ops, || {
        portserver_request(&addr, pid).map(drop)
    })?;
    report(&result)
}
