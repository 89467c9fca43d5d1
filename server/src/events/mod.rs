//! The event bus: every state change is emitted here and streamed to followers of
//! `GET /api/v1/events` (`crate::api::events`).
//!
//! Events get a per-process epoch and a sequence number (`<epoch>-<seq>`). The newest
//! [`RING_CAPACITY`] are kept in memory so a follower that reconnects with `Last-Event-ID`
//! gets exactly what it missed; live followers are fed through a broadcast channel. A follower
//! whose id is no longer held (too old, or from another server process) or who falls behind
//! the broadcast gets an explicit `reset` event instead of a silent gap. Events are not
//! persisted: the store is the state, events are news of its changes.

pub mod filter;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anneal_shared::events::{Event, EventKind};
use time::OffsetDateTime;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use filter::Filter;

/// How many recent events are kept for resuming followers.
pub const RING_CAPACITY: usize = 10_000;

/// How far a live follower may fall behind before it is reset.
const LIVE_CAPACITY: usize = 1024;

/// A position in the stream: an event id as sent (`<epoch>-<seq>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The server process that sent it.
    pub epoch: u64,
    /// The event's sequence number (0: before the first event).
    pub seq: u64,
}

impl Cursor {
    /// Parse `<epoch>-<seq>`.
    pub fn parse(s: &str) -> Option<Cursor> {
        let (epoch, seq) = s.trim().split_once('-')?;
        Some(Cursor {
            epoch: epoch.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// Where a new follower starts.
#[derive(Debug)]
pub enum Start {
    /// These events (possibly none), then live ones.
    Replay(Vec<Arc<Event>>),
    /// The events after the given id are no longer held: the follower gets a reset (whose id
    /// is the newest event's), then live ones.
    Reset(Cursor),
}

struct Ring {
    events: VecDeque<Arc<Event>>,
    /// Sequence number of the newest event (0 before the first).
    last: u64,
}

/// Emits events, keeps the recent ones, and feeds followers.
pub struct EventBus {
    epoch: u64,
    capacity: usize,
    ring: Mutex<Ring>,
    live: broadcast::Sender<Arc<Event>>,
    closing: CancellationToken,
}

impl Default for EventBus {
    fn default() -> EventBus {
        EventBus::new(RING_CAPACITY)
    }
}

impl EventBus {
    /// A bus keeping the newest `capacity` events, its epoch taken from the clock (ms), so ids
    /// of an earlier process on this host are recognised as foreign.
    pub fn new(capacity: usize) -> EventBus {
        let epoch = (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as u64;
        EventBus::with_epoch(epoch, capacity)
    }

    /// A bus with a given epoch (tests).
    pub fn with_epoch(epoch: u64, capacity: usize) -> EventBus {
        EventBus {
            epoch,
            capacity: capacity.max(1),
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                last: 0,
            }),
            live: broadcast::channel(LIVE_CAPACITY).0,
            closing: CancellationToken::new(),
        }
    }

    /// This process's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The newest event's position.
    pub fn head(&self) -> Cursor {
        let ring = self.ring.lock().expect("event ring");
        self.cursor(ring.last)
    }

    fn cursor(&self, seq: u64) -> Cursor {
        Cursor {
            epoch: self.epoch,
            seq,
        }
    }

    /// Emit an event: it gets the next id and the current time.
    pub fn emit(&self, mut event: Event) {
        metrics::counter!("anneal_events_emitted_total", "kind" => event.kind.as_str())
            .increment(1);
        event.at = OffsetDateTime::now_utc();
        let mut ring = self.ring.lock().expect("event ring");
        ring.last += 1;
        event.id = self.cursor(ring.last).to_string();
        let event = Arc::new(event);
        if ring.events.len() == self.capacity {
            ring.events.pop_front();
        }
        ring.events.push_back(event.clone());
        // Sent under the lock, so the broadcast order is the id order and a subscriber taken
        // under the same lock sees each event exactly once, by replay or live.
        let _ = self.live.send(event);
    }

    /// Follow from after `after` (None: from now on).
    pub fn subscribe(&self, after: Option<Cursor>) -> (Start, broadcast::Receiver<Arc<Event>>) {
        let ring = self.ring.lock().expect("event ring");
        let rx = self.live.subscribe();
        let head = self.cursor(ring.last);
        let Some(after) = after else {
            return (Start::Replay(Vec::new()), rx);
        };
        // Sequence number of the oldest event held (last + 1 when none are).
        let first = ring.last + 1 - ring.events.len() as u64;
        let start = if after.epoch != self.epoch || after.seq > ring.last || after.seq + 1 < first {
            Start::Reset(head)
        } else {
            let skip = (after.seq + 1 - first) as usize;
            Start::Replay(ring.events.iter().skip(skip).cloned().collect())
        };
        (start, rx)
    }

    /// Follow from now on; the newest event's position, taken together with the receiver.
    pub fn subscribe_at_head(&self) -> (Cursor, broadcast::Receiver<Arc<Event>>) {
        let ring = self.ring.lock().expect("event ring");
        (self.cursor(ring.last), self.live.subscribe())
    }

    /// The reset event sent to a follower at `head`.
    pub fn reset_event(head: Cursor, reason: &str) -> Event {
        metrics::counter!("anneal_event_resets_total", "reason" => reason.to_string()).increment(1);
        Event {
            id: head.to_string(),
            at: OffsetDateTime::now_utc(),
            kind: EventKind::Reset,
            reason: Some(reason.to_string()),
            ..Event::default()
        }
    }

    /// Fires when the server shuts down: followers' streams end so connections can drain.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// End every follower's stream.
    pub fn close(&self) {
        self.closing.cancel();
    }
}

/// One follower: its replay, then live events, filtered; a reset when it falls behind.
pub struct Follower {
    bus: Arc<EventBus>,
    pending: VecDeque<Arc<Event>>,
    live: broadcast::Receiver<Arc<Event>>,
    filter: Filter,
}

impl Follower {
    /// Follow `bus` from after `after`, keeping the events `filter` matches.
    pub fn new(bus: Arc<EventBus>, after: Option<Cursor>, filter: Filter) -> Follower {
        let (start, live) = bus.subscribe(after);
        let pending = match start {
            Start::Replay(events) => events.into(),
            Start::Reset(head) => {
                VecDeque::from([Arc::new(EventBus::reset_event(head, "not_held"))])
            }
        };
        metrics::gauge!("anneal_event_followers").increment(1.0);
        Follower {
            bus,
            pending,
            live,
            filter,
        }
    }

    /// The next event for this follower; None once the server shuts down.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        loop {
            while let Some(e) = self.pending.pop_front() {
                if self.filter.matches(&e) {
                    return Some(e);
                }
            }
            let received = tokio::select! {
                _ = self.bus.closing().cancelled() => return None,
                r = self.live.recv() => r,
            };
            match received {
                Ok(e) => self.pending.push_back(e),
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Start over from now: the reset tells the client to re-read state.
                    let (head, live) = self.bus.subscribe_at_head();
                    self.live = live;
                    self.pending
                        .push_back(Arc::new(EventBus::reset_event(head, "lagged")));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        metrics::gauge!("anneal_event_followers").decrement(1.0);
    }
}

#[cfg(test)]
mod tests;
