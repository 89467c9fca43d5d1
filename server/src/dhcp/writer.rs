//! Lease changes are written in batches (group commit), like heartbeats: each request waits for
//! the batch holding its change to commit, so an ACK is only ever sent for a durable lease, yet
//! a burst of clients costs one transaction per batch rather than one each. There is no timer:
//! the writer takes everything queued while the previous batch was committing.

use std::sync::Arc;

use anneal_shared::events::{Event, EventKind};
use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::pipeline::Leases;
use crate::events::EventBus;
use crate::store::{LeaseOp, LeaseOutcome, Store};

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 512;

type Job = (LeaseOp, oneshot::Sender<Option<LeaseOutcome>>);

/// Hands lease ops to the writer task.
#[derive(Clone)]
pub struct LeaseWriter(mpsc::Sender<Job>);

#[async_trait]
impl Leases for LeaseWriter {
    async fn apply(&self, op: LeaseOp) -> Option<LeaseOutcome> {
        let (tx, rx) = oneshot::channel();
        self.0.send((op, tx)).await.ok()?;
        rx.await.ok().flatten()
    }
}

/// The event for a committed lease change, if it changed a lease (offers are held addresses,
/// not leases; a refused op changed nothing).
fn event_of(op: &LeaseOp, outcome: &LeaseOutcome) -> Option<Event> {
    let (kind, mac, ip, hostname) = match (op, outcome) {
        (LeaseOp::Bind { mac, hostname, .. }, LeaseOutcome::Leased(ip)) => {
            (EventKind::LeaseBound, mac, *ip, hostname.clone())
        }
        (LeaseOp::Release { mac, ip }, LeaseOutcome::Applied(true)) => {
            (EventKind::LeaseReleased, mac, *ip, None)
        }
        (LeaseOp::Decline { mac, ip, .. }, LeaseOutcome::Applied(true)) => {
            (EventKind::LeaseDeclined, mac, *ip, None)
        }
        _ => return None,
    };
    Some(Event {
        mac: Some(mac.clone()),
        address: Some(ip.to_string()),
        hostname,
        ..Event::of(kind)
    })
}

/// Start the writer task; it ends when every [`LeaseWriter`] is dropped. Each committed lease
/// change is emitted on `events`.
pub fn spawn(store: Arc<dyn Store>, events: Arc<EventBus>) -> LeaseWriter {
    let (tx, mut rx) = mpsc::channel::<Job>(4_096);
    tokio::spawn(async move {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            let ops: Vec<LeaseOp> = batch.iter().map(|(op, _)| op.clone()).collect();
            let n = ops.len();
            let result = store.apply_lease_ops(&ops, OffsetDateTime::now_utc()).await;
            metrics::histogram!("anneal_dhcp_lease_batch_size").record(n as f64);
            match result {
                Ok(outcomes) if outcomes.len() == n => {
                    for ((op, reply), outcome) in batch.drain(..).zip(outcomes) {
                        if let Some(e) = event_of(&op, &outcome) {
                            events.emit(e);
                        }
                        let _ = reply.send(Some(outcome));
                    }
                }
                Ok(_) | Err(_) => {
                    if let Err(e) = &result {
                        tracing::error!(error = %e, batch = n, "writing DHCP leases failed");
                    }
                    metrics::counter!("anneal_dhcp_lease_write_errors_total").increment(1);
                    for (_, reply) in batch.drain(..) {
                        let _ = reply.send(None);
                    }
                }
            }
        }
    });
    LeaseWriter(tx)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::events::Start;
    use crate::store::SqliteStore;

    const MAC: &str = "52:54:00:00:00:09";

    /// Only committed lease changes are emitted: a bind (and its renewal), a release, a
    /// decline — not an offer, a bind refused for an address held by another client, or a
    /// release of an address no longer held.
    #[tokio::test]
    async fn committed_lease_changes_are_emitted() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let events = Arc::new(EventBus::new(100));
        let start = events.head();
        let writer = spawn(Arc::new(store), events.clone());
        let ip = Ipv4Addr::new(10, 0, 0, 5);
        let later = OffsetDateTime::now_utc() + time::Duration::hours(1);
        let bind = |mac: &str| LeaseOp::Bind {
            subnet: "s".into(),
            mac: mac.into(),
            ip,
            expires_at: later,
            hostname: Some("node".into()),
        };
        let offer = || LeaseOp::Offer {
            subnet: "s".into(),
            mac: MAC.into(),
            range: (ip, ip),
            fixed: None,
            requested: None,
            exclude: vec![],
            hold_until: later,
            hostname: None,
        };
        let ops = [
            offer(),
            bind(MAC),
            bind(MAC),
            bind("52:54:00:00:00:0a"),
            LeaseOp::Release {
                mac: MAC.into(),
                ip,
            },
            offer(),
            LeaseOp::Decline {
                mac: MAC.into(),
                ip,
                until: later,
            },
        ];
        for op in ops {
            assert!(writer.apply(op).await.is_some());
        }
        let Start::Replay(seen) = events.subscribe(Some(start)).0 else {
            panic!("reset")
        };
        let got: Vec<(EventKind, Option<&str>, Option<&str>)> = (seen.iter())
            .map(|e| (e.kind, e.mac.as_deref(), e.address.as_deref()))
            .collect();
        let one = |k| (k, Some(MAC), Some("10.0.0.5"));
        assert_eq!(
            got,
            [
                one(EventKind::LeaseBound),
                one(EventKind::LeaseBound),
                one(EventKind::LeaseReleased),
                one(EventKind::LeaseDeclined),
            ]
        );
        assert_eq!(seen[0].hostname.as_deref(), Some("node"));
    }
}
