//! Proxy-mode decisions: what each kind of firmware is told, on port 67 and 4011, and who is
//! told nothing. Also the `[[dhcp.proxy]]` / `[[dhcp.hosts]]` configuration checks.

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};

use super::config::{DhcpConfig, DhcpFile};
use super::pipeline::{Dest, Outcome};
use super::proxy::{handle_message, Listener, ProxyCtx};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const OTHER_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 9];
const HOST_MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 0x77];
const ETH2: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 5);
const ETH3: Ipv4Addr = Ipv4Addr::new(10, 3, 0, 5);
const DNSMASQ: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
const UUID: [u8; 17] = [
    0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
    0x01,
];

const CONFIG: &str = r#"
    [[subnets]]
    interface = "eth1"
    subnet = "10.0.0.0/24"
    range = ["10.0.0.100", "10.0.0.110"]

    # The whole link behind eth2, anyone who PXE boots.
    [[proxy]]
    interface = "eth2"

    # eth3's own subnet: two machines only, their own UEFI file, ARM64 enabled.
    [[proxy]]
    interface = "eth3"
    subnet = "10.3.0.0/24"
    macs = ["52:54:00:00:00:01", "52-54-00-00-00-77"]
    uefi_file = "ipxe.efi"
    arm64_file = "arm64/snponly.efi"

    # A relayed subnet arriving on eth3: UEFI x64 only, TFTP from another host.
    [[proxy]]
    interface = "eth3"
    subnet = "10.4.0.0/24"
    vendor_classes = ["PXEClient:Arch:00007"]
    next_server = "10.9.9.9"

    [[hosts]]
    mac = "52:54:00:00:00:77"
    boot_file = "special.efi"
"#;

fn cfg() -> DhcpConfig {
    let file: DhcpFile = toml::from_str(CONFIG).unwrap();
    DhcpConfig::resolve(Some(&file), &[]).unwrap()
}

fn pxe(kind: MessageType, mac: [u8; 6], arch: Option<u16>, vendor: Option<&str>) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(v4::HType::Eth)
        .set_chaddr(&mac)
        .set_xid(0xfeed);
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    if let Some(a) = arch {
        o.insert(DhcpOption::ClientSystemArchitecture(v4::Architecture(a)));
    }
    if let Some(v) = vendor {
        o.insert(DhcpOption::ClassIdentifier(v.as_bytes().to_vec()));
    }
    m
}

fn vendor_for(arch: u16) -> String {
    format!("PXEClient:Arch:{arch:05}:UNDI:003016")
}

fn discover(arch: u16) -> Message {
    pxe(
        MessageType::Discover,
        MAC,
        Some(arch),
        Some(&vendor_for(arch)),
    )
}

fn run_on(msg: &Message, iface: &str, listener: Listener, from: SocketAddrV4) -> Outcome {
    let cfg = cfg();
    let addrs: &[Ipv4Addr] = match iface {
        "eth2" => &[ETH2],
        "eth3" => &[ETH3],
        _ => &[Ipv4Addr::new(192, 168, 9, 1)],
    };
    let ctx = ProxyCtx {
        cfg: &cfg,
        iface,
        iface_addrs: addrs,
        listener,
        from,
    };
    handle_message(msg, &ctx)
}

fn on67(msg: &Message, iface: &str) -> Outcome {
    run_on(
        msg,
        iface,
        Listener::Dhcp,
        SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68),
    )
}

fn reply(o: Outcome) -> (Message, Dest) {
    match o {
        Outcome::Respond(r) => (r.msg, r.dest),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn opt(m: &Message, code: OptionCode) -> Option<&DhcpOption> {
    m.opts().get(code)
}

fn vendor_class(m: &Message) -> Option<&[u8]> {
    match opt(m, OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => Some(v),
        _ => None,
    }
}

fn option43(m: &Message) -> Option<&[u8]> {
    match opt(m, OptionCode::VendorExtensions) {
        Some(DhcpOption::VendorExtensions(v)) => Some(v),
        _ => None,
    }
}

fn file(m: &Message) -> String {
    let header = m
        .fname_str()
        .and_then(|r| r.ok())
        .unwrap_or_default()
        .to_string();
    let option = match opt(m, OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => String::from_utf8_lossy(f).into_owned(),
        _ => String::new(),
    };
    assert_eq!(header, option, "file field and option 67 agree");
    option
}

/// The invariants of every proxy answer: no address, our server id, a vendor class.
fn assert_proxy_reply(m: &Message, kind: MessageType, server_id: Ipv4Addr) {
    assert_eq!(m.opts().msg_type(), Some(kind));
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(
        m.yiaddr(),
        Ipv4Addr::UNSPECIFIED,
        "proxy never hands out an address"
    );
    assert_eq!(m.xid(), 0xfeed);
    assert_eq!(
        opt(m, OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(server_id))
    );
    for absent in [
        OptionCode::AddressLeaseTime,
        OptionCode::SubnetMask,
        OptionCode::Router,
    ] {
        assert!(opt(m, absent).is_none(), "{absent:?} in a proxy reply");
    }
}

#[test]
fn bios_pxe_gets_a_proxy_offer_with_discovery_control() {
    let mut d = discover(0);
    d.opts_mut()
        .insert(DhcpOption::ClientMachineIdentifier(UUID.to_vec()));
    let (offer, dest) = reply(on67(&d, "eth2"));
    assert_proxy_reply(&offer, MessageType::Offer, ETH2);
    assert_eq!(dest, Dest::Broadcast);
    assert!(offer.flags().broadcast());
    assert_eq!(offer.siaddr(), ETH2);
    assert_eq!(offer.chaddr().get(..6), Some(&MAC[..]));
    assert_eq!(vendor_class(&offer), Some(&b"PXEClient"[..]));
    assert_eq!(option43(&offer), Some(&[6, 1, 8, 255][..]));
    assert_eq!(file(&offer), "undionly.kpxe");
    assert_eq!(
        opt(&offer, OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(UUID.to_vec())),
        "option 97 echoed"
    );
    assert_eq!(offer.sname_str().and_then(|r| r.ok()), Some("10.2.0.5"));
    // No option 93 at all (old ROMs): treated as BIOS.
    let (offer, _) = reply(on67(
        &pxe(MessageType::Discover, MAC, None, Some("PXEClient")),
        "eth2",
    ));
    assert_eq!(file(&offer), "undionly.kpxe");
}

#[test]
fn uefi_pxe_gets_a_binl_offer_and_is_sent_to_4011() {
    for arch in [7u16, 9] {
        let (offer, dest) = reply(on67(&discover(arch), "eth2"));
        assert_proxy_reply(&offer, MessageType::Offer, ETH2);
        assert_eq!(dest, Dest::Broadcast);
        assert_eq!(vendor_class(&offer), Some(&b"PXEClient"[..]), "arch {arch}");
        // No option 43: EDK2 then asks siaddr:4011 (works on every EDK2, see proxy.rs).
        assert_eq!(option43(&offer), None, "arch {arch}");
        assert_eq!(
            offer.siaddr(),
            ETH2,
            "siaddr is where the 4011 request goes"
        );
        assert_eq!(file(&offer), "snponly.efi");
        assert!(
            opt(&offer, OptionCode::ClientMachineIdentifier).is_none(),
            "nothing to echo (Intel NICs omit 97)"
        );
    }
}

#[test]
fn ipxe_gets_its_script_url_and_pxeclient() {
    let script = "http://10.2.0.5:8080/boot.ipxe";
    let mut d = discover(7);
    d.opts_mut().insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    let (offer, _) = reply(on67(&d, "eth2"));
    assert_proxy_reply(&offer, MessageType::Offer, ETH2);
    assert_eq!(file(&offer), script);
    // iPXE takes an offer as proxyDHCP only with PXEClient in option 60.
    assert_eq!(vendor_class(&offer), Some(&b"PXEClient"[..]));
    assert_eq!(option43(&offer), Some(&[6, 1, 8, 255][..]));
    // Option 175 alone is enough to know iPXE; a per-machine file does not apply to iPXE.
    let mut d = pxe(
        MessageType::Discover,
        HOST_MAC,
        Some(0),
        Some(&vendor_for(0)),
    );
    d.opts_mut()
        .insert(DhcpOption::Unknown(v4::UnknownOption::new(
            OptionCode::from(175u8),
            vec![177, 5, 1, 0x80, 0x86, 0x10, 0x0e],
        )));
    assert_eq!(file(&reply(on67(&d, "eth2")).0), script);
}

#[test]
fn http_boot_gets_a_url_and_httpclient() {
    let d = pxe(
        MessageType::Discover,
        MAC,
        Some(16),
        Some("HTTPClient:Arch:00016:UNDI:003000"),
    );
    let (offer, _) = reply(on67(&d, "eth2"));
    assert_proxy_reply(&offer, MessageType::Offer, ETH2);
    assert_eq!(vendor_class(&offer), Some(&b"HTTPClient"[..]));
    assert_eq!(option43(&offer), None);
    assert_eq!(file(&offer), "http://10.2.0.5:8080/ipxe/snponly.efi");
}

#[test]
fn hosts_that_are_not_pxe_clients_get_nothing() {
    for kind in [
        MessageType::Discover,
        MessageType::Request,
        MessageType::Inform,
        MessageType::Release,
    ] {
        let plain = pxe(kind, MAC, None, None);
        assert!(matches!(on67(&plain, "eth2"), Outcome::Drop("not_pxe")));
        let linux = pxe(kind, MAC, None, Some("udhcp 1.35.0"));
        assert!(matches!(on67(&linux, "eth2"), Outcome::Drop("not_pxe")));
    }
    // And nothing on an interface without a proxy scope (or a full-mode one).
    for iface in ["eth1", "eth9"] {
        assert!(matches!(
            on67(&discover(0), iface),
            Outcome::Drop("no_proxy_on_interface")
        ));
    }
}

#[test]
fn requests_on_67_are_answered_only_when_they_name_us() {
    // The client taking the real server's offer: silence, never a NAK.
    let mut r = pxe(MessageType::Request, MAC, Some(7), Some(&vendor_for(7)));
    r.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 2, 0, 50)));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(DNSMASQ));
    assert!(matches!(on67(&r, "eth2"), Outcome::Quiet(_)));
    let mut no_id = pxe(MessageType::Request, MAC, Some(7), Some(&vendor_for(7)));
    no_id.set_ciaddr(Ipv4Addr::new(10, 2, 0, 50));
    assert!(matches!(on67(&no_id, "eth2"), Outcome::Quiet(_)));
    // A DHCP server on this host shares our address: a REQUEST naming it that takes an
    // address (option 50) is still the other server's.
    let mut same_host = pxe(MessageType::Request, MAC, Some(7), Some(&vendor_for(7)));
    same_host
        .opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 2, 0, 50)));
    same_host
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(ETH2));
    assert!(matches!(on67(&same_host, "eth2"), Outcome::Quiet(_)));
    // Firmware that sends its REQUEST to the proxy: the boot information as an ACK.
    let mut r = pxe(MessageType::Request, MAC, Some(0), Some(&vendor_for(0)));
    r.opts_mut().insert(DhcpOption::ServerIdentifier(ETH2));
    let (ack, dest) = reply(on67(&r, "eth2"));
    assert_proxy_reply(&ack, MessageType::Ack, ETH2);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(file(&ack), "undionly.kpxe");
}

#[test]
fn boot_server_requests_on_4011_get_an_ack_unicast_back() {
    let client = Ipv4Addr::new(10, 2, 0, 77);
    let from = SocketAddrV4::new(client, 4011);
    let mut r = pxe(MessageType::Request, MAC, Some(7), Some(&vendor_for(7)));
    r.set_ciaddr(client);
    r.opts_mut()
        .insert(DhcpOption::ClientMachineIdentifier(UUID.to_vec()));
    let (ack, dest) = reply(run_on(&r, "eth2", Listener::BootServer, from));
    assert_proxy_reply(&ack, MessageType::Ack, ETH2);
    assert_eq!(dest, Dest::Unicast(from));
    assert_eq!(ack.ciaddr(), client);
    assert_eq!(ack.siaddr(), ETH2);
    assert_eq!(vendor_class(&ack), Some(&b"PXEClient"[..]));
    assert_eq!(file(&ack), "snponly.efi");
    assert_eq!(
        opt(&ack, OptionCode::ClientMachineIdentifier),
        Some(&DhcpOption::ClientMachineIdentifier(UUID.to_vec()))
    );
    // A boot item (sub-option 71) is repeated in the answer.
    let mut item = r.clone();
    item.opts_mut().insert(DhcpOption::VendorExtensions(vec![
        71, 4, 0x80, 0x00, 0, 0, 255,
    ]));
    let (ack, _) = reply(run_on(&item, "eth2", Listener::BootServer, from));
    assert_eq!(option43(&ack), Some(&[71, 4, 0x80, 0, 0, 0, 255][..]));
    // iPXE's ProxyDHCP request (from port 68, naming us in option 54): the script URL.
    let mut ipxe = r.clone();
    ipxe.opts_mut()
        .insert(DhcpOption::UserClass(b"iPXE".to_vec()));
    ipxe.opts_mut().insert(DhcpOption::ServerIdentifier(ETH2));
    let from68 = SocketAddrV4::new(client, 68);
    let (ack, dest) = reply(run_on(&ipxe, "eth2", Listener::BootServer, from68));
    assert_eq!(dest, Dest::Unicast(from68));
    assert_eq!(file(&ack), "http://10.2.0.5:8080/boot.ipxe");
    // Meant for another boot server: quiet. A DISCOVER on 4011: not for us.
    let mut other = r.clone();
    other
        .opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 2, 0, 99)));
    assert!(matches!(
        run_on(&other, "eth2", Listener::BootServer, from),
        Outcome::Quiet(_)
    ));
    assert!(matches!(
        run_on(&discover(7), "eth2", Listener::BootServer, from),
        Outcome::Drop("not_for_proxy")
    ));
}

#[test]
fn mac_and_vendor_class_allow_lists() {
    let (offer, _) = reply(on67(&discover(7), "eth3"));
    assert_proxy_reply(&offer, MessageType::Offer, ETH3);
    let stranger = pxe(
        MessageType::Discover,
        OTHER_MAC,
        Some(7),
        Some(&vendor_for(7)),
    );
    assert!(matches!(
        on67(&stranger, "eth3"),
        Outcome::Drop("mac_not_allowed")
    ));
    // The relayed scope (giaddr 10.4.0.1) takes only UEFI x64 vendor classes, any MAC.
    let relay = Ipv4Addr::new(10, 4, 0, 1);
    let mut uefi = pxe(
        MessageType::Discover,
        OTHER_MAC,
        Some(7),
        Some(&vendor_for(7)),
    );
    uefi.set_giaddr(relay);
    let (offer, dest) = reply(on67(&uefi, "eth3"));
    assert_proxy_reply(&offer, MessageType::Offer, ETH3);
    assert_eq!(dest, Dest::Unicast(SocketAddrV4::new(relay, 67)));
    assert_eq!(offer.giaddr(), relay);
    assert!(
        offer.flags().broadcast(),
        "the relay must broadcast it (no yiaddr)"
    );
    assert_eq!(offer.siaddr(), ETH3, "UEFI's 4011 request must reach us");
    let mut bios = pxe(
        MessageType::Discover,
        OTHER_MAC,
        Some(0),
        Some(&vendor_for(0)),
    );
    bios.set_giaddr(relay);
    assert!(matches!(
        on67(&bios, "eth3"),
        Outcome::Drop("vendor_class_not_allowed")
    ));
    // A relay from a subnet with no scope.
    let mut far = uefi.clone();
    far.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert!(matches!(
        on67(&far, "eth3"),
        Outcome::Drop("relay_subnet_unknown")
    ));
    // After the 4011 round trip the relayed client learns the other TFTP server.
    let client = Ipv4Addr::new(10, 4, 0, 50);
    let mut r = pxe(
        MessageType::Request,
        OTHER_MAC,
        Some(7),
        Some(&vendor_for(7)),
    );
    r.set_ciaddr(client);
    let from = SocketAddrV4::new(client, 4011);
    let (ack, _) = reply(run_on(&r, "eth3", Listener::BootServer, from));
    assert_proxy_reply(&ack, MessageType::Ack, ETH3);
    assert_eq!(ack.siaddr(), Ipv4Addr::new(10, 9, 9, 9));
    assert_eq!(file(&ack), "snponly.efi");
}

#[test]
fn per_scope_and_per_host_overrides() {
    // eth3's scope: its own UEFI file.
    assert_eq!(file(&reply(on67(&discover(7), "eth3")).0), "ipxe.efi");
    assert_eq!(file(&reply(on67(&discover(0), "eth3")).0), "undionly.kpxe");
    // The host entry wins over scope and defaults, for any architecture…
    for (iface, arch) in [("eth2", 0u16), ("eth2", 7), ("eth3", 9), ("eth2", 11)] {
        let d = pxe(
            MessageType::Discover,
            HOST_MAC,
            Some(arch),
            Some(&vendor_for(arch)),
        );
        assert_eq!(
            file(&reply(on67(&d, iface)).0),
            "special.efi",
            "{iface} {arch}"
        );
    }
    // …and for UEFI HTTP boot becomes a URL.
    let d = pxe(
        MessageType::Discover,
        HOST_MAC,
        Some(16),
        Some("HTTPClient"),
    );
    assert_eq!(
        file(&reply(on67(&d, "eth2")).0),
        "http://10.2.0.5:8080/ipxe/special.efi"
    );
}

#[test]
fn arm64_only_where_a_file_is_configured() {
    // Default: Debian ships no ARM64 iPXE, so no answer at all.
    assert!(matches!(
        on67(&discover(11), "eth2"),
        Outcome::Drop("no_boot_file_for_arch")
    ));
    let http = pxe(MessageType::Discover, MAC, Some(19), Some("HTTPClient"));
    assert!(matches!(
        on67(&http, "eth2"),
        Outcome::Drop("no_boot_file_for_arch")
    ));
    // eth3 configures one.
    let (offer, _) = reply(on67(&discover(11), "eth3"));
    assert_eq!(file(&offer), "arm64/snponly.efi");
    assert_eq!(option43(&offer), None, "UEFI: the 4011 path");
    assert_eq!(
        file(&reply(on67(&http, "eth3")).0),
        "http://10.3.0.5:8080/ipxe/arm64/snponly.efi"
    );
    // Architectures we have nothing for (Itanium, x86 UEFI).
    for arch in [2u16, 6] {
        assert!(matches!(
            on67(&discover(arch), "eth2"),
            Outcome::Drop("no_boot_file_for_arch")
        ));
    }
}

#[test]
fn proxy_configuration_mistakes_are_errors() {
    let check = |text: &str| -> String {
        let file: DhcpFile = match toml::from_str(text) {
            Ok(f) => f,
            Err(e) => return format!("parse: {e}"),
        };
        match DhcpConfig::resolve(Some(&file), &[]) {
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        }
    };
    let full = "[[subnets]]\ninterface = \"e0\"\nsubnet = \"10.0.0.0/24\"\n\
                range = [\"10.0.0.10\", \"10.0.0.20\"]\n";
    assert_eq!(check("[[proxy]]\ninterface = \"e1\"\n"), "");
    assert!(
        check(&format!("{full}[[proxy]]\ninterface = \"e0\"\n")).contains("both full and proxy")
    );
    assert!(
        check("[[proxy]]\ninterface = \"e1\"\n[[proxy]]\ninterface = \"e1\"\n")
            .contains("more than one")
    );
    assert!(check(
        "[[proxy]]\ninterface = \"e1\"\nsubnet = \"10.1.0.0/16\"\n\
         [[proxy]]\ninterface = \"e2\"\nsubnet = \"10.1.2.0/24\"\n"
    )
    .contains("overlap"));
    assert!(check(&format!(
        "{full}[[proxy]]\ninterface = \"e1\"\nsubnet = \"10.0.0.0/25\"\n"
    ))
    .contains("overlaps full-mode subnet"));
    assert!(
        check("[[proxy]]\ninterface = \"e1\"\nsubnet = \"10.1.0.1/24\"\n").contains("host bits")
    );
    assert!(check("[[proxy]]\ninterface = \"e1\"\nmacs = [\"nope\"]\n").contains("MAC"));
    assert!(
        check("[[proxy]]\ninterface = \"e1\"\nvendor_classes = [\"\"]\n")
            .contains("vendor_classes")
    );
    assert!(check("[[proxy]]\ninterface = \"a/b\"\n").contains("not an interface name"));
    assert!(check("[[proxy]]\ninterface = \"e1\"\nuefi_file = \"\"\n").contains("uefi_file"));
    assert!(check("[[proxy]]\nsubnet = \"10.1.0.0/24\"\n").contains("interface"));
    assert!(
        check("[[proxy]]\ninterface = \"e1\"\nrange = [\"10.0.0.1\", \"10.0.0.2\"]\n")
            .contains("unknown field")
    );
    let hosts = "[[hosts]]\nmac = \"52:54:00:00:00:01\"\nboot_file = \"a.efi\"\n";
    assert_eq!(check(hosts), "");
    assert!(check(&format!("{hosts}{hosts}")).contains("listed twice"));
    assert!(check("[[hosts]]\nmac = \"x\"\nboot_file = \"a.efi\"\n").contains("MAC"));

    // Proxy only: enabled, with no full-mode interface; nothing: off.
    let file: DhcpFile = toml::from_str("[[proxy]]\ninterface = \"e1\"\n").unwrap();
    let c = DhcpConfig::resolve(Some(&file), &[]).unwrap();
    assert!(c.enabled());
    assert!(c.interfaces.is_empty());
    assert_eq!(c.proxy_interfaces, vec!["e1".to_string()]);
    assert_eq!(c.boot.arm64, None, "ARM64 is off by default");
    assert!(!DhcpConfig::resolve(None, &[]).unwrap().enabled());
}
