//! `portctl who`: who holds a port. The broker's leases first; for what no lease holds, the
//! kernel's socket tables (`/proc/net/{tcp,udp}{,6}`: the inode bound on the port, and its
//! owner's uid) and `/proc/*/fd` (the process that has that inode open), read here, client-side,
//! with this user's rights: an ordinary user sees the sockets of every user in the tables but
//! only its own processes' fds.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use anyhow::Result;
use portbroker::proto::escaped;
use portbroker::{LeaseInfo, Transport};
use serde::Serialize;

use crate::exit::UsageError;
use crate::users::Users;

/// What `who` asks about: a port, on any address or on one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub ip: Option<IpAddr>,
    pub port: u16,
}

impl Target {
    /// `PORT`, `ADDR:PORT` or `[V6ADDR]:PORT`.
    pub fn parse(text: &str, transport: Transport) -> Result<Target, UsageError> {
        let bad = || {
            UsageError(format!(
                "who: {text:?} is not PORT or ADDR:PORT (IPv6 addresses in brackets)"
            ))
        };
        let (ip, port) = match text.parse::<u16>() {
            Ok(port) => (None, port),
            Err(_) => {
                let addr: SocketAddr = text.parse().map_err(|_| bad())?;
                (Some(addr.ip()), addr.port())
            }
        };
        if port == 0 {
            return Err(bad());
        }
        Ok(Target {
            transport,
            ip,
            port,
        })
    }

    fn covers(&self, transport: Transport, addr: SocketAddr) -> bool {
        transport == self.transport
            && addr.port() == self.port
            && self.ip.is_none_or(|ip| addresses_overlap(ip, addr.ip()))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.ip {
            Some(ip) => write!(f, "{}:{}", self.transport, SocketAddr::new(ip, self.port)),
            None => write!(f, "{}:{} (any address)", self.transport, self.port),
        }
    }
}

/// Whether sockets bound to `a` and `b` on one port would be in each other's way, as the
/// kernel's binds see it (the broker's rule): the same address; a wildcard and an address of
/// its family; `[::]` and any IPv4 address. IPv4-mapped IPv6 addresses count as IPv4.
pub fn addresses_overlap(a: IpAddr, b: IpAddr) -> bool {
    let (a, b) = (a.to_canonical(), b.to_canonical());
    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    a == b
        || (a.is_ipv4() == b.is_ipv4() && (a.is_unspecified() || b.is_unspecified()))
        || (a == any6 && b.is_ipv4())
        || (b == any6 && a.is_ipv4())
}

/// One socket of the kernel's tables on the port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelSocket {
    pub addr: SocketAddr,
    pub uid: u32,
    pub inode: u64,
}

/// TCP states of a socket that holds its port: listening (0A) or bound only (07). Connections
/// share the local port of their listener, but never these states.
const HOLDING_TCP_STATES: [&str; 2] = ["0A", "07"];

/// The sockets of the kernel's tables that `target` covers.
pub fn kernel_sockets(target: &Target) -> Vec<KernelSocket> {
    let tables = match target.transport {
        Transport::Tcp => ["/proc/net/tcp", "/proc/net/tcp6"],
        Transport::Udp => ["/proc/net/udp", "/proc/net/udp6"],
    };
    let mut found = Vec::new();
    for path in tables {
        if let Ok(text) = std::fs::read_to_string(path) {
            found.extend(parse_table(&text, target));
        }
    }
    found
}

fn parse_table(text: &str, target: &Target) -> Vec<KernelSocket> {
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let addr = parse_proc_addr(fields.get(1)?)?;
            let state = *fields.get(3)?;
            let uid: u32 = fields.get(7)?.parse().ok()?;
            let inode: u64 = fields.get(9)?.parse().ok()?;
            let holding = target.transport == Transport::Udp || HOLDING_TCP_STATES.contains(&state);
            (holding && inode != 0 && target.covers(target.transport, addr)).then_some(
                KernelSocket {
                    addr: SocketAddr::new(addr.ip().to_canonical(), addr.port()),
                    uid,
                    inode,
                },
            )
        })
        .collect()
}

/// `0100007F:1F90` (IPv4) or 32 hex digits and a port (IPv6): each 32-bit word is printed as
/// the machine's own integer, so its native bytes are the address bytes.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_ne_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// The processes (pids, ascending) that have each of `inodes` open, among those whose fds this
/// user may read.
pub fn processes_holding(inodes: &[u64]) -> HashMap<u64, Vec<i32>> {
    let mut found: HashMap<u64, Vec<i32>> = HashMap::new();
    if inodes.is_empty() {
        return found;
    }
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    let mut pids: Vec<i32> = procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(inode) = std::fs::read_link(fd.path()).ok().and_then(|link| {
                link.to_str()?
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            }) else {
                continue;
            };
            if inodes.contains(&inode) {
                let pids = found.entry(inode).or_default();
                if !pids.contains(&pid) {
                    pids.push(pid);
                }
            }
        }
    }
    found
}

/// The name the kernel knows a process by (`/proc/PID/comm`).
pub fn process_name(pid: i32) -> Option<String> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(comm.trim_end_matches('\n').to_owned())
}

/// One holder of the port, as `who --json` prints it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Found {
    /// `lease` or `outside`.
    pub kind: &'static str,
    /// The lease's id; null outside the broker.
    pub lease: Option<u64>,
    pub proto: &'static str,
    pub addr: String,
    /// Null when the socket's process cannot be seen (another user's, to an ordinary user).
    pub pid: Option<i32>,
    pub uid: u32,
    /// The user's name; null when the uid has none.
    pub user: Option<String>,
    /// The process name; null when it cannot be seen.
    pub name: Option<String>,
    /// The lease's state (`LeaseState::as_str`); null outside the broker.
    pub state: Option<&'static str>,
}

/// Everything that holds `target`: leases, then sockets outside the broker (the kernel's
/// sockets on an address that no lease holds).
pub fn find(
    target: &Target,
    leases: &[LeaseInfo],
    kernel: &[KernelSocket],
    processes: &HashMap<u64, Vec<i32>>,
    name_of: impl Fn(i32) -> Option<String>,
    users: &mut Users,
) -> Vec<Found> {
    let mut found = Vec::new();
    let mut leased: Vec<SocketAddr> = Vec::new();
    for lease in leases {
        for socket in &lease.sockets {
            if target.covers(socket.transport, socket.addr) {
                leased.push(SocketAddr::new(
                    socket.addr.ip().to_canonical(),
                    socket.addr.port(),
                ));
                found.push(Found {
                    kind: "lease",
                    lease: Some(lease.id.0),
                    proto: target.transport.as_str(),
                    addr: socket.addr.to_string(),
                    pid: Some(lease.holder.pid),
                    uid: lease.holder.uid,
                    user: users.name(lease.holder.uid),
                    name: Some(lease.holder.name.clone()),
                    state: Some(lease.state.as_str()),
                });
            }
        }
    }
    for socket in kernel {
        if leased.contains(&socket.addr) {
            continue;
        }
        let pids = processes.get(&socket.inode).map_or(&[][..], Vec::as_slice);
        let outside = |pid: Option<i32>, users: &mut Users| Found {
            kind: "outside",
            lease: None,
            proto: target.transport.as_str(),
            addr: socket.addr.to_string(),
            pid,
            uid: socket.uid,
            user: users.name(socket.uid),
            name: pid.and_then(&name_of),
            state: None,
        };
        if pids.is_empty() {
            found.push(outside(None, users));
        }
        for &pid in pids {
            found.push(outside(Some(pid), users));
        }
    }
    found
}

/// `alice (uid 1000)`, or `uid 1000` for a uid without a name.
fn user_text(found: &Found) -> String {
    match &found.user {
        Some(user) => format!("user {} (uid {})", escaped(user), found.uid),
        None => format!("uid {}", found.uid),
    }
}

/// One line per holder, or a line saying nobody holds it. Names are [`escaped`].
pub fn text(target: &Target, found: &[Found]) -> String {
    if found.is_empty() {
        return format!("{target}: nobody holds it\n");
    }
    let mut out = String::new();
    for f in found {
        let process = match (f.pid, &f.name) {
            (Some(pid), Some(name)) => format!("pid {pid} ({})", escaped(name)),
            (Some(pid), None) => format!("pid {pid}"),
            (None, _) => "a process you cannot see".to_owned(),
        };
        let _ = match f.lease {
            Some(id) => writeln!(
                out,
                "{}:{}: lease {id}, held by {process}, {} ({})",
                f.proto,
                f.addr,
                user_text(f),
                // As `list` says it.
                match f.state {
                    Some("process") => "tied",
                    Some("connection") | None => "live",
                    Some(other) => other,
                }
            ),
            None => writeln!(
                out,
                "{}:{}: {process}, {}, outside the broker",
                f.proto,
                f.addr,
                user_text(f)
            ),
        };
    }
    if found.iter().any(|f| f.pid.is_none()) {
        out.push_str(
            "(the kernel shows every user's sockets but only your own processes' files; \
             run as root to see which process holds it)\n",
        );
    }
    out
}

#[derive(Serialize)]
struct WhoJson<'a> {
    proto: &'static str,
    addr: Option<String>,
    port: u16,
    holders: &'a [Found],
}

pub fn json(target: &Target, found: &[Found]) -> Result<String> {
    let json = WhoJson {
        proto: target.transport.as_str(),
        addr: target.ip.map(|ip| ip.to_string()),
        port: target.port,
        holders: found,
    };
    Ok(serde_json::to_string_pretty(&json)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use portbroker::{GrantedSocket, Holder, LeaseId, LeaseState};

    fn tcp(text: &str) -> Target {
        Target::parse(text, Transport::Tcp).unwrap()
    }

    #[test]
    fn targets_parse() {
        assert_eq!(
            tcp("8080"),
            Target {
                transport: Transport::Tcp,
                ip: None,
                port: 8080
            }
        );
        assert_eq!(tcp("127.0.0.1:80").ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!(tcp("[::1]:80").ip, Some("::1".parse().unwrap()));
        for bad in ["0", "x", "localhost:80", "::1:80", "127.0.0.1:0", "70000"] {
            assert!(Target::parse(bad, Transport::Tcp).is_err(), "{bad}");
        }
    }

    #[test]
    fn kernel_tables_are_read_for_the_port_and_overlapping_addresses() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 111 1 0 100 0 0 10 0\n\
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 112 1 0 100 0 0 10 0\n\
   2: 0200007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 113 1 0 100 0 0 10 0\n\
   3: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 114 1 0 100 0 0 10 0\n";
        if cfg!(target_endian = "little") {
            let found = parse_table(table, &tcp("8080"));
            assert_eq!(
                found.iter().map(|s| s.inode).collect::<Vec<_>>(),
                [111, 113]
            );
            assert_eq!(found[0].uid, 1000);
            assert_eq!(found[0].addr, "127.0.0.1:8080".parse().unwrap());
            let found = parse_table(table, &tcp("127.0.0.2:8080"));
            assert_eq!(found.iter().map(|s| s.inode).collect::<Vec<_>>(), [113]);
            let found = parse_table(table, &tcp("0.0.0.0:8081"));
            assert_eq!(found.iter().map(|s| s.inode).collect::<Vec<_>>(), [114]);
        }
    }

    #[test]
    fn a_live_socket_of_this_process_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let target = tcp(&addr.to_string());
        let kernel = kernel_sockets(&target);
        assert_eq!(kernel.len(), 1, "{kernel:?}");
        let holders = processes_holding(&[kernel[0].inode]);
        assert_eq!(
            holders[&kernel[0].inode],
            [std::process::id() as i32],
            "{holders:?}"
        );
    }

    fn lease_on(addr: &str) -> LeaseInfo {
        LeaseInfo {
            id: LeaseId(7),
            holder: Holder {
                pid: 123,
                uid: 0,
                gid: 0,
                name: "ev\x1bil".into(),
            },
            since: 0,
            expires_unix_ms: None,
            state: LeaseState::Process,
            sockets: vec![GrantedSocket {
                transport: Transport::Tcp,
                addr: addr.parse().unwrap(),
                listening: true,
                v6_only: false,
            }],
        }
    }

    #[test]
    fn leases_come_first_and_their_own_sockets_are_not_outside() {
        let target = tcp("8080");
        let kernel = [
            KernelSocket {
                addr: "127.0.0.1:8080".parse().unwrap(),
                uid: 0,
                inode: 1,
            },
            KernelSocket {
                addr: "127.0.0.2:8080".parse().unwrap(),
                uid: 1000,
                inode: 2,
            },
            KernelSocket {
                addr: "127.0.0.3:8080".parse().unwrap(),
                uid: 1001,
                inode: 3,
            },
        ];
        let processes = HashMap::from([(2, vec![4242])]);
        let mut users = Users::default();
        let found = find(
            &target,
            &[lease_on("127.0.0.1:8080"), lease_on("127.0.0.1:9090")],
            &kernel,
            &processes,
            |pid| (pid == 4242).then(|| "python3".to_owned()),
            &mut users,
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert_eq!((found[0].kind, found[0].lease), ("lease", Some(7)));
        assert_eq!(found[1].kind, "outside");
        assert_eq!(
            (found[1].pid, found[1].name.as_deref()),
            (Some(4242), Some("python3"))
        );
        assert_eq!((found[2].pid, found[2].uid), (None, 1001));

        let text = text(&target, &found);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0]
                == "tcp:127.0.0.1:8080: lease 7, held by pid 123 (ev\\x1bil), user root (uid 0) (tied)",
            "{text}"
        );
        assert!(
            lines[1].contains("pid 4242 (python3)") && lines[1].ends_with("outside the broker"),
            "{text}"
        );
        assert!(lines[2].contains("a process you cannot see"), "{text}");
        assert!(lines[3].contains("run as root"), "{text}");
        assert!(!text.contains('\x1b'));

        let json: serde_json::Value =
            serde_json::from_str(&json(&target, &found).unwrap()).unwrap();
        assert_eq!(json["port"], 8080);
        assert_eq!(json["addr"], serde_json::Value::Null);
        assert_eq!(json["holders"][0]["name"], "ev\x1bil");
        assert_eq!(json["holders"][0]["state"], "process");
        assert_eq!(json["holders"][2]["pid"], serde_json::Value::Null);
    }

    #[test]
    fn nobody_is_said_so() {
        let target = tcp("127.0.0.1:8080");
        assert_eq!(text(&target, &[]), "tcp:127.0.0.1:8080: nobody holds it\n");
    }
}
