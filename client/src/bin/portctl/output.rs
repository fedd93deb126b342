//! What `list`, `status`, `renew` and `reload` print, as tables for people and JSON for programs.

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use portbroker::proto::escaped;
use portbroker::proto::Histogram;
use portbroker::{GrantedSocket, LeaseInfo, LeaseState, StatusInfo, Transport};
use serde::Serialize;

use crate::exit::UsageError;
use crate::localtime::LocalTime;
use crate::users::Users;

/// Writes `text` to stdout. A reader that went away (`portctl list | head -1`) is not an error.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut stdout = io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => {
            Err(err).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A duration, in its two largest units: `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn format_age(secs: u64) -> String {
    let (days, hours, minutes, seconds) =
        (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if days > 0 {
        format!("{days}d{hours:02}h")
    } else if hours > 0 {
        format!("{hours}h{minutes:02}m")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
}

/// Left-aligned columns two spaces apart; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .map(|row| row[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == columns {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// What `list --port/--user/--proto` keep: sockets on the port, of the transport, in leases of
/// the user.
#[derive(Debug, Default)]
pub struct ListFilter {
    port: Option<u16>,
    uid: Option<u32>,
    transport: Option<Transport>,
}

impl ListFilter {
    /// `user` is a name or a uid; a name that no user has is bad usage.
    pub fn new(
        port: Option<u16>,
        user: Option<&str>,
        proto: Option<&str>,
    ) -> Result<ListFilter, UsageError> {
        let uid = match user {
            Some(user) => Some(Users::parse_user(user).ok_or_else(|| {
                UsageError(format!(
                    "list: no user named {:?}",
                    escaped(user).to_string()
                ))
            })?),
            None => None,
        };
        let transport = match proto {
            None => None,
            Some("tcp") => Some(Transport::Tcp),
            Some("udp") => Some(Transport::Udp),
            Some(other) => return Err(UsageError(format!("list: {other:?} is not tcp or udp"))),
        };
        Ok(ListFilter {
            port,
            uid,
            transport,
        })
    }

    /// The leases with only the sockets the filter keeps; leases left without one go.
    pub fn apply(&self, leases: Vec<LeaseInfo>) -> Vec<LeaseInfo> {
        leases
            .into_iter()
            .filter(|lease| self.uid.is_none_or(|uid| lease.holder.uid == uid))
            .filter_map(|mut lease| {
                lease.sockets.retain(|socket| {
                    self.port.is_none_or(|port| socket.addr.port() == port)
                        && self.transport.is_none_or(|t| socket.transport == t)
                });
                (!lease.sockets.is_empty()).then_some(lease)
            })
            .collect()
    }
}

/// Whether `list` may colour its STATE column: only on a terminal, and never when `NO_COLOR`
/// is set (to anything) or `TERM` is `dumb`.
pub fn colour_wanted() -> bool {
    use std::io::IsTerminal as _;
    io::stdout().is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
}

/// The STATE text in colour: green while a holder keeps the lease, yellow while it lingers,
/// blue while a sticky service's ports are kept.
fn coloured_state(state: LeaseState, text: String) -> String {
    let code = match state {
        LeaseState::Connection | LeaseState::Process | LeaseState::Number => "32",
        LeaseState::Lingering => "33",
        LeaseState::Kept => "34",
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// One row per socket of each lease, under a header that is there even with no lease. `now` is
/// in seconds since the Unix epoch. Process and user names are [`escaped`]: one row stays one
/// line, and no holder writes escape sequences to the reader's terminal. With `colour`, the
/// STATE column (the last, so alignment holds) is coloured.
pub fn leases_table(leases: &[LeaseInfo], now: u64, users: &mut Users, colour: bool) -> String {
    let header = [
        "ID", "PROTO", "ADDRESS", "PID", "UID", "USER", "NAME", "SINCE", "STATE",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for lease in leases {
        let mut state = state_text(lease, now);
        if colour {
            state = coloured_state(lease.state, state);
        }
        let user = escaped(&users.name_or_number(lease.holder.uid)).to_string();
        for socket in &lease.sockets {
            rows.push(vec![
                lease.id.to_string(),
                socket.transport.to_string(),
                address_text(socket),
                lease.holder.pid.to_string(),
                lease.holder.uid.to_string(),
                user.clone(),
                // The holder names itself: it must not write to the reader's terminal.
                escaped(&lease.holder.name).to_string(),
                format!("{} ago", format_age(now.saturating_sub(lease.since))),
                state.clone(),
            ]);
        }
    }
    table(&rows)
}

/// The ADDRESS column: the address, and ` (IPv6 only)` for an IPv6-only `[::]`, which leaves
/// the port's IPv4 addresses to others (a specific IPv6 address always does).
fn address_text(socket: &GrantedSocket) -> String {
    if socket.v6_only && socket.addr.ip().is_unspecified() {
        format!("{} (IPv6 only)", socket.addr)
    } else {
        socket.addr.to_string()
    }
}

/// What keeps the lease, and until when: `live` (its holder's connection), `tied` (its holder
/// process), `lingering` (a copy of a socket outlived its holder), `kept for 3m12s` (a sticky
/// service's ports waiting for its server to come back), `number` (a port held as a number:
/// the broker holds no socket); a live or tied lease with a time limit adds `expires in 4m12s`.
fn state_text(lease: &LeaseInfo, now: u64) -> String {
    let left = lease
        .expires_unix_ms
        .map(|ms| format_age((ms / 1000).saturating_sub(now)));
    match (lease.state, left) {
        (LeaseState::Connection, None) => "live".to_owned(),
        (LeaseState::Connection, Some(left)) => format!("expires in {left}"),
        (LeaseState::Process, None) => "tied".to_owned(),
        (LeaseState::Process, Some(left)) => format!("tied, expires in {left}"),
        (LeaseState::Lingering, _) => "lingering".to_owned(),
        (LeaseState::Kept, None) => "kept".to_owned(),
        (LeaseState::Kept, Some(left)) => format!("kept for {left}"),
        (LeaseState::Number, _) => "number".to_owned(),
    }
}

#[derive(Serialize)]
struct SocketRow<'a> {
    id: u64,
    proto: &'static str,
    addr: String,
    pid: i32,
    uid: u32,
    /// The holder's user name; null when its uid has none.
    user: Option<String>,
    gid: u32,
    name: &'a str,
    since: u64,
    listening: bool,
    /// Whether an IPv6 socket takes IPv6 only (always for a specific IPv6 address).
    v6_only: bool,
    /// Milliseconds since the Unix epoch; null for a lease without a time limit.
    expires_unix_ms: Option<u64>,
    /// Whether the holder is gone and a copy of a socket outlived it; kept beside `state`,
    /// which says the same as `"lingering"`, for scripts written before `state` existed.
    lingering: bool,
    /// What keeps the lease: `LeaseState::as_str`.
    state: &'static str,
}

/// A socket in the JSON of `watch` and `log`: the fields of `list --json` that describe the
/// socket itself.
#[derive(Serialize)]
pub struct SocketJson {
    proto: &'static str,
    addr: String,
    listening: bool,
    /// Whether an IPv6 socket takes IPv6 only, as in `list --json`.
    v6_only: bool,
}

impl From<&GrantedSocket> for SocketJson {
    fn from(socket: &GrantedSocket) -> SocketJson {
        SocketJson {
            proto: socket.transport.as_str(),
            addr: socket.addr.to_string(),
            listening: socket.listening,
            v6_only: socket.v6_only,
        }
    }
}

pub fn leases_json(leases: &[LeaseInfo], users: &mut Users) -> Result<String> {
    let rows: Vec<SocketRow> = leases
        .iter()
        .flat_map(|lease| {
            let user = users.name(lease.holder.uid);
            lease.sockets.iter().map(move |socket| SocketRow {
                id: lease.id.0,
                proto: socket.transport.as_str(),
                addr: socket.addr.to_string(),
                pid: lease.holder.pid,
                uid: lease.holder.uid,
                user: user.clone(),
                gid: lease.holder.gid,
                name: &lease.holder.name,
                since: lease.since,
                listening: socket.listening,
                v6_only: socket.v6_only,
                expires_unix_ms: lease.expires_unix_ms,
                lingering: lease.state == LeaseState::Lingering,
                state: lease.state.as_str(),
            })
        })
        .collect();
    Ok(serde_json::to_string_pretty(&rows)? + "\n")
}

/// What `renew` prints: the deadline on the local clock and the time left, rounded to the
/// second: `lease 7 expires at 2026-11-30 03:40:31 CET (in 5m00s)`.
pub fn renewed_text(id: u64, expires: Option<SystemTime>, now: SystemTime) -> String {
    let Some(at) = expires else {
        return format!("lease {id} has no time limit\n");
    };
    let left_ms = at.duration_since(now).map_or(0, |d| d.as_millis());
    let left = format_age(u64::try_from(left_ms.div_ceil(1000)).unwrap_or(u64::MAX));
    // Rounded up like the time left, so that the two agree.
    let shown = at
        .duration_since(UNIX_EPOCH)
        .map(|d| UNIX_EPOCH + Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0)));
    match shown.ok().and_then(LocalTime::of) {
        Some(local) => format!("lease {id} expires at {local} (in {left})\n"),
        None => format!("lease {id} expires in {left}\n"),
    }
}

#[derive(Serialize)]
struct Renewed {
    id: u64,
    /// Milliseconds since the Unix epoch; null for no time limit.
    expires_unix_ms: Option<u64>,
}

/// `renew --json`: `{"id": 7, "expires_unix_ms": 1764470431000}`, as in `list --json`.
pub fn renewed_json(id: u64, expires: Option<SystemTime>) -> Result<String> {
    let expires_unix_ms = expires.map(|at| {
        at.duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    });
    Ok(serde_json::to_string(&Renewed {
        id,
        expires_unix_ms,
    })? + "\n")
}

pub fn status_text(status: &StatusInfo, socket: &Path) -> String {
    let rows = [
        ("socket", socket.display().to_string()),
        (
            "daemon version",
            escaped(&status.daemon_version).to_string(),
        ),
        ("protocol", status.protocol.to_string()),
        ("uptime", format_age(status.uptime_secs)),
        ("leases", status.leases.to_string()),
        ("sockets", status.sockets.to_string()),
        ("connections", status.connections.to_string()),
        ("pool", status.pool.to_string()),
        ("default address", status.default_addr.to_string()),
    ];
    let m = &status.metrics;
    let refusals: Vec<String> = m
        .refusals
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(reason, n)| format!("{} {n}", escaped(reason)))
        .collect();
    let refused = match refusals.is_empty() {
        true => m.refused().to_string(),
        false => format!("{} ({})", m.refused(), refusals.join(", ")),
    };
    let metrics = [
        ("grants", m.grants.to_string()),
        ("refusals", refused),
        ("releases", m.releases.to_string()),
        ("expiries", m.expiries.to_string()),
        ("revokes", m.revokes.to_string()),
        ("lingering leases", m.lingering.to_string()),
        (
            "pool ports in use",
            format!(
                "tcp {}, udp {} (of {} each)",
                m.pool_in_use_tcp,
                m.pool_in_use_udp,
                status.pool.len()
            ),
        ),
        ("lease latency", latency_text(&m.lease_latency)),
        (
            "metrics endpoint",
            m.listen
                .map_or("off".to_owned(), |addr| format!("http://{addr}/metrics")),
        ),
    ];
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .chain(metrics)
        .map(|(key, value)| vec![format!("{key}:"), value])
        .collect();
    table(&rows)
}

/// A latency histogram in one line: the count, the mean and the buckets that hold any.
fn latency_text(histogram: &Histogram) -> String {
    let count = histogram.count();
    if count == 0 {
        return "no leases yet".to_owned();
    }
    let buckets: Vec<String> = histogram
        .counts
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| match histogram.bounds.get(i) {
            Some(bound) => format!("≤{bound}µs: {n}"),
            None => format!("more: {n}"),
        })
        .collect();
    format!(
        "{count} leases, mean {}µs ({})",
        histogram.sum / count,
        buckets.join(", ")
    )
}

/// The metrics of `status --json`: counters, gauges and the cumulative histogram, as the
/// metrics endpoint has them.
fn metrics_json(status: &StatusInfo) -> serde_json::Value {
    let m = &status.metrics;
    let refusals: serde_json::Map<String, serde_json::Value> = m
        .refusals
        .iter()
        .map(|(reason, n)| (reason.clone(), (*n).into()))
        .collect();
    let mut cumulative = 0;
    let buckets: Vec<serde_json::Value> = m
        .lease_latency
        .counts
        .iter()
        .enumerate()
        .map(|(i, n)| {
            cumulative += n;
            let le = match m.lease_latency.bounds.get(i) {
                Some(bound) => serde_json::Value::from(*bound),
                None => "+Inf".into(),
            };
            serde_json::json!({"le": le, "count": cumulative})
        })
        .collect();
    serde_json::json!({
        "grants": m.grants,
        "refusals": refusals,
        "releases": m.releases,
        "expiries": m.expiries,
        "revokes": m.revokes,
        "lingering": m.lingering,
        "pool_in_use": {"tcp": m.pool_in_use_tcp, "udp": m.pool_in_use_udp},
        "pool_size": status.pool.len(),
        "lease_latency_us": {
            "buckets": buckets,
            "sum": m.lease_latency.sum,
            "count": m.lease_latency.count(),
        },
        "listen": m.listen.map(|addr| addr.to_string()),
    })
}

/// What a successful `reload` prints.
pub fn reloaded_text(rules: u32, services: u32) -> String {
    format!("reloaded: {rules} rules, {services} services\n")
}

#[derive(Serialize)]
struct StatusJson<'a> {
    daemon_version: &'a str,
    protocol: u32,
    uptime_secs: u64,
    leases: u64,
    sockets: u64,
    connections: u64,
    pool: String,
    default_addr: String,
    metrics: serde_json::Value,
}

pub fn status_json(status: &StatusInfo) -> Result<String> {
    let json = StatusJson {
        daemon_version: &status.daemon_version,
        protocol: status.protocol,
        uptime_secs: status.uptime_secs,
        leases: status.leases,
        sockets: status.sockets,
        connections: status.connections,
        pool: status.pool.to_string(),
        default_addr: status.default_addr.to_string(),
        metrics: metrics_json(status),
    };
    Ok(serde_json::to_string_pretty(&json)? + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use portbroker::{GrantedSocket, Holder, LeaseId, PortRange, Transport};

    fn lease() -> LeaseInfo {
        LeaseInfo {
            id: LeaseId(7),
            holder: Holder {
                pid: 123,
                uid: 0,
                gid: 0,
                name: "python3".into(),
            },
            since: 1_764_130_000,
            expires_unix_ms: None,
            state: LeaseState::Connection,
            sockets: vec![
                GrantedSocket {
                    transport: Transport::Tcp,
                    addr: "127.0.0.1:40123".parse().unwrap(),
                    listening: true,
                    v6_only: false,
                },
                GrantedSocket {
                    transport: Transport::Udp,
                    addr: "[::]:8080".parse().unwrap(),
                    listening: false,
                    v6_only: true,
                },
            ],
        }
    }

    #[test]
    fn ages_use_their_two_largest_units() {
        assert_eq!(format_age(0), "0s");
        assert_eq!(format_age(59), "59s");
        assert_eq!(format_age(192), "3m12s");
        assert_eq!(format_age(3600 + 5 * 60 + 9), "1h05m");
        assert_eq!(format_age(3 * 86_400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn the_table_has_a_header_and_a_row_per_socket() {
        assert_eq!(
            leases_table(&[], 0, &mut Users::default(), false),
            "ID  PROTO  ADDRESS  PID  UID  USER  NAME  SINCE  STATE\n"
        );
        let text = leases_table(&[lease()], 1_764_130_192, &mut Users::default(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[1].split_whitespace().collect::<Vec<_>>(),
            [
                "7",
                "tcp",
                "127.0.0.1:40123",
                "123",
                "0",
                "root",
                "python3",
                "3m12s",
                "ago",
                "live"
            ]
        );
        assert!(lines[2].contains("[::]:8080 (IPv6 only)"), "{}", lines[2]);
        // Columns line up.
        assert_eq!(lines[0].find("NAME"), lines[1].find("python3"));
    }

    #[test]
    fn names_are_escaped_in_the_table_and_exact_in_json() {
        let mut hostile = lease();
        hostile.holder.name = "ev\x1b[31m\nil".into();
        let text = leases_table(
            &[hostile.clone()],
            1_764_130_192,
            &mut Users::default(),
            false,
        );
        assert!(!text.contains('\x1b'), "{text:?}");
        assert_eq!(text.lines().count(), 3, "{text:?}");
        assert!(
            text.lines().nth(1).unwrap().contains(r"ev\x1b[31m\nil"),
            "{text:?}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&leases_json(&[hostile], &mut Users::default()).unwrap()).unwrap();
        assert_eq!(json[0]["name"], "ev\x1b[31m\nil");
    }

    #[test]
    fn json_rows_carry_every_field() {
        let json: serde_json::Value =
            serde_json::from_str(&leases_json(&[lease()], &mut Users::default()).unwrap()).unwrap();
        assert_eq!(
            json[0],
            serde_json::json!({"id": 7, "proto": "tcp", "addr": "127.0.0.1:40123", "pid": 123,
                "uid": 0, "user": "root", "gid": 0, "name": "python3", "since": 1_764_130_000u64,
                "listening": true, "v6_only": false, "expires_unix_ms": null,
                "lingering": false, "state": "connection"})
        );
        assert_eq!(json[1]["addr"], "[::]:8080");
        assert_eq!(json[1]["v6_only"], true);
        assert_eq!(
            leases_json(&[], &mut Users::default()).unwrap().trim(),
            "[]"
        );
        // A uid without a name: null.
        let mut nameless = lease();
        nameless.holder.uid = 4_000_000_123;
        let json: serde_json::Value =
            serde_json::from_str(&leases_json(&[nameless], &mut Users::default()).unwrap())
                .unwrap();
        assert_eq!(json[0]["user"], serde_json::Value::Null);
    }

    #[test]
    fn filters_keep_matching_sockets_and_drop_emptied_leases() {
        let keep = |port, user: Option<&str>, proto: Option<&str>| {
            ListFilter::new(port, user, proto)
                .unwrap()
                .apply(vec![lease()])
                .iter()
                .map(|l| l.sockets.iter().map(|s| s.addr.port()).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(keep(None, None, None), [vec![40123, 8080]]);
        assert_eq!(keep(Some(8080), None, None), [vec![8080]]);
        assert_eq!(keep(None, None, Some("tcp")), [vec![40123]]);
        assert_eq!(keep(Some(8080), None, Some("tcp")), Vec::<Vec<u16>>::new());
        assert_eq!(keep(None, Some("root"), None), [vec![40123, 8080]]);
        assert_eq!(keep(None, Some("0"), None), [vec![40123, 8080]]);
        assert_eq!(keep(None, Some("1000"), None), Vec::<Vec<u16>>::new());
        assert!(ListFilter::new(None, Some("no-such-user-here"), None).is_err());
    }

    #[test]
    fn only_the_state_is_coloured_and_only_when_asked() {
        let plain = leases_table(&[lease()], 1_764_130_192, &mut Users::default(), false);
        assert!(!plain.contains('\x1b'));
        let coloured = leases_table(&[lease()], 1_764_130_192, &mut Users::default(), true);
        let row = coloured.lines().nth(1).unwrap();
        assert!(row.ends_with("\x1b[32mlive\x1b[0m"), "{coloured:?}");
        assert_eq!(row.matches('\x1b').count(), 2, "{coloured:?}");
    }

    #[test]
    fn the_state_column_says_what_keeps_a_lease_and_until_when() {
        let now = 1_764_130_192;
        let in_4m12s = Some((now + 252) * 1000 + 999);
        let state = |state, expires_unix_ms| {
            state_text(
                &LeaseInfo {
                    state,
                    expires_unix_ms,
                    ..lease()
                },
                now,
            )
        };
        assert_eq!(state(LeaseState::Connection, None), "live");
        assert_eq!(state(LeaseState::Connection, in_4m12s), "expires in 4m12s");
        assert_eq!(state(LeaseState::Process, None), "tied");
        assert_eq!(
            state(LeaseState::Process, in_4m12s),
            "tied, expires in 4m12s"
        );
        assert_eq!(state(LeaseState::Lingering, None), "lingering");
        assert_eq!(state(LeaseState::Kept, in_4m12s), "kept for 4m12s");
        assert_eq!(state(LeaseState::Kept, None), "kept");
        // A deadline just passed: the broker ends the lease within milliseconds.
        assert_eq!(
            state(LeaseState::Connection, Some(now * 1000 - 5)),
            "expires in 0s"
        );

        // The state is the last column, where its spaces cannot shift the others.
        let kept = LeaseInfo {
            state: LeaseState::Kept,
            expires_unix_ms: in_4m12s,
            ..lease()
        };
        let text = leases_table(&[kept, lease()], now, &mut Users::default(), false);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].ends_with("  kept for 4m12s"), "{text}");
        assert!(lines[3].ends_with("  live"), "{text}");
        assert_eq!(lines[0].find("STATE"), lines[1].find("kept"));
    }

    #[test]
    fn json_rows_name_the_state_and_keep_the_lingering_flag() {
        for (state, name, lingering) in [
            (LeaseState::Connection, "connection", false),
            (LeaseState::Process, "process", false),
            (LeaseState::Lingering, "lingering", true),
            (LeaseState::Kept, "kept", false),
            (LeaseState::Number, "number", false),
        ] {
            let leases = [LeaseInfo { state, ..lease() }];
            let json: serde_json::Value =
                serde_json::from_str(&leases_json(&leases, &mut Users::default()).unwrap())
                    .unwrap();
            assert_eq!(json[0]["state"], name);
            assert_eq!(json[0]["lingering"], lingering, "{name}");
        }
    }

    #[test]
    fn renew_prints_the_local_deadline_and_the_time_left() {
        let now = UNIX_EPOCH + Duration::from_millis(1_764_470_131_250);
        // The broker's deadline for `renew 7 300`, a little after portctl's "now".
        let at = now + Duration::from_millis(300_004);
        let text = renewed_text(7, Some(at), now);
        let local = LocalTime::of(UNIX_EPOCH + Duration::from_secs(1_764_470_432)).unwrap();
        assert_eq!(text, format!("lease 7 expires at {local} (in 5m01s)\n"));
        let at = now + Duration::from_secs(300);
        assert!(renewed_text(7, Some(at), now).ends_with(" (in 5m00s)\n"));
        assert!(!text.contains("1764470"), "no epoch number: {text}");
        // A deadline already passed (a slow reply) is shown as now.
        assert!(renewed_text(7, Some(now), now + Duration::from_secs(1)).ends_with("(in 0s)\n"));
        assert_eq!(renewed_text(7, None, now), "lease 7 has no time limit\n");
    }

    #[test]
    fn renew_json_keeps_the_deadline_as_a_number() {
        let at = UNIX_EPOCH + Duration::from_millis(1_764_470_431_250);
        let value: serde_json::Value =
            serde_json::from_str(&renewed_json(7, Some(at)).unwrap()).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"id": 7, "expires_unix_ms": 1_764_470_431_250u64})
        );
        let value: serde_json::Value =
            serde_json::from_str(&renewed_json(7, None).unwrap()).unwrap();
        assert_eq!(value, serde_json::json!({"id": 7, "expires_unix_ms": null}));
    }

    #[test]
    fn reload_reports_rules_and_services() {
        assert_eq!(reloaded_text(12, 3), "reloaded: 12 rules, 3 services\n");
    }

    #[test]
    fn status_json_has_the_documented_keys() {
        let status = StatusInfo {
            daemon_version: "0.1.0".into(),
            protocol: 1,
            uptime_secs: 5,
            leases: 2,
            sockets: 3,
            connections: 4,
            pool: PortRange {
                lo: 61000,
                hi: 65535,
            },
            default_addr: "::".parse().unwrap(),
            metrics: portbroker::proto::MetricsInfo {
                grants: 7,
                refusals: vec![("in_use".into(), 2), ("quota_exceeded".into(), 0)],
                releases: 3,
                expiries: 1,
                revokes: 0,
                lingering: 1,
                pool_in_use_tcp: 1,
                pool_in_use_udp: 0,
                lease_latency: Histogram {
                    bounds: vec![10, 25],
                    counts: vec![1, 4, 2],
                    sum: 210,
                },
                listen: Some("127.0.0.1:9464".parse().unwrap()),
            },
        };
        let json: serde_json::Value = serde_json::from_str(&status_json(&status).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"daemon_version": "0.1.0", "protocol": 1, "uptime_secs": 5,
                "leases": 2, "sockets": 3, "connections": 4, "pool": "61000-65535",
                "default_addr": "::", "metrics": {
                    "grants": 7, "refusals": {"in_use": 2, "quota_exceeded": 0},
                    "releases": 3, "expiries": 1, "revokes": 0, "lingering": 1,
                    "pool_in_use": {"tcp": 1, "udp": 0}, "pool_size": 4536,
                    "lease_latency_us": {"buckets": [{"le": 10, "count": 1},
                        {"le": 25, "count": 5}, {"le": "+Inf", "count": 7}],
                        "sum": 210, "count": 7},
                    "listen": "127.0.0.1:9464"}})
        );
        let text = status_text(&status, Path::new("/run/p.sock"));
        assert!(
            text.lines()
                .any(|line| line.starts_with("pool: ") && line.ends_with(" 61000-65535")),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|line| line.starts_with("refusals: ") && line.ends_with(" 2 (in_use 2)")),
            "{text}"
        );
        assert!(
            text.contains("7 leases, mean 30µs (≤10µs: 1, ≤25µs: 4, more: 2)"),
            "{text}"
        );
        assert!(text.contains("http://127.0.0.1:9464/metrics"), "{text}");
    }
}
