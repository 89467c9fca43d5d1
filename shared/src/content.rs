//! Workflow content: boot environments, tasks, stages, workflows, profiles and param
//! definitions, as operators write them (YAML under `content/`, `anneal apply -f`) and as the
//! API shows them.
//!
//! These types are lenient like every wire type here (unknown fields are ignored when read);
//! the server's content loader (`server/src/content/`) is the strict reader that refuses
//! unknown keys and checks references, naming the file, the object and the field.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The built-in boot environment that boots the discovery image (the agent runs there).
pub const BOOTENV_DISCOVERY: &str = "discovery";
/// The built-in boot environment that boots the machine's first local disk.
pub const BOOTENV_LOCAL: &str = "local";
/// The built-in boot environment that boots the local disk into an installed OS whose own
/// `anneal-agent run --installed` takes the stage's tasks.
pub const BOOTENV_INSTALLED: &str = "installed";

/// The kinds of content object, as written in a document's `kind:` key.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    BootEnv,
    Task,
    Stage,
    Workflow,
    Profile,
    Param,
    Rule,
}

impl Kind {
    /// Every kind, in the order objects are applied (referenced kinds first).
    pub const ALL: [Kind; 7] = [
        Kind::Param,
        Kind::Profile,
        Kind::BootEnv,
        Kind::Task,
        Kind::Stage,
        Kind::Workflow,
        Kind::Rule,
    ];

    /// The name written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::BootEnv => "boot_env",
            Kind::Task => "task",
            Kind::Stage => "stage",
            Kind::Workflow => "workflow",
            Kind::Profile => "profile",
            Kind::Param => "param",
            Kind::Rule => "rule",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A boot environment: what a machine boots into for a stage.
///
/// `discovery`, `local` and `installed` are built in (rendered by the server's own templates). Any other
/// environment is an iPXE script template plus the artifacts it loads from the environment's
/// artifact directory, with kernel arguments rendered per machine; `templates` are further
/// files rendered per machine (an installer's preseed, say) and served to it over HTTP.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootEnv {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Kernel file name in the environment's artifact directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// Initrd file names in the environment's artifact directory, loaded in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub initrds: Vec<String>,
    /// Kernel command line (a template; `{{ params["x"] }}`, `{{ machine.id }}`, `{{ files["preseed.cfg"] }}`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kernel_args: String,
    /// A whole iPXE script instead of the generated `kernel`/`initrd`/`boot` lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipxe: Option<String>,
    /// Files rendered per machine, by name (e.g. `preseed.cfg`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub templates: BTreeMap<String, String>,
    /// Whether `anneal-agent` runs in this environment (enrolls, takes jobs). Stages with tasks
    /// need it; a stage in an environment without it is done once its script was served.
    #[serde(default)]
    pub agent: bool,
    /// The agent here is `anneal-agent run --installed` on the machine's own disk: it keeps its
    /// certificate across boots and proves a boot by a boot report (or an enrollment naming
    /// this environment) instead of a token the environment's script minted. Needs `agent`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub installed: bool,
    /// Booting it destroys data (an OS installer that partitions the disks), like a
    /// destructive task: a workflow that boots it is destructive.
    #[serde(default)]
    pub destructive: bool,
}

/// A unit of work on a machine: a shell script template or a built-in agent action.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// A shell script (a template over params and the machine), run by `/bin/sh`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The name of a built-in agent action (e.g. `inventory`), instead of a script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// Arguments of the built-in action (values may be templates).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, Value>,
    /// Params the task needs; each must resolve when the job is rendered, or the job fails
    /// naming it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<String>,
    /// How long one attempt may run (the agent kills it after this).
    #[serde(default = "default_task_timeout")]
    pub timeout_secs: u32,
    /// Further attempts after a failure.
    #[serde(default)]
    pub retries: u32,
    /// Safe to run again after it was interrupted mid-way (power loss, agent crash). Only such
    /// tasks are retried automatically after an interruption; others stop the workflow for an
    /// operator.
    #[serde(default)]
    pub idempotent: bool,
    /// Destroys data (wipe, RAID, install): only machines an operator claimed or marked new
    /// may run workflows containing it.
    #[serde(default)]
    pub destructive: bool,
}

fn default_task_timeout() -> u32 {
    600
}

/// What happens when a stage's tasks are done.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum StageEnd {
    /// Go on to the next stage (rebooting only if it needs another boot environment).
    #[default]
    Continue,
    /// Reboot into the next stage's boot environment, even if it is the same.
    Reboot,
    /// Power the machine off; the next stage starts when it is powered on again.
    PowerOff,
    /// Hold until an operator continues (`anneal machines continue`).
    Wait,
}

/// A boot environment, the tasks to run in it, and what follows.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stage {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// The boot environment the stage runs in.
    pub boot_env: String,
    /// Task names, run in order.
    #[serde(default)]
    pub tasks: Vec<String>,
    /// What follows the last task.
    #[serde(default)]
    pub then: StageEnd,
    /// How long the machine may take to boot into the stage's environment.
    #[serde(default = "default_boot_timeout")]
    pub boot_timeout_secs: u32,
    /// How long the stage's tasks may take together, from the boot.
    #[serde(default = "default_stage_deadline")]
    pub deadline_secs: u32,
}

fn default_boot_timeout() -> u32 {
    900
}

fn default_stage_deadline() -> u32 {
    4 * 3600
}

/// Ordered stages.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Workflow {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Stage names, in order.
    pub stages: Vec<String>,
}

/// A named set of param values. `global` applies to every machine, under a machine's own
/// profiles and params.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Profile {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub params: BTreeMap<String, Value>,
}

/// The name of the profile every machine has under its own.
pub const PROFILE_GLOBAL: &str = "global";

/// The type a param's value must have.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Boolean,
    List,
    Object,
}

impl ParamType {
    /// Whether `v` has this type.
    pub fn accepts(self, v: &Value) -> bool {
        match self {
            ParamType::String => v.is_string(),
            ParamType::Integer => v.is_i64() || v.is_u64(),
            ParamType::Boolean => v.is_boolean(),
            ParamType::List => v.is_array(),
            ParamType::Object => v.is_object(),
        }
    }

    /// The name written in `type:`.
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
            ParamType::List => "list",
            ParamType::Object => "object",
        }
    }
}

/// A param's definition: its type, default, and whether it is required or secret.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParamDef {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default, rename = "type")]
    pub param_type: ParamType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Rendering anything that uses it fails unless a value (or the default) is set.
    #[serde(default)]
    pub required: bool,
    /// Never shown in logs or list views; redacted from uploaded job logs.
    #[serde(default)]
    pub secret: bool,
}

/// Gives newly discovered machines a workflow: when a machine is first ready for work, the
/// first rule (by `order`, then name) whose selector matches it has its workflow assigned. A
/// destructive workflow only reaches machines claimed or marked new.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rule {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    /// Which machines, e.g. `product~PowerEdge,disks>=2` (the selector language of
    /// `anneal machines ls -l`).
    pub selector: String,
    /// The workflow to assign.
    pub workflow: String,
    /// Rules are tried in ascending order (then by name); the first match decides.
    #[serde(default = "default_rule_order")]
    pub order: u32,
}

fn default_rule_order() -> u32 {
    100
}

/// One content object of any kind, as the API lists them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ContentObject {
    BootEnv(BootEnv),
    Task(Task),
    Stage(Stage),
    Workflow(Workflow),
    Profile(Profile),
    Param(ParamDef),
    Rule(Rule),
}

impl ContentObject {
    /// Its kind.
    pub fn kind(&self) -> Kind {
        match self {
            ContentObject::BootEnv(_) => Kind::BootEnv,
            ContentObject::Task(_) => Kind::Task,
            ContentObject::Stage(_) => Kind::Stage,
            ContentObject::Workflow(_) => Kind::Workflow,
            ContentObject::Profile(_) => Kind::Profile,
            ContentObject::Param(_) => Kind::Param,
            ContentObject::Rule(_) => Kind::Rule,
        }
    }

    /// Its name (unique within its kind).
    pub fn name(&self) -> &str {
        match self {
            ContentObject::BootEnv(o) => &o.name,
            ContentObject::Task(o) => &o.name,
            ContentObject::Stage(o) => &o.name,
            ContentObject::Workflow(o) => &o.name,
            ContentObject::Profile(o) => &o.name,
            ContentObject::Param(o) => &o.name,
            ContentObject::Rule(o) => &o.name,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_a_minimal_task_and_stage() {
        let t: Task = serde_json::from_str(r#"{"name":"t","script":"true"}"#).unwrap();
        assert_eq!((t.timeout_secs, t.retries, t.idempotent), (600, 0, false));
        let s: Stage = serde_json::from_str(r#"{"name":"s","boot_env":"discovery"}"#).unwrap();
        assert_eq!(s.then, StageEnd::Continue);
        assert!(s.boot_timeout_secs > 0 && s.deadline_secs > 0);
    }

    #[test]
    fn param_types_check_values() {
        use serde_json::json;
        assert!(ParamType::Integer.accepts(&json!(3)));
        assert!(!ParamType::Integer.accepts(&json!("3")));
        assert!(!ParamType::Integer.accepts(&json!(3.5)));
        assert!(ParamType::List.accepts(&json!([1])));
        assert!(!ParamType::String.accepts(&Value::Null));
    }
}
