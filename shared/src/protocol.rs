//! The agent protocol: enrollment (server-authenticated TLS, CA pinned by fingerprint) and the
//! mutual-TLS agent API (heartbeat, inventory, certificate renewal).
//!
//! Paths are constants here so that client and server cannot disagree about them.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::inventory::Inventory;
use crate::MachineId;

/// Enrollment path prefix on the operator HTTPS listener (no client certificate required).
pub const ENROLL_PREFIX: &str = "/enroll/v1";
/// `GET`: the CA certificate in PEM.
pub const PATH_CA: &str = "/enroll/v1/ca.pem";
/// `GET`: the server's clock ([`TimeResponse`]), read before any certificate time check.
pub const PATH_TIME: &str = "/enroll/v1/time";
/// `POST`: [`EnrollRequest`] → [`EnrollResponse`].
pub const PATH_ENROLL: &str = "/enroll/v1/enroll";

/// Agent API paths on the mutual-TLS listener; `{id}` is the caller's own machine id.
pub fn path_heartbeat(id: MachineId) -> String {
    format!("/agent/v1/machines/{id}/heartbeat")
}
/// `PUT`: [`InventoryReport`].
pub fn path_inventory(id: MachineId) -> String {
    format!("/agent/v1/machines/{id}/inventory")
}
/// `POST`: [`RenewRequest`] → [`RenewResponse`].
pub fn path_renew(id: MachineId) -> String {
    format!("/agent/v1/machines/{id}/renew")
}
/// `POST`: [`BootReport`] (204): an installed agent's new kernel boot, from its own disk.
pub fn path_boot(id: MachineId) -> String {
    format!("/agent/v1/machines/{id}/boot")
}
/// `GET`: [`crate::api::Machine`] — the caller's own record.
pub fn path_machine(id: MachineId) -> String {
    format!("/agent/v1/machines/{id}")
}

/// `POST`: [`NextRequest`] → [`NextResponse`]: what to do next in the machine's workflow.
pub fn path_next(id: MachineId) -> String {
    format!("/agent/v1/machines/{id}/next")
}
/// `POST` (empty body): the agent is about to start this attempt. 204, or 409 when the attempt
/// is no longer the machine's current one (do not run it).
pub fn path_attempt_start(id: MachineId, attempt: uuid::Uuid) -> String {
    format!("/agent/v1/machines/{id}/attempts/{attempt}/start")
}
/// `PUT ?offset=N`, body the log bytes from byte N: → [`LogAck`] (200, or 409 with the length
/// the server has, to resume from).
pub fn path_attempt_log(id: MachineId, attempt: uuid::Uuid) -> String {
    format!("/agent/v1/machines/{id}/attempts/{attempt}/log")
}
/// `POST`: [`AttemptResult`]. 204, also for an exact repeat; 409 when the attempt is no
/// longer current.
pub fn path_attempt_result(id: MachineId, attempt: uuid::Uuid) -> String {
    format!("/agent/v1/machines/{id}/attempts/{attempt}/result")
}

/// Header carrying the server's clock on every response, in Unix milliseconds.
pub const HEADER_SERVER_TIME_MS: &str = "x-anneal-server-time-ms";

/// The server's clock, learned over the pinned connection before anything checks a certificate's
/// validity period (new hardware often has an RTC years off).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimeResponse {
    pub protocol: u32,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: i64,
}

/// What a machine says about itself to be recognised. Every field is optional evidence; the
/// server decides what identifies (placeholders such as all-zero UUIDs never do).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IdentityHints {
    /// SMBIOS system UUID as Linux presents it (`/sys/class/dmi/id/product_uuid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseboard_serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    /// `/etc/machine-id` of an installed OS (agents outside the discovery image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_machine_id: Option<String>,
    /// MAC addresses of physical NICs (lower-case, colon-separated).
    #[serde(default)]
    pub macs: Vec<Nic>,
}

/// A NIC as identity evidence.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Nic {
    pub mac: String,
    /// Bus the NIC sits on (`pci`, `usb`, …): USB NICs are often a BMC's host interface, shared
    /// by a whole fleet, and never identify.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bus: Option<String>,
}

/// `POST /enroll/v1/enroll`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub protocol: u32,
    /// The bootstrap token (never logged).
    pub token: String,
    /// PKCS#10 CSR in PEM; the server keeps only the public key from it.
    pub csr_pem: String,
    pub identity: IdentityHints,
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): a new one marks a reboot.
    pub boot_id: String,
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub hostname: String,
    /// An installed agent (`anneal-agent run --installed`) names the boot environment it runs
    /// in; with a token no boot script minted, the server takes this enrollment as that boot
    /// (the environment must be flagged `installed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
}

/// Successful enrollment: the client certificate and where the mutual-TLS agent API listens.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub protocol: u32,
    pub machine_id: MachineId,
    /// Client certificate in PEM (SAN = `urn:anneal:machine:<id>`).
    pub cert_pem: String,
    pub ca_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// Base URL of the mutual-TLS agent API, e.g. `https://10.0.0.1:8444`.
    pub agent_url: String,
    /// Whether this enrollment created the machine record.
    #[serde(default)]
    pub created: bool,
}

/// `PUT /agent/v1/machines/{id}/inventory`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InventoryReport {
    pub protocol: u32,
    pub boot_id: String,
    pub inventory: Inventory,
}

/// `POST /agent/v1/machines/{id}/boot`: an installed agent started in a new kernel boot with
/// the certificate it kept. The server takes it as that boot of `environment` (which must be
/// flagged `installed`), like an enrollment: it may cross the workflow's stage boundary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BootReport {
    pub protocol: u32,
    /// The kernel's boot id now.
    pub boot_id: String,
    /// The boot environment the agent runs in (`installed`, or an operator's own).
    pub environment: String,
}

/// `POST /agent/v1/machines/{id}/heartbeat`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    pub protocol: u32,
    pub boot_id: String,
    /// What the agent is doing, shown on the machine's record.
    #[serde(default)]
    pub status: String,
}

/// Answer to a heartbeat: what the agent should do next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    pub protocol: u32,
    pub directive: Directive,
    /// Seconds until the next heartbeat (the agent adds jitter).
    pub interval_secs: u32,
    pub unix_ms: i64,
}

/// What the server tells an agent to do. Unknown values from a newer server map to `Unknown`,
/// which an agent treats like `Wait`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Directive {
    /// Nothing to do yet; keep heartbeating.
    Wait,
    /// The machine awaits operator approval (`anneal machines approve`).
    AwaitApproval,
    /// Re-send the inventory (the server has none for this boot).
    SendInventory,
    /// The machine's workflow has something for it: ask `next`.
    Work,
    #[serde(other)]
    Unknown,
}

/// `POST /agent/v1/machines/{id}/next`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextRequest {
    pub protocol: u32,
    /// The kernel boot id the agent runs in.
    pub boot_id: String,
}

/// What to do next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NextResponse {
    pub protocol: u32,
    pub action: NextAction,
}

/// The workflow's instruction. Unknown values from a newer server map to `Unknown`, which an
/// agent treats like `Wait`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum NextAction {
    /// Run this job: acknowledge its start first, stream its log, report its result.
    Job(Job),
    /// Reboot now (the server has already switched the machine's boot environment).
    Reboot,
    /// Power the machine off.
    PowerOff,
    /// Nothing to do now; ask again after `retry_secs` or when a heartbeat says `work`.
    Wait { retry_secs: u32 },
    /// The workflow is done.
    Done,
    #[serde(other)]
    Unknown,
}

/// One attempt of a task, rendered for this machine.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Job {
    /// The attempt's id: every report names it.
    pub attempt: uuid::Uuid,
    pub workflow: String,
    pub stage: String,
    pub task: String,
    pub work: JobWork,
    /// Kill it after this long.
    pub timeout_secs: u32,
    /// Values to replace with `********` in the log before it leaves the machine (secret
    /// params the job uses).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redact: Vec<String>,
}

/// What a job runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum JobWork {
    /// A shell script, run by `/bin/sh`.
    Script { script: String },
    /// A built-in agent action.
    Action {
        name: String,
        #[serde(default)]
        args: serde_json::Map<String, serde_json::Value>,
    },
    #[serde(other)]
    Unknown,
}

/// Answer to a log chunk: the log's length on the server.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LogAck {
    pub protocol: u32,
    pub length: u64,
}

/// `POST …/attempts/{attempt}/result`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptResult {
    pub protocol: u32,
    /// Whether it succeeded.
    pub ok: bool,
    /// The script's exit code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Why it failed, in a line.
    #[serde(default)]
    pub reason: String,
    /// A built-in action's structured result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// The log's total length in bytes (the server checks it has them all).
    #[serde(default)]
    pub log_length: u64,
}

/// `POST /agent/v1/machines/{id}/renew`: a new CSR for a fresh certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewRequest {
    pub protocol: u32,
    pub csr_pem: String,
}

/// A renewed client certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RenewResponse {
    pub protocol: u32,
    pub cert_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
}

/// The URI SAN that names a machine in its client certificate.
pub fn machine_uri(id: MachineId) -> String {
    format!("urn:anneal:machine:{id}")
}

/// The machine id named by a client certificate's URI SAN, if it is one of ours.
pub fn machine_from_uri(uri: &str) -> Option<MachineId> {
    uri.strip_prefix("urn:anneal:machine:")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_directive_and_fields_are_tolerated() {
        let json = r#"{"protocol":7,"directive":"install_os_v9","interval_secs":10,"unix_ms":1,"new_field":[1,2]}"#;
        let r: HeartbeatResponse = serde_json::from_str(json).unwrap();
        assert_eq!(r.directive, Directive::Unknown);
    }

    #[test]
    fn next_actions_round_trip_and_unknown_ones_are_tolerated() {
        let job = NextAction::Job(Job {
            attempt: uuid::Uuid::nil(),
            workflow: "w".into(),
            stage: "s".into(),
            task: "t".into(),
            work: JobWork::Script {
                script: "echo hi".into(),
            },
            timeout_secs: 60,
            redact: vec![],
        });
        let text = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<NextAction>(&text).unwrap(), job);
        let later: NextAction =
            serde_json::from_str(r#"{"action":"firmware_update","x":1}"#).unwrap();
        assert_eq!(later, NextAction::Unknown);
        let w: NextAction = serde_json::from_str(r#"{"action":"wait","retry_secs":5}"#).unwrap();
        assert_eq!(w, NextAction::Wait { retry_secs: 5 });
    }

    #[test]
    fn machine_uri_round_trips() {
        let id = uuid::Uuid::new_v4();
        assert_eq!(machine_from_uri(&machine_uri(id)), Some(id));
        assert_eq!(machine_from_uri("urn:other:x"), None);
    }
}
