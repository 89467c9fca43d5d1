//! A workflow resolved at assignment: every stage with its boot environment and its tasks,
//! copied out of the content version the workflow was assigned with. A run follows its plan
//! only, so `anneal apply` never changes a run already under way.

use anneal_shared::content::{StageEnd, Task};
use serde::{Deserialize, Serialize};

/// The pinned content of one run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Plan {
    /// The workflow's name.
    pub workflow: String,
    /// The content version it was resolved from.
    pub content_version: i64,
    /// Its stages, in order.
    pub stages: Vec<PlanStage>,
}

/// One stage as pinned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PlanStage {
    /// The stage's name.
    pub name: String,
    /// The boot environment it runs in.
    pub boot_env: String,
    /// Whether the agent runs in that environment (see `BootEnv::agent`).
    pub agent: bool,
    /// Its tasks, in order, as they were when pinned.
    pub tasks: Vec<Task>,
    /// What follows the last task.
    pub then: StageEnd,
    /// How long the machine may take to boot into it.
    pub boot_timeout_secs: u32,
    /// How long its tasks may take together.
    pub deadline_secs: u32,
}

impl Plan {
    /// Whether any task of the plan destroys data.
    pub fn destructive(&self) -> bool {
        self.stages
            .iter()
            .any(|s| s.tasks.iter().any(|t| t.destructive))
    }
}
