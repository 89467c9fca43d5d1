//! A process-wide cap on running QEMU machines: software emulation is CPU-bound and the test
//! machine has 2 cores, so more machines at once only make every boot slower.

use std::sync::{Condvar, Mutex};

/// Machines that may run at once in this test process (override: `ANNEAL_RACK_MAX_MACHINES`).
pub const DEFAULT_MAX: usize = 2;

static RUNNING: Mutex<usize> = Mutex::new(0);
static FREED: Condvar = Condvar::new();

fn max() -> usize {
    std::env::var("ANNEAL_RACK_MAX_MACHINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_MAX)
}

/// One running machine's place; freed when dropped.
pub struct Slot(());

impl Slot {
    /// Wait until fewer than the cap are running, then take a place.
    pub fn acquire() -> Slot {
        let cap = max();
        // A panicking holder poisons nothing that matters: the count is still right.
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= cap {
            n = FREED.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        FREED.notify_one();
    }
}
