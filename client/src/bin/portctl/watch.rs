//! `portctl watch`: the broker's events as they happen, one line each: text for people
//! (names escaped), or a JSON object per line with `--json` (schema in the README).

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};
use portbroker::{Event, Holder, Watched};
use serde_json::{json, Value};

use crate::output::SocketJson;
use crate::talk::{connect, warn};

/// Subscribes and prints every event until the broker goes away, stdout closes or a signal
/// ends portctl.
pub fn watch(socket: Option<PathBuf>, json: bool) -> Result<u8> {
    let broker = connect(socket)?;
    let watch = broker.watch()?;
    warn(&format!(
        "watching the broker at {}",
        broker.socket_path().display()
    ));
    drop(broker);
    let mut stdout = io::stdout().lock();
    for watched in watch {
        let line = if json {
            json_line(&watched?)?
        } else {
            text_line(&watched?)
        };
        match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
            // `portctl watch | head`: the reader has seen enough.
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => return Ok(0),
            other => other.context("cannot write to stdout")?,
        }
    }
    Ok(0)
}

/// One line for a person: the event's number and what happened, names escaped.
pub fn text_line(watched: &Watched) -> String {
    match watched {
        Watched::Event { seq, event } => format!("#{seq} {event}"),
        Watched::Missed { count } => {
            format!("missed {count} events: portctl read too slowly")
        }
    }
}

fn holder_json(holder: &Holder) -> Value {
    json!({"pid": holder.pid, "uid": holder.uid, "gid": holder.gid, "name": holder.name})
}

/// One JSON object for a program: `{"seq": N, "event": NAME, ...}` with the event's fields, or
/// `{"event": "missed", "count": N}`.
pub fn json_line(watched: &Watched) -> Result<String> {
    let value = match watched {
        Watched::Missed { count } => json!({"event": "missed", "count": count}),
        Watched::Event { seq, event } => {
            let mut value = json!({"seq": seq, "event": event.name()});
            let fields = match event {
                Event::Granted { lease } => {
                    let sockets: Vec<SocketJson> =
                        lease.sockets.iter().map(SocketJson::from).collect();
                    let mut fields = holder_json(&lease.holder);
                    fields["id"] = json!(lease.id.0);
                    fields["since"] = json!(lease.since);
                    fields["expires_unix_ms"] = json!(lease.expires_unix_ms);
                    fields["state"] = json!(lease.state.as_str());
                    fields["sockets"] = serde_json::to_value(sockets)?;
                    fields
                }
                Event::Refused { asker, refusal } => {
                    let mut fields = holder_json(asker);
                    fields["reason"] = json!(refusal.to_string());
                    fields
                }
                Event::Released { id } | Event::Expired { id } | Event::Revoked { id } => {
                    json!({"id": id.0})
                }
                Event::Lingering { id, holder } => {
                    let mut fields = holder_json(holder);
                    fields["id"] = json!(id.0);
                    fields
                }
                Event::ReservationTakenBack { transport, port } => {
                    json!({"proto": transport.as_str(), "port": port})
                }
            };
            if let (Some(value), Value::Object(fields)) = (value.as_object_mut(), fields) {
                value.extend(fields);
            }
            value
        }
    };
    Ok(serde_json::to_string(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portbroker::{LeaseId, Refusal};

    fn hostile() -> Holder {
        Holder {
            pid: 7,
            uid: 1000,
            gid: 1000,
            name: "ev\x1b[31m\nil".into(),
        }
    }

    #[test]
    fn text_lines_escape_names_and_json_keeps_them_exact() {
        let watched = Watched::Event {
            seq: 3,
            event: Event::Lingering {
                id: LeaseId(9),
                holder: hostile(),
            },
        };
        let line = text_line(&watched);
        assert_eq!(
            line,
            r"#3 lease 9 lingers: pid 7 (ev\x1b[31m\nil, uid 1000) holds a copy"
        );
        let json: Value = serde_json::from_str(&json_line(&watched).unwrap()).unwrap();
        assert_eq!(
            json,
            json!({"seq": 3, "event": "lingering", "id": 9, "pid": 7, "uid": 1000,
                   "gid": 1000, "name": "ev\x1b[31m\nil"})
        );
    }

    #[test]
    fn every_event_is_one_json_line_with_its_name() {
        let refused = Watched::Event {
            seq: 1,
            event: Event::Refused {
                asker: hostile(),
                refusal: Refusal::UnknownService { name: "db".into() },
            },
        };
        let line = json_line(&refused).unwrap();
        assert!(!line.contains('\n'));
        let json: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(json["event"], "refused");
        assert_eq!(json["reason"], "the policy has no service named \"db\"");
        let missed: Value =
            serde_json::from_str(&json_line(&Watched::Missed { count: 5 }).unwrap()).unwrap();
        assert_eq!(missed, json!({"event": "missed", "count": 5}));
        let taken: Value = serde_json::from_str(
            &json_line(&Watched::Event {
                seq: 2,
                event: Event::ReservationTakenBack {
                    transport: portbroker::Transport::Udp,
                    port: 53,
                },
            })
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            taken,
            json!({"seq": 2, "event": "reservation_taken_back", "proto": "udp", "port": 53})
        );
    }
}
