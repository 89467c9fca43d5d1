//! DHCP settings: the `[dhcp]` table of the TOML file, checked at start-up.
//!
//! DHCP is off unless an interface, a subnet or a proxy scope is configured explicitly. Every
//! mistake that would hand out wrong addresses (or answer where we should not) is an error
//! before anything is served: a bad CIDR, a range outside its subnet or reversed, overlapping
//! subnets or ranges, a reservation outside its subnet or given twice, full and proxy mode on
//! one interface, overlapping proxy scopes, a MAC given twice. (A missing interface is found
//! when its socket is opened.)

use std::net::Ipv4Addr;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::boot::BootFiles;

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
    /// Boot file for UEFI ARM64 clients (option 93 = 11; 19 for HTTP boot) [default: none —
    /// Debian's `ipxe` package ships no ARM64 build, so these clients get no answer].
    pub arm64_file: Option<String>,
    /// Port of the plain-HTTP listener that serves `boot.ipxe` and artifacts [default: 8080].
    pub http_port: Option<u16>,
    /// `[[dhcp.subnets]]`.
    pub subnets: Option<Vec<SubnetFile>>,
    /// `[[dhcp.proxy]]`: proxy mode beside another DHCP server.
    pub proxy: Option<Vec<ProxyFile>>,
    /// `[[dhcp.hosts]]`: per-machine settings, by MAC, in both modes.
    pub hosts: Option<Vec<HostFile>>,
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
    /// Boot file for BIOS clients here (overrides `dhcp.bios_file`).
    pub bios_file: Option<String>,
    /// Boot file for UEFI x64 clients here (overrides `dhcp.uefi_file`).
    pub uefi_file: Option<String>,
    /// Boot file for UEFI ARM64 clients here (overrides `dhcp.arm64_file`).
    pub arm64_file: Option<String>,
}

/// One `[[dhcp.proxy]]` entry: where proxy mode answers PXE clients (and whom).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyFile {
    /// Interface the PXE clients' broadcasts (or their relay's packets) arrive on.
    pub interface: String,
    /// Only clients of this subnet (`10.0.0.0/24`): on the interface's own link when the
    /// interface has an address in it, else relayed ones (by giaddr). Default: every client on
    /// the interface's link.
    pub subnet: Option<String>,
    /// Server address told to clients; default: the interface's address (in `subnet`).
    pub next_server: Option<Ipv4Addr>,
    /// Answer only these MACs (`aa:bb:cc:dd:ee:ff`); default: any.
    pub macs: Option<Vec<String>>,
    /// Answer only clients whose option 60 starts with one of these (e.g.
    /// `PXEClient:Arch:00007`); default: any PXE client.
    pub vendor_classes: Option<Vec<String>>,
    /// Boot file for BIOS clients here (overrides `dhcp.bios_file`).
    pub bios_file: Option<String>,
    /// Boot file for UEFI x64 clients here (overrides `dhcp.uefi_file`).
    pub uefi_file: Option<String>,
    /// Boot file for UEFI ARM64 clients here (overrides `dhcp.arm64_file`).
    pub arm64_file: Option<String>,
}

/// One `[[dhcp.hosts]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostFile {
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    /// Boot file for this machine's firmware (any architecture); a TFTP name, or an HTTP URL
    /// for UEFI HTTP boot. iPXE itself still gets its script URL.
    pub boot_file: String,
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
    /// Boot files for this subnet's clients (the global ones unless overridden).
    pub boot: BootFiles,
}

/// An IPv4 network, `10.0.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// Network address (no host bits).
    pub network: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
}

impl Net {
    /// `ADDRESS/PREFIX`, host bits clear.
    pub fn parse(s: &str) -> Result<Net> {
        let (net, prefix) = s
            .split_once('/')
            .context("subnet must be written as ADDRESS/PREFIX, e.g. 10.0.0.0/24")?;
        let network: Ipv4Addr = net.parse().context("subnet address")?;
        let prefix: u8 = prefix.parse().context("subnet prefix length")?;
        if prefix > 32 {
            bail!("prefix /{prefix} is longer than 32 bits");
        }
        if u32::from(network) & !mask_bits(prefix) != 0 {
            bail!("{network} has host bits set for /{prefix}");
        }
        Ok(Net { network, prefix })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix) == u32::from(self.network)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Net) -> bool {
        self.contains(other.network) || other.contains(self.network)
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// One checked `[[dhcp.proxy]]` scope.
#[derive(Debug, Clone, PartialEq)]
pub struct ProxyScope {
    /// Arrival interface.
    pub interface: String,
    /// Clients of this subnet only (see [`ProxyFile::subnet`]).
    pub subnet: Option<Net>,
    /// Server address override.
    pub next_server: Option<Ipv4Addr>,
    /// MAC allow-list; empty: any.
    pub macs: Vec<Mac>,
    /// Option 60 prefixes allowed; empty: any.
    pub vendor_classes: Vec<String>,
    /// Boot files here.
    pub boot: BootFiles,
}

impl ProxyScope {
    /// Whether the allow-lists let this client through.
    pub fn allows(&self, mac: Mac, vendor_class: Option<&[u8]>) -> Result<(), &'static str> {
        if !self.macs.is_empty() && !self.macs.contains(&mac) {
            return Err("mac_not_allowed");
        }
        if !self.vendor_classes.is_empty()
            && !vendor_class.is_some_and(|v| {
                self.vendor_classes
                    .iter()
                    .any(|p| v.starts_with(p.as_bytes()))
            })
        {
            return Err("vendor_class_not_allowed");
        }
        Ok(())
    }
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
    /// Full-mode interfaces (each subnet's, plus the extra ones). Empty: full mode is off.
    pub interfaces: Vec<String>,
    /// Subnets served in full mode.
    pub subnets: Vec<Subnet>,
    /// Boot files by architecture (the defaults; subnets and proxy scopes may override).
    pub boot: BootFiles,
    /// Plain-HTTP port used in boot URLs.
    pub http_port: u16,
    /// Proxy-mode scopes.
    pub proxy: Vec<ProxyScope>,
    /// Interfaces with a proxy scope (ports 67 and 4011). Never one of `interfaces`.
    pub proxy_interfaces: Vec<String>,
    /// Per-machine boot file, by MAC.
    pub hosts: Vec<(Mac, String)>,
}

impl DhcpConfig {
    /// Whether DHCP runs at all (full or proxy mode).
    pub fn enabled(&self) -> bool {
        !self.interfaces.is_empty() || !self.proxy_interfaces.is_empty()
    }

    /// The per-machine boot file of `mac`, if one is configured.
    pub fn host_boot_file(&self, mac: Mac) -> Option<&str> {
        self.hosts
            .iter()
            .find(|(m, _)| *m == mac)
            .map(|(_, f)| f.as_str())
    }

    /// Check and resolve the file's `[dhcp]` plus extra interfaces from flags.
    pub fn resolve(file: Option<&DhcpFile>, extra_interfaces: &[String]) -> Result<DhcpConfig> {
        let empty = DhcpFile::default();
        let file = file.unwrap_or(&empty);
        let boot = BootFiles {
            bios: file
                .bios_file
                .clone()
                .unwrap_or_else(|| "undionly.kpxe".into()),
            uefi: file
                .uefi_file
                .clone()
                .unwrap_or_else(|| "snponly.efi".into()),
            arm64: file.arm64_file.clone(),
        };
        check_files(&boot).context("dhcp")?;
        let mut subnets = Vec::new();
        for (i, s) in file.subnets.iter().flatten().enumerate() {
            subnets.push(
                check_subnet(s, &boot)
                    .with_context(|| format!("dhcp.subnets[{i}] ({})", s.subnet))?,
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
            check_interface_name(&name)?;
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
        let (proxy, proxy_interfaces) = check_proxy(file, &subnets, &interfaces, &boot)?;
        let mut hosts: Vec<(Mac, String)> = Vec::new();
        for (i, h) in file.hosts.iter().flatten().enumerate() {
            let at = || format!("dhcp.hosts[{i}] ({})", h.mac);
            let mac = Mac::parse(&h.mac)
                .with_context(|| format!("MAC {:?} is not aa:bb:cc:dd:ee:ff", h.mac))
                .with_context(at)?;
            check_file("boot_file", &h.boot_file).with_context(at)?;
            if hosts.iter().any(|(m, _)| *m == mac) {
                bail!("dhcp.hosts: MAC {mac} is listed twice");
            }
            hosts.push((mac, h.boot_file.clone()));
        }
        Ok(DhcpConfig {
            interfaces,
            subnets,
            boot,
            http_port: file.http_port.unwrap_or(8080),
            proxy,
            proxy_interfaces,
            hosts,
        })
    }
}

fn check_interface_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
        bail!("dhcp: {name:?} is not an interface name");
    }
    Ok(())
}

/// Boot file names end up in the 128-byte `file` field or option 67 (and in URLs).
fn check_file(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 || name.chars().any(|c| c.is_control()) {
        bail!("{what} {name:?} must be 1–200 printable characters");
    }
    Ok(())
}

fn check_files(b: &BootFiles) -> Result<()> {
    check_file("bios_file", &b.bios)?;
    check_file("uefi_file", &b.uefi)?;
    if let Some(a) = &b.arm64 {
        check_file("arm64_file", a)?;
    }
    Ok(())
}

/// Scope-level overrides over the defaults.
fn override_files(
    defaults: &BootFiles,
    bios: &Option<String>,
    uefi: &Option<String>,
    arm64: &Option<String>,
) -> Result<BootFiles> {
    let b = BootFiles {
        bios: bios.clone().unwrap_or_else(|| defaults.bios.clone()),
        uefi: uefi.clone().unwrap_or_else(|| defaults.uefi.clone()),
        arm64: arm64.clone().or_else(|| defaults.arm64.clone()),
    };
    check_files(&b)?;
    Ok(b)
}

/// Proxy scopes: each on a named interface that full mode does not use; on one interface
/// either a single scope for the whole link or scopes with disjoint subnets; no proxy subnet
/// overlapping another or a full-mode subnet.
fn check_proxy(
    file: &DhcpFile,
    subnets: &[Subnet],
    full_interfaces: &[String],
    defaults: &BootFiles,
) -> Result<(Vec<ProxyScope>, Vec<String>)> {
    let mut scopes: Vec<ProxyScope> = Vec::new();
    for (i, p) in file.proxy.iter().flatten().enumerate() {
        let at = || format!("dhcp.proxy[{i}] ({})", p.interface);
        check_interface_name(&p.interface).with_context(at)?;
        let subnet = p
            .subnet
            .as_deref()
            .map(Net::parse)
            .transpose()
            .with_context(at)?;
        let mut macs = Vec::new();
        for m in p.macs.iter().flatten() {
            let mac = Mac::parse(m)
                .with_context(|| format!("MAC {m:?} is not aa:bb:cc:dd:ee:ff"))
                .with_context(at)?;
            if !macs.contains(&mac) {
                macs.push(mac);
            }
        }
        let vendor_classes = p.vendor_classes.clone().unwrap_or_default();
        if vendor_classes.iter().any(|v| v.is_empty() || v.len() > 255) {
            bail!("{}: vendor_classes entries must be 1–255 bytes", at());
        }
        let boot =
            override_files(defaults, &p.bios_file, &p.uefi_file, &p.arm64_file).with_context(at)?;
        if full_interfaces.contains(&p.interface) {
            bail!(
                "dhcp: interface {} is configured for both full and proxy DHCP; one link gets \
                 one mode (two servers handing out boot files to the same clients)",
                p.interface
            );
        }
        for other in &scopes {
            if other.interface == p.interface && (other.subnet.is_none() || subnet.is_none()) {
                bail!(
                    "dhcp: interface {} has more than one [[dhcp.proxy]] scope; several are \
                     allowed only when each names a distinct subnet",
                    p.interface
                );
            }
            if let (Some(a), Some(b)) = (other.subnet, subnet) {
                if a.overlaps(&b) {
                    bail!("dhcp: proxy subnets {a} and {b} overlap");
                }
            }
        }
        if let Some(net) = subnet {
            if let Some(s) = subnets.iter().find(|s| {
                net.overlaps(&Net {
                    network: s.network,
                    prefix: s.prefix,
                })
            }) {
                bail!(
                    "dhcp: proxy subnet {net} overlaps full-mode subnet {}; a subnet is served \
                     in one mode",
                    s.name
                );
            }
        }
        scopes.push(ProxyScope {
            interface: p.interface.clone(),
            subnet,
            next_server: p.next_server,
            macs,
            vendor_classes,
            boot,
        });
    }
    let mut interfaces: Vec<String> = Vec::new();
    for s in &scopes {
        if !interfaces.contains(&s.interface) {
            interfaces.push(s.interface.clone());
        }
    }
    Ok((scopes, interfaces))
}

fn check_subnet(s: &SubnetFile, defaults: &BootFiles) -> Result<Subnet> {
    let Net {
        network: net,
        prefix,
    } = Net::parse(&s.subnet)?;
    if prefix > 30 {
        bail!("prefix /{prefix} leaves no room for clients (at most /30)");
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
        boot: override_files(defaults, &s.bios_file, &s.uefi_file, &s.arm64_file)?,
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
