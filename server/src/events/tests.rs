//! The ring, resuming, resets and filters of the event bus.

use std::sync::Arc;

use anneal_shared::events::{Event, EventKind};
use uuid::Uuid;

use super::*;

fn ids(events: &[Arc<Event>]) -> Vec<String> {
    events.iter().map(|e| e.id.clone()).collect()
}

fn emit_n(bus: &EventBus, n: usize) {
    for _ in 0..n {
        bus.emit(Event::of(EventKind::TokenCreated));
    }
}

fn replay(start: Start) -> Vec<Arc<Event>> {
    match start {
        Start::Replay(events) => events,
        Start::Reset(c) => panic!("expected a replay, got a reset at {c}"),
    }
}

#[test]
fn ids_count_up_within_the_epoch() {
    let bus = EventBus::with_epoch(7, 100);
    emit_n(&bus, 3);
    let (start, _) = bus.subscribe(Some(Cursor { epoch: 7, seq: 0 }));
    assert_eq!(ids(&replay(start)), ["7-1", "7-2", "7-3"]);
    assert_eq!(bus.head(), Cursor { epoch: 7, seq: 3 });
    assert_eq!(Cursor::parse("7-3"), Some(bus.head()));
}

#[test]
fn resuming_replays_exactly_what_followed_the_id() {
    let bus = EventBus::with_epoch(7, 100);
    emit_n(&bus, 5);
    let (start, _) = bus.subscribe(Some(Cursor { epoch: 7, seq: 3 }));
    assert_eq!(ids(&replay(start)), ["7-4", "7-5"]);
    // At the head: nothing to replay, but not a reset either.
    let (start, _) = bus.subscribe(Some(bus.head()));
    assert!(replay(start).is_empty());
}

#[test]
fn an_id_no_longer_held_or_foreign_gives_a_reset() {
    let bus = EventBus::with_epoch(7, 4);
    emit_n(&bus, 10);
    // Held: 7..=10. Resuming after 6 needs nothing older, after 5 needs event 6.
    let (start, _) = bus.subscribe(Some(Cursor { epoch: 7, seq: 6 }));
    assert_eq!(ids(&replay(start)), ["7-7", "7-8", "7-9", "7-10"]);
    for after in ["7-5", "7-0", "6-9", "7-11"] {
        let (start, _) = bus.subscribe(Cursor::parse(after));
        match start {
            Start::Reset(head) => assert_eq!(head.to_string(), "7-10", "{after}"),
            Start::Replay(e) => panic!("{after}: replayed {:?}", ids(&e)),
        }
    }
}

#[tokio::test]
async fn a_follower_gets_its_replay_then_live_events_once_each() {
    let bus = Arc::new(EventBus::with_epoch(7, 100));
    emit_n(&bus, 2);
    let mut f = Follower::new(bus.clone(), Cursor::parse("7-1"), Filter::default());
    emit_n(&bus, 2);
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(f.next().await.expect("event").id.clone());
    }
    assert_eq!(got, ["7-2", "7-3", "7-4"]);
    bus.close();
    assert!(f.next().await.is_none(), "the stream ends at shutdown");
}

#[tokio::test]
async fn a_follower_too_old_is_told_to_reset_and_then_follows_live() {
    let bus = Arc::new(EventBus::with_epoch(7, 2));
    emit_n(&bus, 5);
    let mut f = Follower::new(bus.clone(), Cursor::parse("7-1"), Filter::default());
    let reset = f.next().await.expect("reset");
    assert_eq!((reset.kind, reset.id.as_str()), (EventKind::Reset, "7-5"));
    emit_n(&bus, 1);
    assert_eq!(f.next().await.expect("live").id, "7-6");
}

#[tokio::test]
async fn a_follower_that_falls_behind_gets_a_reset_not_a_gap() {
    let bus = Arc::new(EventBus::with_epoch(7, 10));
    let mut f = Follower::new(bus.clone(), None, Filter::default());
    emit_n(&bus, super::LIVE_CAPACITY + 5);
    let first = f.next().await.expect("event");
    assert_eq!(first.kind, EventKind::Reset, "{first:?}");
    assert_eq!(first.id, bus.head().to_string());
    emit_n(&bus, 1);
    let next = f.next().await.expect("live");
    assert_eq!(next.id, format!("7-{}", super::LIVE_CAPACITY + 6));
}

#[test]
fn filters_by_machine_prefix_kind_and_workflow() {
    let m: Uuid = "0f3c2a1b-0000-4000-8000-000000000001".parse().unwrap();
    let mut e = Event::of(EventKind::AttemptEnded).machine(m);
    e.workflow = Some("burnin".into());
    let whole = m.to_string();
    let f = |machine, kinds, workflow| Filter::parse(machine, kinds, workflow).unwrap();
    assert!(f(None, None, None).matches(&e));
    assert!(f(Some("0F3C"), None, None).matches(&e));
    assert!(f(Some(&whole), Some("run_phase, attempt_ended"), None).matches(&e));
    assert!(!f(Some("0f3d"), None, None).matches(&e));
    assert!(!f(None, Some("run_phase"), None).matches(&e));
    assert!(!f(None, None, Some("discover")).matches(&e));
    assert!(f(None, None, Some("burnin")).matches(&e));
    assert!(!f(Some("0f"), None, None).matches(&Event::of(EventKind::TokenCreated)));
    // A reset passes every filter: the client must hear of it.
    let reset = Event::of(EventKind::Reset);
    assert!(f(Some("ff"), Some("run_phase"), Some("x")).matches(&reset));
    assert!(matches!(
        Filter::parse(None, Some("run_phase,bogus"), None),
        Err(filter::FilterError::UnknownKind(k, _)) if k == "bogus"
    ));
    assert!(Filter::parse(Some("not-an-id!"), None, None).is_err());
}
