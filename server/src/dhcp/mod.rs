//! DHCPv4 (full mode): leases from configured subnets, persisted in the store, plus the boot
//! file a PXE client needs. See `config` for the settings, `socket` for how interfaces are
//! handled, `pipeline` for the decisions, `writer` for group-committed lease writes.

pub mod boot;
pub mod config;
pub mod pipeline;
pub mod socket;
pub mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use dhcproto::Encodable;
use time::OffsetDateTime;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use config::{DhcpConfig, DhcpFile};
use pipeline::{Ctx, Dest, Outcome, CLIENT_PORT, SERVER_PORT};

use crate::store::Store;

/// How long interface addresses are cached.
const ADDR_TTL: Duration = Duration::from_secs(5);

/// Open a socket on every configured interface and serve until `shutdown`. Fails (before
/// serving anything) when an interface is missing or a socket cannot be opened. When DHCP is
/// not configured, returns a finished task.
pub fn start(
    cfg: &DhcpConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    start_on_port(cfg, store, shutdown, SERVER_PORT)
}

/// [`start`] on another port (tests).
pub fn start_on_port(
    cfg: &DhcpConfig,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
    port: u16,
) -> Result<JoinHandle<()>> {
    if !cfg.enabled() {
        return Ok(tokio::spawn(async {}));
    }
    let mut sockets = Vec::new();
    for iface in &cfg.interfaces {
        sockets.push((iface.clone(), socket::bind(iface, port)?));
    }
    let leases = writer::spawn(store);
    let cfg = Arc::new(cfg.clone());
    let mut tasks = Vec::new();
    for (iface, sock) in sockets {
        tracing::info!(interface = %iface, port, "DHCP answering");
        tasks.push(tokio::spawn(serve_interface(
            cfg.clone(),
            iface,
            sock,
            leases.clone(),
            shutdown.clone(),
        )));
    }
    Ok(tokio::spawn(async move {
        for t in tasks {
            let _ = t.await;
        }
    }))
}

async fn serve_interface(
    cfg: Arc<DhcpConfig>,
    iface: String,
    sock: UdpSocket,
    leases: writer::LeaseWriter,
    shutdown: CancellationToken,
) {
    let sock = Arc::new(sock);
    let mut buf = vec![0u8; 1500];
    let mut addrs = (Instant::now(), socket::addresses(&iface));
    // Bounded concurrency: a flood waits in the socket buffer, not in memory.
    let limit = Arc::new(tokio::sync::Semaphore::new(256));
    loop {
        let (n, _from) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = sock.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(interface = %iface, error = %e, "DHCP receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        metrics::counter!("anneal_dhcp_received_total").increment(1);
        if addrs.0.elapsed() > ADDR_TTL {
            addrs = (Instant::now(), socket::addresses(&iface));
        }
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let raw = buf[..n].to_vec();
        let (cfg, iface, iface_addrs, leases, sock) = (
            cfg.clone(),
            iface.clone(),
            addrs.1.clone(),
            leases.clone(),
            sock.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let ctx = Ctx {
                cfg: &cfg,
                iface: &iface,
                iface_addrs: &iface_addrs,
            };
            let outcome = pipeline::handle(&raw, &ctx, &leases, OffsetDateTime::now_utc()).await;
            send(&sock, &iface, outcome).await;
        });
    }
}

async fn send(sock: &UdpSocket, iface: &str, outcome: Outcome) {
    let reply = match outcome {
        Outcome::Respond(r) => r,
        Outcome::Quiet(what) => {
            metrics::counter!("anneal_dhcp_handled_quietly_total", "what" => what).increment(1);
            return;
        }
        Outcome::Drop(reason) => {
            metrics::counter!("anneal_dhcp_dropped_total", "reason" => reason).increment(1);
            tracing::debug!(interface = %iface, reason, "DHCP packet dropped");
            return;
        }
    };
    let bytes = match reply.msg.to_vec() {
        Ok(b) => b,
        Err(e) => {
            metrics::counter!("anneal_dhcp_encode_errors_total").increment(1);
            tracing::warn!(error = %e, "encoding a DHCP reply failed");
            return;
        }
    };
    let to = match reply.dest {
        Dest::Broadcast => std::net::SocketAddrV4::new(std::net::Ipv4Addr::BROADCAST, CLIENT_PORT),
        Dest::Unicast(a) => a,
    };
    let kind = reply
        .msg
        .opts()
        .msg_type()
        .map(|t| format!("{t:?}").to_lowercase())
        .unwrap_or_default();
    match sock.send_to(&bytes, to).await {
        Ok(_) => {
            metrics::counter!("anneal_dhcp_sent_total", "type" => kind.clone()).increment(1);
            tracing::debug!(interface = %iface, %to, kind, yiaddr = %reply.msg.yiaddr(),
                chaddr = %config::Mac(reply.msg.chaddr().get(..6).and_then(|m| m.try_into().ok()).unwrap_or_default()),
                "DHCP reply sent");
        }
        Err(e) => {
            metrics::counter!("anneal_dhcp_send_errors_total").increment(1);
            tracing::warn!(interface = %iface, %to, error = %e, "sending a DHCP reply failed");
        }
    }
}

#[cfg(test)]
mod tests;
