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
