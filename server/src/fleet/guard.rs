//! The destructive guard: every assignment of a workflow goes through here (one machine from
//! the API, many by selector, or a rule), so a workflow with a `destructive: true` task only
//! ever reaches a machine that an operator claimed or that was marked new when it first
//! enrolled. The assignment consumes that claim: one claim, one destructive workflow.

use anneal_shared::api::MachineState;
use anneal_shared::MachineId;

use crate::app::App;
use crate::store::workflow::RunRecord;
use crate::store::MachineRecord;
use crate::workflow::plan::Plan;
use crate::workflow::service::{self, WorkflowError};

/// A workflow resolved once for one or many assignments, with its destructive tasks.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The pinned plan every machine gets.
    pub plan: Plan,
    /// Names of its destructive tasks, in plan order (empty: not destructive).
    pub destructive_tasks: Vec<String>,
}

impl Checked {
    /// Resolve `workflow` from the newest content.
    pub async fn resolve(app: &App, workflow: &str) -> Result<Checked, WorkflowError> {
        let plan = service::resolve(app, workflow).await?;
        let mut destructive_tasks: Vec<String> = Vec::new();
        for t in plan.stages.iter().flat_map(|s| &s.tasks) {
            if t.destructive && !destructive_tasks.contains(&t.name) {
                destructive_tasks.push(t.name.clone());
            }
        }
        Ok(Checked {
            plan,
            destructive_tasks,
        })
    }
}

/// Who asked for an assignment, for the log.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// An operator, by API token id.
    Operator(&'a str),
    /// A rule, by name.
    Rule(&'a str),
}

impl std::fmt::Display for Source<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Operator(t) => write!(f, "operator token {t}"),
            Source::Rule(r) => write!(f, "rule {r}"),
        }
    }
}

/// Why an assignment did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// A destructive workflow for a machine that is neither claimed nor new.
    #[error(
        "workflow `{workflow}` is destructive (tasks: {}) and machine {machine} is neither \
         claimed nor new: claim it first with `anneal machines claim {machine}` \
         (POST /api/v1/machines/{machine}/claim)",
        tasks.join(", ")
    )]
    Unclaimed {
        /// The machine.
        machine: MachineId,
        /// The workflow.
        workflow: String,
        /// Its destructive tasks.
        tasks: Vec<String>,
    },
    /// Resolving or starting the run failed.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
}

/// Whether `m` may get `checked`'s workflow now, without changing anything (a dry run).
pub fn permits(checked: &Checked, m: &MachineRecord) -> Result<(), AssignError> {
    if checked.destructive_tasks.is_empty() || m.fleet.claim.is_some() {
        return Ok(());
    }
    Err(unclaimed(checked, m.id))
}

fn unclaimed(checked: &Checked, machine: MachineId) -> AssignError {
    metrics::counter!("anneal_destructive_refusals_total").increment(1);
    AssignError::Unclaimed {
        machine,
        workflow: checked.plan.workflow.clone(),
        tasks: checked.destructive_tasks.clone(),
    }
}

/// Assign `checked`'s workflow to `machine` (its current run, if any, is cancelled). A
/// destructive workflow first takes the machine's claim, atomically, and is refused without
/// one; the claim is given back if the run cannot be started.
pub async fn assign(
    app: &App,
    machine: MachineId,
    checked: &Checked,
    source: Source<'_>,
) -> Result<RunRecord, AssignError> {
    // A machine already running the first stage's environment starts there.
    let current = app
        .store
        .current_boot(machine)
        .await
        .map_err(WorkflowError::from)?
        .and_then(|(boot, env)| env.map(|e| (boot, e)));
    let destructive = !checked.destructive_tasks.is_empty();
    let claim = if destructive {
        let taken = app.store.take_claim(machine).await;
        match taken.map_err(WorkflowError::from)? {
            Some(c) => Some(c),
            None => {
                let exists = app.store.get_machine(machine).await;
                if exists.map_err(WorkflowError::from)?.is_none() {
                    return Err(WorkflowError::NoMachine(machine).into());
                }
                tracing::warn!(machine_id = %machine, workflow = %checked.plan.workflow, %source, "destructive workflow refused: machine not claimed");
                return Err(unclaimed(checked, machine));
            }
        }
    } else {
        None
    };
    match service::assign_plan(app, machine, &checked.plan, current).await {
        Ok(run) => {
            tracing::info!(machine_id = %machine, workflow = %checked.plan.workflow, %source, destructive, claim = ?claim.as_ref().map(|c| c.kind), "workflow assigned");
            Ok(run)
        }
        Err(e) => {
            if let Some(c) = &claim {
                if let Err(e) = app.store.restore_claim(machine, c).await {
                    tracing::error!(machine_id = %machine, error = %e, "giving back the machine's claim failed");
                }
            }
            Err(e.into())
        }
    }
}

/// Machines a bulk assignment or a rule should not touch, whatever the workflow: pending ones
/// wait for an operator's approval first.
pub fn ready_for_work(m: &MachineRecord) -> Result<(), String> {
    match m.state {
        MachineState::Discovered => Ok(()),
        other => Err(format!(
            "machine {} is {}: approve it first",
            m.id,
            other.as_str()
        )),
    }
}
