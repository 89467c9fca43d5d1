//! TEMPORARY STUB — replaced by the inventory branch.
use anneal_shared::inventory::Inventory;
use anneal_shared::protocol::IdentityHints;
/// Stub.
pub struct CollectOptions {
    pub sysroot: std::path::PathBuf,
    pub run_tools: bool,
    pub lldp_listen: std::time::Duration,
    pub agent_version: String,
}
/// Stub.
pub async fn collect(_o: &CollectOptions) -> Inventory {
    Inventory::default()
}
/// Stub.
pub fn identity_hints(_i: &Inventory) -> IdentityHints {
    IdentityHints::default()
}
