//! Heartbeats are written in batches (group commit): one transaction per batch instead of one
//! per agent, so ten thousand agents cost a few writes a second, not a thousand.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::store::{Heartbeat, Store};

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 2_000;
/// Longest a heartbeat waits before its batch is written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Where request handlers drop heartbeats.
#[derive(Clone)]
pub struct HeartbeatSink(mpsc::Sender<Heartbeat>);

impl HeartbeatSink {
    /// Queue a heartbeat; waits only if the writer is far behind (backpressure, never loss).
    pub async fn record(&self, hb: Heartbeat) {
        if self.0.send(hb).await.is_err() {
            tracing::warn!("heartbeat writer has stopped; heartbeat not recorded");
        }
    }
}

/// Start the writer task. It ends, after writing what is queued, once every sink is dropped.
pub fn spawn_writer(store: Arc<dyn Store>) -> (HeartbeatSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<Heartbeat>(50_000);
    let writer = tokio::spawn(async move {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let Some(first) = rx.recv().await else { break };
            batch.push(first);
            let deadline = tokio::time::sleep(FLUSH_EVERY);
            tokio::pin!(deadline);
            while batch.len() < MAX_BATCH {
                tokio::select! {
                    _ = &mut deadline => break,
                    next = rx.recv() => match next {
                        Some(hb) => batch.push(hb),
                        None => break,
                    },
                }
            }
            let n = batch.len();
            match store.record_heartbeats(&batch).await {
                Ok(()) => metrics::counter!("anneal_heartbeats_written_total").increment(n as u64),
                Err(e) => {
                    metrics::counter!("anneal_heartbeat_write_errors_total").increment(1);
                    tracing::error!(error = %e, batch = n, "writing heartbeats failed");
                }
            }
            metrics::histogram!("anneal_heartbeat_batch_size").record(n as f64);
            batch.clear();
        }
    });
    (HeartbeatSink(tx), writer)
}
