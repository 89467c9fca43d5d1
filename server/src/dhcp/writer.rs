//! Lease changes are written in batches (group commit), like heartbeats: each request waits for
//! the batch holding its change to commit, so an ACK is only ever sent for a durable lease, yet
//! a burst of clients costs one transaction per batch rather than one each. There is no timer:
//! the writer takes everything queued while the previous batch was committing.

use std::sync::Arc;

use async_trait::async_trait;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::pipeline::Leases;
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

/// Start the writer task; it ends when every [`LeaseWriter`] is dropped.
pub fn spawn(store: Arc<dyn Store>) -> LeaseWriter {
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
                    for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
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
