//! A workflow resolved at assignment: every stage with its boot environment and its tasks,
//! copied out of the content version the workflow was assigned with. A run follows its plan
//! only, so `anneal apply` never changes a run already under way.

use std::collections::HashMap;

use anneal_shared::content::{ContentObject, Kind, StageEnd, Task};
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
    /// Whether booting that environment destroys data (see `BootEnv::destructive`).
    #[serde(default)]
    pub destructive_env: bool,
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
    /// Whether any task of the plan, or any environment it boots, destroys data.
    pub fn destructive(&self) -> bool {
        self.stages
            .iter()
            .any(|s| s.destructive_env || s.tasks.iter().any(|t| t.destructive))
    }
}

/// Why a workflow could not be resolved into a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workflow `{workflow}`: {problem}")]
pub struct ResolveError {
    /// The workflow asked for.
    pub workflow: String,
    /// What is missing or wrong.
    pub problem: String,
}

/// Resolve `workflow` from `objects` (one content version, built-ins included) into a plan.
pub fn resolve(
    objects: &[ContentObject],
    workflow: &str,
    content_version: i64,
) -> Result<Plan, ResolveError> {
    let err = |problem: String| ResolveError {
        workflow: workflow.to_string(),
        problem,
    };
    let by: HashMap<(Kind, &str), &ContentObject> =
        objects.iter().map(|o| ((o.kind(), o.name()), o)).collect();
    let Some(ContentObject::Workflow(w)) = by.get(&(Kind::Workflow, workflow)) else {
        return Err(err("no such workflow".into()));
    };
    if w.stages.is_empty() {
        return Err(err("it has no stages".into()));
    }
    let mut stages = Vec::with_capacity(w.stages.len());
    for name in &w.stages {
        let Some(ContentObject::Stage(st)) = by.get(&(Kind::Stage, name.as_str())) else {
            return Err(err(format!("stage `{name}` does not exist")));
        };
        let Some(ContentObject::BootEnv(env)) = by.get(&(Kind::BootEnv, st.boot_env.as_str()))
        else {
            return Err(err(format!(
                "stage `{name}`: boot environment `{}` does not exist",
                st.boot_env
            )));
        };
        let mut tasks = Vec::with_capacity(st.tasks.len());
        for t in &st.tasks {
            let Some(ContentObject::Task(task)) = by.get(&(Kind::Task, t.as_str())) else {
                return Err(err(format!("stage `{name}`: task `{t}` does not exist")));
            };
            tasks.push(task.clone());
        }
        if !tasks.is_empty() && !env.agent {
            return Err(err(format!(
                "stage `{name}` has tasks but boot environment `{}` runs no agent",
                env.name
            )));
        }
        stages.push(PlanStage {
            name: st.name.clone(),
            boot_env: env.name.clone(),
            agent: env.agent,
            destructive_env: env.destructive,
            tasks,
            then: st.then,
            boot_timeout_secs: st.boot_timeout_secs.max(1),
            deadline_secs: st.deadline_secs.max(1),
        });
    }
    Ok(Plan {
        workflow: workflow.to_string(),
        content_version,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anneal_shared::content::{BootEnv, Stage, Workflow};

    fn objects() -> Vec<ContentObject> {
        vec![
            ContentObject::BootEnv(BootEnv {
                name: "discovery".into(),
                agent: true,
                ..BootEnv::default()
            }),
            ContentObject::BootEnv(BootEnv {
                name: "local".into(),
                ..BootEnv::default()
            }),
            ContentObject::Task(Task {
                name: "hello".into(),
                script: Some("echo hello".into()),
                ..Task::default()
            }),
            ContentObject::Stage(Stage {
                name: "one".into(),
                boot_env: "discovery".into(),
                tasks: vec!["hello".into()],
                ..Stage::default()
            }),
            ContentObject::Stage(Stage {
                name: "bad".into(),
                boot_env: "local".into(),
                tasks: vec!["hello".into()],
                ..Stage::default()
            }),
            ContentObject::Workflow(Workflow {
                name: "w".into(),
                stages: vec!["one".into()],
                ..Workflow::default()
            }),
            ContentObject::Workflow(Workflow {
                name: "broken".into(),
                stages: vec!["one".into(), "bad".into()],
                ..Workflow::default()
            }),
        ]
    }

    #[test]
    fn a_workflow_resolves_with_its_tasks_copied() {
        let plan = resolve(&objects(), "w", 7).unwrap();
        assert_eq!(plan.content_version, 7);
        assert_eq!(
            plan.stages[0].tasks[0].script.as_deref(),
            Some("echo hello")
        );
        assert!(plan.stages[0].agent);
        assert!(!plan.destructive());
    }

    #[test]
    fn a_destructive_environment_makes_the_plan_destructive() {
        let mut objects = objects();
        for o in &mut objects {
            if let ContentObject::BootEnv(e) = o {
                e.destructive = e.name == "discovery";
            }
        }
        assert!(resolve(&objects, "w", 1).unwrap().destructive());
    }

    #[test]
    fn missing_or_impossible_parts_are_named() {
        let e = resolve(&objects(), "nope", 1).unwrap_err();
        assert_eq!(e.to_string(), "workflow `nope`: no such workflow");
        let e = resolve(&objects(), "broken", 1).unwrap_err();
        assert!(e
            .problem
            .contains("stage `bad` has tasks but boot environment `local` runs no agent"));
    }
}
