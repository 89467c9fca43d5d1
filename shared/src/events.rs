//! Server events (`GET /api/v1/events`, server-sent events) and audit entries
//! (`GET /api/v1/audit`), shared by the server and the `anneal` CLI.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

/// What happened. Unknown kinds from a newer server read as [`EventKind::Unknown`].
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A machine enrolled; `state` says `created` or `recognised`.
    MachineEnrolled,
    /// An enrollment was held back for conflicting identity evidence.
    MachineQuarantined,
    /// An installed agent reported a new kernel boot of `boot_env` with the certificate it
    /// kept (`reason`: the boot id).
    MachineBooted,
    /// A machine's agent stored its inventory.
    InventoryStored,
    /// An operator approved a pending machine.
    MachineApproved,
    /// An operator revoked a machine's certificates.
    MachineRevoked,
    /// An operator asked a machine to boot the discovery image next.
    RediscoverRequested,
    /// The boot service served a known machine the script of `boot_env`.
    ScriptServed,
    /// An operator changed a machine's tags, location or params (`reason` says which).
    MachineUpdated,
    /// A machine was claimed for a destructive workflow (`state`: `claimed`), or its claim was
    /// given up (`unclaimed`).
    MachineClaimed,
    /// The rules were asked about a newly ready machine (`state`: assigned, refused, no_match,
    /// skipped; `reason`: the rule, or why it was refused).
    RuleFired,
    /// The DHCP server bound (or renewed) a lease: `mac`, `address`.
    LeaseBound,
    /// A client released its lease.
    LeaseReleased,
    /// A client declined its address (in use on the wire): it is held out of use a while.
    LeaseDeclined,
    /// A bootstrap token was created.
    TokenCreated,
    /// Workflow content was applied as a new version.
    ContentApplied,
    /// A workflow was assigned to a machine (a new run).
    RunAssigned,
    /// A run's phase changed (to `phase`).
    RunPhase,
    /// A run crossed into a stage.
    StageEntered,
    /// A machine's boot environment for its next PXE boots changed.
    BootEnvSet,
    /// An attempt of a task was handed out.
    AttemptCreated,
    /// The agent started an attempt.
    AttemptStarted,
    /// An attempt ended (`state`: succeeded, failed, timed_out, interrupted, cancelled).
    AttemptEnded,
    /// The stream skipped events (the client asked from an id no longer held, or fell
    /// behind): re-read the state you show, then go on from this event's id.
    Reset,
    /// A kind this build does not know.
    #[default]
    #[serde(other)]
    Unknown,
}

impl EventKind {
    /// Every kind a server emits, for help texts and filters.
    pub const ALL: [EventKind; 24] = [
        EventKind::MachineEnrolled,
        EventKind::MachineQuarantined,
        EventKind::MachineBooted,
        EventKind::InventoryStored,
        EventKind::MachineApproved,
        EventKind::MachineRevoked,
        EventKind::RediscoverRequested,
        EventKind::ScriptServed,
        EventKind::MachineUpdated,
        EventKind::MachineClaimed,
        EventKind::RuleFired,
        EventKind::LeaseBound,
        EventKind::LeaseReleased,
        EventKind::LeaseDeclined,
        EventKind::TokenCreated,
        EventKind::ContentApplied,
        EventKind::RunAssigned,
        EventKind::RunPhase,
        EventKind::StageEntered,
        EventKind::BootEnvSet,
        EventKind::AttemptCreated,
        EventKind::AttemptStarted,
        EventKind::AttemptEnded,
        EventKind::Reset,
    ];

    /// The wire name (also the SSE `event:` field).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::MachineEnrolled => "machine_enrolled",
            EventKind::MachineQuarantined => "machine_quarantined",
            EventKind::MachineBooted => "machine_booted",
            EventKind::InventoryStored => "inventory_stored",
            EventKind::MachineApproved => "machine_approved",
            EventKind::MachineRevoked => "machine_revoked",
            EventKind::RediscoverRequested => "rediscover_requested",
            EventKind::ScriptServed => "script_served",
            EventKind::MachineUpdated => "machine_updated",
            EventKind::MachineClaimed => "machine_claimed",
            EventKind::RuleFired => "rule_fired",
            EventKind::LeaseBound => "lease_bound",
            EventKind::LeaseReleased => "lease_released",
            EventKind::LeaseDeclined => "lease_declined",
            EventKind::TokenCreated => "token_created",
            EventKind::ContentApplied => "content_applied",
            EventKind::RunAssigned => "run_assigned",
            EventKind::RunPhase => "run_phase",
            EventKind::StageEntered => "stage_entered",
            EventKind::BootEnvSet => "boot_env_set",
            EventKind::AttemptCreated => "attempt_created",
            EventKind::AttemptStarted => "attempt_started",
            EventKind::AttemptEnded => "attempt_ended",
            EventKind::Reset => "reset",
            EventKind::Unknown => "unknown",
        }
    }

    /// Back from [`EventKind::as_str`]; None for names no server emits.
    pub fn parse(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// One event. `id` is `<epoch>-<seq>`: the epoch names the server process, the sequence number
/// grows by one per event, so a client resumes with `Last-Event-ID`. Every field past `kind`
/// is present only when it applies; a workflow event carries enough (workflow, stage i of n,
/// task, phase) to draw a machine's progress without another request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Event {
    pub id: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    pub kind: EventKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The stage's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// The stage's index (from 0) among `stage_count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_index: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage_count: Option<usize>,
    /// The task's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task: Option<String>,
    /// The task's index (from 0) among the stage's `task_count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_index: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_count: Option<usize>,
    /// The run's phase after the change (`booting`, `ready`, `running`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<Uuid>,
    /// An attempt's end state, a machine's state, or an enrollment's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_env: Option<String>,
    /// Why (a failure, a reset), or what (a token's id, a content version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A DHCP client's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// An IPv4 address (a lease's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Default for Event {
    fn default() -> Event {
        Event {
            id: String::new(),
            at: OffsetDateTime::UNIX_EPOCH,
            kind: EventKind::Unknown,
            machine_id: None,
            hostname: None,
            run_id: None,
            workflow: None,
            stage: None,
            stage_index: None,
            stage_count: None,
            task: None,
            task_index: None,
            task_count: None,
            phase: None,
            attempt: None,
            state: None,
            boot_env: None,
            reason: None,
            mac: None,
            address: None,
        }
    }
}

impl Event {
    /// An event of `kind` with nothing else filled in (the server sets `id` and `at`).
    pub fn of(kind: EventKind) -> Event {
        Event {
            kind,
            ..Event::default()
        }
    }

    /// The same event about `machine`.
    pub fn machine(mut self, machine: Uuid) -> Event {
        self.machine_id = Some(machine);
        self
    }
}

/// Who made a change through the operator API.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditActor {
    /// The API token's public id.
    pub token_id: String,
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: crate::api::Role,
    /// The client's address (`ip:port`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// One recorded change: who, from where, when, what, and the object before and after
/// (secrets never included).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    pub id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: OffsetDateTime,
    pub actor: AuditActor,
    /// What was done, e.g. `machine.approve`, `workflow.assign`, `token.create`.
    pub action: String,
    /// The kind of object changed: `machine`, `token`, `content`.
    pub target_kind: String,
    /// The object's id or name.
    pub target: String,
    /// The machine concerned, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_unknown_kinds_are_tolerated() {
        for k in EventKind::ALL {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        let e: Event = serde_json::from_str(
            r#"{"id":"1-1","at":"2026-01-01T00:00:00Z","kind":"from_the_future","x":1}"#,
        )
        .unwrap();
        assert_eq!(e.kind, EventKind::Unknown);
        assert_eq!(EventKind::parse("unknown"), None);
    }
}
