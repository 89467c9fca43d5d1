//! One request in, at most one reply out. A short chain of steps, each of which may end the
//! exchange (drop, or answer) or let it continue: parse → select subnet → per message type
//! (with the store's decision for anything that touches a lease) → options → boot file →
//! relay echo → destination.
//!
//! Nothing here panics on any input: the decoder runs behind a pre-check of the option layout
//! and `catch_unwind`, and every index into the packet is checked.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::panic::AssertUnwindSafe;

use async_trait::async_trait;
use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::Decodable;
use time::{Duration, OffsetDateTime};

use super::boot::{self, BootHints};
use super::config::{DhcpConfig, Mac, Subnet};
use crate::store::{LeaseOp, LeaseOutcome};

/// DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// DHCP server port (also where relays listen).
pub const SERVER_PORT: u16 = 67;
/// How long an offered address is held for the client's REQUEST.
pub const OFFER_HOLD: Duration = Duration::seconds(60);
/// How long a declined address stays out of use.
pub const DECLINE_HOLD: Duration = Duration::minutes(10);

/// Where the packet arrived.
pub struct Ctx<'a> {
    /// Configuration.
    pub cfg: &'a DhcpConfig,
    /// Arrival interface.
    pub iface: &'a str,
    /// Its IPv4 addresses.
    pub iface_addrs: &'a [Ipv4Addr],
}

/// The store's side of lease decisions (the group-commit writer, or a fake in tests).
#[async_trait]
pub trait Leases: Send + Sync {
    /// Apply one op; `None` when the store failed (then nothing is promised to the client).
    async fn apply(&self, op: LeaseOp) -> Option<LeaseOutcome>;
}

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// 255.255.255.255:68 out of the arrival interface (clients without an address yet).
    Broadcast,
    /// A client with an address, or a relay agent.
    Unicast(SocketAddrV4),
}

/// A reply ready to send.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The message.
    pub msg: Message,
    /// Its destination.
    pub dest: Dest,
}

/// The result of handling one packet.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Send this.
    Respond(Reply),
    /// Handled, nothing to send (RELEASE, DECLINE).
    Quiet(&'static str),
    /// Not for us or not valid; counted under this reason.
    Drop(&'static str),
}

/// Decode a request, refusing anything malformed.
pub fn parse(raw: &[u8]) -> Result<Message, &'static str> {
    if raw.len() < 240 {
        return Err("short");
    }
    if raw[236..240] != [99, 130, 83, 99] {
        return Err("bad_magic");
    }
    // Walk the options first: the decoder asserts on some lengths in debug builds.
    let mut totals = [0usize; 256];
    let mut i = 240;
    while i < raw.len() {
        let code = raw[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let Some(&len) = raw.get(i + 1) else {
            return Err("truncated_option");
        };
        let len = usize::from(len);
        if i + 2 + len > raw.len() {
            return Err("truncated_option");
        }
        // The decoder joins repeated options (RFC 3396), so the joined length is what it sees
        // (found by fuzzing): check each instance and the running total.
        let joined = &mut totals[usize::from(code)];
        *joined += len;
        if !option_length_ok(code, len) || !option_length_ok(code, *joined) {
            return Err("bad_option_length");
        }
        i += 2 + len;
    }
    let msg = std::panic::catch_unwind(AssertUnwindSafe(|| Message::from_bytes(raw)))
        .map_err(|_| "decoder_panic")?
        .map_err(|_| "undecodable")?;
    if msg.opcode() != Opcode::BootRequest {
        return Err("not_a_request");
    }
    if msg.htype() != v4::HType::Eth || msg.hlen() != 6 {
        return Err("not_ethernet");
    }
    if msg.opts().msg_type().is_none() {
        return Err("no_message_type");
    }
    Ok(msg)
}

/// Whether the decoder can take option `code` with `len` bytes without asserting or
/// underflowing.
fn option_length_ok(code: u8, len: usize) -> bool {
    match code {
        80 => len == 0,
        94 => len == 3,
        53 | 52 => len == 1,
        50 | 54 | 51 | 58 | 59 | 152..=155 => len == 4,
        57 | 93 => len >= 2,
        // Found by fuzzing (fuzz/fuzz_targets/dhcp_packet.rs): bulk leasequery status
        // (len - 1) and client FQDN (len - 3) underflow on shorter options.
        151 => len >= 1,
        81 => len >= 3,
        _ => true,
    }
}

/// What the pipeline reads from a request (full and proxy mode).
pub(super) struct Req<'m> {
    pub(super) msg: &'m Message,
    pub(super) mac: Mac,
    pub(super) kind: MessageType,
    pub(super) requested: Option<Ipv4Addr>,
    pub(super) server_id: Option<Ipv4Addr>,
    pub(super) hostname: Option<String>,
    pub(super) boot: BootHints,
    /// Option 97 (client machine identifier, the SMBIOS UUID), echoed in proxy replies.
    pub(super) machine_id: Option<Vec<u8>>,
}

impl<'m> Req<'m> {
    pub(super) fn read(msg: &'m Message) -> Option<Req<'m>> {
        let chaddr = msg.chaddr();
        let mac = Mac(chaddr.get(..6)?.try_into().ok()?);
        let opts = msg.opts();
        let kind = opts.msg_type()?;
        let requested = match opts.get(OptionCode::RequestedIpAddress) {
            Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
            _ => None,
        };
        let server_id = match opts.get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let hostname = match opts.get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) if h.len() <= 63 && !h.is_empty() => Some(
                h.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
                    .collect(),
            ),
            _ => None,
        };
        let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
            Some(DhcpOption::ClientSystemArchitecture(a)) => Some(a.0),
            _ => None,
        };
        let vendor_class = match opts.get(OptionCode::ClassIdentifier) {
            Some(DhcpOption::ClassIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        let user_class = match opts.get(OptionCode::UserClass) {
            Some(DhcpOption::UserClass(v)) => Some(v.clone()),
            _ => None,
        };
        let machine_id = match opts.get(OptionCode::ClientMachineIdentifier) {
            Some(DhcpOption::ClientMachineIdentifier(v)) => Some(v.clone()),
            _ => None,
        };
        Some(Req {
            msg,
            mac,
            kind,
            requested,
            server_id,
            hostname,
            boot: BootHints {
                arch,
                vendor_class,
                user_class,
                ipxe_options: opts.contains(OptionCode::from(175u8)),
            },
            machine_id,
        })
    }
}

/// The subnet a request belongs to, and our address on the client's side.
fn select<'c>(req: &Req<'_>, ctx: &Ctx<'c>) -> Result<(&'c Subnet, Ipv4Addr), &'static str> {
    let giaddr = req.msg.giaddr();
    let subnet = if !giaddr.is_unspecified() {
        ctx.cfg
            .subnets
            .iter()
            .find(|s| s.contains(giaddr))
            .ok_or("relay_subnet_unknown")?
    } else {
        let mut here = ctx
            .cfg
            .subnets
            .iter()
            .filter(|s| s.interface.as_deref() == Some(ctx.iface));
        let first = here.clone().next().ok_or("no_subnet_on_interface")?;
        here.find(|s| ctx.iface_addrs.iter().any(|a| s.contains(*a)))
            .unwrap_or(first)
    };
    let server = subnet
        .next_server
        .or_else(|| {
            ctx.iface_addrs
                .iter()
                .copied()
                .find(|a| subnet.contains(*a))
        })
        .or_else(|| ctx.iface_addrs.first().copied())
        .ok_or("no_address_on_interface")?;
    Ok((subnet, server))
}

/// Handle one raw packet.
pub async fn handle(
    raw: &[u8],
    ctx: &Ctx<'_>,
    leases: &dyn Leases,
    now: OffsetDateTime,
) -> Outcome {
    let msg = match parse(raw) {
        Ok(m) => m,
        Err(reason) => return Outcome::Drop(reason),
    };
    handle_message(&msg, ctx, leases, now).await
}

/// Handle one decoded request.
pub async fn handle_message(
    msg: &Message,
    ctx: &Ctx<'_>,
    leases: &dyn Leases,
    now: OffsetDateTime,
) -> Outcome {
    let Some(req) = Req::read(msg) else {
        return Outcome::Drop("unreadable");
    };
    let (subnet, server) = match select(&req, ctx) {
        Ok(x) => x,
        Err(reason) => return Outcome::Drop(reason),
    };
    let mac = req.mac.to_string();
    let reserved = subnet.reservation(req.mac);
    match req.kind {
        MessageType::Discover => {
            let op = LeaseOp::Offer {
                subnet: subnet.name.clone(),
                mac,
                range: subnet.range,
                fixed: reserved,
                requested: req.requested.filter(|ip| subnet.contains(*ip)),
                exclude: subnet.reservations.iter().map(|(_, ip)| *ip).collect(),
                hold_until: now + OFFER_HOLD,
                hostname: req.hostname.clone(),
            };
            match leases.apply(op).await {
                Some(LeaseOutcome::Leased(ip)) => {
                    respond(&req, ctx, subnet, server, MessageType::Offer, Some(ip))
                }
                Some(_) => Outcome::Drop("no_address_free"),
                None => Outcome::Drop("store_failed"),
            }
        }
        MessageType::Request => {
            if req.server_id.is_some_and(|s| s != server) {
                return Outcome::Quiet("client_chose_another_server");
            }
            let ciaddr = req.msg.ciaddr();
            let Some(ip) = req
                .requested
                .or((!ciaddr.is_unspecified()).then_some(ciaddr))
            else {
                return Outcome::Drop("request_without_address");
            };
            let allowed = match reserved {
                Some(r) => ip == r,
                None => subnet.in_range(ip) && !subnet.reservations.iter().any(|(_, r)| *r == ip),
            };
            if !subnet.contains(ip) || !allowed {
                return nak(&req, server, "requested address not valid here");
            }
            let op = LeaseOp::Bind {
                subnet: subnet.name.clone(),
                mac,
                ip,
                expires_at: now + Duration::seconds(i64::from(subnet.lease_secs)),
                hostname: req.hostname.clone(),
            };
            match leases.apply(op).await {
                Some(LeaseOutcome::Leased(ip)) => {
                    respond(&req, ctx, subnet, server, MessageType::Ack, Some(ip))
                }
                Some(_) => nak(&req, server, "address in use"),
                None => Outcome::Drop("store_failed"),
            }
        }
        MessageType::Release => {
            let ip = req.msg.ciaddr();
            if ip.is_unspecified() || req.server_id.is_some_and(|s| s != server) {
                return Outcome::Drop("release_not_ours");
            }
            match leases.apply(LeaseOp::Release { mac, ip }).await {
                Some(_) => Outcome::Quiet("released"),
                None => Outcome::Drop("store_failed"),
            }
        }
        MessageType::Decline => {
            let Some(ip) = req.requested else {
                return Outcome::Drop("decline_without_address");
            };
            if req.server_id.is_some_and(|s| s != server) {
                return Outcome::Drop("decline_not_ours");
            }
            let op = LeaseOp::Decline {
                mac,
                ip,
                until: now + DECLINE_HOLD,
            };
            match leases.apply(op).await {
                Some(_) => Outcome::Quiet("declined"),
                None => Outcome::Drop("store_failed"),
            }
        }
        MessageType::Inform => respond(&req, ctx, subnet, server, MessageType::Ack, None),
        _ => Outcome::Drop("not_a_client_message"),
    }
}

fn base_reply(req: &Req<'_>, kind: MessageType, server: Ipv4Addr) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootReply)
        .set_htype(v4::HType::Eth)
        .set_chaddr(&req.mac.0)
        .set_xid(req.msg.xid())
        .set_flags(req.msg.flags())
        .set_giaddr(req.msg.giaddr());
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::ServerIdentifier(server));
    if let Some(ri) = req.msg.opts().get(OptionCode::RelayAgentInformation) {
        // RFC 3046: echoed unchanged, so the relay can forward the reply.
        opts.insert(ri.clone());
    }
    m
}

pub(super) fn destination(req: &Req<'_>, kind: MessageType) -> Dest {
    let giaddr = req.msg.giaddr();
    let ciaddr = req.msg.ciaddr();
    if !giaddr.is_unspecified() {
        Dest::Unicast(SocketAddrV4::new(giaddr, SERVER_PORT))
    } else if kind != MessageType::Nak && !ciaddr.is_unspecified() {
        Dest::Unicast(SocketAddrV4::new(ciaddr, CLIENT_PORT))
    } else {
        Dest::Broadcast
    }
}

fn nak(req: &Req<'_>, server: Ipv4Addr, why: &str) -> Outcome {
    let mut m = base_reply(req, MessageType::Nak, server);
    m.opts_mut().insert(DhcpOption::Message(why.to_string()));
    let mut dest = destination(req, MessageType::Nak);
    if let Dest::Unicast(_) = dest {
        // Relayed: the relay must broadcast it on the client's segment.
        m.set_flags(req.msg.flags().set_broadcast());
    } else {
        dest = Dest::Broadcast;
    }
    Outcome::Respond(Reply { msg: m, dest })
}

/// The 128-byte `file` header field, when the name fits (with its NUL); option 67 always
/// carries it too.
pub(super) fn set_file_field(m: &mut Message, file: &str) {
    if file.len() < 128 {
        m.set_fname_str(file);
    }
}

fn respond(
    req: &Req<'_>,
    ctx: &Ctx<'_>,
    subnet: &Subnet,
    server: Ipv4Addr,
    kind: MessageType,
    ip: Option<Ipv4Addr>,
) -> Outcome {
    let mut m = base_reply(req, kind, server);
    if let Some(ip) = ip {
        m.set_yiaddr(ip);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::AddressLeaseTime(subnet.lease_secs));
        opts.insert(DhcpOption::Renewal(subnet.lease_secs / 2));
        opts.insert(DhcpOption::Rebinding(
            (u64::from(subnet.lease_secs) * 7 / 8) as u32,
        ));
    } else {
        m.set_ciaddr(req.msg.ciaddr());
    }
    let opts = m.opts_mut();
    opts.insert(DhcpOption::SubnetMask(subnet.mask()));
    opts.insert(DhcpOption::BroadcastAddr(subnet.broadcast()));
    if let Some(r) = subnet.router {
        opts.insert(DhcpOption::Router(vec![r]));
    }
    if !subnet.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(subnet.dns.clone()));
    }
    if let Some(d) = &subnet.domain {
        opts.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(mtu) = subnet.mtu {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
    let host_file = ctx.cfg.host_boot_file(req.mac);
    if let Some(b) = boot::decide(
        &req.boot,
        &subnet.boot,
        ctx.cfg.http_port,
        server,
        host_file,
    ) {
        m.set_siaddr(b.next_server);
        set_file_field(&mut m, &b.file);
        let opts = m.opts_mut();
        opts.insert(DhcpOption::BootfileName(b.file.clone().into_bytes()));
        opts.insert(DhcpOption::TFTPServerName(
            b.next_server.to_string().into_bytes(),
        ));
        if let Some(vc) = b.vendor_class {
            opts.insert(DhcpOption::ClassIdentifier(vc.as_bytes().to_vec()));
            if vc == "PXEClient" {
                // PXE discovery control (sub-option 6) = 8: boot the file given, no menus.
                opts.insert(DhcpOption::VendorExtensions(vec![6, 1, 8, 255]));
            }
        }
    }
    let dest = destination(req, kind);
    Outcome::Respond(Reply { msg: m, dest })
}
