//! `--status-file`: one human line, kept up to date, saying what the agent is doing. The
//! discovery image's init prints it on the console, e.g.
//!
//! ```text
//! anneal-agent: machine 3f2a1b4c… · server https://10.0.0.1:8443 · enrolled, inventory sent, heartbeating (last 12:03:04 UTC)
//! anneal-agent: server https://10.0.0.1:8443 · waiting for server (attempt 4, next in 8 s): Connection refused (os error 111)
//! ```
//!
//! The file is replaced atomically (temporary file + rename) and only when the line changes.

use std::path::PathBuf;
use std::time::Duration;

use anneal_shared::MachineId;
use time::OffsetDateTime;

/// What the agent is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Just started.
    Starting,
    /// Learning the server's clock; the server is not answering (or not as pinned).
    WaitingForServer {
        /// 1-based count of failed attempts.
        attempt: u32,
        /// Delay before the next one.
        next: Duration,
        /// Why the last one failed.
        reason: String,
    },
    /// Enrolling with the bootstrap token.
    Enrolling,
    /// Enrollment failed; retrying.
    EnrollFailed {
        /// 1-based count of failed attempts.
        attempt: u32,
        /// Delay before the next one.
        next: Duration,
        /// Why.
        reason: String,
    },
    /// Enrolled (or resumed): reporting and heartbeating.
    Working(Work),
    /// The process is stopping on an error it cannot retry.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// The enrolled agent's progress.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Work {
    /// The certificate came from the state directory (enrolled earlier in this boot).
    pub resumed: bool,
    /// The server has the inventory.
    pub inventory_sent: bool,
    /// The last heartbeat said an operator must approve this machine first.
    pub awaiting_approval: bool,
    /// Server time of the last successful heartbeat.
    pub last_heartbeat: Option<OffsetDateTime>,
    /// The heartbeat is failing: (failed attempts, next try in, reason).
    pub failing: Option<(u32, Duration, String)>,
}

/// Render the line (pure; the tests pin its wording).
pub fn render(server: &str, machine: Option<MachineId>, phase: &Phase) -> String {
    let mut line = String::from("anneal-agent: ");
    if let Some(id) = machine {
        let id = id.to_string();
        line.push_str(&format!("machine {}… · ", &id[..8]));
    }
    line.push_str(&format!("server {server} · "));
    match phase {
        Phase::Starting => line.push_str("starting"),
        Phase::WaitingForServer {
            attempt,
            next,
            reason,
        } => line.push_str(&format!(
            "waiting for server (attempt {attempt}, next in {}): {reason}",
            secs(*next)
        )),
        Phase::Enrolling => line.push_str("enrolling"),
        Phase::EnrollFailed {
            attempt,
            next,
            reason,
        } => line.push_str(&format!(
            "enrollment failed (attempt {attempt}, next in {}): {reason}",
            secs(*next)
        )),
        Phase::Working(w) => {
            line.push_str(if w.resumed {
                "enrolled earlier this boot"
            } else {
                "enrolled"
            });
            line.push_str(if w.inventory_sent {
                ", inventory sent"
            } else {
                ", sending inventory"
            });
            match (&w.failing, w.last_heartbeat) {
                (Some((attempt, next, reason)), _) => line.push_str(&format!(
                    ", heartbeat failed (attempt {attempt}, next in {}): {reason}",
                    secs(*next)
                )),
                (None, Some(at)) if w.awaiting_approval => line.push_str(&format!(
                    ", waiting for operator approval (last heartbeat {})",
                    clock(at)
                )),
                (None, Some(at)) => line.push_str(&format!(", heartbeating (last {})", clock(at))),
                (None, None) => {}
            }
        }
        Phase::Stopped { reason } => line.push_str(&format!("stopped: {reason}")),
    }
    line
}

fn secs(d: Duration) -> String {
    format!("{} s", d.as_secs_f64().round() as u64)
}

fn clock(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!("{:02}:{:02}:{:02} UTC", t.hour(), t.minute(), t.second())
}

/// The status file (or nothing, without `--status-file`).
#[derive(Debug)]
pub struct Status {
    path: Option<PathBuf>,
    server: String,
    machine: Option<MachineId>,
    phase: Phase,
    written: String,
    warned: bool,
}

impl Status {
    /// Write to `path` (if any) about the server at `server`.
    pub fn new(path: Option<PathBuf>, server: &str) -> Status {
        Status {
            path,
            server: server.to_string(),
            machine: None,
            phase: Phase::Starting,
            written: String::new(),
            warned: false,
        }
    }

    /// The machine id, once enrolled (shown from the next change on).
    pub fn machine(&mut self, id: MachineId) {
        self.machine = Some(id);
    }

    /// Enter a phase.
    pub fn set(&mut self, phase: Phase) {
        self.phase = phase;
        self.write();
    }

    /// Change the enrolled agent's progress (enters [`Phase::Working`] if not there yet).
    pub fn work(&mut self, f: impl FnOnce(&mut Work)) {
        if !matches!(self.phase, Phase::Working(_)) {
            self.phase = Phase::Working(Work::default());
        }
        if let Phase::Working(w) = &mut self.phase {
            f(w);
        }
        self.write();
    }

    /// The current line.
    pub fn line(&self) -> String {
        render(&self.server, self.machine, &self.phase)
    }

    fn write(&mut self) {
        let Some(path) = &self.path else { return };
        let line = self.line();
        if line == self.written {
            return;
        }
        match crate::state::write_atomic(path, format!("{line}\n").as_bytes(), 0o644) {
            Ok(()) => {
                self.written = line;
                self.warned = false;
            }
            Err(e) if !self.warned => {
                self.warned = true;
                tracing::warn!(path = %path.display(), error = %e, "cannot write the status file");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "https://10.0.0.1:8443";

    fn id() -> MachineId {
        "3f2a1b4c-0000-4000-8000-000000000001".parse().unwrap()
    }

    #[test]
    fn lines_for_the_main_states() {
        assert_eq!(
            render(SERVER, None, &Phase::Starting),
            "anneal-agent: server https://10.0.0.1:8443 · starting"
        );
        assert_eq!(
            render(
                SERVER,
                None,
                &Phase::WaitingForServer {
                    attempt: 4,
                    next: Duration::from_millis(7_600),
                    reason: "Connection refused (os error 111)".into()
                }
            ),
            "anneal-agent: server https://10.0.0.1:8443 · waiting for server (attempt 4, next in 8 s): Connection refused (os error 111)"
        );
        assert_eq!(
            render(SERVER, None, &Phase::Enrolling),
            "anneal-agent: server https://10.0.0.1:8443 · enrolling"
        );
        assert_eq!(
            render(
                SERVER,
                None,
                &Phase::EnrollFailed {
                    attempt: 2,
                    next: Duration::from_secs(2),
                    reason: "bootstrap token refused: bootstrap token has no uses left".into()
                }
            ),
            "anneal-agent: server https://10.0.0.1:8443 · enrollment failed (attempt 2, next in 2 s): bootstrap token refused: bootstrap token has no uses left"
        );
        let at = time::macros::datetime!(2026-05-04 12:03:04 UTC);
        let mut w = Work {
            inventory_sent: false,
            ..Work::default()
        };
        assert_eq!(
            render(SERVER, Some(id()), &Phase::Working(w.clone())),
            "anneal-agent: machine 3f2a1b4c… · server https://10.0.0.1:8443 · enrolled, sending inventory"
        );
        w.inventory_sent = true;
        w.last_heartbeat = Some(at);
        assert_eq!(
            render(SERVER, Some(id()), &Phase::Working(w.clone())),
            "anneal-agent: machine 3f2a1b4c… · server https://10.0.0.1:8443 · enrolled, inventory sent, heartbeating (last 12:03:04 UTC)"
        );
        w.resumed = true;
        assert_eq!(
            render(SERVER, Some(id()), &Phase::Working(w.clone())),
            "anneal-agent: machine 3f2a1b4c… · server https://10.0.0.1:8443 · enrolled earlier this boot, inventory sent, heartbeating (last 12:03:04 UTC)"
        );
        w.resumed = false;
        w.awaiting_approval = true;
        assert_eq!(
            render(SERVER, Some(id()), &Phase::Working(w.clone())),
            "anneal-agent: machine 3f2a1b4c… · server https://10.0.0.1:8443 · enrolled, inventory sent, waiting for operator approval (last heartbeat 12:03:04 UTC)"
        );
        w.failing = Some((3, Duration::from_secs(4), "timed out".into()));
        assert_eq!(
            render(SERVER, Some(id()), &Phase::Working(w)),
            "anneal-agent: machine 3f2a1b4c… · server https://10.0.0.1:8443 · enrolled, inventory sent, heartbeat failed (attempt 3, next in 4 s): timed out"
        );
        assert_eq!(
            render(
                SERVER,
                None,
                &Phase::Stopped {
                    reason: "CA fingerprint \"x\" is not `sha256:` followed by 64 hex digits"
                        .into()
                }
            ),
            "anneal-agent: server https://10.0.0.1:8443 · stopped: CA fingerprint \"x\" is not `sha256:` followed by 64 hex digits"
        );
    }

    #[test]
    fn the_file_is_replaced_whole_and_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status");
        let mut s = Status::new(Some(path.clone()), SERVER);
        s.set(Phase::Starting);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "anneal-agent: server https://10.0.0.1:8443 · starting\n"
        );
        s.machine(id());
        s.work(|w| w.inventory_sent = true);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "anneal-agent: machine 3f2a1b4c… · server https://10.0.0.1:8443 · enrolled, inventory sent\n"
        );
        // Unchanged: not rewritten (the file's inode stays).
        use std::os::unix::fs::MetadataExt;
        let ino = std::fs::metadata(&path).unwrap().ino();
        s.work(|w| w.inventory_sent = true);
        assert_eq!(std::fs::metadata(&path).unwrap().ino(), ino);
        s.work(|w| w.last_heartbeat = Some(time::macros::datetime!(2026-05-04 00:00:09 UTC)));
        assert_ne!(std::fs::metadata(&path).unwrap().ino(), ino, "renamed over");
        assert!(std::fs::read_to_string(&path)
            .unwrap()
            .ends_with("heartbeating (last 00:00:09 UTC)\n"));
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("status")]);
    }

    #[test]
    fn no_path_writes_nothing() {
        let mut s = Status::new(None, SERVER);
        s.set(Phase::Enrolling);
        assert!(s.line().ends_with("enrolling"));
    }
}
