//! `anneal watch`: follow the server's events. On a terminal, a live block with one progress
//! line per machine, redrawn in place; otherwise (or with `-o json|yaml`) one line per event.
//! A dropped connection is resumed with `Last-Event-ID` after a backoff; a `reset` (events
//! were missed) is said out loud and the machines' names are read again.

use std::collections::{BTreeMap, HashMap};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anneal_shared::api::MachineSummary;
use anneal_shared::events::{Event, EventKind};
use anyhow::{bail, Result};
use time::OffsetDateTime;
use uuid::Uuid;

use super::client::ApiClient;
use super::sse::SseReader;
use super::Format;

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Consecutive failed connection attempts before giving up (about a quarter of an hour).
const MAX_FAILURES: u32 = 40;

/// What to follow and how to show it.
#[derive(Debug, Clone)]
pub struct WatchOpts {
    /// The stream's query string (filters), without `?`.
    pub query: String,
    /// Resume after this event id.
    pub since: Option<String>,
    /// Stop after this many events.
    pub count: Option<u64>,
    /// Output format.
    pub output: Format,
}

/// Follow the stream until `count` events were shown (or forever).
pub async fn watch(api: &ApiClient, opts: WatchOpts) -> Result<()> {
    let live = opts.output == Format::Table && std::io::stdout().is_terminal();
    let mut board = Board::default();
    if live {
        board.names = machine_names(api).await;
    }
    let path = format!("/api/v1/events?{}", opts.query);
    let mut last = opts.since.clone();
    let mut shown = 0u64;
    let mut failures = 0u32;
    let mut backoff = Duration::from_secs(1);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        if opts.count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        let mut res = match api.open_stream(&path, last.as_deref()).await {
            Ok(res) => res,
            Err(e) if e.refused => bail!("{e}"),
            Err(e) => {
                failures += 1;
                if failures >= MAX_FAILURES {
                    bail!("giving up after {failures} attempts: {e}");
                }
                board.notice(&format!("{e}; trying again in {}s", backoff.as_secs()));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        failures = 0;
        backoff = Duration::from_secs(1);
        let mut reader = SseReader::default();
        let ended = loop {
            let chunk = tokio::select! {
                c = res.chunk() => c,
                _ = tick.tick(), if live => {
                    board.draw()?;
                    continue;
                }
            };
            let bytes = match chunk {
                Ok(Some(b)) => b,
                Ok(None) => break "the server closed the stream".to_string(),
                Err(e) => break format!("the stream broke: {e}"),
            };
            for frame in reader.push(&bytes)? {
                let event: Event = match serde_json::from_str(&frame.data) {
                    Ok(e) => e,
                    Err(e) => bail!("an event the CLI cannot read ({e}): {}", frame.data),
                };
                last = frame.id.or(last);
                if event.kind == EventKind::Reset {
                    board.notice(&format!(
                        "events were missed ({}): what is shown may be incomplete",
                        event.reason.as_deref().unwrap_or("reset")
                    ));
                    if live {
                        board.names = machine_names(api).await;
                    }
                }
                match (live, opts.output) {
                    (true, _) => {
                        board.apply(&event);
                        board.draw()?;
                    }
                    (false, Format::Table) => println!("{}", line(&event)),
                    (false, Format::Json) => println!("{}", serde_json::to_string(&event)?),
                    (false, Format::Yaml) => print!("---\n{}", serde_yaml_ng::to_string(&event)?),
                }
                std::io::stdout().flush()?;
                shown += 1;
                if opts.count.is_some_and(|c| shown >= c) {
                    return Ok(());
                }
            }
        };
        board.notice(&format!(
            "{ended}; reconnecting from {}",
            last.as_deref().unwrap_or("now")
        ));
        tokio::time::sleep(backoff).await;
    }
}

/// Hostnames of the known machines (none if the list cannot be read: ids are shown instead).
async fn machine_names(api: &ApiClient) -> HashMap<Uuid, String> {
    let list: Vec<MachineSummary> = api.get("/api/v1/machines").await.unwrap_or_default();
    list.into_iter()
        .filter_map(|m| m.hostname.map(|h| (m.id, h)))
        .collect()
}

fn short(id: Uuid) -> String {
    id.to_string()[..8].to_string()
}

/// `2/3 second`: a 1-based position and a name.
fn position(index: Option<usize>, count: Option<usize>, name: Option<&str>) -> Option<String> {
    let name = name.unwrap_or("-");
    match (index, count) {
        (Some(i), Some(n)) if i < n => Some(format!("{}/{n} {name}", i + 1)),
        (Some(_), Some(n)) => Some(format!("{n}/{n} done")),
        _ => None,
    }
}

/// One event as one line: time, kind, machine, and whatever the event says.
pub fn line(e: &Event) -> String {
    let fmt = time::macros::format_description!("[hour]:[minute]:[second]");
    let mut parts = vec![
        e.at.format(&fmt).unwrap_or_default(),
        format!("{:<20}", e.kind.as_str()),
        e.machine_id.map(short).unwrap_or_else(|| "-".repeat(8)),
    ];
    let fields = [
        ("host", e.hostname.clone()),
        ("workflow", e.workflow.clone()),
        (
            "stage",
            position(e.stage_index, e.stage_count, e.stage.as_deref()),
        ),
        (
            "task",
            position(e.task_index, e.task_count, e.task.as_deref()),
        ),
        ("phase", e.phase.clone()),
        ("state", e.state.clone()),
        ("env", e.boot_env.clone()),
        ("mac", e.mac.clone()),
        ("address", e.address.clone()),
        ("reason", e.reason.clone()),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            parts.push(format!("{name}={v}"));
        }
    }
    parts.join("  ")
}

/// A machine's progress as the events told it.
#[derive(Debug, Clone, Default, PartialEq)]
struct Progress {
    workflow: Option<String>,
    stage: Option<String>,
    task: Option<String>,
    phase: Option<String>,
    /// When the phase (or the last machine event) began.
    since: Option<OffsetDateTime>,
    /// The latest event that was not about a run.
    note: Option<String>,
}

/// The live block: one line per machine.
#[derive(Debug, Default)]
pub struct Board {
    names: HashMap<Uuid, String>,
    machines: BTreeMap<Uuid, Progress>,
    /// Lines drawn last time (to move back over them).
    drawn: usize,
    last: Option<String>,
}

impl Board {
    /// Take one event into the picture.
    pub fn apply(&mut self, e: &Event) {
        self.last = Some(line(e));
        let Some(id) = e.machine_id else { return };
        if let Some(h) = &e.hostname {
            self.names.insert(id, h.clone());
        }
        let p = self.machines.entry(id).or_default();
        if e.run_id.is_none() {
            p.note = Some(e.kind.as_str().replace('_', " "));
            p.since = p.since.or(Some(e.at));
            return;
        }
        p.note = None;
        if p.phase != e.phase || p.workflow != e.workflow || e.kind == EventKind::RunAssigned {
            p.since = Some(e.at);
        }
        p.workflow = e.workflow.clone();
        p.stage = position(e.stage_index, e.stage_count, e.stage.as_deref());
        p.task = position(e.task_index, e.task_count, e.task.as_deref());
        p.phase = e.phase.clone();
    }

    /// The block's lines, as of `now`.
    pub fn lines(&self, now: OffsetDateTime) -> Vec<String> {
        let mut out = Vec::new();
        for (id, p) in &self.machines {
            let name = self.names.get(id).cloned().unwrap_or_else(|| short(*id));
            let elapsed = p
                .since
                .map(|s| {
                    let secs = (now - s).whole_seconds().max(0);
                    format!("{}m{:02}s", secs / 60, secs % 60)
                })
                .unwrap_or_default();
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            out.push(match &p.note {
                Some(note) if p.workflow.is_none() => format!("{name:<20}  {note}  {elapsed}"),
                _ => format!(
                    "{name:<20}  {:<14}  stage {:<16}  task {:<16}  {:<9}  {elapsed}",
                    dash(&p.workflow),
                    dash(&p.stage),
                    dash(&p.task),
                    dash(&p.phase),
                ),
            });
        }
        if let Some(l) = &self.last {
            out.push(format!("last: {l}"));
        }
        out
    }

    /// Say something on stderr; the block is drawn afresh below it, so it stays visible.
    fn notice(&mut self, message: &str) {
        eprintln!("{message}");
        self.drawn = 0;
    }

    /// Redraw the block in place.
    fn draw(&mut self) -> Result<()> {
        let lines = self.lines(OffsetDateTime::now_utc());
        let mut out = std::io::stdout().lock();
        if self.drawn > 0 {
            write!(out, "\x1b[{}A", self.drawn)?;
        }
        for l in &lines {
            writeln!(out, "\x1b[2K{l}")?;
        }
        out.flush()?;
        self.drawn = lines.len();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_event(kind: EventKind, stage: usize, task: usize, phase: &str, at: i64) -> Event {
        Event {
            id: "1-1".into(),
            at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            machine_id: Some(Uuid::from_u128(0xabcdef12 << 96)),
            run_id: Some(Uuid::from_u128(1)),
            workflow: Some("three-boot".into()),
            stage: Some(["first", "second", "last"][stage].into()),
            stage_index: Some(stage),
            stage_count: Some(3),
            task: Some("one".into()),
            task_index: Some(task),
            task_count: Some(2),
            phase: Some(phase.into()),
            ..Event::of(kind)
        }
    }

    #[test]
    fn one_line_per_event_names_what_it_carries() {
        let l = line(&run_event(EventKind::AttemptCreated, 0, 1, "running", 0));
        assert!(l.starts_with("00:00:00  attempt_created"), "{l}");
        for part in [
            "abcdef12",
            "workflow=three-boot",
            "stage=1/3 first",
            "task=2/2 one",
            "phase=running",
        ] {
            assert!(l.contains(part), "{part} missing: {l}");
        }
        let l = line(&Event::of(EventKind::TokenCreated));
        assert!(l.ends_with("  --------"), "no machine, no fields: {l}");
    }

    #[test]
    fn the_board_keeps_one_line_per_machine_with_time_in_phase() {
        let mut b = Board::default();
        b.apply(&run_event(EventKind::RunPhase, 0, 0, "booting", 100));
        b.apply(&run_event(EventKind::AttemptStarted, 1, 1, "running", 130));
        b.apply(&run_event(EventKind::AttemptEnded, 1, 1, "running", 150));
        let now = OffsetDateTime::from_unix_timestamp(200).unwrap();
        let lines = b.lines(now);
        assert_eq!(lines.len(), 2, "{lines:?}");
        let l = &lines[0];
        assert!(l.starts_with("abcdef12"), "{l}");
        assert!(l.contains("stage 2/3 second"), "{l}");
        assert!(l.contains("task 2/2 one"), "{l}");
        // Running since the attempt started, not since its end.
        assert!(l.ends_with("running    1m10s"), "{l}");
        assert!(lines[1].starts_with("last: "));
        // A hostname learned from an event replaces the id.
        let mut e = run_event(EventKind::RunPhase, 2, 0, "done", 210);
        e.hostname = Some("node-7".into());
        b.apply(&e);
        assert!(b.lines(now)[0].starts_with("node-7 "), "{:?}", b.lines(now));
    }
}
