//! The agent's main loop: learn the clock, enroll, report the inventory, heartbeat and follow
//! the server's directives; every failure is logged with its reason and retried with jittered
//! backoff, never fatal unless retrying cannot help.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anneal_shared::protocol::Directive;
use anyhow::{Context, Result};
use rand::Rng;

use crate::client::{ClientError, Enroller, Session};
use crate::clock::Clock;
use crate::inventory::{self, CollectOptions};

/// Everything `anneal-agent run` needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// `https://host:port` of the enrollment endpoint.
    pub url: String,
    /// `sha256:HEX` of the server's CA.
    pub ca_fingerprint: String,
    /// Bootstrap token.
    pub token: String,
    /// Where to read the machine from.
    pub sysroot: PathBuf,
    /// Run smartctl/ipmitool when present.
    pub run_tools: bool,
    /// LLDP listen time per link.
    pub lldp_listen: Duration,
    /// Kernel boot id (read from the sysroot when None).
    pub boot_id: Option<String>,
    /// Enroll, report, heartbeat once, then exit.
    pub once: bool,
}

/// Exponential backoff with ±25 % jitter, so a rack that lost the server does not come back
/// in lockstep.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
    max: Duration,
}

impl Backoff {
    /// Starts at 1 s, doubles to `max`.
    pub fn new(max: Duration) -> Backoff {
        Backoff { attempt: 0, max }
    }
    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let base = Duration::from_secs(1u64 << self.attempt.min(16)).min(self.max);
        self.attempt += 1;
        jitter(base)
    }
    /// Start over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// `d` ± 25 %.
pub fn jitter(d: Duration) -> Duration {
    let f: f64 = rand::thread_rng().gen_range(0.75..1.25);
    d.mul_f64(f)
}

fn read_boot_id(cfg: &RunConfig) -> String {
    if let Some(b) = &cfg.boot_id {
        return b.clone();
    }
    std::fs::read_to_string(cfg.sysroot.join("proc/sys/kernel/random/boot_id"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| uuid::Uuid::new_v4().to_string())
}

async fn collect(cfg: &RunConfig) -> anneal_shared::inventory::Inventory {
    inventory::collect(&CollectOptions {
        sysroot: cfg.sysroot.clone(),
        run_tools: cfg.run_tools,
        lldp_listen: cfg.lldp_listen,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    })
    .await
}

/// Enroll, retrying what can be retried.
async fn enroll_until_done(
    cfg: &RunConfig,
    enroller: &Enroller,
    inv: &anneal_shared::inventory::Inventory,
    boot_id: &str,
) -> Result<Session> {
    let hints = inventory::identity_hints(inv);
    let hostname = inv
        .os
        .as_ref()
        .and_then(|o| o.hostname.clone())
        .unwrap_or_default();
    let mut backoff = Backoff::new(Duration::from_secs(60));
    loop {
        match enroller
            .enroll(&cfg.token, hints.clone(), boot_id, &hostname)
            .await
        {
            Ok(s) => return Ok(s),
            Err(e @ ClientError::FingerprintMismatch { .. })
            | Err(e @ ClientError::BadFingerprint(_)) => {
                return Err(e).context("enrollment");
            }
            Err(e @ ClientError::Quarantined(_)) if cfg.once => {
                return Err(e)
                    .context("enrollment (an operator must resolve it: anneal quarantine)")
            }
            Err(e) if cfg.once && !e.is_transient() => return Err(e).context("enrollment"),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "enrollment failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Run the agent until it is told to stop (or, with `once`, after one round).
pub async fn run(cfg: RunConfig, clock: Arc<Clock>) -> Result<()> {
    let enroller = Enroller::new(&cfg.url, &cfg.ca_fingerprint, clock.clone())?;
    let mut backoff = Backoff::new(Duration::from_secs(60));
    loop {
        match enroller.sync_clock().await {
            Ok(offset) => {
                tracing::info!(offset_ms = offset, "learned the server's clock");
                break;
            }
            Err(e @ ClientError::FingerprintMismatch { .. }) => return Err(e.into()),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "cannot reach the server yet");
                tokio::time::sleep(wait).await;
            }
        }
    }
    let boot_id = read_boot_id(&cfg);
    // Collector failures are logged by the inventory module and reported inside the inventory.
    let mut inv = collect(&cfg).await;
    let mut session = enroll_until_done(&cfg, &enroller, &inv, &boot_id).await?;
    tracing::info!(machine_id = %session.machine_id, agent_url = %session.agent_url, "enrolled");

    let mut inventory_sent = false;
    let mut backoff = Backoff::new(Duration::from_secs(60));
    loop {
        if !inventory_sent {
            match session.send_inventory(&inv).await {
                Ok(()) => {
                    inventory_sent = true;
                    tracing::info!(
                        disks = inv.disks.len(),
                        nics = inv.nics.len(),
                        "inventory sent"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "sending the inventory failed; will retry"),
            }
        }
        if session.needs_renewal() {
            match session.renew().await {
                Ok(()) => tracing::info!(not_after = %session.not_after, "certificate renewed"),
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed; will retry"),
            }
        }
        let status = if inventory_sent {
            "idle"
        } else {
            "reporting inventory"
        };
        let wait = match session.heartbeat(status).await {
            Ok(hb) => {
                backoff.reset();
                match hb.directive {
                    Directive::SendInventory if inventory_sent => {
                        inv = collect(&cfg).await;
                        inventory_sent = false;
                    }
                    Directive::AwaitApproval => {
                        tracing::info!("waiting for an operator to approve this machine")
                    }
                    _ => {}
                }
                if cfg.once && inventory_sent {
                    return Ok(());
                }
                jitter(Duration::from_secs(hb.interval_secs.max(1) as u64))
            }
            Err(e @ ClientError::Unauthorized(_)) => {
                // Revoked or forgotten: a new enrollment needs a new token; keep trying slowly
                // so the operator sees the machine the moment they issue one.
                if cfg.once {
                    return Err(e.into());
                }
                tracing::error!(error = %e, "certificate refused; re-enrolling");
                session = enroll_until_done(&cfg, &enroller, &inv, &boot_id).await?;
                inventory_sent = false;
                continue;
            }
            Err(e) => {
                if cfg.once && !e.is_transient() {
                    return Err(e.into());
                }
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in = ?wait, "heartbeat failed");
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_secs(60));
        let first = b.next_delay();
        assert!(first >= Duration::from_millis(750) && first <= Duration::from_millis(1250));
        for _ in 0..10 {
            b.next_delay();
        }
        let capped = b.next_delay();
        assert!(capped <= Duration::from_secs(75) && capped >= Duration::from_secs(45));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(1250));
    }
}
