//! DHCP settings: the `[dhcp]` table of the TOML file, checked at start-up.
//!
//! DHCP is off unless an interface or a subnet is configured explicitly. Every mistake that
//! would hand out wrong addresses is an error before anything is served: a bad CIDR, a range
//! outside its subnet or reversed, overlapping subnets or ranges, a reservation outside its
//! subnet or given twice. (A missing interface is found when its socket is opened.)

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

/// `[dhcp]` as written in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpFile {
    /// Extra interfaces to answer on (relay traffic for subnets without `interface`).
    pub interfaces: Option<Vec<String>>,
    /// Boot file for BIOS PXE clients (option 93 = 0) [default: undionly.kpxe].
    pub bios_file: Option<String>,
    /// Boot file for UEFI x64 PXE clients (option 93 = 7, 9) [default: snponly.efi].
    pub uefi_file: Option<String>,
    /// Port of the plain-HTTP listener that serves `boot.ipxe` and artifacts [default: 8080].
    pub http_port: Option<u16>,
    /// `[[dhcp.subnets]]`.
    pub subnets: Option<Vec<SubnetFile>>,
}

/// One `[[dhcp.subnets]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetFile {
    /// Interface the subnet is directly attached to; absent for subnets behind a relay.
    pub interface: Option<String>,
    /// `10.0.0.0/24`.
    pub subnet: String,
    /// First and last address handed out dynamically.
    pub range: [Ipv4Addr; 2],
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Option 15.
    pub domain: Option<String>,
    /// Lease time in seconds [default: 3600].
    pub lease_secs: Option<u32>,
    /// Option 26.
    pub mtu: Option<u16>,
    /// Static MAC → address bindings.
    pub reservations: Option<Vec<ReservationFile>>,
    /// Server address told to clients (siaddr, boot URLs); default: the arrival interface's.
    pub next_server: Option<Ipv4Addr>,
}

/// `{ mac, ip }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservationFile {
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Its address.
    pub ip: Ipv4Addr,
}

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// `aa:bb:cc:dd:ee:ff` or `aa-bb-…`, any case.
    pub fn parse(s: &str) -> Option<Mac> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return None;
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return None;
            }
            m[i] = u8::from_str_radix(p, 16).ok()?;
        }
        Some(Mac(m))
    }
}

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A checked subnet.
#[derive(Debug, Clone, PartialEq)]
pub struct Subnet {
    /// Canonical name, `10.0.0.0/24`.
    pub name: String,
    /// Directly attached interface, or none (relayed).
    pub interface: Option<String>,
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Dynamic range, inclusive.
    pub range: (Ipv4Addr, Ipv4Addr),
    /// Option 3.
    pub router: Option<Ipv4Addr>,
    /// Option 6.
    pub dns: Vec<Ipv4Addr>,
    /// Option 15.
    pub domain: Option<String>,
    /// Lease time.
    pub lease_secs: u32,
    /// Option 26.
    pub mtu: Option<u16>,
    /// MAC → address.
    pub reservations: Vec<(Mac, Ipv4Addr)>,
    /// Server address override.
    pub next_server: Option<Ipv4Addr>,
}

impl Subnet {
    /// The netmask.
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix))
    }

    /// Whether `ip` is inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix) == u32::from(self.network)
    }

    /// Whether `ip` is in the dynamic range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        let n = u32::from(ip);
        n >= u32::from(self.range.0) && n <= u32::from(self.range.1)
    }

    /// The directed broadcast address.
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | !mask_bits(self.prefix))
    }

    /// The reservation of `mac`.
    pub fn reservation(&self, mac: Mac) -> Option<Ipv4Addr> {
        self.reservations
            .iter()
            .find(|(m, _)| *m == mac)
            .map(|(_, ip)| *ip)
    }
}

fn mask_bits(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// Resolved DHCP configuration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DhcpConfig {
    /// Interfaces answered on (each subnet's, plus the extra ones). Empty: DHCP is off.
    pub interfaces: Vec<String>,
    /// Subnets served.
    pub subnets: Vec<Subnet>,
    /// BIOS boot file.
    pub bios_file: String,
    /// UEFI x64 boot file.
    pub uefi_file: String,
    /// Plain-HTTP port used in boot URLs.
    pub http_port: u16,
}

impl DhcpConfig {
    /// Whether DHCP runs at all.
    pub fn enabled(&self) -> bool {
        !self.interfaces.is_empty()
    }

    /// Check and resolve the file's `[dhcp]` plus extra interfaces from flags.
    pub fn resolve(file: Option<&DhcpFile>, extra_interfaces: &[String]) -> Result<DhcpConfig> {
        let empty = DhcpFile::default();
        let file = file.unwrap_or(&empty);
        let mut subnets = Vec::new();
        for (i, s) in file.subnets.iter().flatten().enumerate() {
            subnets.push(
                check_subnet(s).with_context(|| format!("dhcp.subnets[{i}] ({})", s.subnet))?,
            );
        }
        for (i, a) in subnets.iter().enumerate() {
            for b in &subnets[i + 1..] {
                if a.contains(b.network) || b.contains(a.network) {
                    bail!("dhcp: subnets {} and {} overlap", a.name, b.name);
                }
                let (a0, a1) = (u32::from(a.range.0), u32::from(a.range.1));
                let (b0, b1) = (u32::from(b.range.0), u32::from(b.range.1));
                if a0 <= b1 && b0 <= a1 {
                    bail!("dhcp: ranges of {} and {} overlap", a.name, b.name);
                }
            }
        }
        let mut interfaces: Vec<String> = Vec::new();
        let named = subnets.iter().filter_map(|s| s.interface.clone());
        let extra = file.interfaces.iter().flatten().cloned();
        for name in named.chain(extra).chain(extra_interfaces.iter().cloned()) {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                bail!("dhcp: {name:?} is not an interface name");
            }
            if !interfaces.contains(&name) {
                interfaces.push(name);
            }
        }
        let relayed = subnets.iter().any(|s| s.interface.is_none());
        for name in &interfaces {
            let direct = subnets.iter().any(|s| s.interface.as_deref() == Some(name));
            if !direct && !relayed {
                bail!(
                    "dhcp: interface {name} has no subnet to serve; add a [[dhcp.subnets]] \
                     with interface = \"{name}\" (or one without interface for relayed clients)"
                );
            }
        }
        if interfaces.is_empty() && !subnets.is_empty() {
            bail!(
                "dhcp: subnets are configured but no interface to answer on; set `interface` \
                 on a subnet or list dhcp.interfaces"
            );
        }
        Ok(DhcpConfig {
            interfaces,
            subnets,
            bios_file: file
                .bios_file
                .clone()
                .unwrap_or_else(|| "undionly.kpxe".into()),
            uefi_file: file
                .uefi_file
                .clone()
                .unwrap_or_else(|| "snponly.efi".into()),
            http_port: file.http_port.unwrap_or(8080),
        })
    }
}

fn check_subnet(s: &SubnetFile) -> Result<Subnet> {
    let (net, prefix) = s
        .subnet
        .split_once('/')
        .context("subnet must be written as ADDRESS/PREFIX, e.g. 10.0.0.0/24")?;
    let net: Ipv4Addr = net.parse().context("subnet address")?;
    let prefix: u8 = prefix.parse().context("subnet prefix length")?;
    if prefix > 30 {
        bail!("prefix /{prefix} leaves no room for clients (at most /30)");
    }
    if u32::from(net) & !mask_bits(prefix) != 0 {
        bail!("{net} has host bits set for /{prefix}");
    }
    let mut sub = Subnet {
        name: format!("{net}/{prefix}"),
        interface: s.interface.clone(),
        network: net,
        prefix,
        range: (s.range[0], s.range[1]),
        router: s.router,
        dns: s.dns.clone().unwrap_or_default(),
        domain: s.domain.clone(),
        lease_secs: s.lease_secs.unwrap_or(3600),
        mtu: s.mtu,
        reservations: Vec::new(),
        next_server: s.next_server,
    };
    if sub.lease_secs < 60 {
        bail!("lease_secs must be at least 60");
    }
    if let Some(mtu) = sub.mtu {
        if mtu < 68 {
            bail!("mtu must be at least 68");
        }
    }
    if let Some(d) = &sub.domain {
        if d.is_empty() || d.len() > 253 {
            bail!("domain {d:?} is not a domain name");
        }
    }
    let (network, broadcast) = (sub.network, sub.broadcast());
    let edge = |ip: Ipv4Addr| ip == network || ip == broadcast;
    for ip in [sub.range.0, sub.range.1] {
        if !sub.contains(ip) || edge(ip) {
            bail!("range address {ip} is outside subnet {}", sub.name);
        }
    }
    if u32::from(sub.range.0) > u32::from(sub.range.1) {
        bail!("range {} – {} is reversed", sub.range.0, sub.range.1);
    }
    if let Some(r) = sub.router {
        if !sub.contains(r) {
            bail!("router {r} is outside subnet {}", sub.name);
        }
    }
    for r in s.reservations.iter().flatten() {
        let mac = Mac::parse(&r.mac).with_context(|| format!("reservation MAC {:?}", r.mac))?;
        if !sub.contains(r.ip) || edge(r.ip) {
            bail!(
                "reservation {} → {} is outside subnet {}",
                mac,
                r.ip,
                sub.name
            );
        }
        if sub.reservations.iter().any(|(m, _)| *m == mac) {
            bail!("MAC {mac} is reserved twice");
        }
        if sub.reservations.iter().any(|(_, ip)| *ip == r.ip) {
            bail!("address {} is reserved twice", r.ip);
        }
        sub.reservations.push((mac, r.ip));
    }
    Ok(sub)
}
