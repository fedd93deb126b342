//! A record's JSON, written by hand: byte for byte what `serde_json` writes for the `Serialize`
//! derive of `Record` (a test holds the two together, and reading goes through serde as
//! before), at about a third of the cost. Every grant and end writes a record; through serde,
//! the encoding was a third of the daemon's own instructions per lease, most of it escaping the
//! field names and formatting the address (callgrind, README "Performance").
//!
//! Only the process name and the service name come from outside; they are escaped as
//! `serde_json` escapes strings.

use std::io::Write;
use std::net::SocketAddr;

use portbroker_proto::{GrantedSocket, Transport};

use super::record::{Entry, Record};

/// Appends the JSON of `record` to `out`.
pub(super) fn write_record(record: &Record, out: &mut Vec<u8>) {
    match record {
        Record::Grant(entry) => {
            out.extend_from_slice(b"{\"Grant\":");
            write_entry(entry, out);
            out.push(b'}');
        }
        Record::End(id) => {
            out.extend_from_slice(b"{\"End\":");
            write_number(*id, out);
            out.push(b'}');
        }
        Record::NextId(next) => {
            out.extend_from_slice(b"{\"NextId\":");
            write_number(*next, out);
            out.push(b'}');
        }
        Record::Leased {
            at_ms,
            change,
            lease,
        } => {
            out.extend_from_slice(b"{\"Leased\":{\"at_ms\":");
            write_number(*at_ms, out);
            out.extend_from_slice(b",\"change\":\"");
            // Names are plain ASCII words: nothing to escape.
            out.extend_from_slice(change.map_or("unknown", |c| c.name()).as_bytes());
            out.extend_from_slice(b"\",\"lease\":");
            write_entry(lease, out);
            out.extend_from_slice(b"}}");
        }
        Record::Ended { id, at_ms, why } => {
            out.extend_from_slice(b"{\"Ended\":{\"id\":");
            write_number(*id, out);
            out.extend_from_slice(b",\"at_ms\":");
            write_number(*at_ms, out);
            out.extend_from_slice(b",\"why\":\"");
            out.extend_from_slice(why.map_or("unknown", |why| why.name()).as_bytes());
            out.extend_from_slice(b"\"}}");
        }
    }
}

fn write_entry(entry: &Entry, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"id\":");
    write_number(entry.id, out);
    out.extend_from_slice(b",\"pid\":");
    write_number(entry.pid, out);
    out.extend_from_slice(b",\"start_time\":");
    write_number(entry.start_time, out);
    out.extend_from_slice(b",\"uid\":");
    write_number(entry.uid, out);
    out.extend_from_slice(b",\"gid\":");
    write_number(entry.gid, out);
    out.extend_from_slice(b",\"name\":");
    write_string(&entry.name, out);
    out.extend_from_slice(b",\"since\":");
    write_number(entry.since, out);
    out.extend_from_slice(b",\"sockets\":[");
    for (i, socket) in entry.sockets.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_socket(socket, out);
    }
    out.extend_from_slice(b"],\"service\":");
    match &entry.service {
        Some(service) => write_string(service, out),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"cookies\":[");
    for (i, cookie) in entry.cookies.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_number(*cookie, out);
    }
    out.push(b']');
    if entry.number {
        out.extend_from_slice(b",\"number\":true");
    }
    out.push(b'}');
}

fn write_socket(socket: &GrantedSocket, out: &mut Vec<u8>) {
    out.extend_from_slice(match socket.transport {
        Transport::Tcp => b"{\"transport\":\"Tcp\",\"addr\":\"",
        Transport::Udp => b"{\"transport\":\"Udp\",\"addr\":\"",
    });
    write_addr(&socket.addr, out);
    out.extend_from_slice(if socket.listening {
        b"\",\"listening\":true"
    } else {
        b"\",\"listening\":false"
    });
    out.extend_from_slice(if socket.v6_only {
        b",\"v6_only\":true}"
    } else {
        b",\"v6_only\":false}"
    });
}

/// An address as its `Display` writes it (as serde does for a human-readable format); IPv4,
/// nearly every lease's, without the formatting machinery. Nothing in an address needs
/// escaping.
fn write_addr(addr: &SocketAddr, out: &mut Vec<u8>) {
    match addr {
        SocketAddr::V4(v4) => {
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                write_number(octet, out);
            }
            out.push(b':');
            write_number(v4.port(), out);
        }
        SocketAddr::V6(v6) => {
            // Writing into a Vec cannot fail.
            let _ = write!(out, "{v6}");
        }
    }
}

fn write_number(n: impl itoa::Integer, out: &mut Vec<u8>) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string as `serde_json` writes it: `"` and `\` escaped, control characters as `\b`,
/// `\t`, `\n`, `\f`, `\r` or `\u00XX` (lowercase hex), everything else as it is.
fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            0x08 => b"\\b",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            0x0c => b"\\f",
            b'\r' => b"\\r",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::record::Change;
    use portbroker_proto::EndReason;
    use proptest::prelude::*;
    use std::net::{Ipv6Addr, SocketAddrV6};

    fn by_serde(record: &Record) -> Vec<u8> {
        serde_json::to_vec(record).unwrap()
    }

    fn by_hand(record: &Record) -> Vec<u8> {
        let mut out = Vec::new();
        write_record(record, &mut out);
        out
    }

    fn entry(name: &str, service: Option<&str>, sockets: Vec<GrantedSocket>) -> Entry {
        Entry {
            id: 42,
            pid: 4242,
            start_time: 123_456,
            uid: 1000,
            gid: 1000,
            name: name.to_owned(),
            since: 1_796_020_287,
            cookies: (0..sockets.len() as u64).map(|i| 26_272_841 + i).collect(),
            sockets,
            service: service.map(str::to_owned),
            number: false,
        }
    }

    fn socket(transport: Transport, addr: &str, listening: bool, v6_only: bool) -> GrantedSocket {
        GrantedSocket {
            transport,
            addr: addr.parse().unwrap(),
            listening,
            v6_only,
        }
    }

    #[test]
    fn every_kind_of_record_is_written_as_serde_writes_it() {
        let sockets = vec![
            socket(Transport::Tcp, "127.0.0.1:61000", true, false),
            socket(Transport::Udp, "0.0.0.0:53", false, false),
            socket(Transport::Tcp, "[::1]:8080", true, true),
            socket(Transport::Udp, "[::]:0", false, false),
            GrantedSocket {
                transport: Transport::Tcp,
                addr: SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::new(0xfe80, 0, 0, 0, 1, 2, 3, 4),
                    65535,
                    7,
                    3,
                )),
                listening: false,
                v6_only: true,
            },
        ];
        let mut records = vec![
            Record::End(0),
            Record::End(u64::MAX),
            Record::NextId(1),
            Record::Grant(entry("portbroker-benc", None, sockets.clone())),
            Record::Grant(entry("", Some(""), Vec::new())),
            Record::Grant(Entry {
                cookies: Vec::new(),
                number: true,
                ..entry("python3", None, sockets[..1].to_vec())
            }),
        ];
        for change in [
            None,
            Some(Change::Granted),
            Some(Change::Tied),
            Some(Change::HandedOver),
        ] {
            records.push(Record::Leased {
                at_ms: 1_796_020_287_319,
                change,
                lease: entry("redis-server", Some("cache"), sockets.clone()),
            });
        }
        for why in EndReason::ALL.iter().copied().map(Some).chain([None]) {
            records.push(Record::Ended {
                id: 7,
                at_ms: 0,
                why,
            });
        }
        for record in &records {
            assert_eq!(
                String::from_utf8(by_hand(record)).unwrap(),
                String::from_utf8(by_serde(record)).unwrap()
            );
        }
    }

    #[test]
    fn every_ascii_character_and_then_some_is_escaped_as_serde_escapes_it() {
        let mut name: String = (0u8..=0x7f).map(char::from).collect();
        name.push_str("é\u{2028}\u{fffd}😀\"\\");
        let record = Record::Grant(entry(&name, Some(&name), Vec::new()));
        assert_eq!(by_hand(&record), by_serde(&record));
    }

    proptest! {
        #[test]
        fn any_entry_is_written_as_serde_writes_it(
            id: u64, pid: i32, start_time: u64, uid: u32, gid: u32, since: u64,
            name in any::<String>(), service in proptest::option::of(any::<String>()),
            addrs in proptest::collection::vec((any::<bool>(), any::<SocketAddr>(), any::<bool>(), any::<bool>()), 0..4),
            at_ms: u64, number: bool,
        ) {
            let sockets: Vec<GrantedSocket> = addrs
                .into_iter()
                .map(|(udp, addr, listening, v6_only)| GrantedSocket {
                    transport: if udp { Transport::Udp } else { Transport::Tcp },
                    addr,
                    listening,
                    v6_only,
                })
                .collect();
            let lease = Entry {
                id, pid, start_time, uid, gid, name, since,
                cookies: sockets.iter().map(|s| u64::from(s.addr.port())).collect(),
                sockets,
                service,
                number,
            };
            let record = Record::Leased { at_ms, change: Some(Change::Granted), lease };
            prop_assert_eq!(by_hand(&record), by_serde(&record));
        }
    }
}
