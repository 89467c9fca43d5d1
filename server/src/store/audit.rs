//! What the audit log (`crate::audit`) needs from the store: append an entry, list entries.
//!
//! A separate trait so the audit concern stays in its own files; [`super::Store`] requires it.

use anneal_shared::events::AuditEntry;
use anneal_shared::MachineId;
use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreResult;

/// Which entries to list; empty parts match everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AuditQuery {
    /// Only entries about this machine.
    pub machine: Option<MachineId>,
    /// Only entries whose target (id or name) is this.
    pub target: Option<String>,
    /// Only entries made with this API token (its id or its name).
    pub actor: Option<String>,
    /// Only entries at or after this time.
    pub since: Option<OffsetDateTime>,
    /// At most this many, newest first.
    pub limit: u32,
}

/// Store methods of the audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Append one entry.
    async fn record_audit(&self, entry: &AuditEntry) -> StoreResult<()>;

    /// Entries matching `q`, newest (last recorded) first.
    async fn list_audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>>;
}
