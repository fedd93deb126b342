//! `History`: the last events of leases (grants, ties, handovers, ends and why), read back
//! from the journal and its previous generations. Allowed to every user, as `List` and `Watch`
//! are: an event tells no more than they showed when it happened.

use portbroker_proto::{Failure, HistoryEntry, Response, MAX_RESPONSE_FRAME};
use tracing::warn;

use super::Reply;
use crate::journal::READ_BUDGET;
use crate::state::State;

/// The most events one answer holds, whatever is asked.
pub const MAX_EVENTS: usize = 10_000;

/// The most bytes the events of one answer may take (by `encoded_size`): a quarter of a frame,
/// whatever the names and sockets in the journal.
const MAX_ANSWER_BYTES: usize = MAX_RESPONSE_FRAME as usize / 4;

/// Bytes of history read that count as one request against the asker's budget: reading 4 MiB
/// costs the loop milliseconds, so a user who asks for it again and again is slowed down by
/// the request budget long before the loop is.
const BYTES_PER_REQUEST: u64 = 4096;

pub fn history(state: &mut State, max: u32) -> Reply {
    let Some(history) = &state.history else {
        return Reply::failed(Failure::NotPermitted {
            reason: "the broker keeps no journal (it runs with --no-journal), so it has no \
                     history"
                .into(),
        });
    };
    let max = usize::try_from(max).unwrap_or(usize::MAX).min(MAX_EVENTS);
    let read = history.read(max, READ_BUDGET);
    if (!read.skipped.is_empty() || read.unreadable > 0) && state.history_trouble.due() {
        warn!(
            "reading the history: {} lines skipped that hold no valid record{}{}",
            read.unreadable,
            if read.skipped.is_empty() { "" } else { "; " },
            read.skipped.join("; ")
        );
    }
    let work = 1 + read.bytes / BYTES_PER_REQUEST;
    Reply {
        work: u32::try_from(work).unwrap_or(u32::MAX),
        ..Reply::answer(Response::History(newest_that_fit(read.entries)))
    }
}

/// An upper bound of the bytes `entry` takes in a frame.
fn encoded_size(entry: &HistoryEntry) -> usize {
    // Numbers and tags, then per socket a tag, an IPv6 address, a port and two flags.
    48 + entry.holder.as_ref().map_or(0, |h| h.name.len()) + entry.sockets.len() * 24
}

/// The newest of `entries` (oldest first) that fit in `MAX_ANSWER_BYTES`, oldest first.
fn newest_that_fit(mut entries: Vec<HistoryEntry>) -> Vec<HistoryEntry> {
    let mut total = 0;
    let keep = entries
        .iter()
        .rev()
        .take_while(|entry| {
            total += encoded_size(entry);
            total <= MAX_ANSWER_BYTES
        })
        .count();
    entries.drain(..entries.len() - keep);
    entries
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::fixture::state;
    use crate::journal::{Change, Entry, Journal};
    use portbroker_proto::{EndReason, GrantedSocket, HistoryEvent, Holder, LeaseId, Transport};

    fn entry(id: u64, name: &str) -> Entry {
        Entry {
            id,
            pid: 4242,
            start_time: 1,
            uid: 1000,
            gid: 1000,
            name: name.into(),
            since: 1,
            sockets: vec![GrantedSocket {
                transport: Transport::Tcp,
                addr: "127.0.0.1:8080".parse().unwrap(),
                listening: true,
                v6_only: false,
            }],
            service: None,
            cookies: vec![1],
            number: false,
        }
    }

    #[test]
    fn the_last_events_oldest_first_for_any_user() {
        let dir = tempfile::tempdir().unwrap();
        let (mut journal, _) = Journal::open(&dir.path().join("leases.journal")).unwrap();
        for id in 1..=3 {
            journal.grant(entry(id, "nginx"), Change::Granted, id * 100);
            journal.commit().unwrap();
            journal.end(id, EndReason::Expired, id * 100 + 1);
            journal.commit().unwrap();
        }
        let mut state = state();
        state.history = Some(journal.history().unwrap());
        // `History` takes no peer: every user may ask.
        let reply = history(&mut state, 3);
        let Response::History(entries) = reply.response else {
            panic!("not a history: {:?}", reply.response);
        };
        let seen: Vec<(u64, HistoryEvent, u64)> = entries
            .iter()
            .map(|e| (e.id.0, e.event, e.at_unix_ms))
            .collect();
        assert_eq!(
            seen,
            [
                (2, HistoryEvent::Ended(EndReason::Expired), 201),
                (3, HistoryEvent::Granted, 300),
                (3, HistoryEvent::Ended(EndReason::Expired), 301),
            ]
        );
        assert_eq!(entries[2].holder.as_ref().unwrap().name, "nginx");
        assert_eq!(entries[2].id, LeaseId(3));
        assert!(reply.work >= 1);
        // Asking for more than there is gives all there is; asking for a million, at most
        // MAX_EVENTS.
        let Response::History(all) = history(&mut state, u32::MAX).response else {
            panic!("not a history");
        };
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn without_a_journal_there_is_no_history() {
        let mut state = state();
        assert!(matches!(
            history(&mut state, 10).response,
            Response::Failed(Failure::NotPermitted { reason }) if reason.contains("--no-journal")
        ));
    }

    #[test]
    fn the_answer_keeps_the_newest_that_fit_in_a_frame() {
        let big = |id: u64| HistoryEntry {
            at_unix_ms: id,
            id: LeaseId(id),
            event: HistoryEvent::Granted,
            holder: Some(Holder {
                pid: 1,
                uid: 1,
                gid: 1,
                name: "n".repeat(60_000),
            }),
            sockets: Vec::new(),
        };
        let entries: Vec<HistoryEntry> = (1..=1000).map(big).collect();
        let kept = newest_that_fit(entries);
        assert!(kept.len() < 1000 && kept.len() > 100, "{}", kept.len());
        assert_eq!(kept.last().unwrap().id, LeaseId(1000));
        assert_eq!(kept[0].id.0, 1001 - kept.len() as u64);
        let frame = portbroker_proto::encode_response(&Response::History(kept)).unwrap();
        assert!(frame.len() <= MAX_RESPONSE_FRAME as usize);
    }
}
