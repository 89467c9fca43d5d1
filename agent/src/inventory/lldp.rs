//! LLDP neighbours: listen for frames (ethertype 0x88cc) on each physical link with an
//! AF_PACKET socket, for a bounded time, and decode their TLVs.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use anneal_shared::inventory::LldpNeighbor;

use super::CollectError;

/// LLDP's ethertype.
const ETH_P_LLDP: u16 = 0x88cc;
/// The "nearest bridge" group address LLDP frames are sent to.
const LLDP_MULTICAST: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
// From <linux/if_packet.h>; spelled out so the build does not depend on a libc version.
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_MR_MULTICAST: libc::c_ushort = 0;

/// `struct packet_mreq` from <linux/if_packet.h>.
#[repr(C)]
struct PacketMreq {
    mr_ifindex: libc::c_int,
    mr_type: libc::c_ushort,
    mr_alen: libc::c_ushort,
    mr_address: [libc::c_uchar; 8],
}

/// Neighbours heard, plus per-link problems that did not stop the others.
#[derive(Debug, Default)]
pub struct LldpReport {
    /// One entry per (interface, chassis, port) heard.
    pub neighbors: Vec<LldpNeighbor>,
    /// Links that could not be listened on.
    pub errors: Vec<String>,
}

/// Listens on `interfaces` for up to `listen` (less once every link has been heard from).
pub fn collect(interfaces: &[String], listen: Duration) -> Result<LldpReport, CollectError> {
    let mut report = LldpReport::default();
    let mut sockets = Vec::new();
    for name in interfaces {
        match open(name) {
            Ok(fd) => sockets.push((name.clone(), fd)),
            Err(e) => report.errors.push(format!(
                "{name}: cannot open an AF_PACKET socket: {e}{}",
                if e.kind() == io::ErrorKind::PermissionDenied {
                    " (needs root or CAP_NET_RAW)"
                } else {
                    ""
                }
            )),
        }
    }
    if sockets.is_empty() {
        return Err(CollectError::Invalid(report.errors.join("; ")));
    }

    let mut heard: BTreeMap<(String, Option<String>, Option<String>), LldpNeighbor> =
        BTreeMap::new();
    let deadline = Instant::now() + listen;
    let mut buf = vec![0u8; 9216];
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let all_heard = sockets
            .iter()
            .all(|(name, _)| heard.keys().any(|k| &k.0 == name));
        if all_heard {
            break;
        }
        let mut fds: Vec<libc::pollfd> = sockets
            .iter()
            .map(|(_, fd)| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let wait_ms = (deadline - now).as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfd structs.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, wait_ms) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            report.errors.push(format!("poll: {err}"));
            break;
        }
        for (pfd, (name, fd)) in fds.iter().zip(&sockets) {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            // Drain everything queued; the socket is non-blocking.
            loop {
                // SAFETY: `buf` is writable for `buf.len()` bytes.
                let n =
                    unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n <= 0 {
                    break;
                }
                let len = usize::try_from(n).unwrap_or(0).min(buf.len());
                if let Some(mut neighbor) = parse_frame(&buf[..len]) {
                    neighbor.interface = name.clone();
                    let key = (
                        name.clone(),
                        neighbor.chassis_id.clone(),
                        neighbor.port_id.clone(),
                    );
                    heard.insert(key, neighbor);
                }
            }
        }
    }
    report.neighbors = heard.into_values().collect();
    Ok(report)
}

/// A raw socket bound to one interface that receives LLDP frames only.
fn open(ifname: &str) -> io::Result<OwnedFd> {
    let proto = ETH_P_LLDP.to_be();
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            libc::c_int::from(proto),
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a freshly opened descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let cname = CString::new(ifname).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: `cname` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let ifindex =
        libc::c_int::try_from(index).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    // SAFETY: sockaddr_ll is plain old data; all-zero is a valid starting value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as libc::c_ushort;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex;
    // SAFETY: `sll` is a properly initialised sockaddr_ll and its size is passed along.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut mreq = PacketMreq {
        mr_ifindex: ifindex,
        mr_type: PACKET_MR_MULTICAST,
        mr_alen: 6,
        mr_address: [0; 8],
    };
    mreq.mr_address[..6].copy_from_slice(&LLDP_MULTICAST);
    // Without the membership some NICs filter the group address out. Failing here is not fatal:
    // many drivers pass it anyway.
    // SAFETY: `mreq` matches struct packet_mreq and its size is passed along.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_ADD_MEMBERSHIP,
            (&mreq as *const PacketMreq).cast(),
            std::mem::size_of::<PacketMreq>() as libc::socklen_t,
        )
    };
    Ok(fd)
}

/// Decodes an Ethernet frame carrying an LLDPDU (an 802.1Q tag is skipped); `interface` is left
/// empty for the caller.
pub fn parse_frame(frame: &[u8]) -> Option<LldpNeighbor> {
    let mut ethertype_at = 12;
    if frame.get(12..14)? == [0x81, 0x00] {
        ethertype_at += 4;
    }
    let ethertype = u16::from_be_bytes(frame.get(ethertype_at..ethertype_at + 2)?.try_into().ok()?);
    if ethertype != ETH_P_LLDP {
        return None;
    }
    parse_lldpdu(frame.get(ethertype_at + 2..)?)
}

/// Decodes the TLVs of an LLDPDU. A PDU must start with a chassis ID and a port ID.
pub fn parse_lldpdu(mut pdu: &[u8]) -> Option<LldpNeighbor> {
    let mut n = LldpNeighbor::default();
    let mut seen_mandatory = false;
    while pdu.len() >= 2 {
        let header = u16::from_be_bytes([pdu[0], pdu[1]]);
        let kind = header >> 9;
        let len = usize::from(header & 0x01ff);
        let value = pdu.get(2..2 + len)?;
        pdu = &pdu[2 + len..];
        match kind {
            0 => break,
            1 => n.chassis_id = decode_id(value, 4, 5),
            2 => {
                n.port_id = decode_id(value, 3, 4);
                seen_mandatory = n.chassis_id.is_some();
            }
            4 => n.port_description = text(value),
            5 => n.system_name = text(value),
            _ => {}
        }
    }
    seen_mandatory.then_some(n)
}

/// A chassis or port ID: subtype byte, then a MAC, a network address or text.
fn decode_id(value: &[u8], mac_subtype: u8, addr_subtype: u8) -> Option<String> {
    let (&subtype, id) = value.split_first()?;
    if id.is_empty() {
        return None;
    }
    if subtype == mac_subtype && id.len() == 6 {
        return Some(hex_join(id, ":"));
    }
    if subtype == addr_subtype {
        // First byte: IANA address family (1 = IPv4, 2 = IPv6).
        match (id[0], id.len()) {
            (1, 5) => return Some(Ipv4Addr::new(id[1], id[2], id[3], id[4]).to_string()),
            (2, 17) => {
                let octets: [u8; 16] = id[1..].try_into().ok()?;
                return Some(Ipv6Addr::from(octets).to_string());
            }
            _ => return Some(hex_join(id, "")),
        }
    }
    text(id).or_else(|| Some(hex_join(id, "")))
}

/// Printable text, trimmed; binary or empty → `None`.
fn text(value: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(value).ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty() && !s.chars().any(char::is_control)).then(|| s.to_string())
}

fn hex_join(bytes: &[u8], sep: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(sep)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One TLV: 7-bit type, 9-bit length, value.
    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let header = (kind << 9) | value.len() as u16;
        let mut out = header.to_be_bytes().to_vec();
        out.extend_from_slice(value);
        out
    }

    fn frame(tlvs: &[Vec<u8>], vlan: bool) -> Vec<u8> {
        let mut f = LLDP_MULTICAST.to_vec();
        f.extend_from_slice(&[0x0c, 0xc4, 0x7a, 0x00, 0x00, 0x01]);
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x0a]);
        }
        f.extend_from_slice(&[0x88, 0xcc]);
        for t in tlvs {
            f.extend_from_slice(t);
        }
        f
    }

    #[test]
    fn switch_with_mac_chassis_and_ifname_port() {
        let f = frame(
            &[
                tlv(1, &[4, 0x0c, 0xc4, 0x7a, 0xaa, 0xbb, 0xcc]),
                tlv(2, &[5, b'E', b't', b'h', b'1', b'/', b'7']),
                tlv(3, &[0x00, 0x78]),
                tlv(4, b"server-17 eth0"),
                tlv(5, b"tor-a1.lab"),
                tlv(127, &[0x00, 0x12, 0x0f, 0x01, 0x03]),
                tlv(0, &[]),
            ],
            false,
        );
        let n = parse_frame(&f).unwrap();
        assert_eq!(n.chassis_id.as_deref(), Some("0c:c4:7a:aa:bb:cc"));
        assert_eq!(n.port_id.as_deref(), Some("Eth1/7"));
        assert_eq!(n.port_description.as_deref(), Some("server-17 eth0"));
        assert_eq!(n.system_name.as_deref(), Some("tor-a1.lab"));
        assert_eq!(n.interface, "");
    }

    #[test]
    fn vlan_tag_network_address_and_mac_port() {
        let f = frame(
            &[
                tlv(1, &[5, 1, 10, 0, 0, 1]),
                tlv(2, &[3, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56]),
                tlv(3, &[0x00, 0x78]),
            ],
            true,
        );
        let n = parse_frame(&f).unwrap();
        assert_eq!(n.chassis_id.as_deref(), Some("10.0.0.1"));
        assert_eq!(n.port_id.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(n.system_name, None);
    }

    #[test]
    fn rejects_non_lldp_and_truncated_frames() {
        let mut ipv4 = frame(&[tlv(1, &[4, 1, 2, 3, 4, 5, 6])], false);
        ipv4[12] = 0x08;
        ipv4[13] = 0x00;
        assert!(parse_frame(&ipv4).is_none());
        // Length says 20 bytes, only 3 follow.
        let mut cut = frame(&[], false);
        cut.extend_from_slice(&[0x02, 0x14, 4, 1, 2]);
        assert!(parse_frame(&cut).is_none());
        // Chassis ID without a port ID is not a valid LLDPDU.
        assert!(parse_frame(&frame(&[tlv(1, &[7, b'x'])], false)).is_none());
        assert!(parse_frame(&[0u8; 5]).is_none());
    }

    /// Sends frames on one end of a veth pair and listens on the other. Needs root (creates
    /// links); run with `cargo test -p anneal-agent -- --ignored`.
    #[test]
    #[ignore = "needs root to create a veth pair"]
    fn hears_a_neighbor_on_a_veth_pair() {
        let (a, b) = ("anlldpA", "anlldpB");
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        let _ = ip(&["link", "del", a]);
        assert!(ip(&["link", "add", a, "type", "veth", "peer", "name", b]));
        assert!(ip(&["link", "set", a, "up"]) && ip(&["link", "set", b, "up"]));

        let f = frame(
            &[
                tlv(1, &[4, 0x0c, 0xc4, 0x7a, 0xaa, 0xbb, 0xcc]),
                tlv(2, b"\x05Eth1/9"),
                tlv(3, &[0x00, 0x78]),
                tlv(5, b"tor-veth"),
                tlv(0, &[]),
            ],
            false,
        );
        let sender = std::thread::spawn(move || {
            let fd = open(b).expect("sender socket");
            for _ in 0..20 {
                // SAFETY: `f` is readable for `f.len()` bytes; the socket is bound to `b`.
                unsafe { libc::send(fd.as_raw_fd(), f.as_ptr().cast(), f.len(), 0) };
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let report = collect(&[a.to_string()], Duration::from_secs(5));
        let _ = sender.join();
        let _ = ip(&["link", "del", a]);
        let report = report.expect("listen");
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.neighbors.len(), 1, "{:?}", report.neighbors);
        let n = &report.neighbors[0];
        assert_eq!(n.interface, a);
        assert_eq!(n.chassis_id.as_deref(), Some("0c:c4:7a:aa:bb:cc"));
        assert_eq!(n.port_id.as_deref(), Some("Eth1/9"));
        assert_eq!(n.system_name.as_deref(), Some("tor-veth"));
    }
}
