//! `portctl log`: the broker's last events of leases, from the history its journal keeps: a
//! table for people (local times, names escaped), or a JSON object per line with `--json`
//! (schema in the README).

use anyhow::Result;
use portbroker::proto::escaped;
use portbroker::{HistoryEntry, HistoryEvent};
use serde::Serialize;

use crate::localtime::LocalTime;
use crate::output::{table, SocketJson};
use crate::users::Users;

/// One row per event, oldest first, under a header that is there even with no event. An end
/// whose lease the broker no longer had a record of shows `-` for its holder and sockets.
pub fn text(entries: &[HistoryEntry], users: &mut Users) -> String {
    let header = [
        "TIME", "EVENT", "ID", "PID", "UID", "USER", "NAME", "SOCKETS",
    ];
    let mut rows = vec![header.map(String::from).to_vec()];
    for entry in entries {
        let time = LocalTime::show_millis(entry.at_unix_ms)
            .unwrap_or_else(|| format!("{} ms after the epoch", entry.at_unix_ms));
        let mut row = vec![time, entry.event.to_string(), entry.id.to_string()];
        match &entry.holder {
            Some(holder) => {
                let sockets: Vec<String> = entry.sockets.iter().map(|s| s.to_string()).collect();
                row.extend([
                    holder.pid.to_string(),
                    holder.uid.to_string(),
                    escaped(&users.name_or_number(holder.uid)).to_string(),
                    // The holder names itself: it must not write to the reader's terminal.
                    escaped(&holder.name).to_string(),
                    sockets.join(" "),
                ]);
            }
            None => row.extend(["-", "-", "-", "-", "-"].map(String::from)),
        }
        rows.push(row);
    }
    table(&rows)
}

#[derive(Serialize)]
struct EntryJson<'a> {
    time_unix_ms: u64,
    event: &'static str,
    /// Why the lease ended (`EndReason::name`); null for other events.
    reason: Option<&'static str>,
    id: u64,
    pid: Option<i32>,
    uid: Option<u32>,
    user: Option<String>,
    gid: Option<u32>,
    name: Option<&'a str>,
    sockets: Vec<SocketJson>,
}

/// One JSON object per line, oldest first; holder fields are null when the broker no longer
/// had a record of the lease.
pub fn json_lines(entries: &[HistoryEntry], users: &mut Users) -> Result<String> {
    let mut out = String::new();
    for entry in entries {
        let holder = entry.holder.as_ref();
        let json = EntryJson {
            time_unix_ms: entry.at_unix_ms,
            event: entry.event.name(),
            reason: match entry.event {
                HistoryEvent::Ended(reason) => Some(reason.name()),
                HistoryEvent::Granted | HistoryEvent::Tied | HistoryEvent::HandedOver => None,
            },
            id: entry.id.0,
            pid: holder.map(|h| h.pid),
            uid: holder.map(|h| h.uid),
            user: holder.and_then(|h| users.name(h.uid)),
            gid: holder.map(|h| h.gid),
            name: holder.map(|h| h.name.as_str()),
            sockets: entry.sockets.iter().map(SocketJson::from).collect(),
        };
        out.push_str(&serde_json::to_string(&json)?);
        out.push('\n');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portbroker::{EndReason, GrantedSocket, Holder, LeaseId, Transport};
    use serde_json::{json, Value};

    fn entry(event: HistoryEvent, name: &str) -> HistoryEntry {
        HistoryEntry {
            at_unix_ms: 1_764_470_506_007,
            id: LeaseId(7),
            event,
            holder: Some(Holder {
                pid: 4242,
                uid: 0,
                gid: 0,
                name: name.into(),
            }),
            sockets: vec![GrantedSocket {
                transport: Transport::Tcp,
                addr: "127.0.0.1:40123".parse().unwrap(),
                listening: true,
                v6_only: false,
            }],
        }
    }

    #[test]
    fn a_row_per_event_with_local_time_and_the_reason() {
        let entries = [
            entry(HistoryEvent::Granted, "nginx"),
            entry(HistoryEvent::Ended(EndReason::Expired), "nginx"),
            HistoryEntry {
                holder: None,
                sockets: Vec::new(),
                ..entry(HistoryEvent::Ended(EndReason::Revoked), "")
            },
        ];
        let text = text(&entries, &mut Users::default());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("TIME "), "{text}");
        let time = LocalTime::show_millis(1_764_470_506_007).unwrap();
        assert!(lines[1].starts_with(&time), "{text}");
        assert!(time.contains(".007"), "{time}");
        let cells = |line: &str| {
            line[time.len()..]
                .split_whitespace()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cells(lines[1]),
            [
                "granted",
                "7",
                "4242",
                "0",
                "root",
                "nginx",
                "tcp:127.0.0.1:40123"
            ]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "ended:",
                "expired",
                "7",
                "4242",
                "0",
                "root",
                "nginx",
                "tcp:127.0.0.1:40123"
            ]
        );
        assert_eq!(
            cells(lines[3]),
            ["ended:", "revoked", "7", "-", "-", "-", "-", "-"]
        );
        // Columns line up.
        assert_eq!(lines[0].find("NAME"), lines[1].find("nginx"));
    }

    #[test]
    fn names_are_escaped_in_the_table_and_exact_in_json() {
        let hostile = [entry(HistoryEvent::Tied, "ev\x1b[31m\nil")];
        let text = text(&hostile, &mut Users::default());
        assert!(!text.contains('\x1b'), "{text:?}");
        assert_eq!(text.lines().count(), 2, "{text:?}");
        assert!(text.contains(r"ev\x1b[31m\nil"), "{text:?}");
        let json: Value =
            serde_json::from_str(&json_lines(&hostile, &mut Users::default()).unwrap()).unwrap();
        assert_eq!(json["name"], "ev\x1b[31m\nil");
    }

    #[test]
    fn json_has_one_object_per_line_with_every_field() {
        let entries = [
            entry(HistoryEvent::Granted, "nginx"),
            entry(HistoryEvent::Ended(EndReason::ConnectionClosed), "nginx"),
            HistoryEntry {
                holder: None,
                sockets: Vec::new(),
                ..entry(HistoryEvent::Ended(EndReason::Released), "")
            },
        ];
        let out = json_lines(&entries, &mut Users::default()).unwrap();
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            json!({"time_unix_ms": 1_764_470_506_007u64, "event": "granted", "reason": null,
                   "id": 7, "pid": 4242, "uid": 0, "user": "root", "gid": 0, "name": "nginx",
                   "sockets": [{"proto": "tcp", "addr": "127.0.0.1:40123", "listening": true,
                                "v6_only": false}]})
        );
        assert_eq!(lines[1]["event"], "ended");
        assert_eq!(lines[1]["reason"], "connection_closed");
        assert_eq!(
            lines[2],
            json!({"time_unix_ms": 1_764_470_506_007u64, "event": "ended", "reason": "released",
                   "id": 7, "pid": null, "uid": null, "user": null, "gid": null, "name": null,
                   "sockets": []})
        );
    }
}
