//! `anneal-agent simulate-workflow`: N simulated machines that PXE-boot, enroll and run their
//! workflows to the end, for the workflow benchmark (`scripts/bench-workflows`) and the
//! server-crash test.
//!
//! A simulated machine does on the wire what a rack machine does: it fetches its iPXE script
//! from the boot listener (as iPXE would, by MAC and UUID); a discovery script carries a
//! single-use bootstrap token, with which it enrolls from a fresh boot id (its own key and
//! client certificate) and sends an inventory; then it runs jobs through the real agent's job
//! code (`jobs::run_job`: acknowledge, log by offset, report, every step retried while the
//! server is unreachable). A `reboot` answer is a simulated reboot: a new boot id and a new
//! script. A script without a token (the local disk) means the workflow has handed the machine
//! over: it is finished. Tasks should be the built-in `noop` action: the simulator's `noop`
//! appends `MACHINE LABEL` to the witness file (`--witness`) when it starts, then sleeps
//! `sleep_ms` if given, so "ran exactly
//! once" is counted outside the server.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anneal_shared::cmdline;
use anneal_shared::protocol::{Directive, NextAction};
use anyhow::{Context, Result};
use serde::Serialize;
use tokio::sync::Semaphore;

use crate::client::{ClientError, Enroller, Session};
use crate::clock::Clock;
use crate::jobs::{self, Executor};
use crate::runner::Backoff;
use crate::simulate::{identity, inventory, labelled, raise_nofile_limit, tally, Latency};

/// Longest wait between retries of a failed request.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// What to simulate.
#[derive(Debug, Clone)]
pub struct WorkflowSimConfig {
    /// Enrollment URL (`https://HOST:8443`).
    pub url: String,
    /// The CA's fingerprint.
    pub ca_fingerprint: String,
    /// The boot listener (`http://HOST:8080`).
    pub boot_url: String,
    /// Machines.
    pub count: u32,
    /// Enrollments in flight at once.
    pub enroll_concurrency: usize,
    /// First machine number (identities derive from it).
    pub id_base: u32,
    /// Seconds between heartbeats while a machine has nothing to do.
    pub heartbeat_secs: u64,
    /// Machines not finished after this long give up (counted as unfinished).
    pub timeout_secs: u64,
    /// Append `MACHINE LABEL` here for each `noop` job run.
    pub witness: Option<PathBuf>,
}

/// What a run measured.
#[derive(Debug, Default, Serialize)]
pub struct WorkflowReport {
    /// Machines simulated.
    pub count: u32,
    /// Machines that reached their local disk.
    pub finished: u32,
    /// Machines that gave up at the timeout.
    pub unfinished: u32,
    /// Scripts fetched (PXE boots).
    pub boots: u64,
    /// Enrollments made.
    pub enrollments: u64,
    /// Jobs run.
    pub jobs: u64,
    /// Stage boundaries crossed by a reboot (a new enrollment or the local disk after a
    /// `reboot` answer).
    pub stage_transitions: u64,
    /// From the first job handed out to the last machine finished.
    pub active_secs: f64,
    /// `stage_transitions / active_secs`.
    pub transitions_per_sec: f64,
    /// Jobs finished per second over the same stretch.
    pub jobs_per_sec: f64,
    /// "What next?" answered with a job: request to decoded answer.
    pub job_dispatch: Latency,
    /// Per machine: first job handed out to the local disk.
    pub workflow_secs: Latency,
    /// Errors by phase and kind (each retried or counted as unfinished).
    pub errors: BTreeMap<String, u64>,
    /// One example message per error kind.
    pub error_examples: BTreeMap<String, String>,
    /// Whole run.
    pub wall_secs: f64,
}

impl WorkflowReport {
    /// A few lines for people.
    pub fn summary(&self) -> String {
        format!(
            "{} machines: {} finished, {} unfinished; {} boots, {} enrollments, {} jobs\n\
             stage transitions: {} in {:.1} s = {:.1}/s; jobs {:.1}/s\n\
             job dispatch: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n\
             workflow per machine: p50 {:.1} s, p99 {:.1} s\n\
             errors: {:?}",
            self.count,
            self.finished,
            self.unfinished,
            self.boots,
            self.enrollments,
            self.jobs,
            self.stage_transitions,
            self.active_secs,
            self.transitions_per_sec,
            self.jobs_per_sec,
            self.job_dispatch.p50_ms,
            self.job_dispatch.p99_ms,
            self.job_dispatch.max_ms,
            self.workflow_secs.p50_ms / 1000.0,
            self.workflow_secs.p99_ms / 1000.0,
            self.errors,
        )
    }
}

/// One machine's counts, merged at the end.
#[derive(Default)]
struct MachineResult {
    finished: bool,
    boots: u64,
    enrollments: u64,
    jobs: u64,
    transitions: u64,
    dispatch_us: Vec<u64>,
    first_job: Option<Instant>,
    done_at: Option<Instant>,
    errors: Vec<(String, String)>,
}

impl MachineResult {
    fn error(&mut self, phase: &str, e: &ClientError) {
        self.errors.push(labelled(phase, e));
    }
}

struct Shared {
    cfg: WorkflowSimConfig,
    gate: Semaphore,
    http: reqwest::Client,
    witness: Option<Mutex<std::fs::File>>,
    deadline: Instant,
}

/// Where a simulated boot ended.
enum Boot {
    /// A discovery script: enrolled through its token.
    Enrolled(Session),
    /// A script without a token: the machine boots its disk.
    Local,
}

/// What running in one boot ended with.
enum Ended {
    Reboot,
    Finished,
    GaveUp,
}

/// Retry `f` while the error is transient and the run's deadline is ahead.
async fn retrying<T, F, Fut>(sh: &Shared, phase: &str, r: &mut MachineResult, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::new(MAX_BACKOFF);
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => {
                r.error(phase, &e);
                if !e.is_transient() && !matches!(e, ClientError::Problem { status: 401, .. }) {
                    return None;
                }
            }
        }
        if Instant::now() >= sh.deadline {
            return None;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// PXE boot: fetch the script; enroll through a discovery script's token.
async fn boot(sh: &Shared, machine: u32, r: &mut MachineResult) -> Option<Boot> {
    let hints = identity(machine);
    let mac = hints.macs[0].mac.replace(':', "-");
    let uuid = hints.system_uuid.clone().unwrap_or_default();
    let url = format!(
        "{}/boot/machine.ipxe?mac={mac}&uuid={uuid}&buildarch=x86_64&platform=pcbios",
        sh.cfg.boot_url.trim_end_matches('/')
    );
    let mut backoff = Backoff::new(MAX_BACKOFF);
    let script = loop {
        let got = match sh.http.get(&url).send().await {
            Ok(res) if res.status().is_success() => res.text().await.ok(),
            _ => None,
        };
        match got {
            // The server answers errors with a script that retries; so does iPXE.
            Some(s)
                if s.lines().any(|l| l.starts_with("kernel ") || l == "exit 1")
                    || s.contains("sanboot") =>
            {
                break s
            }
            _ => {
                r.errors
                    .push(("boot:script".into(), format!("no boot script from {url}")));
                if Instant::now() >= sh.deadline {
                    return None;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    r.boots += 1;
    let token = (script.lines())
        .find(|l| l.starts_with("kernel "))
        .and_then(|k| cmdline::get(k, cmdline::TOKEN));
    let Some(token) = token else {
        return Some(Boot::Local);
    };
    let boot_id = uuid::Uuid::new_v4().to_string();
    let hostname = format!("sim-{machine:08}");
    let session = {
        let _permit = sh.gate.acquire().await.expect("semaphore never closed");
        let enroller = match Enroller::new(&sh.cfg.url, &sh.cfg.ca_fingerprint, Clock::system()) {
            Ok(e) => e,
            Err(e) => {
                r.error("enroll", &e);
                return None;
            }
        };
        retrying(sh, "enroll", r, || {
            enroller.enroll(&token, hints.clone(), &boot_id, &hostname)
        })
        .await?
    };
    r.enrollments += 1;
    Some(Boot::Enrolled(session))
}

/// Ask for work and run it until the machine reboots, finishes or gives up.
async fn work(sh: &Shared, exec: &Executor, s: &Session, r: &mut MachineResult) -> Ended {
    let heartbeat = Duration::from_secs(sh.cfg.heartbeat_secs.max(1));
    loop {
        if Instant::now() >= sh.deadline {
            return Ended::GaveUp;
        }
        let t = Instant::now();
        let Some(next) = retrying(sh, "next", r, || s.next()).await else {
            return Ended::GaveUp;
        };
        match next {
            NextAction::Job(job) => {
                r.dispatch_us.push(t.elapsed().as_micros() as u64);
                r.first_job.get_or_insert(t);
                match jobs::run_job(s, exec, &job).await {
                    Ok(()) => r.jobs += 1,
                    Err(e) => r.error("job", &e),
                }
            }
            NextAction::Reboot => return Ended::Reboot,
            NextAction::Done | NextAction::PowerOff => return Ended::Finished,
            NextAction::Wait { .. } | NextAction::Unknown => {
                // Nothing yet: heartbeat until the server says there is work.
                loop {
                    tokio::time::sleep(heartbeat).await;
                    match s.heartbeat("idle").await {
                        Ok(hb) if matches!(hb.directive, Directive::Work) => break,
                        Ok(_) => {}
                        Err(e) => r.error("heartbeat", &e),
                    }
                    if Instant::now() >= sh.deadline {
                        return Ended::GaveUp;
                    }
                }
            }
        }
    }
}

/// The executor of one machine: the `noop` action writes the witness line.
fn executor(sh: &Arc<Shared>, machine: u32) -> Executor {
    let shared = sh.clone();
    let noop: jobs::Action = Box::new(move |args| {
        let label = (args.get("label").and_then(|v| v.as_str()))
            .unwrap_or("noop")
            .to_string();
        if let Some(w) = &shared.witness {
            let mut f = w.lock().expect("witness file");
            // One write per line, so lines from many machines never interleave.
            let _ = f.write_all(format!("{machine} {label}\n").as_bytes());
        }
        // `sleep_ms` makes a job take time, so a test can act while jobs are under way.
        let sleep =
            Duration::from_millis(args.get("sleep_ms").and_then(|v| v.as_u64()).unwrap_or(0));
        Box::pin(async move {
            tokio::time::sleep(sleep).await;
            Ok(serde_json::json!({ "label": label }))
        })
    });
    Executor {
        work_dir: std::env::temp_dir(),
        collect: None,
        actions: [("noop".to_string(), noop)].into_iter().collect(),
        reboot: Vec::new(),
        power_off: Vec::new(),
    }
}

async fn one_machine(sh: Arc<Shared>, n: u32) -> MachineResult {
    let machine = sh.cfg.id_base + n;
    let exec = executor(&sh, machine);
    let mut r = MachineResult::default();
    let mut first_boot = true;
    let mut rebooted = false;
    loop {
        let Some(b) = boot(&sh, machine, &mut r).await else {
            break;
        };
        if rebooted {
            r.transitions += 1;
        }
        let session = match b {
            Boot::Local => {
                r.finished = true;
                r.done_at = Some(Instant::now());
                break;
            }
            Boot::Enrolled(s) => s,
        };
        if first_boot {
            first_boot = false;
            let inv = inventory(machine);
            if retrying(&sh, "inventory", &mut r, || session.send_inventory(&inv))
                .await
                .is_none()
            {
                break;
            }
        }
        match work(&sh, &exec, &session, &mut r).await {
            Ended::Reboot => rebooted = true,
            Ended::Finished => {
                r.finished = true;
                r.done_at = Some(Instant::now());
                break;
            }
            Ended::GaveUp => break,
        }
    }
    r
}

/// Run every machine until it finishes or the timeout passes, and report.
pub async fn run(cfg: WorkflowSimConfig) -> Result<WorkflowReport> {
    anyhow::ensure!(cfg.count > 0, "--count must be at least 1");
    anyhow::ensure!(
        cfg.id_base as u64 + cfg.count as u64 <= crate::simulate::ID_SPACE as u64,
        "--id-base + --count must not exceed {}",
        crate::simulate::ID_SPACE
    );
    crate::install_crypto_provider();
    raise_nofile_limit();
    let witness = match &cfg.witness {
        Some(p) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening the witness file {}", p.display()))?,
        )),
        None => None,
    };
    let started = Instant::now();
    let sh = Arc::new(Shared {
        gate: Semaphore::new(cfg.enroll_concurrency.max(1)),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client for boot scripts")?,
        witness,
        deadline: started + Duration::from_secs(cfg.timeout_secs),
        cfg: cfg.clone(),
    });
    let tasks: Vec<_> = (0..cfg.count)
        .map(|n| tokio::spawn(one_machine(sh.clone(), n)))
        .collect();
    let mut report = WorkflowReport {
        count: cfg.count,
        ..Default::default()
    };
    let (mut dispatch, mut per_machine) = (Vec::new(), Vec::new());
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    for t in tasks {
        let r = match t.await {
            Ok(r) => r,
            Err(e) => {
                let (counts, examples) = (&mut report.errors, &mut report.error_examples);
                tally(counts, examples, "sim:task_panicked".into(), e.to_string());
                continue;
            }
        };
        match r.finished {
            true => report.finished += 1,
            false => report.unfinished += 1,
        }
        report.boots += r.boots;
        report.enrollments += r.enrollments;
        report.jobs += r.jobs;
        report.stage_transitions += r.transitions;
        dispatch.extend(r.dispatch_us);
        if let (Some(a), Some(b)) = (r.first_job, r.done_at) {
            per_machine.push(b.duration_since(a).as_micros() as u64);
        }
        first = match (first, r.first_job) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        last = last.max(r.done_at);
        for (kind, example) in r.errors {
            tally(
                &mut report.errors,
                &mut report.error_examples,
                kind,
                example,
            );
        }
    }
    report.job_dispatch = Latency::of(&mut dispatch);
    report.workflow_secs = Latency::of(&mut per_machine);
    if let (Some(a), Some(b)) = (first, last) {
        report.active_secs = b.duration_since(a).as_secs_f64();
        if report.active_secs > 0.0 {
            report.transitions_per_sec = report.stage_transitions as f64 / report.active_secs;
            report.jobs_per_sec = report.jobs as f64 / report.active_secs;
        }
    }
    report.wall_secs = started.elapsed().as_secs_f64();
    Ok(report)
}
