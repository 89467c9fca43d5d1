//! DHCPv4. Full mode: leases from configured subnets, persisted in the store, plus the boot
//! file a PXE client needs. Proxy mode: beside another DHCP server, only the boot information,
//! only to PXE clients (ports 67 and 4011). See `config` for the settings, `socket` for how
//! interfaces are handled, `pipeline` for the full-mode decisions, `proxy` for proxy mode,
//! `boot` for the boot file by client, `writer` for group-committed lease writes.

pub mod boot;
pub mod config;
pub mod pipeline;
pub mod proxy;
pub mod socket;
pub mod writer;

use std::net::{SocketAddr, SocketAddrV4};
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

use crate::events::EventBus;
use crate::store::Store;

/// How long interface addresses are cached.
const ADDR_TTL: Duration = Duration::from_secs(5);

/// The UDP ports DHCP listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// DHCP server port (67), full and proxy mode.
    pub dhcp: u16,
    /// PXE boot server port (4011), proxy mode.
    pub boot_server: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports {
            dhcp: SERVER_PORT,
            boot_server: proxy::BOOT_SERVER_PORT,
        }
    }
}

/// Open a socket on every configured interface (two on proxy interfaces) and serve until
/// `shutdown`. Fails (before serving anything) when an interface is missing or a socket cannot
/// be opened. When DHCP is not configured, opens nothing and returns a finished task.
pub fn start(
    cfg: &DhcpConfig,
    store: Arc<dyn Store>,
    events: Arc<EventBus>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>> {
    start_on_ports(cfg, store, events, shutdown, Ports::default())
}

/// [`start`] on other ports (tests).
pub fn start_on_ports(
    cfg: &DhcpConfig,
    store: Arc<dyn Store>,
    events: Arc<EventBus>,
    shutdown: CancellationToken,
    ports: Ports,
) -> Result<JoinHandle<()>> {
    if !cfg.enabled() {
        return Ok(tokio::spawn(async {}));
    }
    let mut sockets = Vec::new();
    for iface in &cfg.interfaces {
        sockets.push((iface.clone(), socket::bind(iface, ports.dhcp)?));
    }
    let mut proxy_sockets = Vec::new();
    for iface in &cfg.proxy_interfaces {
        for (listener, port) in [
            (proxy::Listener::Dhcp, ports.dhcp),
            (proxy::Listener::BootServer, ports.boot_server),
        ] {
            proxy_sockets.push((iface.clone(), listener, port, socket::bind(iface, port)?));
        }
    }
    let cfg = Arc::new(cfg.clone());
    let mut tasks = Vec::new();
    if !sockets.is_empty() {
        let leases = writer::spawn(store, events);
        for (iface, sock) in sockets {
            tracing::info!(interface = %iface, port = ports.dhcp, "DHCP answering (full mode)");
            tasks.push(tokio::spawn(serve_interface(
                cfg.clone(),
                iface,
                sock,
                leases.clone(),
                shutdown.clone(),
            )));
        }
    }
    for (iface, listener, port, sock) in proxy_sockets {
        tracing::info!(interface = %iface, port, ?listener, "DHCP answering (proxy mode)");
        tasks.push(tokio::spawn(serve_proxy(
            cfg.clone(),
            iface,
            listener,
            sock,
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

/// Proxy mode on one socket: no store, no waiting, so packets are handled in line.
async fn serve_proxy(
    cfg: Arc<DhcpConfig>,
    iface: String,
    listener: proxy::Listener,
    sock: UdpSocket,
    shutdown: CancellationToken,
) {
    let mut buf = vec![0u8; 1500];
    let mut addrs = (Instant::now(), socket::addresses(&iface));
    loop {
        let (n, from) = tokio::select! {
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
        let SocketAddr::V4(from) = from else {
            continue;
        };
        if addrs.0.elapsed() > ADDR_TTL {
            addrs = (Instant::now(), socket::addresses(&iface));
        }
        let ctx = proxy::ProxyCtx {
            cfg: &cfg,
            iface: &iface,
            iface_addrs: &addrs.1,
            listener,
            from,
        };
        let outcome = proxy::handle(&buf[..n], &ctx);
        send(&sock, &iface, outcome).await;
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
        Dest::Broadcast => SocketAddrV4::new(std::net::Ipv4Addr::BROADCAST, CLIENT_PORT),
        Dest::Unicast(a) => a,
    };
    let mac = reply
        .msg
        .chaddr()
        .get(..6)
        .and_then(|m| <[u8; 6]>::try_from(m).ok())
        .map(|m| config::Mac(m).to_string())
        .unwrap_or_default();
    let kind = reply
        .msg
        .opts()
        .msg_type()
        .map(|t| format!("{t:?}").to_lowercase())
        .unwrap_or_default();
    match sock.send_to(&bytes, to).await {
        Ok(_) => {
            metrics::counter!("anneal_dhcp_sent_total", "type" => kind.clone()).increment(1);
            tracing::debug!(interface = %iface, %to, kind, %mac, yiaddr = %reply.msg.yiaddr(), "DHCP reply sent");
        }
        Err(e) => {
            metrics::counter!("anneal_dhcp_send_errors_total").increment(1);
            tracing::warn!(interface = %iface, %to, error = %e, "sending a DHCP reply failed");
        }
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_proxy;
