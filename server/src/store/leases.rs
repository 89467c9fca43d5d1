//! DHCP leases: the part of the store the DHCP server needs (see `crate::dhcp`).
//!
//! An address is held by at most one MAC at a time, under any number of servers sharing the
//! database: every change is a conditional write on the address's row (insert, or update only
//! while the row is free or already this MAC's), never a read-modify-write. Operations come in
//! batches, each batch one transaction (group commit), each operation deciding on its own.

use std::net::Ipv4Addr;

use async_trait::async_trait;
use time::OffsetDateTime;

use super::StoreResult;

/// Where a lease is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// Offered, held briefly for the client's REQUEST.
    Offered,
    /// Acknowledged: the client uses it until `expires_at`.
    Bound,
    /// Given back by the client (RELEASE); free, but remembered for that client.
    Released,
    /// The client found it in use by someone else (DECLINE); unusable until `expires_at`.
    Declined,
}

impl LeaseState {
    /// Stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LeaseState::Offered => "offered",
            LeaseState::Bound => "bound",
            LeaseState::Released => "released",
            LeaseState::Declined => "declined",
        }
    }

    /// From the stored spelling.
    pub fn parse(s: &str) -> Option<LeaseState> {
        Some(match s {
            "offered" => LeaseState::Offered,
            "bound" => LeaseState::Bound,
            "released" => LeaseState::Released,
            "declined" => LeaseState::Declined,
            _ => return None,
        })
    }
}

/// A lease as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseRecord {
    /// The address.
    pub ip: Ipv4Addr,
    /// Who holds (or last held) it, lowercase `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// The subnet it belongs to, as configured (`10.0.0.0/24`).
    pub subnet: String,
    /// Its state.
    pub state: LeaseState,
    /// When the offer, binding or decline runs out.
    pub expires_at: OffsetDateTime,
    /// Hostname the client sent, if any.
    pub hostname: Option<String>,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// One lease change, decided inside the store.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseOp {
    /// Pick an address for `mac` and hold it until `hold_until`: its reservation (`fixed`)
    /// only, if it has one; else its current address, else `requested`, else a never-used
    /// address of `range`, else the longest-expired one. Addresses in `exclude` (other
    /// clients' reservations) are never picked from the range.
    Offer {
        /// Subnet name.
        subnet: String,
        /// Client.
        mac: String,
        /// Dynamic range, inclusive.
        range: (Ipv4Addr, Ipv4Addr),
        /// The client's reserved address: offered or nothing.
        fixed: Option<Ipv4Addr>,
        /// Option 50.
        requested: Option<Ipv4Addr>,
        /// Never hand these out dynamically.
        exclude: Vec<Ipv4Addr>,
        /// Offer hold time.
        hold_until: OffsetDateTime,
        /// Option 12.
        hostname: Option<String>,
    },
    /// Bind `ip` to `mac` until `expires_at`, if the address is free or already this MAC's.
    Bind {
        /// Subnet name.
        subnet: String,
        /// Client.
        mac: String,
        /// Address.
        ip: Ipv4Addr,
        /// End of the lease.
        expires_at: OffsetDateTime,
        /// Option 12.
        hostname: Option<String>,
    },
    /// The client gives `ip` back (only if it holds it).
    Release {
        /// Client.
        mac: String,
        /// Address.
        ip: Ipv4Addr,
    },
    /// The client says `ip` is in use by someone else: quarantine it until `until`.
    Decline {
        /// Client.
        mac: String,
        /// Address.
        ip: Ipv4Addr,
        /// Not offered again before this.
        until: OffsetDateTime,
    },
}

/// What one [`LeaseOp`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum LeaseOutcome {
    /// Offer: this address is held for the client. Bind: the lease is durable.
    Leased(Ipv4Addr),
    /// No address could be given (range exhausted, or the reservation is held by another MAC).
    Exhausted,
    /// Bind: the address belongs to someone else (or is declined).
    Conflict,
    /// Release / decline applied (true) or not applicable (false: not this client's).
    Applied(bool),
}

/// Lease persistence: a supertrait of [`super::Store`].
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Apply `ops` in order in one transaction; one outcome per op.
    async fn apply_lease_ops(
        &self,
        ops: &[LeaseOp],
        now: OffsetDateTime,
    ) -> StoreResult<Vec<LeaseOutcome>>;
    /// The row of one address.
    async fn get_lease(&self, ip: Ipv4Addr) -> StoreResult<Option<LeaseRecord>>;
    /// All rows naming `mac`.
    async fn leases_of(&self, mac: &str) -> StoreResult<Vec<LeaseRecord>>;
    /// Every row, by address.
    async fn list_leases(&self) -> StoreResult<Vec<LeaseRecord>>;
}
