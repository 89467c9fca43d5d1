//! `anneal-agent`: inventories a machine and works for an Anneal server over mutual TLS.

pub mod cli;
pub mod client;
pub mod clock;
pub mod inventory;
pub mod joblog;
pub mod jobs;
pub mod runner;
pub mod simulate;
pub mod simulate_workflow;
pub mod state;
pub mod status;
pub mod tls;

/// Install the workspace's one TLS crypto provider (ring). Idempotent.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
