//! The state of one workflow run, and how every event moves it. Pure: no I/O, no clock; the
//! store applies [`step`] inside one transaction and persists the run and the [`Effect`]s
//! together, so a server restart resumes exactly where the last committed step left it.
//!
//! The rules the rest of Anneal relies on:
//!
//! - **Stage boundaries.** When the next stage needs another boot environment (or the stage
//!   ends with `reboot`), the run switches the machine's boot environment first
//!   ([`Effect::SetBootEnv`], committed with the run) and answers the agent `reboot`. The
//!   boundary counts as crossed only when that environment's script was served *and* a new
//!   kernel boot id shows up (an enrollment, or an agent asking from another boot); an agent
//!   restarted within the same boot is not a reboot. An environment without an agent (`local`)
//!   is crossed when its script is served. Not back within the stage's boot timeout: failed.
//! - **Attempts.** Every delivery of a task is an attempt with an id. The agent acknowledges the
//!   start ([`Event::Started`]) before running anything. An attempt delivered but not started is
//!   delivered again as the same attempt; one started and then lost (agent crash, power loss,
//!   silence past its deadline) is *interrupted*: retried only when the task is idempotent and
//!   has retries left, otherwise the run fails with "interrupted" for an operator to decide.
//! - **Deadlines.** Every attempt (task timeout plus [`GRACE_SECS`]), every boot and every
//!   stage has one; [`Event::Tick`] enforces them, so nothing waits forever.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::plan::Plan;
use anneal_shared::content::{StageEnd, Task};

/// An attempt's id.
pub type AttemptId = Uuid;

/// Slack on top of a task's own timeout before the server gives up on an attempt (the agent
/// kills the task at its timeout and still has to report).
pub const GRACE_SECS: i64 = 120;

/// Where a run stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Run {
    /// Index of the current stage in the plan.
    pub stage: usize,
    /// Index of the current task in the stage (== its task count once all are done).
    pub task: usize,
    /// Attempts made of the current task.
    pub tries: u32,
    /// The phase.
    pub phase: Phase,
    /// The kernel boot id the current stage runs in, once crossed into it.
    pub boot_id: Option<String>,
    /// When the current stage's tasks began (its boundary was crossed), Unix ms.
    pub stage_started_ms: Option<i64>,
    /// The agent of this boot is to power the machine off.
    pub power_off_boot: Option<String>,
    /// The machine's current boot is not (provably) in the stage's environment: it rebooted
    /// into something else while the run was stopped. A retry sends it back first.
    #[serde(default)]
    pub off_env: bool,
}

/// The phase of a run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// The machine has to boot into `env` before the stage's tasks run.
    Booting {
        /// The environment it must boot.
        env: String,
        /// The boot it was in when asked to reboot (a new boot must differ).
        from_boot: Option<String>,
        /// `env`'s script was served since.
        script_served: bool,
        /// Fail unless crossed by then (Unix ms); none while powered off on purpose.
        deadline_ms: Option<i64>,
        /// Back into a stage already under way (the machine rebooted outside its
        /// environment): its finished tasks stay finished.
        #[serde(default)]
        resume: bool,
    },
    /// The current task is to be handed out on the agent's next request.
    Ready,
    /// An attempt of the current task was handed out.
    Running {
        /// Its id.
        attempt: AttemptId,
        /// The agent acknowledged its start.
        started: bool,
        /// Give up on it after this (Unix ms).
        deadline_ms: i64,
    },
    /// The stage ended with `wait`: an operator continues it.
    Waiting,
    /// Stopped; an operator may retry the task, restart or cancel.
    Failed {
        /// Why, for the machine's record.
        reason: String,
    },
    /// Every stage done.
    Done,
    /// An operator cancelled it.
    Cancelled,
}

impl Phase {
    /// The phase's name, as stored and shown.
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Booting { .. } => "booting",
            Phase::Ready => "ready",
            Phase::Running { .. } => "running",
            Phase::Waiting => "waiting",
            Phase::Failed { .. } => "failed",
            Phase::Done => "done",
            Phase::Cancelled => "cancelled",
        }
    }

    /// Done, failed or cancelled: nothing happens without an operator.
    pub fn is_settled(&self) -> bool {
        matches!(self, Phase::Failed { .. } | Phase::Done | Phase::Cancelled)
    }
}

/// Something that happened to a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Event<'a> {
    /// The agent asks what to do next.
    Ask {
        /// Its kernel boot id.
        boot_id: &'a str,
    },
    /// The machine enrolled (a new boot, or an agent without saved state).
    Enrolled {
        /// Its kernel boot id.
        boot_id: &'a str,
        /// The boot environment whose script minted the bootstrap token it used: proof that
        /// this boot came from that script. None for other tokens.
        via_env: Option<&'a str>,
    },
    /// The boot service served the machine the script of `env`.
    ScriptServed {
        /// The boot environment.
        env: &'a str,
    },
    /// The agent is about to start an attempt.
    Started {
        /// The attempt.
        attempt: AttemptId,
    },
    /// The agent reports an attempt's end.
    Finished {
        /// The attempt.
        attempt: AttemptId,
        /// Whether it succeeded (exit code 0).
        ok: bool,
        /// A short description of the failure, for the machine's record.
        reason: &'a str,
    },
    /// The job could not be rendered (a missing or ill-typed param): fails at once, no retry
    /// can help.
    Unrenderable {
        /// The attempt.
        attempt: AttemptId,
        /// What was wrong, naming the param.
        reason: &'a str,
    },
    /// The machine's boot environment could not be rendered for it (a missing or ill-typed
    /// param, a missing artifact): it was given a script that retries, and no reboot can help
    /// until an operator fixes the cause, so a run booting into `env` fails at once.
    BootUnrenderable {
        /// The environment.
        env: &'a str,
        /// What was wrong, naming the param, file or artifact.
        reason: &'a str,
    },
    /// Time passes: deadlines are checked.
    Tick,
    /// Operator: run the failed task (or boot) again.
    Retry,
    /// Operator: start over at the first stage.
    Restart,
    /// Operator: stop the run.
    Cancel,
    /// Operator: continue a stage that ended with `wait`.
    Continue,
}

/// What the agent is told in answer to [`Event::Ask`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Run this attempt of the task at (stage, task).
    Job {
        /// The attempt.
        attempt: AttemptId,
        /// Stage index.
        stage: usize,
        /// Task index within the stage.
        task: usize,
    },
    /// Reboot (the boot environment is already switched).
    Reboot,
    /// Power the machine off.
    PowerOff,
    /// Nothing to do now; ask again later.
    Wait,
    /// The workflow is done.
    Done,
}

/// How an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptEnd {
    /// Exit code 0.
    Succeeded,
    /// Failed, with the reason given.
    Failed(String),
    /// No result before its deadline.
    TimedOut,
    /// Started and then lost (agent restart, reboot).
    Interrupted,
    /// The run was cancelled or restarted under it.
    Cancelled,
}

/// A change the store persists with the run, in the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// The machine's boot environment becomes `0` for its next PXE boots.
    SetBootEnv(String),
    /// A new attempt of (stage, task).
    AttemptCreated {
        /// Its id.
        attempt: AttemptId,
        /// Stage index.
        stage: usize,
        /// Task index.
        task: usize,
    },
    /// The agent started it.
    AttemptStarted(AttemptId),
    /// It ended.
    AttemptEnded(AttemptId, AttemptEnd),
    /// The run crossed into stage `0`.
    StageEntered(usize),
    /// The run's phase changed to the one now stored (for events).
    PhaseChanged,
}

/// Why an event was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The attempt is not the run's current one (already finished, superseded, or unknown);
    /// the store decides whether it is a harmless duplicate.
    #[error("attempt {0} is not the run's current attempt")]
    NotCurrent(AttemptId),
    /// An operator action that does not apply in the current phase.
    #[error("cannot {action} a run that is {phase}")]
    NotApplicable {
        /// The action.
        action: &'static str,
        /// The current phase's name.
        phase: &'static str,
    },
}

/// What one step produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// The answer to an [`Event::Ask`].
    pub answer: Option<Answer>,
    /// What to persist besides the run.
    pub effects: Vec<Effect>,
}

/// The clock and the id source a step uses (injected so tests are deterministic).
pub struct Ctx<'a> {
    /// Now, Unix ms.
    pub now_ms: i64,
    /// A fresh attempt id.
    pub new_attempt: &'a mut dyn FnMut() -> AttemptId,
}

impl Run {
    /// A new run of `plan` for a machine currently booted as `current` (boot id and the
    /// environment that boot came from), if known. When the machine already runs the first
    /// stage's environment with an agent, the stage starts in that boot; otherwise the machine
    /// is switched and rebooted into it.
    pub fn start(plan: &Plan, current: Option<(&str, &str)>, ctx: &mut Ctx) -> (Run, Outcome) {
        let mut run = Run {
            stage: 0,
            task: 0,
            tries: 0,
            phase: Phase::Done,
            boot_id: current.map(|(b, _)| b.to_string()),
            stage_started_ms: None,
            power_off_boot: None,
            off_env: false,
        };
        let mut out = Outcome::default();
        let Some(first) = plan.stages.first() else {
            out.effects.push(Effect::PhaseChanged);
            return (run, out);
        };
        match current {
            Some((boot, env)) if first.agent && env == first.boot_env => {
                run.enter_stage(plan, 0, boot.to_string(), ctx, &mut out);
            }
            _ => run.boot_into(plan, 0, ctx, &mut out),
        }
        (run, out)
    }

    fn set_phase(&mut self, phase: Phase, out: &mut Outcome) {
        self.phase = phase;
        if !out.effects.contains(&Effect::PhaseChanged) {
            out.effects.push(Effect::PhaseChanged);
        }
    }

    /// Switch the machine to stage `s`'s environment and wait for it to boot there.
    fn boot_into(&mut self, plan: &Plan, s: usize, ctx: &mut Ctx, out: &mut Outcome) {
        let st = &plan.stages[s];
        self.stage = s;
        self.task = 0;
        self.tries = 0;
        self.stage_started_ms = None;
        self.boot_wait(st.boot_env.clone(), st.boot_timeout_secs, false, ctx, out);
    }

    /// Wait for the machine to boot `env` (already assigned, or assigned now).
    fn boot_wait(
        &mut self,
        env: String,
        timeout_secs: u32,
        resume: bool,
        ctx: &mut Ctx,
        out: &mut Outcome,
    ) {
        out.effects.push(Effect::SetBootEnv(env.clone()));
        let deadline_ms = if self.power_off_boot.is_some() {
            None // powered off on purpose: it comes back when someone powers it on
        } else {
            Some(ctx.now_ms + i64::from(timeout_secs) * 1000)
        };
        self.set_phase(
            Phase::Booting {
                env,
                from_boot: self.boot_id.clone(),
                script_served: false,
                deadline_ms,
                resume,
            },
            out,
        );
    }

    /// The machine is in stage `s`'s environment, in boot `boot`: its tasks may run.
    fn enter_stage(
        &mut self,
        plan: &Plan,
        s: usize,
        boot: String,
        ctx: &mut Ctx,
        out: &mut Outcome,
    ) {
        self.stage = s;
        self.task = 0;
        self.tries = 0;
        self.stage_started_ms = Some(ctx.now_ms);
        out.effects.push(Effect::StageEntered(s));
        self.resume_in(plan, boot, ctx, out);
    }

    /// Go on with the current stage's remaining tasks in boot `boot`.
    fn resume_in(&mut self, plan: &Plan, boot: String, ctx: &mut Ctx, out: &mut Outcome) {
        if self.power_off_boot.as_deref() != Some(boot.as_str()) {
            self.power_off_boot = None;
        }
        self.boot_id = Some(boot);
        self.off_env = false;
        self.set_phase(Phase::Ready, out);
        let st = &plan.stages[self.stage];
        if self.task >= st.tasks.len() {
            self.finish_stage(plan, st.then, ctx, out);
        }
    }

    /// The current stage's tasks are done: follow `then`.
    fn finish_stage(&mut self, plan: &Plan, then: StageEnd, ctx: &mut Ctx, out: &mut Outcome) {
        let s = self.stage;
        let last = s + 1 == plan.stages.len();
        match then {
            StageEnd::Wait => return self.set_phase(Phase::Waiting, out),
            StageEnd::PowerOff => self.power_off_boot = self.boot_id.clone(),
            StageEnd::Continue | StageEnd::Reboot => {}
        }
        if last {
            return self.set_phase(Phase::Done, out);
        }
        let (cur, next) = (&plan.stages[s], &plan.stages[s + 1]);
        let same_boot = then == StageEnd::Continue && next.agent && cur.boot_env == next.boot_env;
        match (&self.boot_id, same_boot) {
            (Some(boot), true) => {
                let boot = boot.clone();
                self.enter_stage(plan, s + 1, boot, ctx, out)
            }
            _ => self.boot_into(plan, s + 1, ctx, out),
        }
    }

    /// The current task, if the run is at one.
    fn current_task<'p>(&self, plan: &'p Plan) -> Option<&'p Task> {
        plan.stages.get(self.stage)?.tasks.get(self.task)
    }

    /// A new attempt of the current task, handed out now (or, past the stage's last task, what
    /// follows the stage).
    fn deliver(&mut self, plan: &Plan, ctx: &mut Ctx, out: &mut Outcome) {
        let Some(task) = self.current_task(plan) else {
            let then = plan.stages[self.stage].then;
            return self.finish_stage(plan, then, ctx, out);
        };
        let attempt = (ctx.new_attempt)();
        self.tries += 1;
        out.effects.push(Effect::AttemptCreated {
            attempt,
            stage: self.stage,
            task: self.task,
        });
        let deadline_ms = ctx.now_ms + (i64::from(task.timeout_secs) + GRACE_SECS) * 1000;
        self.set_phase(
            Phase::Running {
                attempt,
                started: false,
                deadline_ms,
            },
            out,
        );
        out.answer = Some(Answer::Job {
            attempt,
            stage: self.stage,
            task: self.task,
        });
    }

    /// The current attempt ended without success (`end`); retry if allowed, else fail.
    /// `lost`: it may have run part-way (interrupted, timed out), so only idempotent tasks
    /// are tried again.
    fn attempt_failed(
        &mut self,
        plan: &Plan,
        attempt: AttemptId,
        end: AttemptEnd,
        lost: bool,
        out: &mut Outcome,
    ) {
        out.effects.push(Effect::AttemptEnded(attempt, end.clone()));
        let Some(task) = self.current_task(plan) else {
            return self.set_phase(Phase::Ready, out);
        };
        let may_retry = self.tries <= task.retries && (!lost || task.idempotent);
        if may_retry {
            return self.set_phase(Phase::Ready, out);
        }
        let what = match &end {
            AttemptEnd::Failed(r) => format!("failed: {r}"),
            AttemptEnd::TimedOut if task.idempotent => "timed out (no result in time)".into(),
            AttemptEnd::TimedOut => {
                "timed out (no result in time) and is not idempotent; an operator decides".into()
            }
            AttemptEnd::Interrupted if task.idempotent => "interrupted".into(),
            AttemptEnd::Interrupted => {
                "interrupted (the agent restarted or the machine rebooted while it ran) and is not idempotent; an operator decides".into()
            }
            AttemptEnd::Succeeded | AttemptEnd::Cancelled => "stopped".into(),
        };
        let reason = format!(
            "stage `{}`, task `{}` {what} (attempt {} of {})",
            plan.stages[self.stage].name,
            task.name,
            self.tries,
            task.retries + 1
        );
        self.set_phase(Phase::Failed { reason }, out);
    }

    /// Evidence that the machine is in boot `boot` now, booted through a script of `via_env`
    /// if known: cross a pending boundary, or notice a reboot under a running stage.
    fn saw_boot(
        &mut self,
        plan: &Plan,
        boot: &str,
        via_env: Option<&str>,
        ctx: &mut Ctx,
        out: &mut Outcome,
    ) {
        match &self.phase {
            Phase::Booting {
                env,
                from_boot,
                script_served: true,
                resume,
                ..
            } if from_boot.as_deref() != Some(boot) && via_env == Some(env.as_str()) => {
                if *resume {
                    self.resume_in(plan, boot.to_string(), ctx, out);
                } else {
                    self.enter_stage(plan, self.stage, boot.to_string(), ctx, out);
                }
            }
            Phase::Ready | Phase::Running { .. } | Phase::Waiting | Phase::Failed { .. }
                if self.boot_id.as_deref() != Some(boot) && self.stage_started_ms.is_some() =>
            {
                // The machine rebooted under a stage (power loss, someone pressed reset).
                if let Phase::Running {
                    attempt,
                    started: true,
                    ..
                } = self.phase
                {
                    self.attempt_failed(plan, attempt, AttemptEnd::Interrupted, true, out);
                } else if let Phase::Running { attempt, .. } = self.phase {
                    // Never started: forget it; the next request gets a fresh attempt.
                    out.effects
                        .push(Effect::AttemptEnded(attempt, AttemptEnd::Cancelled));
                    self.tries = self.tries.saturating_sub(1);
                    self.set_phase(Phase::Ready, out);
                }
                let st = &plan.stages[self.stage];
                self.boot_id = Some(boot.to_string());
                self.off_env = via_env != Some(st.boot_env.as_str());
                if self.off_env && !self.phase.is_settled() {
                    // Not (provably) back in the stage's environment — a local disk, say:
                    // send it back, keeping the stage's finished tasks.
                    self.boot_wait(st.boot_env.clone(), st.boot_timeout_secs, true, ctx, out);
                }
            }
            _ => {}
        }
    }
}

/// Apply `event` to `run` (following `plan`). On error nothing changed.
pub fn step(run: &mut Run, plan: &Plan, event: Event, ctx: &mut Ctx) -> Result<Outcome, StepError> {
    let mut out = Outcome::default();
    if run.stage >= plan.stages.len() {
        // Only a damaged record gets here (plans are never empty, see `Run::start`).
        if !run.phase.is_settled() {
            let reason = "the stored run does not match its plan".to_string();
            run.set_phase(Phase::Failed { reason }, &mut out);
        }
        if matches!(event, Event::Ask { .. }) {
            out.answer = Some(Answer::Wait);
        }
        return Ok(out);
    }
    match event {
        Event::Ask { boot_id } => {
            run.saw_boot(plan, boot_id, None, ctx, &mut out);
            let answer = match run.phase.clone() {
                _ if run.power_off_boot.as_deref() == Some(boot_id) => Answer::PowerOff,
                Phase::Booting { .. } => Answer::Reboot,
                Phase::Ready => {
                    run.deliver(plan, ctx, &mut out);
                    return Ok(out);
                }
                Phase::Running {
                    attempt, started, ..
                } => {
                    if !started {
                        // Delivered, never started (the answer was lost, or the agent
                        // restarted before acknowledging): the same attempt again.
                        Answer::Job {
                            attempt,
                            stage: run.stage,
                            task: run.task,
                        }
                    } else {
                        // The agent asks for work while its attempt is started and unfinished:
                        // it lost that attempt.
                        run.attempt_failed(plan, attempt, AttemptEnd::Interrupted, true, &mut out);
                        if run.phase == Phase::Ready {
                            run.deliver(plan, ctx, &mut out);
                            return Ok(out);
                        }
                        Answer::Wait
                    }
                }
                Phase::Waiting | Phase::Failed { .. } | Phase::Cancelled => Answer::Wait,
                Phase::Done => Answer::Done,
            };
            out.answer = Some(answer);
        }
        Event::Enrolled { boot_id, via_env } => run.saw_boot(plan, boot_id, via_env, ctx, &mut out),
        Event::ScriptServed { env } => {
            if let Phase::Booting {
                env: want,
                script_served,
                resume,
                ..
            } = &mut run.phase
            {
                if want == env && !*script_served {
                    *script_served = true;
                    let resume = *resume;
                    out.effects.push(Effect::PhaseChanged);
                    if !plan.stages[run.stage].agent {
                        // Nothing will enroll there: serving the script is the boundary. The
                        // boot it runs is unknown; its stage can only have no tasks.
                        if resume {
                            run.resume_in(plan, String::new(), ctx, &mut out);
                        } else {
                            run.enter_stage(plan, run.stage, String::new(), ctx, &mut out);
                        }
                    }
                }
            }
        }
        Event::Started { attempt } => match &mut run.phase {
            Phase::Running {
                attempt: a,
                started,
                ..
            } if *a == attempt => {
                if !*started {
                    *started = true;
                    out.effects.push(Effect::AttemptStarted(attempt));
                }
            }
            _ => return Err(StepError::NotCurrent(attempt)),
        },
        Event::Finished {
            attempt,
            ok,
            reason,
        } => {
            let Phase::Running { attempt: a, .. } = run.phase else {
                return Err(StepError::NotCurrent(attempt));
            };
            if a != attempt {
                return Err(StepError::NotCurrent(attempt));
            }
            if ok {
                out.effects
                    .push(Effect::AttemptEnded(attempt, AttemptEnd::Succeeded));
                run.task += 1;
                run.tries = 0;
                if run.task == plan.stages[run.stage].tasks.len() {
                    let then = plan.stages[run.stage].then;
                    run.finish_stage(plan, then, ctx, &mut out);
                } else {
                    run.set_phase(Phase::Ready, &mut out);
                }
            } else {
                let end = AttemptEnd::Failed(reason.to_string());
                run.attempt_failed(plan, attempt, end, false, &mut out);
            }
        }
        Event::Unrenderable { attempt, reason } => {
            if !matches!(run.phase, Phase::Running { attempt: a, .. } if a == attempt) {
                return Err(StepError::NotCurrent(attempt));
            }
            let task = run.current_task(plan).map_or("?", |t| t.name.as_str());
            let reason = format!(
                "stage `{}`, task `{task}` cannot be rendered: {reason}",
                plan.stages[run.stage].name
            );
            out.effects.push(Effect::AttemptEnded(
                attempt,
                AttemptEnd::Failed(reason.clone()),
            ));
            run.set_phase(Phase::Failed { reason }, &mut out);
        }
        Event::BootUnrenderable { env, reason } => {
            if matches!(&run.phase, Phase::Booting { env: want, .. } if want == env) {
                let reason = format!(
                    "stage `{}`: boot environment `{env}` cannot be rendered: {reason}",
                    plan.stages[run.stage].name
                );
                run.set_phase(Phase::Failed { reason }, &mut out);
            }
        }
        Event::Tick => tick(run, plan, ctx, &mut out),
        Event::Retry => match run.phase {
            Phase::Failed { .. } => {
                run.tries = 0;
                if run.stage_started_ms.is_some() {
                    run.stage_started_ms = Some(ctx.now_ms);
                    if run.off_env {
                        let st = &plan.stages[run.stage];
                        run.boot_wait(
                            st.boot_env.clone(),
                            st.boot_timeout_secs,
                            true,
                            ctx,
                            &mut out,
                        );
                    } else {
                        let boot = run.boot_id.clone().unwrap_or_default();
                        run.resume_in(plan, boot, ctx, &mut out);
                    }
                } else {
                    run.boot_into(plan, run.stage, ctx, &mut out);
                }
            }
            _ => return Err(not_applicable("retry", run)),
        },
        Event::Restart => {
            if let Phase::Running { attempt, .. } = run.phase {
                out.effects
                    .push(Effect::AttemptEnded(attempt, AttemptEnd::Cancelled));
            }
            run.power_off_boot = None;
            if plan.stages.is_empty() {
                run.set_phase(Phase::Done, &mut out);
            } else {
                run.boot_into(plan, 0, ctx, &mut out);
            }
        }
        Event::Cancel => {
            if matches!(run.phase, Phase::Done | Phase::Cancelled) {
                return Err(not_applicable("cancel", run));
            }
            if let Phase::Running { attempt, .. } = run.phase {
                out.effects
                    .push(Effect::AttemptEnded(attempt, AttemptEnd::Cancelled));
            }
            run.set_phase(Phase::Cancelled, &mut out);
        }
        Event::Continue => match run.phase {
            Phase::Waiting => run.finish_stage(plan, StageEnd::Continue, ctx, &mut out),
            _ => return Err(not_applicable("continue", run)),
        },
    }
    Ok(out)
}

/// [`step`] at `now_ms` with random attempt ids: what the server does.
pub fn step_at(
    run: &mut Run,
    plan: &Plan,
    event: Event,
    now_ms: i64,
) -> Result<Outcome, StepError> {
    let mut ids = Uuid::new_v4;
    let mut ctx = Ctx {
        now_ms,
        new_attempt: &mut ids,
    };
    step(run, plan, event, &mut ctx)
}

/// [`Run::start`] at `now_ms` with random attempt ids.
pub fn start_at(plan: &Plan, current: Option<(&str, &str)>, now_ms: i64) -> (Run, Outcome) {
    let mut ids = Uuid::new_v4;
    let mut ctx = Ctx {
        now_ms,
        new_attempt: &mut ids,
    };
    Run::start(plan, current, &mut ctx)
}

fn not_applicable(action: &'static str, run: &Run) -> StepError {
    StepError::NotApplicable {
        action,
        phase: run.phase.name(),
    }
}

/// Enforce deadlines at `ctx.now_ms`.
fn tick(run: &mut Run, plan: &Plan, ctx: &mut Ctx, out: &mut Outcome) {
    let now = ctx.now_ms;
    match run.phase.clone() {
        Phase::Booting {
            env,
            deadline_ms: Some(d),
            ..
        } if now > d => {
            let st = &plan.stages[run.stage];
            let reason = format!(
                "stage `{}`: the machine did not boot into `{env}` within {} s",
                st.name, st.boot_timeout_secs
            );
            run.set_phase(Phase::Failed { reason }, out);
        }
        Phase::Running {
            attempt,
            deadline_ms,
            ..
        } if now > deadline_ms => {
            run.attempt_failed(plan, attempt, AttemptEnd::TimedOut, true, out);
        }
        _ => {}
    }
    // The stage's own deadline covers all its tasks and retries.
    let st = &plan.stages[run.stage.min(plan.stages.len().saturating_sub(1))];
    if let (Some(started), Phase::Ready | Phase::Running { .. }) =
        (run.stage_started_ms, &run.phase)
    {
        if now > started + i64::from(st.deadline_secs) * 1000 {
            if let Phase::Running { attempt, .. } = run.phase {
                out.effects
                    .push(Effect::AttemptEnded(attempt, AttemptEnd::TimedOut));
            }
            let reason = format!(
                "stage `{}` exceeded its deadline of {} s",
                st.name, st.deadline_secs
            );
            run.set_phase(Phase::Failed { reason }, out);
        }
    }
}

#[cfg(test)]
#[path = "run_tests.rs"]
mod tests;
