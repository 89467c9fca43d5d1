//! Workflow jobs on the machine: ask the server what next, run what it hands out, stream the
//! output, report the result, and reboot or power off when told.
//!
//! The order that keeps a job from running twice or being lost: the start is acknowledged
//! before the script runs (a 409 there means "not yours any more": it never runs); the whole
//! log is acknowledged before the result is sent; each of these is retried with backoff while
//! the server is unreachable, so a dropped link only delays a job.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anneal_shared::inventory::Inventory;
use anneal_shared::protocol::{AttemptResult, Job, JobWork, NextAction};
use anneal_shared::PROTOCOL_VERSION;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use tokio::io::AsyncReadExt;

use crate::client::{ClientError, LogUpload, Session};
use crate::joblog::{LogBuffer, Redactor};
use crate::runner::{Backoff, MAX_BACKOFF};

/// Largest chunk sent in one request.
pub const CHUNK: usize = 256 * 1024;
/// Unsent output kept while the server is unreachable.
pub const BUFFER_CAP: usize = 16 * 1024 * 1024;
/// How often output is sent while a job runs.
pub const FLUSH_EVERY: Duration = Duration::from_millis(500);

/// A built-in action: arguments in, a structured result (or a failure reason) out.
pub type Action =
    Box<dyn Fn(Map<String, Value>) -> BoxFuture<'static, Result<Value, String>> + Send + Sync>;

/// Collects this machine's inventory (for the built-in `inventory` action).
pub type Collect = Box<dyn Fn() -> BoxFuture<'static, Inventory> + Send + Sync>;

/// How jobs are run on this machine.
pub struct Executor {
    /// Where scripts are written before they run.
    pub work_dir: PathBuf,
    /// The built-in `inventory` action: collect, send, and report a summary.
    pub collect: Option<Collect>,
    /// Other built-in actions by name.
    pub actions: HashMap<String, Action>,
    /// The command that reboots the machine (`reboot -f` in the discovery image).
    pub reboot: Vec<String>,
    /// The command that powers it off.
    pub power_off: Vec<String>,
}

/// What [`drive`] stopped at.
#[derive(Debug, Clone, PartialEq)]
pub enum Stop {
    /// Nothing more now; ask again after this long (or when a heartbeat says `work`).
    Wait(Duration),
    /// The workflow is done.
    Done,
    /// The reboot command was run.
    Rebooting,
    /// The power-off command was run.
    PoweringOff,
}

/// Ask for and run jobs until the server has nothing more for now.
pub async fn drive(session: &Session, exec: &Executor) -> Result<Stop, ClientError> {
    loop {
        match session.next().await? {
            NextAction::Job(job) => run_job(session, exec, &job).await?,
            NextAction::Reboot => {
                tracing::warn!("the workflow reboots this machine");
                run_command(&exec.reboot).await;
                return Ok(Stop::Rebooting);
            }
            NextAction::PowerOff => {
                tracing::warn!("the workflow powers this machine off");
                run_command(&exec.power_off).await;
                return Ok(Stop::PoweringOff);
            }
            NextAction::Done => return Ok(Stop::Done),
            NextAction::Wait { retry_secs } => {
                return Ok(Stop::Wait(Duration::from_secs(u64::from(
                    retry_secs.max(1),
                ))))
            }
            NextAction::Unknown => return Ok(Stop::Wait(Duration::from_secs(30))),
        }
    }
}

async fn run_command(cmd: &[String]) {
    let Some((prog, args)) = cmd.split_first() else {
        return;
    };
    match tokio::process::Command::new(prog).args(args).status().await {
        Ok(s) if s.success() => {}
        Ok(s) => tracing::error!(command = ?cmd, status = %s, "command failed"),
        Err(e) => tracing::error!(command = ?cmd, error = %e, "command could not start"),
    }
}

/// Retry `f` while the server is unreachable (transient errors), with backoff.
async fn retrying<T, F, Fut>(what: &str, mut f: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ClientError>>,
{
    let mut backoff = Backoff::new(MAX_BACKOFF);
    loop {
        match f().await {
            Err(e) if e.is_transient() => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "{what} failed; retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

/// Acknowledge, run, stream and report one job.
pub async fn run_job(session: &Session, exec: &Executor, job: &Job) -> Result<(), ClientError> {
    tracing::info!(attempt = %job.attempt, stage = %job.stage, task = %job.task, "job received");
    match retrying("acknowledging the job", || {
        session.start_attempt(job.attempt)
    })
    .await
    {
        Ok(()) => {}
        Err(ClientError::Problem {
            status: 409,
            detail,
        }) => {
            tracing::warn!(attempt = %job.attempt, %detail, "the server withdrew the job; not running it");
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let log = Arc::new(Mutex::new(LogBuffer::new(BUFFER_CAP)));
    let mut redactor = Redactor::new(&job.redact);
    let outcome = match &job.work {
        JobWork::Script { script } => {
            run_script(session, exec, job, script, &log, &mut redactor).await
        }
        JobWork::Action { name, .. } if name == "inventory" && exec.collect.is_some() => {
            let collect = exec.collect.as_ref().expect("checked");
            let inv = collect().await;
            let sent = retrying("sending the inventory", || session.send_inventory(&inv)).await;
            let summary = serde_json::json!({
                "disks": inv.disks.len(),
                "nics": inv.nics.len(),
                "cpus": inv.cpu.as_ref().map(|c| c.logical_cpus),
                "collector_errors": inv.errors.len(),
            });
            let line = format!("anneal-agent: inventory collected and sent: {summary}\n");
            push(&log, &mut redactor, line.as_bytes());
            match sent {
                Ok(()) => Outcome::ok(None, Some(summary)),
                Err(e) => Outcome::failed(None, format!("sending the inventory: {e}")),
            }
        }
        JobWork::Action { name, args } => match exec.actions.get(name) {
            Some(action) => {
                let started = std::time::Instant::now();
                let r = tokio::time::timeout(
                    Duration::from_secs(u64::from(job.timeout_secs.max(1))),
                    action(args.clone()),
                )
                .await
                .unwrap_or_else(|_| Err(format!("timed out after {} s", job.timeout_secs)));
                let line = format!(
                    "anneal-agent: action `{name}` {} in {:.1} s\n",
                    if r.is_ok() { "succeeded" } else { "failed" },
                    started.elapsed().as_secs_f64()
                );
                push(&log, &mut redactor, line.as_bytes());
                match r {
                    Ok(v) => Outcome::ok(None, Some(v)),
                    Err(reason) => Outcome::failed(None, reason),
                }
            }
            // The built-in action that does nothing: for trying workflows out and benchmarks.
            None if name == "noop" => {
                push(&log, &mut redactor, b"anneal-agent: noop\n");
                Outcome::ok(None, Some(serde_json::json!({})))
            }
            None => Outcome::failed(None, format!("this agent has no action `{name}`")),
        },
        JobWork::Unknown => {
            Outcome::failed(None, "this agent does not know this kind of job".into())
        }
    };
    let tail = redactor.finish();
    log.lock().map(|mut l| l.push(&tail)).ok();
    flush_all(session, job, &log).await?;
    let log_length = log.lock().map(|l| l.end()).unwrap_or(0);
    let report = AttemptResult {
        protocol: PROTOCOL_VERSION,
        ok: outcome.ok,
        exit_code: outcome.exit_code,
        reason: outcome.reason.clone(),
        result: outcome.result.clone(),
        log_length,
    };
    tracing::info!(attempt = %job.attempt, task = %job.task, ok = outcome.ok, exit_code = ?outcome.exit_code, reason = %outcome.reason, "job finished");
    match retrying("reporting the result", || {
        session.report_result(job.attempt, &report)
    })
    .await
    {
        Ok(()) => Ok(()),
        Err(ClientError::Problem {
            status: 409,
            detail,
        }) => {
            tracing::warn!(attempt = %job.attempt, %detail, "the server no longer takes this result");
            Ok(())
        }
        Err(e) => Err(e),
    }
}

struct Outcome {
    ok: bool,
    exit_code: Option<i32>,
    reason: String,
    result: Option<Value>,
}

impl Outcome {
    fn ok(exit_code: Option<i32>, result: Option<Value>) -> Outcome {
        Outcome {
            ok: true,
            exit_code,
            reason: String::new(),
            result,
        }
    }
    fn failed(exit_code: Option<i32>, reason: String) -> Outcome {
        Outcome {
            ok: false,
            exit_code,
            reason,
            result: None,
        }
    }
}

fn push(log: &Mutex<LogBuffer>, redactor: &mut Redactor, data: &[u8]) {
    let clean = redactor.push(data);
    if let Ok(mut l) = log.lock() {
        l.push(&clean);
    }
}

/// Send what is buffered, once; errors are left for the next try.
async fn flush_once(
    session: &Session,
    job: &Job,
    log: &Mutex<LogBuffer>,
) -> Result<(), ClientError> {
    loop {
        let (offset, chunk) = match log.lock() {
            Ok(l) if l.unsent() > 0 => {
                let (o, c) = l.chunk(CHUNK);
                (o, c.to_vec())
            }
            _ => return Ok(()),
        };
        let len = match session.upload_log(job.attempt, offset, &chunk).await? {
            LogUpload::Taken(n) | LogUpload::Resume(n) => n,
        };
        if let Ok(mut l) = log.lock() {
            l.acknowledged(len);
        }
    }
}

/// Send everything buffered, retrying while the server is unreachable.
async fn flush_all(
    session: &Session,
    job: &Job,
    log: &Mutex<LogBuffer>,
) -> Result<(), ClientError> {
    retrying("sending the job log", || flush_once(session, job, log)).await
}

/// Kill the script's whole process group: its children must not outlive it.
fn kill_group(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: kill(2) on the process group the script leads; no memory is involved.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
    }
}

/// Run a script under `/bin/sh` with stdout and stderr in one stream, killed (its whole
/// process group) at the job's timeout.
async fn run_script(
    session: &Session,
    exec: &Executor,
    job: &Job,
    script: &str,
    log: &Arc<Mutex<LogBuffer>>,
    redactor: &mut Redactor,
) -> Outcome {
    let path = exec.work_dir.join(format!("job-{}.sh", job.attempt));
    if let Err(e) =
        std::fs::create_dir_all(&exec.work_dir).and_then(|_| std::fs::write(&path, script))
    {
        return Outcome::failed(
            None,
            format!("cannot write the script to {}: {e}", path.display()),
        );
    }
    // The outer shell points stderr at stdout, then runs the script: one stream, in order.
    let child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg("exec 2>&1; exec /bin/sh \"$0\"")
        .arg(&path)
        .env("ANNEAL_ATTEMPT", job.attempt.to_string())
        .env("ANNEAL_TASK", &job.task)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return Outcome::failed(None, format!("cannot start /bin/sh: {e}")),
    };
    let mut out = child.stdout.take().expect("piped stdout");
    let deadline = tokio::time::sleep(Duration::from_secs(u64::from(job.timeout_secs.max(1))));
    tokio::pin!(deadline);
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    let mut buf = vec![0u8; 64 * 1024];
    let mut eof = false;
    let mut timed_out = false;
    // After a kill, output still open elsewhere (a child that left the group) is not waited
    // for long.
    let grace = tokio::time::sleep(Duration::from_secs(u64::MAX / 4));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            n = out.read(&mut buf), if !eof => match n {
                Ok(0) | Err(_) => eof = true,
                Ok(n) => push(log, redactor, &buf[..n]),
            },
            _ = &mut grace => break,
            _ = flush.tick() => {
                if let Err(e) = flush_once(session, job, log).await {
                    tracing::debug!(error = %e, "log upload failed; output stays buffered");
                }
            }
            _ = &mut deadline, if !timed_out => {
                timed_out = true;
                kill_group(&child);
                grace.as_mut().reset(tokio::time::Instant::now() + Duration::from_secs(5));
            }
        }
        if eof {
            break;
        }
    }
    // Output closed; the script may still run (it closed stdout): wait, still under the deadline.
    let status = tokio::select! {
        s = child.wait() => s,
        _ = &mut deadline, if !timed_out => {
            timed_out = true;
            kill_group(&child);
            child.wait().await
        }
    };
    let _ = std::fs::remove_file(&path);
    match status {
        _ if timed_out => Outcome::failed(
            None,
            format!("timed out after {} s and was killed", job.timeout_secs),
        ),
        Ok(s) if s.success() => Outcome::ok(Some(0), None),
        Ok(s) => match s.code() {
            Some(c) => Outcome::failed(Some(c), format!("exit code {c}")),
            None => Outcome::failed(None, format!("killed ({s})")),
        },
        Err(e) => Outcome::failed(None, format!("waiting for the script: {e}")),
    }
}
