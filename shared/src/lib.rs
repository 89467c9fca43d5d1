//! Types that cross the wire between `anneal` (server), `anneal-agent` and operator clients.
//!
//! One definition, used by every side. This crate does no I/O.
//!
//! Compatibility rule: every message carries [`PROTOCOL_VERSION`]; readers ignore unknown
//! fields (no `deny_unknown_fields` anywhere) and map unknown enum values to an `Unknown`
//! variant, so an older agent keeps working against a newer server and vice versa.

pub mod api;
pub mod cmdline;
pub mod content;
pub mod events;
pub mod inventory;
pub mod protocol;

/// Version of the agent protocol spoken by this build. Bumped only for incompatible changes.
pub const PROTOCOL_VERSION: u32 = 1;

/// The oldest agent protocol version this build still accepts.
pub const MIN_PROTOCOL_VERSION: u32 = 1;

/// Machine identifier assigned by the server (a UUIDv4, unrelated to the SMBIOS UUID).
pub type MachineId = uuid::Uuid;
