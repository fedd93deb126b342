//! The connections that said `Watch`, and the events waiting for each.
//!
//! A slow watcher never slows the broker: each has a bounded queue of frames not yet handed to
//! its connection. When the queue is full, further events are only counted, and the watcher
//! gets one `Missed { count }` before the next event that fits, or once it has read everything
//! queued, whichever comes first. With no watcher, emitting an
//! event costs one check of an empty map: the event is not even built. An event is kept once,
//! however many watchers wait for it: a queue holds a reference, so that watchers who never
//! read cost a few bytes per event each, not a copy of it (an event can carry a client's text).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use portbroker_proto::{Event, Response};

use crate::lease::ConnId;

/// Frames (events, and `Missed`) queued per watcher at most.
pub const WATCH_QUEUE: usize = 1024;

/// A frame waiting for a watcher, built into its `Response` when it is sent.
enum Queued {
    Event { seq: u64, event: Rc<Event> },
    Missed { count: u64 },
}

impl Queued {
    fn into_response(self) -> Response {
        match self {
            Queued::Event { seq, event } => Response::Event {
                seq,
                event: Rc::unwrap_or_clone(event),
            },
            Queued::Missed { count } => Response::Missed { count },
        }
    }
}

#[derive(Default)]
struct Queue {
    frames: VecDeque<Queued>,
    /// Events that did not fit since the last one that did.
    missed: u64,
}

pub struct Watchers {
    queues: HashMap<ConnId, Queue>,
    /// The number of the last event emitted, watched or not.
    seq: u64,
    capacity: usize,
}

impl Default for Watchers {
    fn default() -> Self {
        Watchers::with_capacity(WATCH_QUEUE)
    }
}

impl Watchers {
    /// Watchers whose queues hold at most `capacity` frames (at least 2: `Missed` and an event).
    pub fn with_capacity(capacity: usize) -> Self {
        Watchers {
            queues: HashMap::new(),
            seq: 0,
            capacity: capacity.max(2),
        }
    }

    /// Subscribes connection `conn` (again: nothing changes).
    pub fn add(&mut self, conn: ConnId) {
        self.queues.entry(conn).or_default();
    }

    /// Unsubscribes connection `conn`; what waited for it is dropped.
    pub fn remove(&mut self, conn: ConnId) {
        self.queues.remove(&conn);
    }

    pub fn is_watching(&self, conn: ConnId) -> bool {
        self.queues.contains_key(&conn)
    }

    /// Emits the event `make` builds, if anybody watches. Every watcher gets it, or counts it
    /// as missed when its queue is full.
    pub fn emit(&mut self, make: impl FnOnce() -> Event) {
        self.seq += 1;
        if self.queues.is_empty() {
            return;
        }
        let event = Rc::new(make());
        let seq = self.seq;
        for queue in self.queues.values_mut() {
            let room = self.capacity - queue.frames.len();
            let needed = if queue.missed > 0 { 2 } else { 1 };
            if room < needed {
                queue.missed += 1;
                continue;
            }
            if queue.missed > 0 {
                let count = std::mem::take(&mut queue.missed);
                queue.frames.push_back(Queued::Missed { count });
            }
            queue.frames.push_back(Queued::Event {
                seq,
                event: Rc::clone(&event),
            });
        }
    }

    /// The watchers with frames waiting, or missed events to tell of.
    pub fn pending(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.queues
            .iter()
            .filter(|(_, q)| !q.frames.is_empty() || q.missed > 0)
            .map(|(id, _)| *id)
    }

    /// The next frame waiting for watcher `conn`, if any: once the queue is empty, the count of
    /// the events it missed since, so that a watcher is told even if no event follows.
    pub fn next_for(&mut self, conn: ConnId) -> Option<Response> {
        let queue = self.queues.get_mut(&conn)?;
        match queue.frames.pop_front() {
            Some(queued) => Some(queued.into_response()),
            None => (queue.missed > 0).then(|| Response::Missed {
                count: std::mem::take(&mut queue.missed),
            }),
        }
    }

    /// Frames waiting for watcher `conn`.
    #[cfg(test)]
    pub fn queued(&self, conn: ConnId) -> usize {
        self.queues.get(&conn).map_or(0, |q| q.frames.len())
    }

    /// How many events the queues hold, each counted once however many watchers wait for it.
    #[cfg(test)]
    pub fn distinct_events(&self) -> usize {
        let mut seen = std::collections::HashSet::new();
        for queued in self.queues.values().flat_map(|q| &q.frames) {
            if let Queued::Event { event, .. } = queued {
                seen.insert(Rc::as_ptr(event));
            }
        }
        seen.len()
    }
}
