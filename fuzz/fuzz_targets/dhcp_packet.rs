//! The DHCP request path on arbitrary bytes: `pipeline::parse` and `pipeline::handle` (decode,
//! subnet choice, the lease decision against a fake store, options, boot file, destination),
//! or proxy mode's `proxy::handle` on port 67 or 4011, then encoding the reply. The first byte
//! picks the mode, the arrival interface, the proxy listener and whether the fake store already
//! holds addresses for other clients (so NAK and "in use" paths are reachable); the rest is the
//! packet.
#![no_main]

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::{Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

use anneal_server::dhcp::config::{DhcpConfig, DhcpFile};
use anneal_server::dhcp::pipeline::{self, Ctx, Leases, Outcome};
use anneal_server::dhcp::proxy::{self, Listener, ProxyCtx};
use anneal_server::store::{LeaseOp, LeaseOutcome};
use async_trait::async_trait;
use dhcproto::Encodable;
use libfuzzer_sys::fuzz_target;

/// Addresses held per MAC, with the store's rules where they matter for decisions.
#[derive(Default)]
struct FakeLeases(Mutex<HashMap<Ipv4Addr, String>>);

#[async_trait]
impl Leases for FakeLeases {
    async fn apply(&self, op: LeaseOp) -> Option<LeaseOutcome> {
        let mut m = self.0.lock().unwrap();
        Some(match op {
            LeaseOp::Offer {
                mac,
                range,
                fixed,
                requested,
                exclude,
                ..
            } => {
                if let Some(ip) = fixed {
                    return Some(match m.get(&ip) {
                        Some(h) if *h != mac => LeaseOutcome::Exhausted,
                        _ => LeaseOutcome::Leased(ip),
                    });
                }
                let free = |ip: &Ipv4Addr| !m.contains_key(ip) && !exclude.contains(ip);
                let pick = requested
                    .filter(|ip| free(ip) && *ip >= range.0 && *ip <= range.1)
                    .or_else(|| {
                        (u32::from(range.0)..=u32::from(range.1))
                            .map(Ipv4Addr::from)
                            .find(|ip| free(ip))
                    });
                match pick {
                    Some(ip) => {
                        m.insert(ip, mac);
                        LeaseOutcome::Leased(ip)
                    }
                    None => LeaseOutcome::Exhausted,
                }
            }
            LeaseOp::Bind { mac, ip, .. } => match m.get(&ip) {
                Some(h) if *h != mac => LeaseOutcome::Conflict,
                _ => {
                    m.insert(ip, mac);
                    LeaseOutcome::Leased(ip)
                }
            },
            LeaseOp::Release { mac, ip } | LeaseOp::Decline { mac, ip, .. } => {
                LeaseOutcome::Applied(m.get(&ip) == Some(&mac))
            }
        })
    }
}

/// A fixed configuration: a local subnet with a reservation, a relayed one, and proxy scopes
/// (one with allow-lists and boot file overrides).
fn config() -> &'static DhcpConfig {
    static CFG: OnceLock<DhcpConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let file: DhcpFile = toml::from_str(
            r#"
            [[subnets]]
            interface = "eth1"
            subnet = "10.0.0.0/24"
            range = ["10.0.0.100", "10.0.0.110"]
            router = "10.0.0.1"
            dns = ["10.0.0.53"]
            domain = "rack.test"
            lease_secs = 600
            mtu = 9000
            reservations = [{ mac = "52:54:00:00:00:99", ip = "10.0.0.9" }]

            [[subnets]]
            subnet = "10.5.0.0/24"
            range = ["10.5.0.10", "10.5.0.20"]
            router = "10.5.0.1"
            next_server = "10.0.0.2"

            [[proxy]]
            interface = "eth2"
            subnet = "10.7.0.0/24"
            uefi_file = "ipxe.efi"

            [[proxy]]
            interface = "eth2"
            subnet = "10.8.0.0/24"
            macs = ["52:54:00:00:00:42"]
            vendor_classes = ["PXEClient:Arch:00007"]
            next_server = "10.8.0.2"

            [[hosts]]
            mac = "52:54:00:00:00:43"
            boot_file = "custom.efi"
            "#,
        )
        .expect("fuzz config parses");
        DhcpConfig::resolve(Some(&file), &[]).expect("fuzz config is valid")
    })
}

/// Poll a future that never waits (the fake store answers at once) to completion.
fn ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the fake lease store never waits"),
    }
}

fuzz_target!(|data: &[u8]| {
    let (first, packet) = data.split_first().unwrap_or((&0, &[]));
    let leases = FakeLeases::default();
    if first & 2 != 0 {
        let mut m = leases.0.lock().unwrap();
        for n in 100..=105 {
            m.insert(Ipv4Addr::new(10, 0, 0, n), "02:00:00:00:00:07".into());
        }
        m.insert(Ipv4Addr::new(10, 5, 0, 10), "02:00:00:00:00:08".into());
    }
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    let _ = pipeline::parse(packet);
    if first & 4 != 0 {
        let addrs = [Ipv4Addr::new(10, 7, 0, 2), Ipv4Addr::new(10, 8, 0, 2)];
        let ctx = ProxyCtx {
            cfg: config(),
            iface: if first & 1 == 0 { "eth2" } else { "eth1" },
            iface_addrs: &addrs,
            listener: if first & 8 == 0 {
                Listener::Dhcp
            } else {
                Listener::BootServer
            },
            from: "10.7.0.50:68".parse().expect("literal address"),
        };
        if let Outcome::Respond(r) = proxy::handle(packet, &ctx) {
            let _ = r.msg.to_vec();
        }
        return;
    }
    let iface = if first & 1 == 0 { "eth1" } else { "eth9" };
    let addrs = [Ipv4Addr::new(10, 0, 0, 2)];
    let ctx = Ctx {
        cfg: config(),
        iface,
        iface_addrs: &addrs,
    };
    if let Outcome::Respond(r) = ready(pipeline::handle(packet, &ctx, &leases, now)) {
        let _ = r.msg.to_vec();
    }
});
