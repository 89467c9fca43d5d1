//! Persistent state behind one trait. Nothing outside this module knows which engine is underneath.
//!
//! Every trait method is one transaction. Whatever can race between several `anneal serve`
//! instances sharing one database (token use, enrollment, machine state changes) is written as
//! compare-and-set: a conditional update whose affected-row count says who won, never a plain
//! read-modify-write. `conformance` holds the suite every engine must pass.

pub mod audit;
pub mod boot;
pub mod conformance;
mod conformance_audit;
mod conformance_fleet;
mod conformance_workflow;
pub mod fleet;
pub mod leases;
mod sqlite;
mod sqlite_audit;
mod sqlite_boot;
mod sqlite_fleet;
mod sqlite_leases;
mod sqlite_workflow;
pub mod workflow;

use std::path::Path;
use std::sync::Arc;

use anneal_shared::api::{MachineState, Role};
use anneal_shared::inventory::Inventory;
use anneal_shared::protocol::IdentityHints;
use anneal_shared::MachineId;
use async_trait::async_trait;
use time::OffsetDateTime;

use crate::identity::Evidence;

pub use audit::{AuditQuery, AuditStore};
pub use boot::{BootMachine, BootStore};
pub use fleet::{FleetRecord, FleetStore};
pub use leases::{LeaseOp, LeaseOutcome, LeaseRecord, LeaseState, LeaseStore};
pub use sqlite::SqliteStore;
pub use workflow::WorkflowStore;

/// A store error: the engine failed, or stored data could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database engine reported an error.
    #[error("database: {0}")]
    Db(String),
    /// A stored value could not be decoded.
    #[error("stored data is corrupt ({what}): {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// Signing the certificate inside an enrollment failed; nothing was written.
    #[error("signing the client certificate failed: {0}")]
    Signing(String),
}

/// Result alias for store operations.
pub type StoreResult<T> = Result<T, StoreError>;

/// Open the store named by `url` (`sqlite://PATH` or a plain path to a SQLite file).
pub async fn open(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    let path = url.strip_prefix("sqlite://").unwrap_or(url);
    Ok(Arc::new(SqliteStore::open(Path::new(path)).await?))
}

/// An operator API token as stored (only its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiTokenRecord {
    /// Public id, shown in listings and audit.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// What the token may do.
    pub role: Role,
    /// Free-text name.
    pub name: String,
    /// When it was made.
    pub created_at: OffsetDateTime,
}

/// A bootstrap (enrollment) token as stored (only its hash).
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapTokenRecord {
    /// Public id.
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub hash: String,
    /// Enrollments it still allows.
    pub uses_left: u32,
    /// After this it is refused.
    pub expires_at: OffsetDateTime,
    /// When set, only an enrollment presenting this MAC may use it.
    pub mac: Option<String>,
    /// Free text.
    pub description: Option<String>,
    /// When it was made.
    pub created_at: OffsetDateTime,
}

/// A machine as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineRecord {
    /// Server-assigned id.
    pub id: MachineId,
    /// Lifecycle state.
    pub state: MachineState,
    /// Hostname the agent reported.
    pub hostname: Option<String>,
    /// Latest identity evidence presented.
    pub identity: IdentityHints,
    /// Latest inventory.
    pub inventory: Option<Inventory>,
    /// When the inventory arrived.
    pub inventory_at: Option<OffsetDateTime>,
    /// Kernel boot id of the latest enrollment.
    pub boot_id: Option<String>,
    /// How many times it enrolled.
    pub enrollments: u32,
    /// First enrollment.
    pub created_at: OffsetDateTime,
    /// Latest heartbeat or enrollment.
    pub last_seen: Option<OffsetDateTime>,
    /// What the agent last said it was doing.
    pub status: Option<String>,
    /// Bumped on every change: the compare-and-set token for updates.
    pub version: i64,
    /// Warnings raised about this machine, oldest first.
    pub alerts: Vec<AlertRecord>,
    /// Tags, location, claim and rule outcome (see [`FleetStore`]).
    pub fleet: FleetRecord,
}

/// A warning on a machine.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertRecord {
    /// Short machine-readable kind, e.g. `reenroll_same_boot`.
    pub kind: String,
    /// Readable sentence.
    pub message: String,
    /// When it was raised.
    pub at: OffsetDateTime,
}

/// A client certificate the CA issued, as tracked for revocation.
#[derive(Debug, Clone, PartialEq)]
pub struct CertRecord {
    /// Canonical serial hex (see `pki`).
    pub serial: String,
    /// The machine it names.
    pub machine_id: MachineId,
    /// Expiry.
    pub not_after: OffsetDateTime,
    /// Set once revoked.
    pub revoked_at: Option<OffsetDateTime>,
}

/// A certificate issued inside an enrollment transaction.
#[derive(Debug, Clone)]
pub struct SignedCert {
    /// PEM of the client certificate.
    pub cert_pem: String,
    /// Canonical serial hex.
    pub serial: String,
    /// Expiry.
    pub not_after: OffsetDateTime,
}

/// Everything an enrollment needs; the store decides identity and consumes the token atomically.
#[derive(Debug, Clone)]
pub struct EnrollInput {
    /// Hex SHA-256 of the presented bootstrap token.
    pub token_hash: String,
    /// Normalised, usable identity evidence.
    pub evidence: Evidence,
    /// The raw hints, kept on the record for operators.
    pub hints: IdentityHints,
    /// Normalised MACs presented (for MAC-bound tokens), usable or not.
    pub macs: Vec<String>,
    /// Kernel boot id.
    pub boot_id: String,
    /// Reported hostname.
    pub hostname: Option<String>,
    /// New machines start `pending` when true.
    pub require_approval: bool,
    /// The server's clock.
    pub now: OffsetDateTime,
}

/// Why a bootstrap token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    /// No such token.
    Unknown,
    /// Past its expiry.
    Expired,
    /// No uses left.
    UsedUp,
    /// Bound to a MAC the enrolling machine does not have.
    WrongMac,
    /// Minted for a known machine (a rediscovery boot), and the evidence is not that machine.
    WrongMachine,
}

/// The outcome of an enrollment transaction.
#[derive(Debug, Clone)]
pub enum EnrollOutcome {
    /// The machine is enrolled and holds a new certificate.
    Enrolled {
        /// Its id.
        machine_id: MachineId,
        /// Whether the record was created now.
        created: bool,
        /// Its state after enrolling.
        state: MachineState,
        /// The certificate issued.
        cert: SignedCert,
        /// It had already enrolled with this kernel boot id (an alert was recorded).
        same_boot: bool,
        /// A retry of the token's last enrollment from the same boot (its answer was lost):
        /// answered again with a fresh certificate, the earlier one revoked, no use consumed.
        replayed: bool,
        /// The boot environment whose script minted the token it used (see
        /// `workflow::run::Event::Enrolled`).
        via_env: Option<String>,
    },
    /// Contradictory evidence: held for an operator, token not consumed.
    Quarantined {
        /// Quarantine entry id.
        id: String,
        /// Readable reason.
        reason: String,
    },
    /// The token was refused; nothing changed.
    TokenRefused(TokenRefusal),
}

/// A held-back enrollment.
#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRecord {
    /// Entry id.
    pub id: String,
    /// What the machine presented.
    pub identity: IdentityHints,
    /// Records the evidence points at.
    pub candidates: Vec<MachineId>,
    /// Readable reason.
    pub reason: String,
    /// Kernel boot id.
    pub boot_id: String,
    /// When last attempted.
    pub at: OffsetDateTime,
    /// How many enrollment attempts it stands for.
    pub attempts: u32,
}

/// One heartbeat, applied in batches (group commit).
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Who.
    pub machine_id: MachineId,
    /// What it says it is doing.
    pub status: String,
    /// When the server received it.
    pub at: OffsetDateTime,
}

/// What a heartbeat needs to know about its machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineBrief {
    /// Lifecycle state.
    pub state: MachineState,
    /// Whether an inventory is stored.
    pub has_inventory: bool,
    /// Whether its current workflow run has something for the agent (booting, ready or
    /// running): the heartbeat then says `work`.
    pub has_work: bool,
}

/// Result of a compare-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cas {
    /// Applied; the record now has this version.
    Done(i64),
    /// Someone else changed the record first (or it does not exist); nothing was written.
    Conflict,
}

/// The engine-neutral persistence interface. Concerns with their own tables add their methods
/// as supertraits, each in its own file (`boot.rs`: [`BootStore`], `workflow.rs`:
/// [`WorkflowStore`], `fleet.rs`: [`FleetStore`], `audit.rs`: [`AuditStore`]).
#[async_trait]
pub trait Store:
    LeaseStore + BootStore + WorkflowStore + FleetStore + AuditStore + Send + Sync
{
    /// Engine name for logs and `/healthz` (`sqlite`, `postgres`).
    fn engine(&self) -> &'static str;

    /// Cheap liveness probe.
    async fn ping(&self) -> StoreResult<()>;

    /// A setting or sealed secret.
    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>>;
    /// Store a setting unless one exists; true when this call wrote it. Several servers
    /// starting at once race here (e.g. creating the CA); exactly one wins.
    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<bool>;

    /// Add an operator API token.
    async fn insert_api_token(&self, token: &ApiTokenRecord) -> StoreResult<()>;
    /// Find an operator API token by the hash of its secret.
    async fn find_api_token(&self, hash: &str) -> StoreResult<Option<ApiTokenRecord>>;

    /// Add a bootstrap token.
    async fn insert_bootstrap_token(&self, token: &BootstrapTokenRecord) -> StoreResult<()>;
    /// Bootstrap tokens that are neither expired nor used up.
    async fn list_bootstrap_tokens(
        &self,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<BootstrapTokenRecord>>;

    /// Enroll in one transaction: check and consume the token, recognise or create the machine
    /// (see `identity`), record the certificate `sign` issues for the machine id.
    async fn enroll(
        &self,
        input: &EnrollInput,
        sign: &(dyn Fn(MachineId) -> Result<SignedCert, String> + Send + Sync),
    ) -> StoreResult<EnrollOutcome>;

    /// Record a certificate issued outside enrollment (renewal).
    async fn insert_cert(&self, cert: &CertRecord) -> StoreResult<()>;
    /// A certificate's record by serial.
    async fn get_cert(&self, serial: &str) -> StoreResult<Option<CertRecord>>;
    /// Revoke every certificate of a machine; returns how many were revoked now.
    async fn revoke_machine_certs(&self, id: MachineId, now: OffsetDateTime) -> StoreResult<u64>;

    /// All machines, oldest first.
    async fn list_machines(&self) -> StoreResult<Vec<MachineRecord>>;
    /// One machine.
    async fn get_machine(&self, id: MachineId) -> StoreResult<Option<MachineRecord>>;
    /// State, inventory presence and pending workflow work: one indexed read, cheap enough
    /// for every heartbeat.
    async fn machine_brief(&self, id: MachineId) -> StoreResult<Option<MachineBrief>>;
    /// Change a machine's state if its version is still `expected_version`.
    async fn set_machine_state(
        &self,
        id: MachineId,
        expected_version: i64,
        state: MachineState,
    ) -> StoreResult<Cas>;
    /// Replace a machine's inventory.
    async fn put_inventory(
        &self,
        id: MachineId,
        inventory: &Inventory,
        now: OffsetDateTime,
    ) -> StoreResult<()>;
    /// Apply a batch of heartbeats in one transaction.
    async fn record_heartbeats(&self, batch: &[Heartbeat]) -> StoreResult<()>;

    /// Held-back enrollments, newest first.
    async fn list_quarantine(&self) -> StoreResult<Vec<QuarantineRecord>>;
}

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// Back from stored milliseconds.
pub(crate) fn from_ms(ms: i64) -> StoreResult<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).map_err(|e| {
        StoreError::Corrupt {
            what: "timestamp",
            detail: e.to_string(),
        }
    })
}
