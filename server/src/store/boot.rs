//! What the boot service (`crate::boot`) needs from the store: routing a PXE client to a boot
//! environment, and minting machine-bound bootstrap tokens.
//!
//! A separate trait so the boot concern stays in its own files; [`super::Store`] requires it.
//! The enrollment transaction (`Store::enroll`) keeps the boot routing data up to date: it
//! records every MAC the machine presented in the boot-MAC index, clears a pending
//! rediscovery request, and refuses a machine-bound token for any other machine.

use anneal_shared::MachineId;
use async_trait::async_trait;
use time::OffsetDateTime;

use super::{BootstrapTokenRecord, StoreResult};

/// The boot environment an operator asked a known machine to boot into next.
pub const BOOT_ENV_DISCOVERY: &str = "discovery";

/// A known machine found for a booting PXE client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootMachine {
    /// The machine.
    pub id: MachineId,
    /// How it was found: `uuid` or `mac`.
    pub matched_by: &'static str,
    /// The boot environment an operator requested for its next boot, if any.
    pub requested_env: Option<String>,
    /// The boot environment its workflow assigned, if any (the request goes first).
    pub assigned_env: Option<String>,
}

/// Store methods of the boot service.
#[async_trait]
pub trait BootStore: Send + Sync {
    /// The machine a PXE client is, if known: first by SMBIOS UUID (canonical text; its
    /// byte-swapped form counts too) through the identifiers table, then by `mac` (canonical)
    /// through the boot-MAC index. Routing only: never used to decide identity.
    async fn boot_lookup(
        &self,
        uuid: Option<&str>,
        mac: Option<&str>,
    ) -> StoreResult<Option<BootMachine>>;

    /// Add a bootstrap token, optionally bound to a known machine: enrollment with it then
    /// succeeds only when the identity decision is that machine. `boot_env`: the environment
    /// whose script carries it, reported with the enrollment it makes.
    async fn insert_boot_token(
        &self,
        token: &BootstrapTokenRecord,
        machine_id: Option<MachineId>,
        boot_env: Option<&str>,
    ) -> StoreResult<()>;

    /// Ask a known machine to boot `env` (e.g. [`BOOT_ENV_DISCOVERY`]) at its next PXE boot,
    /// until it enrolls again. False when there is no such machine.
    async fn request_boot_env(
        &self,
        id: MachineId,
        env: &str,
        now: OffsetDateTime,
    ) -> StoreResult<bool>;

    /// The MACs in the boot-MAC index for a machine, sorted.
    async fn boot_macs_of(&self, id: MachineId) -> StoreResult<Vec<String>>;
}
