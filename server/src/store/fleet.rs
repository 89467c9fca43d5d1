//! What fleet operations (`crate::fleet`) need from the store: tags and location edited by
//! compare-and-set, the claim that licenses one destructive workflow, the once-only record of
//! what the rules did, and bootstrap tokens that mark the machines they create as new.
//!
//! The columns live on the machine record ([`FleetRecord`] in [`super::MachineRecord`]), so
//! every listing carries them and the machine's version covers them.

use anneal_shared::api::{Claim, Location, RuleOutcome};
use anneal_shared::MachineId;
use async_trait::async_trait;

use super::{Cas, StoreResult};

/// A machine's operator-set attributes and fleet state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetRecord {
    /// Tags, sorted and unique.
    pub tags: Vec<String>,
    /// Where it stands.
    pub location: Location,
    /// Its licence for one destructive workflow, if any.
    pub claim: Option<Claim>,
    /// What the rules did, once they were asked.
    pub rule: Option<RuleOutcome>,
}

/// Store methods of fleet operations.
#[async_trait]
pub trait FleetStore: Send + Sync {
    /// Replace a machine's tags and location if its version is still `expected_version`.
    async fn set_labels(
        &self,
        id: MachineId,
        expected_version: i64,
        tags: &[String],
        location: &Location,
    ) -> StoreResult<Cas>;

    /// Set or clear a machine's claim if its version is still `expected_version`.
    async fn set_claim(
        &self,
        id: MachineId,
        expected_version: i64,
        claim: Option<&Claim>,
    ) -> StoreResult<Cas>;

    /// Take (clear and return) a machine's claim: of several concurrent callers exactly one
    /// gets it. `Ok(None)` when it has none.
    async fn take_claim(&self, id: MachineId) -> StoreResult<Option<Claim>>;

    /// Give back a claim taken for an assignment that then failed, unless the machine was
    /// claimed again meanwhile.
    async fn restore_claim(&self, id: MachineId, claim: &Claim) -> StoreResult<()>;

    /// Record what the rules did, only if nothing is recorded yet: true when this call wrote
    /// it (and so owns the one firing of the rules for this machine).
    async fn record_rule_once(&self, id: MachineId, outcome: &RuleOutcome) -> StoreResult<bool>;

    /// Replace the recorded rule outcome (the assignment it announced was refused).
    async fn update_rule(&self, id: MachineId, outcome: &RuleOutcome) -> StoreResult<()>;

    /// Make a bootstrap token mark the machines its enrollments create as new. False when
    /// there is no such token.
    async fn mark_token_new(&self, token_id: &str) -> StoreResult<bool>;

    /// Ids of the bootstrap tokens that mark new machines.
    async fn tokens_marking_new(&self) -> StoreResult<Vec<String>>;
}
