//! Waiting for things by polling, with generous overall deadlines: emulated firmware is slow
//! and its speed depends on how busy the machine is, so tests wait for events, never for time.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// Deadline for anything a booting machine has to do (firmware, DHCP, TFTP, iPXE), under
/// software emulation on a busy 2-core machine.
pub const BOOT: Duration = Duration::from_secs(300);
/// Deadline for a server or helper process to come up.
pub const START: Duration = Duration::from_secs(60);
/// How often to look again.
pub const POLL: Duration = Duration::from_millis(250);

/// Call `probe` until it returns something or `deadline` passes (then an error naming `what`).
pub fn until<T>(what: &str, deadline: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Ok(v);
        }
        if start.elapsed() > deadline {
            bail!("gave up after {}s waiting for {what}", deadline.as_secs());
        }
        std::thread::sleep(POLL);
    }
}

/// A file's text so far (lossy: serial consoles carry escape sequences and odd bytes); empty
/// if it does not exist yet.
pub fn read_lossy(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// The last `n` lines of `text`, for failure messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
