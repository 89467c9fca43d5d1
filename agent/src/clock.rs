//! The agent's idea of the time. New hardware often has an RTC years off and a discovery image
//! has no time sync, so the agent learns the server's clock over the CA-pinned connection and
//! corrects every certificate time check by the offset, without needing to set the system clock.
//! With `--set-clock` it also sets CLOCK_REALTIME when it is off by more than
//! [`SET_THRESHOLD_MS`] (the tools it runs, logs and file times then agree with the server);
//! whether that worked or not, the corrected clock keeps working.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

/// Local clock plus a learned offset to the server's clock.
#[derive(Debug)]
pub struct Clock {
    /// For tests: pretend the local clock read this Unix time (ms) when the instant was taken
    /// (atomic so a fake clock can be "set", see [`Clock::stepped`]).
    fake: Option<(Instant, AtomicI64)>,
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
            fake: Some((Instant::now(), AtomicI64::new(start_ms))),
            offset_ms: AtomicI64::new(0),
            synced: AtomicBool::new(false),
        })
    }

    /// What the local clock says, in Unix milliseconds.
    pub fn local_ms(&self) -> i64 {
        match &self.fake {
            Some((base, start)) => {
                start.load(Ordering::Relaxed) + base.elapsed().as_millis() as i64
            }
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

    /// The local clock was stepped by `delta_ms` (it was set): keep the server's time where it
    /// was by moving the offset the other way. A fake clock moves its own reading too, as the
    /// real one would have.
    pub fn stepped(&self, delta_ms: i64) {
        if let Some((_, start)) = &self.fake {
            start.fetch_add(delta_ms, Ordering::Relaxed);
        }
        self.offset_ms.fetch_sub(delta_ms, Ordering::Relaxed);
    }

    /// Whether this is a fake clock (tests): `--set-clock` never touches the host for it.
    pub fn is_fake(&self) -> bool {
        self.fake.is_some()
    }

    /// The server's time for certificate checks.
    pub fn now_unix(&self) -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_millis(self.now_ms().max(0) as u64))
    }
}

/// The system clock is set only when it is off from the server's by more than this (2 s):
/// smaller offsets are network jitter, and stepping the clock for them gains nothing.
pub const SET_THRESHOLD_MS: i64 = 2_000;

/// What `--set-clock` should do, decided from the two readings alone (no side effects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClockDecision {
    /// Close enough: leave the system clock alone.
    Keep {
        /// Server minus local, ms.
        offset_ms: i64,
    },
    /// Set the system clock from `from_ms` to `to_ms` (Unix ms).
    Set {
        /// What the local clock read.
        from_ms: i64,
        /// The server's time at that moment.
        to_ms: i64,
    },
}

/// Decide whether to set the system clock, given what it reads (`local_ms`) and the server's
/// time at the same moment (`server_ms`): set it when they differ by more than `threshold_ms`.
pub fn decide(local_ms: i64, server_ms: i64, threshold_ms: i64) -> ClockDecision {
    let offset_ms = server_ms - local_ms;
    if offset_ms.abs() > threshold_ms {
        ClockDecision::Set {
            from_ms: local_ms,
            to_ms: server_ms,
        }
    } else {
        ClockDecision::Keep { offset_ms }
    }
}

/// Sets the machine's real-time clock. The one real implementation is [`SystemRealtime`];
/// tests use their own and never touch the host's clock.
pub trait ClockSetter: Send + Sync {
    /// Set CLOCK_REALTIME to `unix_ms`.
    fn set_realtime(&self, unix_ms: i64) -> Result<(), String>;
}

/// CLOCK_REALTIME through `clock_settime(2)` (needs root or CAP_SYS_TIME).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRealtime;

impl ClockSetter for SystemRealtime {
    fn set_realtime(&self, unix_ms: i64) -> Result<(), String> {
        use nix::sys::time::TimeSpec;
        use nix::time::{clock_settime, ClockId};
        let ts = TimeSpec::new(
            unix_ms.div_euclid(1000) as _,
            (unix_ms.rem_euclid(1000) * 1_000_000) as _,
        );
        clock_settime(ClockId::CLOCK_REALTIME, ts).map_err(|e| e.desc().to_string())
    }
}

/// What [`apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClockOutcome {
    /// The clock was within the threshold.
    Kept {
        /// Server minus local, ms.
        offset_ms: i64,
    },
    /// The clock was set.
    Set {
        /// Unix ms before.
        from_ms: i64,
        /// Unix ms after.
        to_ms: i64,
    },
    /// Setting failed (not root, a fake clock, …); the corrected clock still works.
    Failed {
        /// Unix ms the local clock read.
        from_ms: i64,
        /// Unix ms it should have been set to.
        to_ms: i64,
        /// Why.
        error: String,
    },
}

/// Once the server's clock is learned: set the system clock through `setter` if it is off by
/// more than [`SET_THRESHOLD_MS`], keep `clock`'s corrected time continuous, and log the result
/// (`clock set from X to Y` once, or a warning).
pub fn apply(clock: &Clock, setter: &dyn ClockSetter) -> ClockOutcome {
    let local = clock.local_ms();
    match decide(local, local + clock.offset_ms(), SET_THRESHOLD_MS) {
        ClockDecision::Keep { offset_ms } => {
            tracing::debug!(offset_ms, "system clock agrees with the server's");
            ClockOutcome::Kept { offset_ms }
        }
        ClockDecision::Set { from_ms, to_ms } => match setter.set_realtime(to_ms) {
            Ok(()) => {
                clock.stepped(to_ms - from_ms);
                tracing::info!("clock set from {} to {}", rfc3339(from_ms), rfc3339(to_ms));
                ClockOutcome::Set { from_ms, to_ms }
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    "cannot set the system clock from {} to {}; certificate checks use the server's clock anyway",
                    rfc3339(from_ms),
                    rfc3339(to_ms)
                );
                ClockOutcome::Failed {
                    from_ms,
                    to_ms,
                    error,
                }
            }
        },
    }
}

/// Unix ms as RFC 3339 (UTC), for logs.
pub fn rfc3339(unix_ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(unix_ms as i128 * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix_ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Records what it was asked; never touches the host.
    struct Recorder {
        calls: Mutex<Vec<i64>>,
        fail: Option<&'static str>,
    }

    impl ClockSetter for Recorder {
        fn set_realtime(&self, unix_ms: i64) -> Result<(), String> {
            self.calls.lock().unwrap().push(unix_ms);
            match self.fail {
                Some(e) => Err(e.to_string()),
                None => Ok(()),
            }
        }
    }

    #[test]
    fn decision_sets_only_beyond_two_seconds() {
        let t = 1_795_000_000_000;
        assert_eq!(
            decide(t, t, SET_THRESHOLD_MS),
            ClockDecision::Keep { offset_ms: 0 }
        );
        assert_eq!(
            decide(t, t + 2_000, SET_THRESHOLD_MS),
            ClockDecision::Keep { offset_ms: 2_000 }
        );
        assert_eq!(
            decide(t, t - 2_000, SET_THRESHOLD_MS),
            ClockDecision::Keep { offset_ms: -2_000 }
        );
        assert_eq!(
            decide(t, t + 2_001, SET_THRESHOLD_MS),
            ClockDecision::Set {
                from_ms: t,
                to_ms: t + 2_001
            }
        );
        // An RTC in 2001 against a server in 2026, and one running ahead.
        assert_eq!(
            decide(978_307_200_000, t, SET_THRESHOLD_MS),
            ClockDecision::Set {
                from_ms: 978_307_200_000,
                to_ms: t
            }
        );
        assert_eq!(
            decide(t + 3_000, t, SET_THRESHOLD_MS),
            ClockDecision::Set {
                from_ms: t + 3_000,
                to_ms: t
            }
        );
    }

    #[test]
    fn apply_sets_a_far_off_clock_and_keeps_the_corrected_time() {
        let c = Clock::fake(978_307_200_000);
        let sent = c.local_ms();
        c.learn(sent, 1_795_000_000_000, sent);
        let before = c.now_ms();
        let setter = Recorder {
            calls: Mutex::new(Vec::new()),
            fail: None,
        };
        let out = apply(&c, &setter);
        assert!(matches!(out, ClockOutcome::Set { .. }), "{out:?}");
        let calls = setter.calls.lock().unwrap().clone();
        assert_eq!(calls.len(), 1);
        assert!((calls[0] - 1_795_000_000_000).abs() < 5_000, "{calls:?}");
        // The (fake) local clock now reads the server's time; the offset is gone.
        assert!((c.local_ms() - 1_795_000_000_000).abs() < 5_000);
        assert!(c.offset_ms().abs() < 5_000, "{}", c.offset_ms());
        assert!((c.now_ms() - before).abs() < 5_000);
        // A second look finds nothing to do.
        assert!(matches!(apply(&c, &setter), ClockOutcome::Kept { .. }));
        assert_eq!(setter.calls.lock().unwrap().len(), 1);
    }

    #[test]
    fn a_failed_set_is_reported_and_the_offset_still_corrects() {
        let c = Clock::fake(978_307_200_000);
        let sent = c.local_ms();
        c.learn(sent, 1_795_000_000_000, sent);
        let setter = Recorder {
            calls: Mutex::new(Vec::new()),
            fail: Some("Operation not permitted"),
        };
        let out = apply(&c, &setter);
        assert!(
            matches!(&out, ClockOutcome::Failed { error, .. } if error == "Operation not permitted"),
            "{out:?}"
        );
        assert!(c.local_ms() < 1_000_000_000_000, "local clock untouched");
        assert!((c.now_ms() - 1_795_000_000_000).abs() < 5_000);
    }

    #[test]
    fn a_close_clock_is_left_alone() {
        let c = Clock::fake(1_795_000_000_000);
        let sent = c.local_ms();
        c.learn(sent, sent + 1_500, sent);
        let setter = Recorder {
            calls: Mutex::new(Vec::new()),
            fail: None,
        };
        assert_eq!(apply(&c, &setter), ClockOutcome::Kept { offset_ms: 1_500 });
        assert!(setter.calls.lock().unwrap().is_empty());
    }

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
