//! Workflows: multi-boot stage sequences (see `docs/workflows.md`).
//!
//! - [`plan`]: a workflow resolved and pinned at assignment.
//! - [`run`]: the pure state machine every agent report, boot and operator action goes through.
//! - [`events`]: what each committed step tells followers of `/api/v1/events`.
//! - [`installed`]: agents on an installed OS — which environments they may name, their boot
//!   reports.
//! - [`retention`]: finished jobs' logs deleted after the configured number of days.
//! - [`service`]: the calls the API, agent API, boot service and enrollment make; each one
//!   step committed with its effects in one store transaction.

pub mod events;
pub mod installed;
pub mod plan;
pub mod retention;
pub mod run;
pub mod service;
