//! Log retention: finished jobs' logs older than `log_retention_days` are deleted, a batch per
//! transaction so the single SQLite writer is never held long. The attempt keeps its record,
//! its log length and when its log was pruned; reading a pruned log says so (410).

use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::store::workflow::PrunedLogs;
use crate::store::StoreResult;

/// How often retention runs (and once at start).
const EVERY: Duration = Duration::from_secs(3600);
/// Attempts pruned per transaction.
const BATCH: u32 = 200;

/// Delete the logs of every attempt that ended more than `days` before `now`.
pub async fn prune(app: &App, days: u32, now: OffsetDateTime) -> StoreResult<PrunedLogs> {
    let cutoff = now - time::Duration::days(i64::from(days));
    let mut total = PrunedLogs::default();
    loop {
        let batch = app.store.prune_logs(cutoff, now, BATCH).await?;
        total.attempts += batch.attempts;
        total.bytes += batch.bytes;
        if batch.attempts < u64::from(BATCH) {
            break;
        }
    }
    if total.attempts > 0 {
        metrics::counter!("anneal_job_logs_pruned_total").increment(total.attempts);
        metrics::counter!("anneal_job_log_bytes_pruned_total").increment(total.bytes);
        tracing::info!(
            attempts = total.attempts,
            bytes = total.bytes,
            days,
            "job logs past retention deleted"
        );
    }
    Ok(total)
}

/// Run [`prune`] at start and then hourly until `stop`; nothing when retention is 0 (forever).
pub async fn run(app: Arc<App>, stop: CancellationToken) {
    let days = app.config.log_retention_days;
    if days == 0 {
        return;
    }
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                if let Err(e) = prune(&app, days, OffsetDateTime::now_utc()).await {
                    metrics::counter!("anneal_job_log_prune_errors_total").increment(1);
                    tracing::error!(error = %e, "pruning job logs failed");
                }
            }
        }
    }
}
