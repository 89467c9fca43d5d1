//! The run state machine: named scenarios, then random interleavings of agent reports,
//! reboots, agent restarts, lost answers, duplicate deliveries, deadlines and server restarts.

use std::collections::HashMap;

use anneal_shared::content::{StageEnd, Task};
use proptest::prelude::*;

use super::*;
use crate::workflow::plan::{Plan, PlanStage};

fn task(name: &str, idempotent: bool, retries: u32) -> Task {
    Task {
        name: name.into(),
        script: Some(format!("echo {name}")),
        timeout_secs: 60,
        retries,
        idempotent,
        ..Task::default()
    }
}

fn stage(name: &str, env: &str, tasks: Vec<Task>, then: StageEnd) -> PlanStage {
    PlanStage {
        name: name.into(),
        boot_env: env.into(),
        agent: env != "local",
        destructive_env: false,
        tasks,
        then,
        boot_timeout_secs: 600,
        deadline_secs: 3600,
    }
}

/// The issue's three-boot workflow: discovery tasks → reboot → discovery tasks → reboot →
/// local boot.
fn three_boot() -> Plan {
    Plan {
        workflow: "three-boot".into(),
        content_version: 1,
        stages: vec![
            stage(
                "first",
                "discovery",
                vec![task("a", true, 1), task("b", false, 0)],
                StageEnd::Reboot,
            ),
            stage(
                "second",
                "discovery",
                vec![task("c", true, 0), task("d", false, 2)],
                StageEnd::Continue,
            ),
            stage("done", "local", vec![], StageEnd::Continue),
        ],
    }
}

/// A stage that waits for an operator and one that powers off, then continues in place.
fn waits_and_powers_off() -> Plan {
    Plan {
        workflow: "wait-poweroff".into(),
        content_version: 1,
        stages: vec![
            stage(
                "hold",
                "discovery",
                vec![task("a", true, 0)],
                StageEnd::Wait,
            ),
            stage(
                "same-boot",
                "discovery",
                vec![task("b", false, 1)],
                StageEnd::PowerOff,
            ),
            stage(
                "after",
                "discovery",
                vec![task("c", true, 2)],
                StageEnd::Continue,
            ),
        ],
    }
}

/// Consecutive stages in one boot, then another environment.
fn continue_in_place() -> Plan {
    Plan {
        workflow: "in-place".into(),
        content_version: 1,
        stages: vec![
            stage(
                "one",
                "discovery",
                vec![task("a", false, 0)],
                StageEnd::Continue,
            ),
            stage(
                "two",
                "discovery",
                vec![task("b", true, 3)],
                StageEnd::Continue,
            ),
            stage(
                "install",
                "installer",
                vec![task("c", false, 1)],
                StageEnd::Continue,
            ),
        ],
    }
}

struct Ids(u128);

impl Ids {
    fn ctx(&mut self, now_ms: i64) -> (i64, impl FnMut() -> AttemptId + '_) {
        (now_ms, move || {
            self.0 += 1;
            Uuid::from_u128(self.0)
        })
    }
}

fn start(plan: &Plan, current: Option<(&str, &str)>, ids: &mut Ids) -> (Run, Outcome) {
    let (now, mut gen) = ids.ctx(0);
    let mut ctx = Ctx {
        now_ms: now,
        new_attempt: &mut gen,
    };
    Run::start(plan, current, &mut ctx)
}

fn go(run: &mut Run, plan: &Plan, ids: &mut Ids, now: i64, e: Event) -> Result<Outcome, StepError> {
    let (now, mut gen) = ids.ctx(now);
    let mut ctx = Ctx {
        now_ms: now,
        new_attempt: &mut gen,
    };
    step(run, plan, e, &mut ctx)
}

/// One run driven by hand, for the named scenarios.
struct Drive {
    plan: Plan,
    run: Run,
    ids: Ids,
}

impl Drive {
    /// `plan`, assigned while the machine runs discovery in `boot1`.
    fn in_discovery(plan: Plan) -> Drive {
        let mut ids = Ids(0);
        let (run, _) = start(&plan, Some(("boot1", "discovery")), &mut ids);
        Drive { plan, run, ids }
    }

    fn try_ev(&mut self, now: i64, e: Event) -> Result<Outcome, StepError> {
        go(&mut self.run, &self.plan, &mut self.ids, now, e)
    }

    fn ev(&mut self, now: i64, e: Event) -> Outcome {
        self.try_ev(now, e).unwrap()
    }

    fn ask(&mut self, now: i64, boot_id: &str) -> Option<Answer> {
        self.ev(now, Event::Ask { boot_id }).answer
    }

    /// Ask for a job and expect one.
    fn job(&mut self, now: i64, boot_id: &str) -> AttemptId {
        match self.ask(now, boot_id) {
            Some(Answer::Job { attempt, .. }) => attempt,
            other => panic!("expected a job, got {other:?} in {:?}", self.run.phase),
        }
    }

    fn finished(&mut self, now: i64, attempt: AttemptId, ok: bool) -> Result<Outcome, StepError> {
        let reason = if ok { "" } else { "exit code 3" };
        self.try_ev(
            now,
            Event::Finished {
                attempt,
                ok,
                reason,
            },
        )
    }

    /// Ask, start and finish one task.
    fn task(&mut self, now: i64, boot_id: &str, ok: bool) -> AttemptId {
        let a = self.job(now, boot_id);
        self.ev(now, Event::Started { attempt: a });
        self.finished(now, a, ok).unwrap();
        a
    }

    fn enrolled(&mut self, now: i64, boot_id: &str, via_env: Option<&str>) -> Outcome {
        self.ev(now, Event::Enrolled { boot_id, via_env })
    }

    fn served(&mut self, now: i64, env: &str) -> Outcome {
        self.ev(now, Event::ScriptServed { env })
    }

    fn failure(&self) -> &str {
        match &self.run.phase {
            Phase::Failed { reason } => reason,
            other => panic!("expected a failure, got {other:?}"),
        }
    }
}

#[test]
fn a_machine_in_discovery_starts_at_once_and_reboots_between_stages() {
    let plan = three_boot();
    let mut ids = Ids(0);
    let (run, out) = start(&plan, Some(("boot1", "discovery")), &mut ids);
    assert_eq!(run.phase, Phase::Ready, "{out:?}");
    assert!(out.effects.contains(&Effect::StageEntered(0)));
    let mut d = Drive { plan, run, ids };
    d.task(1, "boot1", true);
    d.task(2, "boot1", true);
    // `reboot`: the environment is switched before the agent hears "reboot".
    assert!(matches!(d.run.phase, Phase::Booting { .. }));
    assert_eq!(d.ask(4, "boot1"), Some(Answer::Reboot));
    // The same boot enrolling again (agent restarted) is not a reboot.
    d.enrolled(5, "boot1", Some("discovery"));
    assert!(matches!(d.run.phase, Phase::Booting { .. }));
    // A new boot without the script served since does not cross either.
    d.enrolled(6, "boot2", Some("discovery"));
    assert!(matches!(d.run.phase, Phase::Booting { .. }));
    d.served(7, "discovery");
    d.enrolled(8, "boot3", Some("discovery"));
    assert_eq!((d.run.stage, &d.run.phase), (1, &Phase::Ready));
    d.task(9, "boot3", true);
    d.task(9, "boot3", true);
    // Next: local boot, an environment without an agent: crossed when its script is served.
    assert_eq!(d.ask(10, "boot3"), Some(Answer::Reboot));
    let out = d.served(11, "local");
    assert_eq!(d.run.phase, Phase::Done);
    assert!(out.effects.contains(&Effect::StageEntered(2)));
}

#[test]
fn an_unknown_boot_switches_first_and_a_missing_machine_fails_at_the_boot_timeout() {
    let plan = three_boot();
    let mut ids = Ids(0);
    let (run, out) = start(&plan, None, &mut ids);
    assert!(matches!(run.phase, Phase::Booting { .. }));
    assert_eq!(out.effects[0], Effect::SetBootEnv("discovery".into()));
    let mut d = Drive { plan, run, ids };
    d.ev(600_000, Event::Tick);
    assert!(matches!(d.run.phase, Phase::Booting { .. }), "not yet");
    d.ev(600_001, Event::Tick);
    assert!(d
        .failure()
        .contains("did not boot into `discovery` within 600 s"));
    // Retry boots again with a fresh deadline.
    let out = d.ev(700_000, Event::Retry);
    assert!(out
        .effects
        .contains(&Effect::SetBootEnv("discovery".into())));
    let fresh = Some(1_300_000);
    assert!(matches!(d.run.phase, Phase::Booting { deadline_ms, .. } if deadline_ms == fresh));
}

#[test]
fn a_lost_answer_redelivers_the_same_attempt_and_duplicates_are_refused() {
    let mut d = Drive::in_discovery(three_boot());
    let a = d.job(1, "boot1");
    assert_eq!(a, d.job(2, "boot1"), "not started yet: the same attempt");
    d.ev(3, Event::Started { attempt: a });
    let dup = d.ev(3, Event::Started { attempt: a });
    assert!(dup.effects.is_empty(), "a repeated start changes nothing");
    d.finished(4, a, true).unwrap();
    assert_eq!(d.finished(5, a, true), Err(StepError::NotCurrent(a)));
    assert_eq!(d.run.task, 1);
}

#[test]
fn an_interrupted_task_is_retried_only_when_idempotent() {
    let mut d = Drive::in_discovery(three_boot());
    // Task a (idempotent, 1 retry): the agent restarts mid-run and asks again → a new attempt.
    let a1 = d.job(1, "boot1");
    d.ev(2, Event::Started { attempt: a1 });
    let out = d.ev(3, Event::Ask { boot_id: "boot1" });
    let Some(Answer::Job { attempt: a2, .. }) = out.answer else {
        panic!("{out:?}")
    };
    assert_ne!(a1, a2);
    assert!(out
        .effects
        .contains(&Effect::AttemptEnded(a1, AttemptEnd::Interrupted)));
    d.ev(4, Event::Started { attempt: a2 });
    d.finished(5, a2, true).unwrap();
    // Task b (not idempotent): power loss while it runs → the run stops for an operator.
    let b1 = d.job(6, "boot1");
    d.ev(7, Event::Started { attempt: b1 });
    d.enrolled(8, "boot2", Some("discovery"));
    assert!(
        d.failure().contains("task `b` interrupted"),
        "{}",
        d.failure()
    );
    assert_eq!(d.ask(9, "boot2"), Some(Answer::Wait));
    // The operator decides to run it again.
    d.ev(10, Event::Retry);
    assert_ne!(b1, d.job(11, "boot2"));
}

#[test]
fn a_reboot_into_something_else_mid_stage_is_sent_back_and_resumes_at_its_task() {
    let mut d = Drive::in_discovery(three_boot());
    d.task(1, "boot1", true);
    // The machine comes back from its local disk, where an installed agent enrolls.
    d.enrolled(4, "disk-boot", None);
    let phase = &d.run.phase;
    assert!(
        matches!(phase, Phase::Booting { resume: true, .. }),
        "{phase:?}"
    );
    assert_eq!(
        d.ask(5, "disk-boot"),
        Some(Answer::Reboot),
        "nothing runs outside its environment"
    );
    d.served(6, "discovery");
    let out = d.enrolled(7, "boot3", Some("discovery"));
    assert!(!out
        .effects
        .iter()
        .any(|e| matches!(e, Effect::StageEntered(_))));
    assert_eq!(
        (d.run.stage, d.run.task, &d.run.phase),
        (0, 1, &Phase::Ready),
        "task a stays done"
    );
}

#[test]
fn failures_use_the_retries_then_stop_with_the_reason() {
    let mut d = Drive::in_discovery(three_boot());
    d.task(1, "boot1", false);
    assert_eq!(d.run.phase, Phase::Ready, "one retry left");
    d.task(2, "boot1", false);
    assert_eq!(
        d.failure(),
        "stage `first`, task `a` failed: exit code 3 (attempt 2 of 2)"
    );
}

#[test]
fn deadlines_time_out_silent_attempts_and_stages() {
    let mut d = Drive::in_discovery(three_boot());
    let a = d.job(1000, "boot1");
    d.ev(1000, Event::Started { attempt: a });
    // Task timeout 60 s + grace: an idempotent task with a retry gets another attempt.
    d.ev(1000 + (60 + GRACE_SECS) * 1000 + 1, Event::Tick);
    assert_eq!(d.run.phase, Phase::Ready);
    // The stage deadline (3600 s) stops everything, whatever is left.
    d.ev(3_600_001, Event::Tick);
    assert!(
        d.failure().contains("exceeded its deadline"),
        "{}",
        d.failure()
    );
}

#[test]
fn unrenderable_jobs_fail_at_once_naming_the_problem() {
    let mut d = Drive::in_discovery(three_boot());
    let a = d.job(1, "boot1");
    let reason = "param `disk.wipe` is required and not set";
    d.ev(2, Event::Unrenderable { attempt: a, reason });
    assert!(
        d.failure().contains("param `disk.wipe` is required"),
        "{}",
        d.failure()
    );
}

#[test]
fn an_environment_that_cannot_be_rendered_fails_the_run_until_an_operator_retries() {
    let plan = Plan {
        workflow: "install".into(),
        content_version: 1,
        stages: vec![
            PlanStage {
                agent: false,
                ..stage("install", "installer", vec![], StageEnd::Continue)
            },
            stage("installed", "local", vec![], StageEnd::Continue),
        ],
    };
    let mut d = Drive::in_discovery(plan);
    assert!(matches!(&d.run.phase, Phase::Booting { env, .. } if env == "installer"));
    // Another environment's failure is not this run's concern.
    let out = d.ev(
        1,
        Event::BootUnrenderable {
            env: "local",
            reason: "x",
        },
    );
    assert!(out.effects.is_empty(), "{out:?}");
    let reason = r#"param "root_hash" has no value and no default"#;
    d.ev(
        2,
        Event::BootUnrenderable {
            env: "installer",
            reason,
        },
    );
    assert_eq!(
        d.failure(),
        r#"stage `install`: boot environment `installer` cannot be rendered: param "root_hash" has no value and no default"#
    );
    // The machine keeps asking (its retry script): nothing changes until an operator acts.
    let out = d.ev(
        3,
        Event::BootUnrenderable {
            env: "installer",
            reason: "other",
        },
    );
    assert!(out.effects.is_empty(), "{out:?}");
    assert!(d.failure().contains("root_hash"));
    let out = d.ev(4, Event::Retry);
    assert!(out
        .effects
        .contains(&Effect::SetBootEnv("installer".into())));
    // Fixed: the script is served, the stage (no agent, no tasks) is crossed, local boot next.
    d.served(5, "installer");
    assert!(matches!(&d.run.phase, Phase::Booting { env, .. } if env == "local"));
    d.served(6, "local");
    assert_eq!(d.run.phase, Phase::Done);
}

#[test]
fn operator_actions_apply_only_where_they_make_sense() {
    let mut d = Drive::in_discovery(waits_and_powers_off());
    let refused = |r: Result<Outcome, StepError>| matches!(r, Err(StepError::NotApplicable { .. }));
    assert!(refused(d.try_ev(1, Event::Continue)));
    assert!(refused(d.try_ev(1, Event::Retry)));
    d.task(1, "boot1", true);
    assert_eq!(d.run.phase, Phase::Waiting);
    d.ev(4, Event::Continue);
    // Same environment and `continue`: the next stage runs in the same boot.
    assert_eq!((d.run.stage, &d.run.phase), (1, &Phase::Ready));
    d.task(5, "boot1", true);
    // `power_off`: the agent of this boot is told to power off; no boot deadline meanwhile.
    assert!(matches!(
        d.run.phase,
        Phase::Booting {
            deadline_ms: None,
            ..
        }
    ));
    assert_eq!(d.ask(8, "boot1"), Some(Answer::PowerOff));
    d.ev(1_000_000_000, Event::Tick);
    assert!(
        matches!(d.run.phase, Phase::Booting { .. }),
        "still waiting for power"
    );
    d.served(1_000_000_001, "discovery");
    d.enrolled(1_000_000_002, "boot2", Some("discovery"));
    assert_eq!((d.run.stage, &d.run.phase), (2, &Phase::Ready));
    d.ev(1_000_000_003, Event::Cancel);
    assert_eq!(d.run.phase, Phase::Cancelled);
    assert!(refused(d.try_ev(1_000_000_004, Event::Cancel)));
    // Restart works from anywhere, and always reboots into the first stage.
    let out = d.ev(1_000_000_005, Event::Restart);
    assert!(out
        .effects
        .contains(&Effect::SetBootEnv("discovery".into())));
    assert_eq!(d.run.stage, 0);
}

// ---------------------------------------------------------------------------------------------
// Random interleavings.

/// The agent on the machine, as far as the simulation needs it.
#[derive(Debug, Clone, Default)]
struct Agent {
    enrolled: bool,
    /// The environment whose script gave it its bootstrap token (None: booted from disk).
    via: Option<String>,
    /// (attempt, stage, task, acknowledged, result once run)
    job: Option<(AttemptId, usize, usize, bool, Option<bool>)>,
}

struct Sim {
    plan: Plan,
    run: Run,
    ids: Ids,
    now: i64,
    boot: u32,
    /// The machine's boot environment as the server last set it.
    assigned_env: String,
    /// The environment the current boot came from (None: powered off).
    running_env: Option<String>,
    agent: Option<Agent>,
    attempts: HashMap<AttemptId, (usize, usize)>,
    /// Times the agent actually began running (stage, task): the witness outside the server.
    executed: HashMap<(usize, usize), u32>,
    /// Extra runs allowed for (stage, task): reported failures with retries and operator retries.
    allowed: HashMap<(usize, usize), u32>,
    /// Successes the server accepted, in order.
    succeeded: Vec<(usize, usize)>,
    log: Vec<String>,
}

impl Sim {
    fn new(plan: Plan) -> Sim {
        let mut ids = Ids(0);
        // The machine is in discovery (boot 1) when the workflow is assigned.
        let (run, out) = start(&plan, Some(("boot1", "discovery")), &mut ids);
        let mut sim = Sim {
            plan,
            run,
            ids,
            now: 0,
            boot: 1,
            assigned_env: "discovery".into(),
            running_env: Some("discovery".into()),
            agent: Some(Agent {
                enrolled: true,
                via: Some("discovery".into()),
                job: None,
            }),
            attempts: HashMap::new(),
            executed: HashMap::new(),
            allowed: HashMap::new(),
            succeeded: Vec::new(),
            log: Vec::new(),
        };
        sim.apply_effects(&out);
        sim
    }

    fn boot_id(&self) -> String {
        format!("boot{}", self.boot)
    }

    fn apply_effects(&mut self, out: &Outcome) {
        for e in &out.effects {
            match e {
                Effect::SetBootEnv(env) => self.assigned_env = env.clone(),
                Effect::AttemptCreated {
                    attempt,
                    stage,
                    task,
                } => {
                    self.attempts.insert(*attempt, (*stage, *task));
                }
                Effect::AttemptEnded(a, AttemptEnd::Succeeded) => {
                    self.succeeded.push(self.attempts[a])
                }
                _ => {}
            }
        }
    }

    fn send(&mut self, e: Event) -> Result<Outcome, StepError> {
        self.log
            .push(format!("t={} {e:?} in {:?}", self.now, self.run.phase));
        if std::env::var_os("ANNEAL_SIM_TRACE").is_some() {
            eprintln!("{}", self.log.last().unwrap());
        }
        let r = go(&mut self.run, &self.plan, &mut self.ids, self.now, e);
        if let Ok(out) = &r {
            self.apply_effects(out);
        }
        r
    }

    /// The machine (re)boots: PXE serves the assigned environment's script.
    fn power_cycle(&mut self) {
        self.boot += 1;
        let env = self.assigned_env.clone();
        self.running_env = Some(env.clone());
        self.agent = (env != "local").then(|| Agent {
            via: Some(env.clone()),
            ..Agent::default()
        });
        let served = self.send(Event::ScriptServed { env: &env });
        served.expect("a served script is never refused");
    }

    /// One normal move of the agent. `lose`: the server acts, the answer never arrives.
    fn agent_move(&mut self, lose: bool, ok: bool) {
        let Some(mut agent) = self.agent.clone() else {
            return;
        };
        let boot = self.boot_id();
        if !agent.enrolled {
            let via = agent.via.clone();
            self.send(Event::Enrolled {
                boot_id: &boot,
                via_env: via.as_deref(),
            })
            .unwrap();
            agent.enrolled = true;
        } else {
            match agent.job {
                None => {
                    let out = self.send(Event::Ask { boot_id: &boot }).unwrap();
                    if !lose {
                        match out.answer.unwrap() {
                            Answer::Job {
                                attempt,
                                stage,
                                task,
                            } => agent.job = Some((attempt, stage, task, false, None)),
                            Answer::Reboot => {
                                self.power_cycle();
                                return;
                            }
                            Answer::PowerOff => {
                                self.running_env = None;
                                self.agent = None;
                                return;
                            }
                            Answer::Wait | Answer::Done => {}
                        }
                    }
                }
                Some((attempt, s, t, false, _)) => match self.send(Event::Started { attempt }) {
                    Ok(_) if !lose => {
                        // The task runs now, in this boot and environment.
                        assert_eq!(
                            self.running_env.as_deref(),
                            Some(self.plan.stages[s].boot_env.as_str()),
                            "stage {s} ran outside its boot environment\n{}",
                            self.log.join("\n")
                        );
                        *self.executed.entry((s, t)).or_default() += 1;
                        agent.job = Some((attempt, s, t, true, None));
                    }
                    Ok(_) => {}
                    Err(StepError::NotCurrent(_)) => agent.job = None,
                    Err(e) => panic!("{e}"),
                },
                Some((attempt, s, t, true, None)) => {
                    agent.job = Some((attempt, s, t, true, Some(ok)))
                }
                Some((attempt, s, t, true, Some(ok))) => {
                    let r = self.send(Event::Finished {
                        attempt,
                        ok,
                        reason: "exit code 1",
                    });
                    if r.is_ok() && !ok {
                        *self.allowed.entry((s, t)).or_default() += 1;
                    }
                    if !lose || r.is_err() {
                        agent.job = None;
                    }
                }
            }
        }
        self.agent = Some(agent);
    }

    fn operator(&mut self) {
        match self.run.phase {
            Phase::Failed { .. } => {
                let cur = (self.run.stage, self.run.task);
                self.send(Event::Retry).unwrap();
                *self.allowed.entry(cur).or_default() += 1;
            }
            Phase::Waiting => {
                self.send(Event::Continue).unwrap();
            }
            _ => {}
        }
    }

    fn check(&self) {
        for (&(s, t), &n) in &self.executed {
            let task = &self.plan.stages[s].tasks[t];
            let allowed = 1 + self.allowed.get(&(s, t)).copied().unwrap_or(0);
            if !task.idempotent {
                assert!(
                    n <= allowed,
                    "non-idempotent task {s}/{t} ran {n} times, {allowed} allowed\n{}",
                    self.log.join("\n")
                );
            }
        }
        // Successes come in plan order, each task once.
        let order: Vec<(usize, usize)> = self
            .plan
            .stages
            .iter()
            .enumerate()
            .flat_map(|(s, st)| (0..st.tasks.len()).map(move |t| (s, t)))
            .collect();
        assert!(
            order.starts_with(&self.succeeded),
            "successes {:?} are not a prefix of {order:?}\n{}",
            self.succeeded,
            self.log.join("\n")
        );
    }
}

fn plan_by(ix: usize) -> Plan {
    match ix {
        0 => three_boot(),
        1 => waits_and_powers_off(),
        _ => continue_in_place(),
    }
}

fn simulate(plan_ix: usize, choices: &[u8]) {
    let mut sim = Sim::new(plan_by(plan_ix));
    for &c in choices {
        sim.now += 1000;
        match c % 32 {
            // Mostly normal progress; some of it fails, some answers are lost.
            0..=15 => sim.agent_move(false, true),
            16..=17 => sim.agent_move(false, false),
            18..=19 => sim.agent_move(true, true),
            // The agent restarts within the same boot (its saved state resumes).
            20 => {
                if let Some(a) = &mut sim.agent {
                    a.job = None;
                }
            }
            // Power loss / reset / powered on again.
            21 => sim.power_cycle(),
            // A server restart: the run is reloaded from what was stored.
            22 => {
                let stored = serde_json::to_string(&sim.run).unwrap();
                sim.run = serde_json::from_str(&stored).unwrap();
            }
            // Time jumps past deadlines.
            23 => {
                sim.now += 400_000;
                sim.send(Event::Tick).unwrap();
            }
            24 => {
                sim.send(Event::Tick).unwrap();
            }
            // A stale report arrives again (duplicate delivery of an old message).
            25 => {
                if let Some((&a, _)) = sim.attempts.iter().min_by_key(|(a, _)| **a) {
                    let current =
                        matches!(sim.run.phase, Phase::Running { attempt, .. } if attempt == a);
                    if !current {
                        let r = sim.send(Event::Finished {
                            attempt: a,
                            ok: true,
                            reason: "",
                        });
                        assert!(r.is_err(), "a stale report was accepted");
                    }
                }
            }
            26..=27 => sim.operator(),
            // The machine boots its local disk instead of PXE (boot order, a PXE timeout); an
            // installed OS's agent enrolls from there.
            29 => {
                sim.boot += 1;
                sim.running_env = Some("disk".into());
                sim.agent = Some(Agent::default());
            }
            // The enrollment of a new boot arrives (an agent with no saved state).
            28 => {
                if let Some(a) = &mut sim.agent {
                    a.enrolled = false;
                    a.job = None;
                }
            }
            _ => sim.agent_move(false, true),
        }
        sim.check();
    }
    // Faults stop; the workflow must now complete with normal moves and an operator.
    for _ in 0..2000 {
        if sim.run.phase == Phase::Done {
            break;
        }
        sim.now += 1000;
        let booting = matches!(sim.run.phase, Phase::Booting { .. });
        if sim.running_env.is_none() || (booting && sim.agent.is_none()) {
            // Someone powers it on, or power-cycles a machine that sits in an environment
            // with no agent to tell it (as a BMC would).
            sim.power_cycle();
        }
        sim.operator();
        sim.agent_move(false, true);
        sim.check();
    }
    assert_eq!(sim.run.phase, Phase::Done, "{}", sim.log.join("\n"));
    let all: usize = sim.plan.stages.iter().map(|s| s.tasks.len()).sum();
    assert_eq!(
        sim.succeeded.len(),
        all,
        "every task succeeded exactly once"
    );
}

/// A failing case found by the random search, kept.
#[test]
fn regression_waiting_stage_sent_back_after_a_disk_boot() {
    simulate(1, &[62, 0, 30, 0, 189, 30, 30, 215, 151, 94, 62, 0]);
}

/// Found by the random search in CI: a boot into `local` timed out, was retried after the
/// script had been served, and only a power cycle could bring the machine back.
#[test]
fn regression_local_boot_after_a_disk_boot() {
    simulate(
        0,
        &[
            30, 30, 30, 30, 0, 30, 30, 0, 0, 0, 0, 0, 157, 0, 218, 94, 61, 30, 62, 30, 0, 0, 0, 0,
            0, 0, 0, 24, 222, 247, 151, 53,
        ],
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Whatever happens, no task is skipped or succeeds twice, no non-idempotent task runs
    /// again without a failure report or an operator's retry, tasks run only in their stage's
    /// boot environment, and the run completes once the faults stop.
    #[test]
    fn random_interleavings_never_skip_or_repeat_a_task(plan in 0usize..3, choices in proptest::collection::vec(any::<u8>(), 0..300)) {
        simulate(plan, &choices);
    }
}
