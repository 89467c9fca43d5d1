//! `anneal`: the provisioning server and its operator CLI.
//!
//! One folder or file per concern; `main.rs` only dispatches. See `docs/architecture.md`.

pub mod agent_api;
pub mod api;
pub mod app;
pub mod audit;
pub mod boot;
pub mod cli;
pub mod config;
pub mod content;
pub mod dhcp;
pub mod enroll;
pub mod events;
pub mod fleet;
pub mod heartbeat;
pub mod http_util;
pub mod identity;
pub mod metrics;
pub mod pki;
pub mod problem;
pub mod serve;
pub mod store;
pub mod tftp;
pub mod tls;
pub mod tokens;
pub mod workflow;

/// Install the workspace's one TLS crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
