//! Fleet operations (see `docs/workflows.md`, "Fleet operations"): machines chosen by
//! selector, edited, claimed, and given workflows in bulk or by rules, with destructive
//! workflows kept away from machines nobody claimed.
//!
//! - [`selector`]: the selector language (`tag=web,product~PowerEdge,disks>=2`).
//! - [`labels`]: tags and location, their syntax and edits.
//! - [`guard`]: every assignment goes through it; destructive workflows need a claim.
//! - [`bulk`]: one workflow to every machine a selector matches.
//! - [`rules`]: a workflow for a newly discovered machine, once.

pub mod bulk;
pub mod guard;
pub mod labels;
pub mod rules;
pub mod selector;
