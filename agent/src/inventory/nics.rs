//! Network interfaces from `/sys/class/net`: physical ones only (those backed by a device).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anneal_shared::inventory::NetInterface;

use super::disks::is_pci_address;
use super::root::Root;
use super::CollectError;

/// Lists the physical NICs under the sysroot; addresses only on the live machine.
pub fn collect(root: &Root) -> Result<Vec<NetInterface>, CollectError> {
    let addresses = if root.is_host() {
        host_addresses()
    } else {
        HashMap::new()
    };
    let mut nics = Vec::new();
    for name in root.list_dir("/sys/class/net")? {
        let dir = PathBuf::from("/sys/class/net").join(&name);
        // lo, bridges, bonds, veth, tun/tap and VLANs have no `device` link.
        if !root.is_link(dir.join("device")) {
            continue;
        }
        let mut nic = read_nic(root, &name, &dir);
        nic.addresses = addresses.get(&name).cloned().unwrap_or_default();
        nics.push(nic);
    }
    Ok(nics)
}

/// Reads one interface.
fn read_nic(root: &Root, name: &str, dir: &Path) -> NetInterface {
    let device = root.resolve(&dir.join("device"));
    let driver = root.link_name(device.join("driver"));
    let (bus_device, bus) = physical_bus(root, &device);
    let pci_address = match bus.as_deref() {
        Some("pci") => bus_device
            .file_name()
            .map(|n| n.to_string_lossy().into_owned()),
        _ => None,
    };
    NetInterface {
        name: name.to_string(),
        mac: root
            .attr(dir.join("address"))
            .map(|m| m.to_ascii_lowercase())
            .unwrap_or_default(),
        driver,
        pci_address,
        bus,
        // `speed` fails with EINVAL while the link is down and says -1 when unknown.
        speed_mbps: root
            .attr(dir.join("speed"))
            .and_then(|s| s.parse::<i64>().ok())
            .filter(|s| *s > 0)
            .and_then(|s| u32::try_from(s).ok()),
        link_up: link_up(root, dir),
        mtu: root
            .attr_u64(dir.join("mtu"))
            .and_then(|m| u32::try_from(m).ok()),
        addresses: Vec::new(),
    }
}

/// The device that sits on a physical bus, and that bus. A virtio device is a child of its
/// transport (usually a PCI function), so step up to the transport.
fn physical_bus(root: &Root, device: &Path) -> (PathBuf, Option<String>) {
    let bus_of = |dev: &Path| {
        root.link_name(dev.join("subsystem")).or_else(|| {
            dev.file_name()
                .is_some_and(|n| is_pci_address(&n.to_string_lossy()))
                .then(|| "pci".to_string())
        })
    };
    let bus = bus_of(device);
    if bus.as_deref() == Some("virtio") {
        if let Some(parent) = device.parent() {
            if let Some(parent_bus) = bus_of(parent) {
                return (parent.to_path_buf(), Some(parent_bus));
            }
        }
    }
    (device.to_path_buf(), bus)
}

/// Link state from `operstate`, falling back to `carrier` when the driver reports "unknown".
fn link_up(root: &Root, dir: &Path) -> Option<bool> {
    match root.attr(dir.join("operstate")).as_deref() {
        Some("up") => Some(true),
        Some("down" | "lowerlayerdown" | "notpresent" | "dormant" | "testing") => Some(false),
        _ => match root.attr(dir.join("carrier")).as_deref() {
            Some("1") => Some(true),
            Some("0") => Some(false),
            _ => None,
        },
    }
}

/// Addresses (CIDR) of every interface of the running machine, by interface name.
fn host_addresses() -> HashMap<String, Vec<String>> {
    use std::ffi::CStr;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs either fails or hands us a list that we free exactly once below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, alive until freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: ifa_addr is non-null; sa_family tells which sockaddr type it really is.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        let entry = match family {
            libc::AF_INET => {
                // SAFETY: the family says this is a sockaddr_in; the netmask has the same type.
                let (addr, mask) = unsafe {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    let mask = (!ifa.ifa_netmask.is_null()).then(|| {
                        (*(ifa.ifa_netmask as *const libc::sockaddr_in))
                            .sin_addr
                            .s_addr
                    });
                    (sin.sin_addr.s_addr, mask)
                };
                let prefix = mask.map_or(32, |m| u32::from_be(m).count_ones());
                (IpAddr::V4(Ipv4Addr::from(u32::from_be(addr))), prefix)
            }
            libc::AF_INET6 => {
                // SAFETY: the family says this is a sockaddr_in6; the netmask has the same type.
                let (addr, mask) = unsafe {
                    let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                    let mask = (!ifa.ifa_netmask.is_null()).then(|| {
                        (*(ifa.ifa_netmask as *const libc::sockaddr_in6))
                            .sin6_addr
                            .s6_addr
                    });
                    (sin6.sin6_addr.s6_addr, mask)
                };
                let prefix = mask.map_or(128, |m| m.iter().map(|b| b.count_ones()).sum());
                (IpAddr::V6(Ipv6Addr::from(addr)), prefix)
            }
            _ => continue,
        };
        out.entry(name)
            .or_default()
            .push(format!("{}/{}", entry.0, entry.1));
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_include_loopback() {
        // Every Linux network namespace has lo with 127.0.0.1/8 once it is up; tolerate it down.
        let addrs = host_addresses();
        if let Some(lo) = addrs.get("lo") {
            assert!(
                lo.iter().any(|a| a == "127.0.0.1/8" || a == "::1/128"),
                "{lo:?}"
            );
        }
    }
}
