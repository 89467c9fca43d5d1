//! Operator API models (`/api/v1`), shared by the server and the `anneal` CLI.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::inventory::Inventory;
use crate::protocol::IdentityHints;
use uuid::Uuid;

/// Where a machine stands in its life with Anneal.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Enrolled, waiting for an operator to approve it (approval required by config).
    Pending,
    /// Enrolled and approved (or approval not required); inventory may follow.
    Discovered,
    #[serde(other)]
    Unknown,
}

impl MachineState {
    /// The wire name, as stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Pending => "pending",
            MachineState::Discovered => "discovered",
            MachineState::Unknown => "unknown",
        }
    }
}

/// A machine as listed: no inventory detail.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MachineSummary {
    pub id: Uuid,
    pub state: MachineState,
    pub hostname: Option<String>,
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub serial: Option<String>,
    /// MACs of physical NICs.
    pub macs: Vec<String>,
    pub cpus: Option<u32>,
    /// Installed memory (SMBIOS DIMMs), or the OS's total when SMBIOS lists no DIMMs.
    pub memory_bytes: Option<u64>,
    pub disks: Option<u32>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_seen: Option<OffsetDateTime>,
    /// What the agent last said it was doing.
    pub status: Option<String>,
    /// Operator tags, sorted.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub location: Location,
    /// Why it may run a destructive workflow, if it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimKind>,
}

/// One machine in full.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Machine {
    pub id: Uuid,
    pub state: MachineState,
    /// Identity evidence the server holds for this machine.
    pub identity: IdentityHints,
    pub hostname: Option<String>,
    pub inventory: Option<Inventory>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub inventory_at: Option<OffsetDateTime>,
    /// Kernel boot id of the latest enrollment.
    pub boot_id: Option<String>,
    pub enrollments: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub last_seen: Option<OffsetDateTime>,
    pub status: Option<String>,
    /// Warnings raised about this machine (e.g. a second enrollment within one boot).
    pub alerts: Vec<Alert>,
    /// Operator tags, sorted.
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub location: Location,
    /// Why it may run a destructive workflow, if it may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<Claim>,
    /// What the rules for new machines did for it, once they were asked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleOutcome>,
    /// Bumped on every change: send it back in a `PATCH` to change only what was read.
    #[serde(default)]
    pub version: i64,
}

/// A warning attached to a machine record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Alert {
    pub kind: String,
    pub message: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
}

/// `POST /api/v1/tokens`: a bootstrap token for enrolling machines.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateBootstrapToken {
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// How many enrollments it allows (default 1).
    #[serde(default)]
    pub uses: Option<u32>,
    /// Only an enrollment presenting this MAC may use it.
    #[serde(default)]
    pub mac: Option<String>,
    /// Free text shown in listings.
    #[serde(default)]
    pub description: Option<String>,
    /// Machines it enrolls for the first time are marked new: they may run one destructive
    /// workflow without an operator's claim.
    #[serde(default)]
    pub new: bool,
}

/// A bootstrap token as listed (the secret itself is shown only once, at creation).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootstrapToken {
    pub id: String,
    pub uses_left: u32,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: OffsetDateTime,
    pub mac: Option<String>,
    pub description: Option<String>,
    /// Machines it enrolls for the first time are marked new.
    #[serde(default)]
    pub new: bool,
}

/// The answer to token creation: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedBootstrapToken {
    pub token: String,
    #[serde(flatten)]
    pub info: BootstrapToken,
}

/// An enrollment held back because its identity evidence contradicts the records.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct QuarantinedEnrollment {
    pub id: String,
    pub identity: IdentityHints,
    /// Machines whose records the evidence points at.
    pub candidates: Vec<Uuid>,
    pub reason: String,
    pub boot_id: String,
    /// Latest attempt.
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    /// Enrollment attempts this entry stands for (a retrying agent updates it).
    #[serde(default)]
    pub attempts: u32,
}

/// Roles of operator API tokens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything, including token management.
    Admin,
    /// Change machines (approve, revoke, …) and create bootstrap tokens.
    Operator,
    /// Read only.
    Viewer,
    #[serde(other)]
    Unknown,
}

/// RFC 9457 problem details: every API error has this shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// A URI naming the kind of problem, e.g. `urn:anneal:problem:not-found`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// `PUT /api/v1/machines/{id}/workflow`: assign a workflow (the machine's current run, if any,
/// is cancelled and kept as history).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AssignWorkflow {
    pub workflow: String,
}

/// A machine's workflow run.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowRun {
    pub id: Uuid,
    pub machine_id: Uuid,
    pub workflow: String,
    /// The content version the workflow was pinned at when assigned.
    pub content_version: i64,
    /// Stage names, in order.
    pub stages: Vec<String>,
    /// Index of the current stage.
    pub stage: usize,
    /// Index of the current task within the stage.
    pub task: usize,
    /// `booting`, `ready`, `running`, `waiting`, `failed`, `done` or `cancelled`.
    pub phase: String,
    /// Why it failed, with the failing task named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The boot environment the machine is being booted into, while `booting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub booting: Option<String>,
    /// When it failed in a job: the attempt that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempt: Option<Uuid>,
    /// When it failed in a job: the last lines of that job's log (at most 4 KiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_tail: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub updated_at: OffsetDateTime,
}

/// One job attempt.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobAttempt {
    pub id: Uuid,
    pub machine_id: Uuid,
    pub run_id: Uuid,
    pub stage: String,
    pub task: String,
    /// `created`, `running`, `succeeded`, `failed`, `timed_out`, `interrupted` or `cancelled`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// A built-in action's structured result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub started_at: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub finished_at: Option<OffsetDateTime>,
    /// Bytes of log stored (`GET /api/v1/jobs/{id}/log`).
    pub log_bytes: u64,
    /// When log retention deleted the log (`log_bytes` says how long it was).
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub log_pruned_at: Option<OffsetDateTime>,
}

/// A machine's own params and profiles, and every value its tasks would be rendered with now.
/// Secret values are shown as `********`, never in clear.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MachineParams {
    /// Its profiles, in order (`global` is always under them).
    pub profiles: Vec<String>,
    /// Its own values, over every profile.
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub params: std::collections::BTreeMap<String, serde_json::Value>,
    /// Every param with a value, and where the value comes from.
    pub resolved: std::collections::BTreeMap<String, ParamValue>,
    /// Why the values do not resolve with the current content (a profile deleted, a value of
    /// the wrong type): jobs would fail with these until fixed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Send it back in [`UpdateMachineParams::version`] so a concurrent edit is not lost.
    pub version: i64,
}

/// A resolved param value.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParamValue {
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub value: serde_json::Value,
    /// `machine`, `profile NAME`, `global` or `default`.
    pub source: String,
    pub secret: bool,
}

/// `PATCH /api/v1/machines/{id}/params`: change a machine's params and profiles. Every value
/// is checked against its param's definition before anything is stored.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct UpdateMachineParams {
    /// Replace the profile list (omit to keep it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profiles: Option<Vec<String>>,
    /// Values to set.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub set: std::collections::BTreeMap<String, serde_json::Value>,
    /// Params whose own value to remove (the profiles' or default value applies again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unset: Vec<String>,
    /// Apply only if the params are still at this version (409 otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
}

/// One content file as sent by `anneal apply -f`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ContentFile {
    /// The path it was read from (named in every error about it).
    pub path: String,
    /// Its YAML.
    pub text: String,
}

/// `POST /api/v1/content`: create or update every object in these files, as one new content
/// version. Runs under way keep the version they were assigned with.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplyContent {
    pub files: Vec<ContentFile>,
    /// Check and report only; write nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What applying did to one object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AppliedObject {
    pub kind: crate::content::Kind,
    pub name: String,
    /// `created`, `updated` or `unchanged` (with `dry_run`: what would happen).
    pub action: String,
}

/// The answer to [`ApplyContent`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApplyReport {
    /// The content version now (unchanged when nothing changed).
    pub version: i64,
    pub dry_run: bool,
    pub objects: Vec<AppliedObject>,
}

/// A workflow as listed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkflowSummary {
    pub name: String,
    pub description: String,
    pub stages: Vec<String>,
    /// Contains a task that destroys data.
    pub destructive: bool,
    /// Defined by the server, not by applied content.
    pub builtin: bool,
}

/// Where a machine stands in the data centre. Every field is free text an operator sets.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Location {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rack: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
}

/// Why a machine may run a destructive workflow.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// An operator claimed it (`anneal machines claim`).
    Operator,
    /// It was created by an enrollment through a bootstrap token made with `new`.
    New,
    #[serde(other)]
    Unknown,
}

impl ClaimKind {
    /// The wire name, as stored, shown and selected (`claim=new`).
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimKind::Operator => "operator",
            ClaimKind::New => "new",
            ClaimKind::Unknown => "unknown",
        }
    }
}

/// A machine's licence for one destructive workflow: the assignment of one consumes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Claim {
    pub kind: ClaimKind,
    /// Who: the operator's API token id, or the bootstrap token's id.
    pub by: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
}

/// What the rules did with a machine.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum RuleResult {
    /// The first matching rule's workflow was assigned.
    Assigned,
    /// The first matching rule's workflow was refused (e.g. destructive, machine not claimed).
    Refused,
    /// No rule matched.
    NoMatch,
    /// Rules were not asked: the machine already had a workflow, or predates rules.
    Skipped,
    #[serde(other)]
    Unknown,
}

impl RuleResult {
    /// The wire name (`no_match`), also the metric label and the `rule_fired` event's state.
    pub fn as_str(self) -> &'static str {
        match self {
            RuleResult::Assigned => "assigned",
            RuleResult::Refused => "refused",
            RuleResult::NoMatch => "no_match",
            RuleResult::Skipped => "skipped",
            RuleResult::Unknown => "unknown",
        }
    }
}

/// The one time rules were asked about a machine: when it was first ready for work (its first
/// inventory stored, and approved where approval is required).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RuleOutcome {
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    /// The first rule whose selector matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Its workflow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    pub result: RuleResult,
    /// Why it was refused or skipped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `PATCH /api/v1/machines/{id}`: edit tags and location. Fields left out are kept.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UpdateMachine {
    /// The machine's `version` as read: the change is refused (409) if it changed since.
    /// Without it, the change applies to the machine as the server reads it now.
    #[serde(default)]
    pub version: Option<i64>,
    /// Tags to add.
    #[serde(default)]
    pub add_tags: Vec<String>,
    /// Tags to remove (a tag the machine does not have is ignored).
    #[serde(default)]
    pub remove_tags: Vec<String>,
    /// Location fields to set; an empty string clears a field.
    #[serde(default)]
    pub location: Location,
}

/// `POST /api/v1/workflows/{name}/assign`: assign a workflow to every machine a selector
/// matches.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkAssign {
    /// Which machines, e.g. `tag=web,product~PowerEdge,disks>=2` (see docs/workflows.md).
    pub selector: String,
    /// Report what would happen; assign nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a bulk assignment did to one machine.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum AssignResult {
    Assigned,
    /// Dry run: it would be assigned.
    WouldAssign,
    Refused,
    #[serde(other)]
    Unknown,
}

/// One machine a bulk assignment's selector matched.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkAssignment {
    pub machine_id: Uuid,
    pub hostname: Option<String>,
    pub result: AssignResult,
    /// Why it was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The new run, when assigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Uuid>,
}

/// The answer to [`BulkAssign`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BulkAssignReport {
    pub workflow: String,
    pub selector: String,
    pub dry_run: bool,
    /// The workflow's destructive tasks (empty: not destructive).
    pub destructive_tasks: Vec<String>,
    /// Every machine the selector matched, oldest first.
    pub machines: Vec<BulkAssignment>,
}
