//! One UDP socket per configured interface, bound to 0.0.0.0:67 and tied to its interface with
//! `SO_BINDTODEVICE`.
//!
//! Why this shape: the kernel delivers to each socket only what arrived on its interface, so
//! the arrival interface of every packet is known without parsing control messages, and an
//! interface that is not configured has no socket at all — it can never get an answer.
//! Replies to clients without an address go to 255.255.255.255:68; with the socket bound to its
//! device, the kernel sends that broadcast out of exactly that interface (no ARP is needed).
//! Clients with an address (renewing, INFORM) and relay agents get unicast.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;

/// Open the socket for `iface` on `port`.
pub fn bind(iface: &str, port: u16) -> Result<UdpSocket> {
    if nix::net::if_::if_nametoindex(iface).is_err() {
        anyhow::bail!("DHCP interface {iface} does not exist");
    }
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .context("creating the DHCP socket")?;
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(iface.as_bytes())).with_context(|| {
        format!("binding the DHCP socket to interface {iface} (needs root or CAP_NET_RAW)")
    })?;
    s.set_nonblocking(true)?;
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    s.bind(&addr.into()).with_context(|| {
        format!("binding DHCP on {iface} port {port} (needs root or CAP_NET_BIND_SERVICE)")
    })?;
    UdpSocket::from_std(s.into()).context("registering the DHCP socket")
}

/// The IPv4 addresses of `iface`, now.
pub fn addresses(iface: &str) -> Vec<Ipv4Addr> {
    let Ok(all) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    all.filter(|a| a.interface_name == iface)
        .filter_map(|a| {
            a.address
                .and_then(|s| s.as_sockaddr_in().map(|sin| sin.ip()))
        })
        .collect()
}
