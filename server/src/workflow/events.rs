//! The events a committed workflow step emits: one per effect, each carrying the run's
//! context (workflow, stage i of n, task, phase) so a follower draws progress from it alone.

use anneal_shared::events::{Event, EventKind};

use super::run::{AttemptEnd, Effect, Phase};
use crate::store::workflow::{RunRecord, Stepped};

/// An event of `kind` about the run, at (stage, task) of its plan.
fn about(r: &RunRecord, kind: EventKind, stage: usize, task: usize) -> Event {
    let st = r.plan.stages.get(stage);
    Event {
        machine_id: Some(r.machine_id),
        run_id: Some(r.id),
        workflow: Some(r.plan.workflow.clone()),
        stage: st.map(|s| s.name.clone()),
        stage_index: Some(stage),
        stage_count: Some(r.plan.stages.len()),
        task: st.and_then(|s| s.tasks.get(task)).map(|t| t.name.clone()),
        task_index: Some(task),
        task_count: st.map(|s| s.tasks.len()),
        phase: Some(r.run.phase.name().to_string()),
        ..Event::of(kind)
    }
}

fn end_state(end: &AttemptEnd) -> (&'static str, Option<String>) {
    match end {
        AttemptEnd::Succeeded => ("succeeded", None),
        AttemptEnd::Failed(reason) => ("failed", Some(reason.clone())),
        AttemptEnd::TimedOut => ("timed_out", None),
        AttemptEnd::Interrupted => ("interrupted", None),
        AttemptEnd::Cancelled => ("cancelled", None),
    }
}

/// The events of a committed step. `before`: the run's (stage, task) before the step, where
/// the attempt it started or ended belongs (the run may have moved on since).
pub fn of_step(s: &Stepped, before: (usize, usize)) -> Vec<Event> {
    let r = &s.record;
    let now = (r.run.stage, r.run.task);
    s.outcome
        .effects
        .iter()
        .map(|effect| match effect {
            Effect::SetBootEnv(env) => Event {
                boot_env: Some(env.clone()),
                ..about(r, EventKind::BootEnvSet, now.0, now.1)
            },
            Effect::AttemptCreated {
                attempt,
                stage,
                task,
            } => Event {
                attempt: Some(*attempt),
                ..about(r, EventKind::AttemptCreated, *stage, *task)
            },
            Effect::AttemptStarted(attempt) => Event {
                attempt: Some(*attempt),
                ..about(r, EventKind::AttemptStarted, before.0, before.1)
            },
            Effect::AttemptEnded(attempt, end) => {
                let (state, reason) = end_state(end);
                Event {
                    attempt: Some(*attempt),
                    state: Some(state.into()),
                    reason,
                    ..about(r, EventKind::AttemptEnded, before.0, before.1)
                }
            }
            Effect::StageEntered(stage) => about(r, EventKind::StageEntered, *stage, now.1),
            Effect::PhaseChanged => {
                let (reason, boot_env) = match &r.run.phase {
                    Phase::Failed { reason } => (Some(reason.clone()), None),
                    Phase::Booting { env, .. } => (None, Some(env.clone())),
                    _ => (None, None),
                };
                Event {
                    reason,
                    boot_env,
                    ..about(r, EventKind::RunPhase, now.0, now.1)
                }
            }
        })
        .collect()
}

/// The events of a new run: `run_assigned`, then its first step's.
pub fn of_assignment(s: &Stepped) -> Vec<Event> {
    let r = &s.record;
    let mut events = vec![about(r, EventKind::RunAssigned, r.run.stage, r.run.task)];
    events.extend(of_step(s, (r.run.stage, r.run.task)));
    events
}
