//! The agent's idea of the time. New hardware often has an RTC years off and a discovery image
//! has no time sync, so the agent learns the server's clock over the CA-pinned connection and
//! corrects every certificate time check by the offset, without needing to set the system clock.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

/// Local clock plus a learned offset to the server's clock.
#[derive(Debug)]
pub struct Clock {
    /// For tests: pretend the local clock started at this Unix time (ms) when `base` was taken.
    fake: Option<(Instant, i64)>,
    offset_ms: AtomicI64,
    synced: AtomicBool,
}

impl Clock {
    /// The machine's real clock.
    pub fn system() -> Arc<Clock> {
        Arc::new(Clock {
            fake: None,
            offset_ms: AtomicI64::new(0),
            synced: AtomicBool::new(false),
        })
    }

    /// A local clock that reads `start_ms` now and advances in real time (to test agents whose
    /// RTC is wrong, e.g. set to 2001 or 2040).
    pub fn fake(start_ms: i64) -> Arc<Clock> {
        Arc::new(Clock {
            fake: Some((Instant::now(), start_ms)),
            offset_ms: AtomicI64::new(0),
            synced: AtomicBool::new(false),
        })
    }

    /// What the local clock says, in Unix milliseconds.
    pub fn local_ms(&self) -> i64 {
        match self.fake {
            Some((base, start)) => start + base.elapsed().as_millis() as i64,
            None => SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
        }
    }

    /// Record the server's clock as read between local times `sent_ms` and `received_ms`
    /// (the midpoint cancels symmetric network delay). Returns the offset.
    pub fn learn(&self, sent_ms: i64, server_ms: i64, received_ms: i64) -> i64 {
        let midpoint = sent_ms + (received_ms - sent_ms) / 2;
        let offset = server_ms - midpoint;
        self.offset_ms.store(offset, Ordering::Relaxed);
        self.synced.store(true, Ordering::Relaxed);
        offset
    }

    /// Whether the server's clock has been learned.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Relaxed)
    }

    /// Local minus server, in ms (0 until synced).
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// The server's time as best known, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.local_ms() + self.offset_ms()
    }

    /// The server's time for certificate checks.
    pub fn now_unix(&self) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_millis(self.now_ms().max(0) as u64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learns_offset_from_midpoint() {
        // Local clock in 2001, server in 2026.
        let c = Clock::fake(978_307_200_000);
        let sent = c.local_ms();
        let offset = c.learn(sent, 1_795_000_000_000, sent + 20);
        assert_eq!(offset, 1_795_000_000_000 - (sent + 10));
        assert!(c.synced());
        let now = c.now_ms();
        assert!((now - 1_795_000_000_000).abs() < 5_000, "{now}");
    }
}
