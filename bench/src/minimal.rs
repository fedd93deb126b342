//! Baseline (b): the least a broker of this design can do. Same protocol and request/response
//! shape as portbrokerd (Hello, Lease of one socket, Release), one thread, epoll, one `sendmsg`
//! per grant; but no table, no overlap checks, no policy, no logging, no buffering discipline.

use std::collections::HashMap;
use std::io::{IoSlice, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{
    bind, listen, sendmsg, setsockopt, socket, sockopt, AddressFamily, Backlog, ControlMessage,
    MsgFlags, SockFlag, SockType, SockaddrStorage,
};
use portbroker_proto::{
    decode_request, encode_response_into, FrameSplitter, GrantedSocket, LeaseId, Request, Response,
    StatusInfo, Transport, MAX_REQUEST_FRAME, PROTOCOL_VERSION,
};

fn bind_listener(addr: SocketAddr) -> nix::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    listen(&fd, Backlog::MAXCONN)?;
    Ok(fd)
}

/// Serves until killed.
pub fn serve(path: &Path, pool: (u16, u16)) -> Result<()> {
    let listener = UnixListener::bind(path).with_context(|| format!("bind {}", path.display()))?;
    listener.set_nonblocking(true)?;
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, 0))?;
    let mut conns: HashMap<u64, (UnixStream, FrameSplitter)> = HashMap::new();
    let mut next_conn = 1;
    let mut next_port = pool.0;
    let mut next_id = 1;
    let mut events = vec![EpollEvent::empty(); 64];
    let mut out = Vec::with_capacity(256);
    let mut chunk = vec![0u8; 16 * 1024];
    println!("ready");
    loop {
        let n = match epoll.wait(&mut events, EpollTimeout::NONE) {
            Ok(n) => n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for event in &events[..n] {
            let token = event.data();
            if token == 0 {
                while let Ok((stream, _)) = listener.accept() {
                    stream.set_nonblocking(true)?;
                    epoll.add(&stream, EpollEvent::new(EpollFlags::EPOLLIN, next_conn))?;
                    conns.insert(next_conn, (stream, FrameSplitter::new(MAX_REQUEST_FRAME)));
                    next_conn += 1;
                }
                continue;
            }
            let Some((stream, frames)) = conns.get_mut(&token) else {
                continue;
            };
            let closed = loop {
                match stream.read(&mut chunk) {
                    Ok(0) => break true,
                    Ok(n) => frames.push(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            let mut gone = false;
            while let Ok(Some(payload)) = frames.next_payload() {
                let mut fd = None;
                let response = match decode_request(payload) {
                    Ok(Request::Hello { .. }) => Response::Hello {
                        protocol: PROTOCOL_VERSION,
                        daemon_version: "minimal".into(),
                    },
                    Ok(Request::Lease { sockets }) => {
                        let spec = sockets[0];
                        let ip = spec.addr.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into());
                        let addr = loop {
                            let port = if spec.port != 0 { spec.port } else { next_port };
                            next_port = if next_port >= pool.1 {
                                pool.0
                            } else {
                                next_port + 1
                            };
                            let addr = SocketAddr::new(ip, port);
                            match bind_listener(addr) {
                                Ok(bound) => {
                                    fd = Some(bound);
                                    break addr;
                                }
                                Err(Errno::EADDRINUSE) if spec.port == 0 => continue,
                                Err(e) => return Err(e).context("minimal server bind"),
                            }
                        };
                        next_id += 1;
                        Response::Granted {
                            id: LeaseId(next_id),
                            sockets: vec![GrantedSocket {
                                transport: Transport::Tcp,
                                addr,
                                listening: true,
                                v6_only: false,
                            }],
                            fds: 1,
                        }
                    }
                    Ok(Request::Release { id }) => Response::Released { id },
                    Ok(
                        Request::LeaseNamed { .. }
                        | Request::Reload
                        | Request::Revoke { .. }
                        | Request::Renew { .. }
                        | Request::TieToProcess { .. }
                        | Request::Handover { .. }
                        | Request::Claim { .. }
                        | Request::Reattach { .. }
                        | Request::Watch
                        | Request::History { .. },
                    ) => Response::Failed(portbroker_proto::Failure::NotPermitted {
                        reason: "the minimal server has no policy".into(),
                    }),
                    Ok(Request::List) => Response::Leases(Vec::new()),
                    Ok(Request::Status) => Response::Status(StatusInfo {
                        daemon_version: "minimal".into(),
                        protocol: PROTOCOL_VERSION,
                        uptime_secs: 0,
                        leases: 0,
                        sockets: 0,
                        connections: 0,
                        pool: portbroker_proto::PortRange {
                            lo: pool.0,
                            hi: pool.1,
                        },
                        default_addr: std::net::Ipv4Addr::LOCALHOST.into(),
                        metrics: Default::default(),
                    }),
                    Err(e) => return Err(e).context("minimal server decode"),
                };
                out.clear();
                encode_response_into(&response, &mut out)?;
                let raw = fd.as_ref().map(AsRawFd::as_raw_fd);
                let rights = raw.map(|r| [r]);
                let cmsg = rights.as_ref().map(|r| [ControlMessage::ScmRights(r)]);
                let cmsgs: &[ControlMessage] = cmsg.as_ref().map_or(&[], |c| &c[..]);
                let flags = MsgFlags::MSG_NOSIGNAL;
                if sendmsg::<()>(
                    stream.as_raw_fd(),
                    &[IoSlice::new(&out)],
                    cmsgs,
                    flags,
                    None,
                )
                .is_err()
                {
                    gone = true; // the client left without reading its answers
                    break;
                }
            }
            if closed || gone {
                conns.remove(&token);
            }
        }
    }
}
