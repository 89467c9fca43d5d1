//! Proxy mode (proxyDHCP, PXE 2.1 §2.2.4): beside another DHCP server that hands out the
//! addresses, we add only boot information, and only for network-boot firmware on the scopes
//! configured in `[[dhcp.proxy]]`. Never an address (yiaddr is always 0.0.0.0), never a NAK,
//! nothing at all for hosts that are not PXE clients.
//!
//! Two listeners per proxy interface, same pipeline as full mode (parse → select scope →
//! allow-lists → server address → boot decision → reply → destination):
//! - port 67: a PXE DISCOVER gets a proxy OFFER; a REQUEST whose option 54 names us and that
//!   asks for no address (some firmware sends one to the proxy) gets the same boot information
//!   as an ACK; every other REQUEST is the client talking to the real DHCP server (which may
//!   even share our address, on the same host), and we stay quiet;
//! - port 4011 (boot server discovery): the unicast REQUEST that UEFI firmware (EDK2's "BINL"
//!   path) and iPXE send after they have an address gets an ACK with the boot file, unicast
//!   back to the packet's source address and port.
//!
//! What goes into the answer, and why (see docs/dhcp.md, "Proxy mode"):
//! - option 60 `PXEClient` always (`HTTPClient` for UEFI HTTP boot): EDK2 and iPXE recognise a
//!   proxy offer only by it;
//! - option 43 with sub-option 6 = 8 ("boot the file given, no discovery") for BIOS PXE and
//!   iPXE; not for UEFI PXE firmware on port 67: EDK2 before the 2017 fix (tianocore/edk2#6944)
//!   drops proxy offers carrying discovery options, while an offer with only `PXEClient` is
//!   taken as a "BINL" offer by every EDK2, which then asks port 4011 (as dnsmasq and pixiecore
//!   also do);
//! - option 97 echoed when the client sent it (some Intel UEFI NICs omit it, so it is never
//!   required); option 54 and siaddr our address on the client's side, since EDK2 sends its
//!   4011 request to siaddr and iPXE to option 54.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};

use super::boot::{self, Boot};
use super::config::{DhcpConfig, ProxyScope};
use super::pipeline::{destination, parse, set_file_field, Dest, Outcome, Reply, Req};

/// PXE boot server discovery port.
pub const BOOT_SERVER_PORT: u16 = 4011;

/// Which of the two proxy listeners a packet arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Port 67, beside the real DHCP server.
    Dhcp,
    /// Port 4011, PXE boot server discovery.
    BootServer,
}

/// Where a proxy-mode packet arrived.
pub struct ProxyCtx<'a> {
    /// Configuration.
    pub cfg: &'a DhcpConfig,
    /// Arrival interface.
    pub iface: &'a str,
    /// Its IPv4 addresses.
    pub iface_addrs: &'a [Ipv4Addr],
    /// Port 67 or 4011.
    pub listener: Listener,
    /// The packet's source (4011 answers go back there).
    pub from: SocketAddrV4,
}

/// The firmware kinds that get different answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Firmware {
    /// iPXE (any architecture).
    Ipxe,
    /// UEFI HTTP boot.
    Http,
    /// BIOS PXE ROM (option 93 = 0, or absent).
    PxeBios,
    /// UEFI PXE (EDK2 and its descendants).
    PxeUefi,
}

/// Handle one raw packet.
pub fn handle(raw: &[u8], ctx: &ProxyCtx<'_>) -> Outcome {
    match parse(raw) {
        Ok(msg) => handle_message(&msg, ctx),
        Err(reason) => Outcome::Drop(reason),
    }
}

/// Handle one decoded request.
pub fn handle_message(msg: &Message, ctx: &ProxyCtx<'_>) -> Outcome {
    let Some(req) = Req::read(msg) else {
        return Outcome::Drop("unreadable");
    };
    // Ordinary hosts are the other server's business only.
    if !req.boot.is_pxe() {
        return Outcome::Drop("not_pxe");
    }
    let scope = match select(&req, ctx) {
        Ok(s) => s,
        Err(reason) => return Outcome::Drop(reason),
    };
    if let Err(reason) = scope.allows(req.mac, req.boot.vendor_class.as_deref()) {
        return Outcome::Drop(reason);
    }
    let Some(own) = own_address(ctx, scope) else {
        return Outcome::Drop("no_address_on_interface");
    };
    let kind = match (ctx.listener, req.kind) {
        (Listener::Dhcp, MessageType::Discover) => MessageType::Offer,
        // Firmware asking the proxy itself. A REQUEST with option 50 is a client taking an
        // address, meant for the DHCP server, which may share our address when it runs on
        // this host: never ours.
        (Listener::Dhcp, MessageType::Request)
            if req.server_id == Some(own) && req.requested.is_none() =>
        {
            MessageType::Ack
        }
        // The client accepting the real server's offer (or renewing): not ours to answer.
        (Listener::Dhcp, MessageType::Request) => {
            return Outcome::Quiet("request_for_another_server")
        }
        (Listener::BootServer, MessageType::Request | MessageType::Inform) => {
            if req.server_id.is_some_and(|s| s != own) {
                return Outcome::Quiet("request_for_another_server");
            }
            MessageType::Ack
        }
        _ => return Outcome::Drop("not_for_proxy"),
    };
    let server = scope.next_server.unwrap_or(own);
    let host_file = ctx.cfg.host_boot_file(req.mac);
    let Some(boot) = boot::decide(&req.boot, &scope.boot, ctx.cfg.http_port, server, host_file)
    else {
        return Outcome::Drop("no_boot_file_for_arch");
    };
    let firmware = if req.boot.is_ipxe() {
        Firmware::Ipxe
    } else if req.boot.is_http_client() {
        Firmware::Http
    } else if req.boot.arch.unwrap_or(boot::arch::BIOS) == boot::arch::BIOS {
        Firmware::PxeBios
    } else {
        Firmware::PxeUefi
    };
    let dest = match ctx.listener {
        Listener::Dhcp => destination(&req, kind),
        Listener::BootServer if ctx.from.ip().is_unspecified() => Dest::Broadcast,
        Listener::BootServer => Dest::Unicast(ctx.from),
    };
    let msg = build(&req, kind, own, &boot, firmware, dest);
    Outcome::Respond(Reply { msg, dest })
}

/// The scope this client belongs to: by giaddr when relayed; else by the client's address
/// when it has one (4011, or ciaddr); else the whole-link scope, or the scope whose subnet is
/// on the arrival interface.
fn select<'c>(req: &Req<'_>, ctx: &ProxyCtx<'c>) -> Result<&'c ProxyScope, &'static str> {
    let here: Vec<&'c ProxyScope> = ctx
        .cfg
        .proxy
        .iter()
        .filter(|s| s.interface == ctx.iface)
        .collect();
    if here.is_empty() {
        return Err("no_proxy_on_interface");
    }
    let in_subnet = |ip: Ipv4Addr| {
        here.iter()
            .copied()
            .find(|s| s.subnet.is_some_and(|n| n.contains(ip)))
    };
    let whole_link = || here.iter().copied().find(|s| s.subnet.is_none());
    let giaddr = req.msg.giaddr();
    if !giaddr.is_unspecified() {
        return in_subnet(giaddr).ok_or("relay_subnet_unknown");
    }
    let ciaddr = req.msg.ciaddr();
    let client_ip = match ctx.listener {
        Listener::BootServer if !ctx.from.ip().is_unspecified() => Some(*ctx.from.ip()),
        _ => (!ciaddr.is_unspecified()).then_some(ciaddr),
    };
    let found = match client_ip {
        Some(ip) => in_subnet(ip).or_else(whole_link),
        None => whole_link().or_else(|| ctx.iface_addrs.iter().find_map(|a| in_subnet(*a))),
    };
    found.ok_or("not_in_a_proxy_subnet")
}

/// Our address on the client's side: in the scope's subnet when we have one there, else the
/// interface's first. (Option 54 and the 4011 target; `next_server` only changes siaddr and
/// URLs for the boot file itself.)
fn own_address(ctx: &ProxyCtx<'_>, scope: &ProxyScope) -> Option<Ipv4Addr> {
    scope
        .subnet
        .and_then(|n| ctx.iface_addrs.iter().copied().find(|a| n.contains(*a)))
        .or_else(|| ctx.iface_addrs.first().copied())
}

/// PXE discovery control (option 43 sub-option 6) = 8: use the boot file given, no boot server
/// discovery, no menu.
const DISCOVERY_BOOT_FILE: [u8; 3] = [6, 1, 8];

fn build(
    req: &Req<'_>,
    kind: MessageType,
    own: Ipv4Addr,
    boot: &Boot,
    firmware: Firmware,
    dest: Dest,
) -> Message {
    let mut m = Message::default();
    let ciaddr = req.msg.ciaddr();
    let relayed = !req.msg.giaddr().is_unspecified();
    let mut flags = req.msg.flags();
    if ciaddr.is_unspecified() && (relayed || dest == Dest::Broadcast) {
        // yiaddr is 0.0.0.0: a relay must broadcast this on the client's segment.
        flags = flags.set_broadcast();
    }
    // UEFI PXE firmware sends its 4011 request to siaddr: on port 67 that must be us. After
    // that (and for everyone else) siaddr is the TFTP server for the file.
    let siaddr = if firmware == Firmware::PxeUefi && kind == MessageType::Offer {
        own
    } else {
        boot.next_server
    };
    m.set_opcode(Opcode::BootReply)
        .set_htype(v4::HType::Eth)
        .set_chaddr(&req.mac.0)
        .set_xid(req.msg.xid())
        .set_flags(flags)
        .set_giaddr(req.msg.giaddr())
        .set_ciaddr(if kind == MessageType::Ack {
            ciaddr
        } else {
            Ipv4Addr::UNSPECIFIED
        })
        .set_yiaddr(Ipv4Addr::UNSPECIFIED)
        .set_siaddr(siaddr)
        .set_sname_str(siaddr.to_string());
    set_file_field(&mut m, &boot.file);
    let vendor_class = if firmware == Firmware::Http {
        "HTTPClient"
    } else {
        "PXEClient"
    };
    let mut vendor_opts = Vec::new();
    if matches!(firmware, Firmware::PxeBios | Firmware::Ipxe) {
        vendor_opts.extend_from_slice(&DISCOVERY_BOOT_FILE);
    }
    if let Some(item) = boot_item(req.msg) {
        // A boot server request names its boot item (sub-option 71); the answer repeats it.
        vendor_opts.extend_from_slice(&[71, 4]);
        vendor_opts.extend_from_slice(&item);
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(own));
    opts.insert(DhcpOption::ClassIdentifier(
        vendor_class.as_bytes().to_vec(),
    ));
    if let Some(id) = &req.machine_id {
        opts.insert(DhcpOption::ClientMachineIdentifier(id.clone()));
    }
    if !vendor_opts.is_empty() {
        vendor_opts.push(255);
        opts.insert(DhcpOption::VendorExtensions(vendor_opts));
    }
    opts.insert(DhcpOption::TFTPServerName(siaddr.to_string().into_bytes()));
    opts.insert(DhcpOption::BootfileName(boot.file.clone().into_bytes()));
    if let Some(ri) = req.msg.opts().get(OptionCode::RelayAgentInformation) {
        // RFC 3046: echoed unchanged, so the relay can forward the reply.
        opts.insert(ri.clone());
    }
    m
}

/// Sub-option 71 (PXE boot item: type and layer, 4 bytes) of the request's option 43.
fn boot_item(msg: &Message) -> Option<[u8; 4]> {
    let Some(DhcpOption::VendorExtensions(data)) = msg.opts().get(OptionCode::VendorExtensions)
    else {
        return None;
    };
    let mut i = 0;
    while let Some(&code) = data.get(i) {
        match code {
            0 => i += 1,
            255 => return None,
            _ => {
                let len = usize::from(*data.get(i + 1)?);
                let value = data.get(i + 2..i + 2 + len)?;
                if code == 71 {
                    return value.try_into().ok();
                }
                i += 2 + len;
            }
        }
    }
    None
}
