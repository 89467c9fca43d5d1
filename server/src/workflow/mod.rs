//! Workflows: multi-boot stage sequences (see `docs/workflows.md`).
//!
//! - [`plan`]: a workflow resolved and pinned at assignment.
//! - [`run`]: the pure state machine every agent report, boot and operator action goes through.

pub mod plan;
pub mod run;
