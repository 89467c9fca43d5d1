//! Runs driven from the outside world: the operator API assigns and steers them, the boot
//! service reports scripts served, enrollment reports new boots, and the agent API asks for
//! work and reports attempts. Every call is one [`WorkflowStore::step_run`] (or `start_run`):
//! the pure [`step`] applied and committed with its effects in one transaction.

use std::sync::Arc;
use std::time::Duration;

use anneal_shared::events::{Event as ServerEvent, EventKind};
use anneal_shared::protocol::{Job, JobWork, NextAction};
use anneal_shared::MachineId;
use time::OffsetDateTime;

use super::plan::{self, Plan};
use super::run::{start_at, step_at, Answer, AttemptId, Event, Phase, Run, StepError};
use crate::app::App;
use crate::content::{builtin, render_task, ContentErrors, ContentSet, MachineContext, Resolved};
use crate::store::workflow::{AttemptReport, AttemptState, RunRecord, Stepped};
use crate::store::StoreError;

/// How long an agent told to wait sleeps before asking again (a heartbeat saying `work` wakes
/// it sooner).
pub const WAIT_RETRY_SECS: u32 = 10;

/// How often deadlines are checked.
pub const TICK_INTERVAL: Duration = Duration::from_secs(5);

/// Why a workflow call failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkflowError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such machine.
    #[error("no machine {0}")]
    NoMachine(MachineId),
    /// The machine has no current workflow run.
    #[error("machine {0} has no workflow run")]
    NoRun(MachineId),
    /// The workflow cannot be resolved from the current content.
    #[error(transparent)]
    Resolve(#[from] plan::ResolveError),
    /// The event does not apply (stale attempt, operator action in the wrong phase).
    #[error(transparent)]
    Refused(#[from] StepError),
    /// The stored content does not validate over the built-ins.
    #[error("the stored workflow content is invalid:\n{0}")]
    Content(#[from] ContentErrors),
}

/// The newest content, merged over the built-ins, kept until `anneal apply` makes a newer one:
/// job dispatch asks for it on every job, and loading and merging all objects each time would
/// cost more than the step itself.
#[derive(Default)]
pub struct ContentCache {
    merged: std::sync::Mutex<Option<(i64, Arc<ContentSet>)>>,
}

/// The content runs are resolved from and jobs rendered with: the newest applied version
/// laid over the built-ins, and that version's number.
pub async fn current_content(app: &App) -> Result<(i64, Arc<ContentSet>), WorkflowError> {
    let head = app.store.content_version().await?;
    if let Some((v, set)) = app.content.merged.lock().expect("content cache").as_ref() {
        if *v == head {
            return Ok((*v, set.clone()));
        }
    }
    let (version, objects) = app.store.content_at(None).await?;
    let mut operator = ContentSet::new();
    for o in objects {
        operator
            .insert(o, None)
            .map_err(|e| ContentErrors(vec![e]))?;
    }
    let set = Arc::new(ContentSet::merge(builtin(), &operator)?);
    let mut cache = app.content.merged.lock().expect("content cache");
    // Another request may have cached a newer version meanwhile; keep the newest.
    if cache.as_ref().is_none_or(|(v, _)| *v < version) {
        *cache = Some((version, set.clone()));
    }
    Ok((version, set))
}

/// Apply `event` to the machine's current run. `Ok(None)`: no run.
async fn apply(
    app: &App,
    machine: MachineId,
    event: Event<'_>,
    report: Option<&AttemptReport>,
) -> Result<Option<Stepped>, WorkflowError> {
    let now = OffsetDateTime::now_utc();
    let now_ms = crate::store::to_ms(now);
    // Where the run stood before the step: the attempt it starts or ends belongs there.
    let before = std::sync::Mutex::new((0, 0));
    let f = |run: &mut Run, plan: &Plan| {
        *before.lock().expect("step position") = (run.stage, run.task);
        step_at(run, plan, event.clone(), now_ms)
    };
    match app.store.step_run(machine, &f, report, now).await? {
        None => Ok(None),
        Some(Ok(stepped)) => {
            log_step(&stepped);
            let before = *before.lock().expect("step position");
            for e in super::events::of_step(&stepped, before) {
                app.events.emit(e);
            }
            Ok(Some(stepped))
        }
        Some(Err(e)) => Err(e.into()),
    }
}

fn log_step(s: &Stepped) {
    if s.outcome.effects.is_empty() {
        return;
    }
    let r = &s.record;
    tracing::info!(
        machine_id = %r.machine_id,
        run = %r.id,
        workflow = %r.plan.workflow,
        stage = r.run.stage,
        task = r.run.task,
        phase = r.run.phase.name(),
        effects = ?s.outcome.effects,
        "workflow step"
    );
    if let Phase::Failed { reason } = &r.run.phase {
        metrics::counter!("anneal_workflow_failures_total").increment(1);
        tracing::warn!(machine_id = %r.machine_id, workflow = %r.plan.workflow, %reason, "workflow stopped");
    }
}

/// Assign `workflow` (resolved from the newest content, built-ins included) to a machine,
/// replacing (cancelling) any run it has. `current`: the machine's current boot id and the
/// environment that boot came from, when known, so a machine already in the first stage's
/// environment starts without a reboot.
pub async fn assign(
    app: &App,
    machine: MachineId,
    workflow: &str,
    current: Option<(String, String)>,
) -> Result<RunRecord, WorkflowError> {
    assign_plan(app, machine, &resolve(app, workflow).await?, current).await
}

/// `workflow` resolved from the newest content, built-ins included.
pub async fn resolve(app: &App, workflow: &str) -> Result<Plan, WorkflowError> {
    let (content_version, content) = current_content(app).await?;
    Ok(plan::resolve(
        &content.objects(),
        workflow,
        content_version,
    )?)
}

/// [`assign`] with the plan already resolved (the fleet guard checks it first).
pub async fn assign_plan(
    app: &App,
    machine: MachineId,
    plan: &Plan,
    current: Option<(String, String)>,
) -> Result<RunRecord, WorkflowError> {
    let (workflow, content_version) = (&plan.workflow, plan.content_version);
    let now = OffsetDateTime::now_utc();
    let now_ms = crate::store::to_ms(now);
    let make = |plan: &Plan| {
        let cur = current.as_ref().map(|(b, e)| (b.as_str(), e.as_str()));
        start_at(plan, cur, now_ms)
    };
    let cancel = |run: &mut Run, plan: &Plan| step_at(run, plan, Event::Cancel, now_ms);
    let stepped = app
        .store
        .start_run(machine, plan, &make, &cancel, now)
        .await?
        .ok_or(WorkflowError::NoMachine(machine))?;
    metrics::counter!("anneal_workflow_runs_total").increment(1);
    for e in super::events::of_assignment(&stepped) {
        app.events.emit(e);
    }
    tracing::info!(machine_id = %machine, run = %stepped.record.id, workflow = %workflow, content_version, phase = stepped.record.run.phase.name(), "workflow assigned");
    Ok(stepped.record)
}

/// The boot service served `env`'s script to the machine: it is booting again, so its last
/// enrollment no longer says where it runs.
pub async fn script_served(app: &App, machine: MachineId, env: &str) {
    app.events.emit(ServerEvent {
        boot_env: Some(env.to_string()),
        ..ServerEvent::of(EventKind::ScriptServed).machine(machine)
    });
    if let Err(e) = app.store.forget_boot(machine).await {
        tracing::error!(machine_id = %machine, error = %e, "forgetting the machine's last boot failed");
    }
    if let Err(e) = apply(app, machine, Event::ScriptServed { env }, None).await {
        tracing::error!(machine_id = %machine, env, error = %e, "recording a served script in the workflow failed");
    }
}

/// The boot service could not render `env` for the machine (`reason` names the param, file or
/// artifact): its run, if booting into `env`, fails with the reason.
pub async fn boot_unrenderable(app: &App, machine: MachineId, env: &str, reason: &str) {
    if let Err(e) = apply(app, machine, Event::BootUnrenderable { env, reason }, None).await {
        tracing::error!(machine_id = %machine, env, error = %e, "recording an unrenderable boot environment in the workflow failed");
    }
}

/// The machine enrolled from `boot_id`, through a token minted by `via_env`'s script.
pub async fn enrolled(app: &App, machine: MachineId, boot_id: &str, via_env: Option<&str>) {
    let e = Event::Enrolled { boot_id, via_env };
    if let Err(e) = apply(app, machine, e, None).await {
        tracing::error!(machine_id = %machine, error = %e, "recording an enrollment in the workflow failed");
    }
}

/// The agent (in `boot_id`) asks what to do next.
pub async fn next(
    app: &App,
    machine: MachineId,
    boot_id: &str,
) -> Result<NextAction, WorkflowError> {
    let Some(stepped) = apply(app, machine, Event::Ask { boot_id }, None).await? else {
        return Ok(NextAction::Wait {
            retry_secs: WAIT_RETRY_SECS * 6,
        });
    };
    Ok(match stepped.outcome.answer {
        Some(Answer::Job {
            attempt,
            stage,
            task,
        }) => match render(app, machine, &stepped.record.plan, stage, task, attempt).await {
            Ok(job) => NextAction::Job(job),
            Err(reason) => {
                let e = Event::Unrenderable {
                    attempt,
                    reason: &reason,
                };
                apply(app, machine, e, None).await?;
                NextAction::Wait {
                    retry_secs: WAIT_RETRY_SECS,
                }
            }
        },
        Some(Answer::Reboot) => NextAction::Reboot,
        Some(Answer::PowerOff) => NextAction::PowerOff,
        Some(Answer::Done) => NextAction::Done,
        Some(Answer::Wait) | None => NextAction::Wait {
            retry_secs: WAIT_RETRY_SECS,
        },
    })
}

/// The job the agent runs for attempt `attempt` of (stage, task): the pinned task rendered with
/// the machine's param values as they are now (so fixing a param and retrying works).
async fn render(
    app: &App,
    machine: MachineId,
    plan: &Plan,
    stage: usize,
    task: usize,
    attempt: AttemptId,
) -> Result<Job, String> {
    let st = plan
        .stages
        .get(stage)
        .ok_or_else(|| format!("stage {stage} is not in the plan"))?;
    let t = st
        .tasks
        .get(task)
        .ok_or_else(|| format!("task {task} is not in stage `{}`", st.name))?;
    let (resolved, ctx) = machine_inputs(app, machine)
        .await
        .map_err(|e| e.to_string())?;
    let rendered = render_task(t, &resolved, &ctx).map_err(|e| e.to_string())?;
    let work = match (rendered.script, rendered.action) {
        (Some(script), None) => JobWork::Script { script },
        (None, Some(name)) => JobWork::Action {
            name,
            args: rendered.args.into_iter().collect(),
        },
        _ => return Err("a task needs exactly one of `script` and `action`".into()),
    };
    Ok(Job {
        attempt,
        workflow: plan.workflow.clone(),
        stage: st.name.clone(),
        task: t.name.clone(),
        work,
        timeout_secs: t.timeout_secs,
        redact: rendered.secrets,
    })
}

/// A machine's param values as its tasks are rendered now: its own params, then its profiles
/// in order, then `global`, then defaults. Err: every problem, as one message naming them.
pub async fn machine_values(
    app: &App,
    machine: MachineId,
    content: &ContentSet,
) -> Result<Resolved, String> {
    let own = app
        .store
        .machine_params(machine)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("machine {machine} is gone"))?;
    Resolved::resolve(content, &own.params, &own.profiles).map_err(|e| e.to_string())
}

/// Why a machine's render inputs could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum InputsError {
    /// The server could not read them (store, content): asking again may work.
    #[error(transparent)]
    Server(#[from] WorkflowError),
    /// The machine's params do not resolve (the message names them), or it is gone: only an
    /// operator's fix helps.
    #[error("{0}")]
    Machine(String),
}

/// A machine's param values ([`machine_values`]) and facts, as its jobs and boot environments
/// are rendered with them.
pub async fn machine_inputs(
    app: &App,
    machine: MachineId,
) -> Result<(Resolved, MachineContext), InputsError> {
    let (_, content) = current_content(app).await?;
    let resolved = (machine_values(app, machine, &content).await).map_err(InputsError::Machine)?;
    let record = (app.store.get_machine(machine).await)
        .map_err(|e| InputsError::Server(e.into()))?
        .ok_or_else(|| InputsError::Machine(format!("machine {machine} is gone")))?;
    let ctx = MachineContext {
        id: machine,
        hostname: record.hostname.clone(),
        serial: record.identity.system_serial.clone(),
        manufacturer: record.identity.manufacturer.clone(),
        product: record.identity.product.clone(),
        macs: record.identity.macs.iter().map(|n| n.mac.clone()).collect(),
    };
    Ok((resolved, ctx))
}

/// The agent is about to start `attempt`. Err(Refused) when it must not.
pub async fn started(
    app: &App,
    machine: MachineId,
    attempt: AttemptId,
) -> Result<(), WorkflowError> {
    apply(app, machine, Event::Started { attempt }, None)
        .await?
        .ok_or(WorkflowError::NoRun(machine))?;
    Ok(())
}

/// The agent reports `attempt`'s end. An exact repeat of a report already taken is accepted.
pub async fn finished(
    app: &App,
    machine: MachineId,
    report: &AttemptReport,
    ok: bool,
    reason: &str,
) -> Result<(), WorkflowError> {
    let attempt = report.attempt;
    let e = Event::Finished {
        attempt,
        ok,
        reason,
    };
    match apply(app, machine, e, Some(report)).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(WorkflowError::NoRun(machine)),
        Err(WorkflowError::Refused(StepError::NotCurrent(a))) => {
            // A retried report whose answer was lost: the attempt ended the same way already.
            let same = app.store.get_attempt(a).await?.is_some_and(|rec| {
                rec.machine_id == machine
                    && match rec.state {
                        AttemptState::Succeeded => ok,
                        AttemptState::Failed => !ok,
                        _ => false,
                    }
            });
            if same {
                Ok(())
            } else {
                Err(StepError::NotCurrent(a).into())
            }
        }
        Err(e) => Err(e),
    }
}

/// An operator action on the machine's current run.
pub async fn operator(
    app: &App,
    machine: MachineId,
    event: Event<'_>,
) -> Result<RunRecord, WorkflowError> {
    apply(app, machine, event, None)
        .await?
        .map(|s| s.record)
        .ok_or(WorkflowError::NoRun(machine))
}

/// Check every active run's deadlines once.
pub async fn tick_all(app: &App) -> Result<usize, StoreError> {
    let machines = app.store.machines_with_active_runs().await?;
    for m in &machines {
        if let Err(e) = apply(app, *m, Event::Tick, None).await {
            tracing::error!(machine_id = %m, error = %e, "workflow deadline check failed");
        }
    }
    Ok(machines.len())
}

/// Run [`tick_all`] every [`TICK_INTERVAL`] until `stop` fires.
pub async fn ticker(app: Arc<App>, stop: tokio_util::sync::CancellationToken) {
    let mut every = tokio::time::interval(TICK_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {
                if let Err(e) = tick_all(&app).await {
                    tracing::error!(error = %e, "workflow deadline check failed");
                }
            }
        }
    }
}
