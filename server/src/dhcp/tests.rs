//! Pipeline decisions, configuration checks, and a seeded mutation run over decode + handling.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use async_trait::async_trait;
use dhcproto::v4::{self, relay, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::Encodable;
use rand::{Rng, SeedableRng};
use time::OffsetDateTime;

use super::config::{DhcpConfig, DhcpFile, Mac};
use super::pipeline::{handle, handle_message, Ctx, Dest, Leases, Outcome};
use super::proxy;
use crate::store::{LeaseOp, LeaseOutcome};

/// In-memory leases with the store's rules, enough for decisions.
#[derive(Default)]
struct Fake(Mutex<HashMap<Ipv4Addr, String>>);

#[async_trait]
impl Leases for Fake {
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
                if let Some((ip, _)) = m.iter().find(|(_, h)| **h == mac) {
                    return Some(LeaseOutcome::Leased(*ip));
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
            LeaseOp::Release { .. } | LeaseOp::Decline { .. } => LeaseOutcome::Applied(true),
        })
    }
}

fn cfg() -> DhcpConfig {
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
        "#,
    )
    .unwrap();
    DhcpConfig::resolve(Some(&file), &[]).unwrap()
}

const MAC: [u8; 6] = [0x52, 0x54, 0, 0, 0, 1];
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

fn request(kind: MessageType, mac: [u8; 6]) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(v4::HType::Eth)
        .set_chaddr(&mac)
        .set_xid(0x1234);
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    m
}

async fn run(msg: &Message, iface: &str, leases: &Fake) -> Outcome {
    run_with(&cfg(), msg, iface, leases).await
}

async fn run_with(cfg: &DhcpConfig, msg: &Message, iface: &str, leases: &Fake) -> Outcome {
    let addrs = [SERVER];
    let ctx = Ctx {
        cfg,
        iface,
        iface_addrs: &addrs,
    };
    handle_message(msg, &ctx, leases, OffsetDateTime::now_utc()).await
}

fn reply(o: Outcome) -> (Message, Dest) {
    match o {
        Outcome::Respond(r) => (r.msg, r.dest),
        other => panic!("expected a reply, got {other:?}"),
    }
}

fn kind(m: &Message) -> MessageType {
    m.opts().msg_type().unwrap()
}

fn boot_file(m: &Message) -> Option<String> {
    m.fname_str().and_then(|r| r.ok()).map(str::to_string)
}

#[tokio::test]
async fn discover_request_ack_with_options() {
    let leases = Fake::default();
    let (offer, dest) = reply(run(&request(MessageType::Discover, MAC), "eth1", &leases).await);
    assert_eq!(kind(&offer), MessageType::Offer);
    assert_eq!(dest, Dest::Broadcast);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 100));
    let o = offer.opts();
    assert_eq!(
        o.get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER))
    );
    assert_eq!(
        o.get(OptionCode::InterfaceMtu),
        Some(&DhcpOption::InterfaceMtu(9000))
    );
    assert_eq!(
        o.get(OptionCode::AddressLeaseTime),
        Some(&DhcpOption::AddressLeaseTime(600))
    );
    assert_eq!(
        o.get(OptionCode::DomainName),
        Some(&DhcpOption::DomainName("rack.test".into()))
    );
    assert_eq!(
        boot_file(&offer),
        None,
        "an ordinary host gets no boot file"
    );

    let mut req = request(MessageType::Request, MAC);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    req.opts_mut().insert(DhcpOption::ServerIdentifier(SERVER));
    let (ack, _) = reply(run(&req, "eth1", &leases).await);
    assert_eq!(kind(&ack), MessageType::Ack);
    assert_eq!(ack.yiaddr(), offer.yiaddr());

    // Renewing: ciaddr set, unicast back to it.
    let mut renew = request(MessageType::Request, MAC);
    renew.set_ciaddr(offer.yiaddr());
    let (ack, dest) = reply(run(&renew, "eth1", &leases).await);
    assert_eq!(kind(&ack), MessageType::Ack);
    assert!(matches!(dest, Dest::Unicast(a) if *a.ip() == offer.yiaddr() && a.port() == 68));
}

#[tokio::test]
async fn nak_for_wrong_requests_and_silence_for_other_servers() {
    let leases = Fake::default();
    // Outside the subnet (client moved networks).
    let mut req = request(MessageType::Request, MAC);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(
            192, 168, 1, 5,
        )));
    let (nak, dest) = reply(run(&req, "eth1", &leases).await);
    assert_eq!(kind(&nak), MessageType::Nak);
    assert_eq!(dest, Dest::Broadcast);
    // In the subnet, outside the range.
    let mut req = request(MessageType::Request, MAC);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 200)));
    assert_eq!(
        kind(&reply(run(&req, "eth1", &leases).await).0),
        MessageType::Nak
    );
    // Someone else's reservation.
    let mut req = request(MessageType::Request, MAC);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 9)));
    assert_eq!(
        kind(&reply(run(&req, "eth1", &leases).await).0),
        MessageType::Nak
    );
    // Held by another MAC.
    leases
        .0
        .lock()
        .unwrap()
        .insert(Ipv4Addr::new(10, 0, 0, 105), "02:00:00:00:00:07".into());
    let mut req = request(MessageType::Request, MAC);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 105)));
    assert_eq!(
        kind(&reply(run(&req, "eth1", &leases).await).0),
        MessageType::Nak
    );
    // The client chose another server: we stay quiet.
    let mut req = request(MessageType::Request, MAC);
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 101)));
    req.opts_mut()
        .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 0, 77)));
    assert!(matches!(
        run(&req, "eth1", &leases).await,
        Outcome::Quiet(_)
    ));
}

#[tokio::test]
async fn reservations_and_unconfigured_interfaces() {
    let leases = Fake::default();
    let reserved = Mac::parse("52:54:00:00:00:99").unwrap().0;
    let (offer, _) = reply(run(&request(MessageType::Discover, reserved), "eth1", &leases).await);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 0, 0, 9));
    // A packet on an interface with no subnet (and no relay) is dropped.
    assert!(matches!(
        run(&request(MessageType::Discover, MAC), "eth9", &leases).await,
        Outcome::Drop("no_subnet_on_interface")
    ));
}

#[tokio::test]
async fn relayed_requests_use_giaddr_and_echo_option_82() {
    let leases = Fake::default();
    let mut m = request(MessageType::Discover, MAC);
    m.set_giaddr(Ipv4Addr::new(10, 5, 0, 1));
    let mut info = relay::RelayAgentInformation::default();
    info.insert(relay::RelayInfo::AgentCircuitId(b"rack7-port3".to_vec()));
    m.opts_mut()
        .insert(DhcpOption::RelayAgentInformation(info.clone()));
    m.opts_mut()
        .insert(DhcpOption::ClientSystemArchitecture(v4::Architecture(0)));
    let (offer, dest) = reply(run(&m, "eth1", &leases).await);
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(10, 5, 0, 10));
    assert_eq!(offer.giaddr(), Ipv4Addr::new(10, 5, 0, 1));
    assert!(
        matches!(dest, Dest::Unicast(a) if *a.ip() == Ipv4Addr::new(10, 5, 0, 1) && a.port() == 67)
    );
    assert_eq!(
        offer.opts().get(OptionCode::RelayAgentInformation),
        Some(&DhcpOption::RelayAgentInformation(info))
    );
    assert_eq!(
        offer.opts().get(OptionCode::Router),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 5, 0, 1)]))
    );
    // Per-subnet next_server is the server address for relayed clients.
    assert_eq!(offer.siaddr(), Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(boot_file(&offer).as_deref(), Some("undionly.kpxe"));
    // A giaddr in no subnet we serve: dropped.
    let mut m = request(MessageType::Discover, MAC);
    m.set_giaddr(Ipv4Addr::new(172, 16, 0, 1));
    assert!(matches!(run(&m, "eth1", &leases).await, Outcome::Drop(_)));
}

async fn boot_for(opts: Vec<DhcpOption>) -> (Option<String>, Message) {
    let leases = Fake::default();
    let mut m = request(MessageType::Discover, MAC);
    for o in opts {
        m.opts_mut().insert(o);
    }
    let (offer, _) = reply(run(&m, "eth1", &leases).await);
    (boot_file(&offer), offer)
}

#[tokio::test]
async fn boot_file_by_architecture_and_ipxe_detection() {
    let arch = |a| DhcpOption::ClientSystemArchitecture(v4::Architecture(a));
    let pxe = DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec());
    let (f, offer) = boot_for(vec![arch(0), pxe.clone()]).await;
    assert_eq!(f.as_deref(), Some("undionly.kpxe"));
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        boot_for(vec![arch(7)]).await.0.as_deref(),
        Some("snponly.efi")
    );
    assert_eq!(
        boot_for(vec![arch(9)]).await.0.as_deref(),
        Some("snponly.efi")
    );
    let (f, offer) = boot_for(vec![
        arch(16),
        DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016".to_vec()),
    ])
    .await;
    assert_eq!(f.as_deref(), Some("http://10.0.0.2:8080/ipxe/snponly.efi"));
    assert_eq!(
        offer.opts().get(OptionCode::ClassIdentifier),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    let script = Some("http://10.0.0.2:8080/boot.ipxe".to_string());
    assert_eq!(
        boot_for(vec![arch(0), DhcpOption::UserClass(b"iPXE".to_vec())])
            .await
            .0,
        script
    );
    let ipxe_175 = DhcpOption::Unknown(v4::UnknownOption::new(
        OptionCode::from(175u8),
        vec![177, 5, 1, 0x80, 0x86, 0x10, 0x0e],
    ));
    assert_eq!(boot_for(vec![arch(7), ipxe_175]).await.0, script);
    assert_eq!(
        boot_for(vec![arch(2)]).await.0,
        None,
        "no binary for Itanium"
    );

    // ipxe.efi is configurable.
    let mut c = cfg();
    c.boot.uefi = "ipxe.efi".into();
    let hints = super::boot::BootHints {
        arch: Some(7),
        ..Default::default()
    };
    assert_eq!(
        super::boot::decide(&hints, &c.boot, c.http_port, SERVER, None)
            .unwrap()
            .file,
        "ipxe.efi"
    );
}

#[tokio::test]
async fn per_subnet_and_per_host_boot_files_in_full_mode() {
    let file: DhcpFile = toml::from_str(
        r#"
        arm64_file = "arm64.efi"

        [[subnets]]
        interface = "eth1"
        subnet = "10.0.0.0/24"
        range = ["10.0.0.100", "10.0.0.110"]
        bios_file = "subnet.kpxe"
        uefi_file = "https://boot.example/uefi.efi"

        [[hosts]]
        mac = "52:54:00:00:00:77"
        boot_file = "host.efi"
        "#,
    )
    .unwrap();
    let c = DhcpConfig::resolve(Some(&file), &[]).unwrap();
    let arch = |a| DhcpOption::ClientSystemArchitecture(v4::Architecture(a));
    let boot = |mac: [u8; 6], opts: Vec<DhcpOption>| {
        let c = c.clone();
        async move {
            let mut m = request(MessageType::Discover, mac);
            for o in opts {
                m.opts_mut().insert(o);
            }
            boot_file(&reply(run_with(&c, &m, "eth1", &Fake::default()).await).0)
        }
    };
    assert_eq!(
        boot(MAC, vec![arch(0)]).await.as_deref(),
        Some("subnet.kpxe")
    );
    assert_eq!(
        boot(MAC, vec![arch(7)]).await.as_deref(),
        Some("https://boot.example/uefi.efi")
    );
    assert_eq!(
        boot(MAC, vec![arch(11)]).await.as_deref(),
        Some("arm64.efi")
    );
    // An absolute URL is used as it is for UEFI HTTP boot.
    let http = DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016".to_vec());
    assert_eq!(
        boot(MAC, vec![arch(16), http]).await.as_deref(),
        Some("https://boot.example/uefi.efi")
    );
    let host = [0x52, 0x54, 0, 0, 0, 0x77];
    assert_eq!(boot(host, vec![arch(0)]).await.as_deref(), Some("host.efi"));
    assert_eq!(boot(host, vec![arch(9)]).await.as_deref(), Some("host.efi"));
    assert_eq!(
        boot(host, vec![arch(9), DhcpOption::UserClass(b"iPXE".to_vec())])
            .await
            .as_deref(),
        Some("http://10.0.0.2:8080/boot.ipxe"),
        "iPXE still gets its script"
    );
    // ARM64 without a configured file: an ordinary lease, no boot file.
    assert_eq!(boot_for(vec![arch(11)]).await.0, None);
}

#[test]
fn configuration_mistakes_are_errors() {
    let check = |toml_text: &str, extra: &[String]| -> String {
        let file: DhcpFile = toml::from_str(toml_text).unwrap();
        match DhcpConfig::resolve(Some(&file), extra) {
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        }
    };
    let sub = |iface: &str, net: &str, a: &str, b: &str| {
        format!("[[subnets]]\ninterface = \"{iface}\"\nsubnet = \"{net}\"\nrange = [\"{a}\", \"{b}\"]\n")
    };
    assert_eq!(
        check(&sub("e0", "10.0.0.0/24", "10.0.0.10", "10.0.0.20"), &[]),
        ""
    );
    assert!(
        check(&sub("e0", "10.0.0.0/24", "10.0.1.10", "10.0.1.20"), &[]).contains("outside subnet")
    );
    assert!(check(&sub("e0", "10.0.0.0/24", "10.0.0.20", "10.0.0.10"), &[]).contains("reversed"));
    assert!(
        check(&sub("e0", "10.0.0.0/24", "10.0.0.10", "10.0.0.255"), &[]).contains("outside subnet")
    );
    assert!(check(&sub("e0", "10.0.0.1/24", "10.0.0.10", "10.0.0.20"), &[]).contains("host bits"));
    let two = sub("e0", "10.0.0.0/24", "10.0.0.10", "10.0.0.20")
        + &sub("e1", "10.0.0.0/25", "10.0.0.30", "10.0.0.40");
    assert!(check(&two, &[]).contains("overlap"));
    let resv = sub("e0", "10.0.0.0/24", "10.0.0.10", "10.0.0.20")
        + "reservations = [{ mac = \"52:54:00:00:00:01\", ip = \"10.0.1.1\" }]\n";
    assert!(check(&resv, &[]).contains("outside subnet"));
    let resv = sub("e0", "10.0.0.0/24", "10.0.0.10", "10.0.0.20")
        + "reservations = [{ mac = \"nonsense\", ip = \"10.0.0.1\" }]\n";
    assert!(check(&resv, &[]).contains("MAC"));
    // An interface with nothing to serve.
    assert!(check(
        &sub("e0", "10.0.0.0/24", "10.0.0.10", "10.0.0.20"),
        &["e7".into()]
    )
    .contains("e7 has no subnet"));
    // Typos are errors; nothing configured means off.
    assert!(toml::from_str::<DhcpFile>("subnetz = []").is_err());
    assert!(!DhcpConfig::resolve(None, &[]).unwrap().enabled());
}

/// Regression (fuzzing, `fuzz/fuzz_targets/dhcp_packet.rs`): options the decoder asserts on or
/// underflows with at a wrong length are refused by the pre-check, never reach the decoder.
#[test]
fn wrong_length_options_the_decoder_trips_on_are_refused() {
    use super::pipeline::parse;
    let base = request(MessageType::Discover, MAC).to_vec().unwrap();
    // (code, a length the decoder cannot take), then a valid length that must still parse.
    for (code, bad, good) in [
        (152u8, 0u8, 4u8),
        (153, 2, 4),
        (154, 5, 4),
        (155, 0, 4),
        (151, 0, 1),
        (81, 2, 3),
    ] {
        for (len, ok) in [(bad, false), (good, true)] {
            let mut p = base.clone();
            let end = p.iter().rposition(|&b| b == 255).unwrap();
            p.truncate(end);
            p.push(code);
            p.push(len);
            p.extend(std::iter::repeat_n(0, len.into()));
            p.push(255);
            let got = parse(&p);
            if ok {
                assert!(
                    !matches!(got, Err("bad_option_length" | "decoder_panic")),
                    "option {code} len {len}: {got:?}"
                );
            } else {
                assert_eq!(
                    got.err(),
                    Some("bad_option_length"),
                    "option {code} len {len}"
                );
            }
        }
    }
    // The packet the fuzzer found: option 153 with length 0.
    let mut p = base;
    let end = p.iter().rposition(|&b| b == 255).unwrap();
    p.truncate(end);
    p.extend([153, 0, 54, 4, 10, 0, 0, 2, 255]);
    assert_eq!(parse(&p).err(), Some("bad_option_length"));
    // Second find: two 4-byte options 155, which the decoder joins into one of 8.
    let mut p = request(MessageType::Discover, MAC).to_vec().unwrap();
    let end = p.iter().rposition(|&b| b == 255).unwrap();
    p.truncate(end);
    p.extend([155, 4, 0, 0, 0, 1, 155, 4, 0, 0, 0, 2, 255]);
    assert_eq!(parse(&p).err(), Some("bad_option_length"));
    // The fuzzer's input itself (its first byte picks the interface; the rest is the packet).
    let crash = include_bytes!("testdata/fuzz-crash-joined-option.bin");
    assert!(!matches!(parse(&crash[1..]), Err("decoder_panic")));
}

/// Mutated packets: decode + handling (full and proxy mode) never panic, and malformed ones
/// are dropped with a reason.
#[tokio::test]
async fn seeded_mutations_never_panic() {
    let leases = Fake::default();
    let mut cfg = cfg();
    let proxy_file: DhcpFile = toml::from_str(
        "[[proxy]]\ninterface = \"eth2\"\n\
         [[proxy]]\ninterface = \"eth3\"\nsubnet = \"10.6.0.0/24\"\n\
         macs = [\"52:54:00:00:00:01\"]\narm64_file = \"a.efi\"\n\
         [[hosts]]\nmac = \"52:54:00:00:00:01\"\nboot_file = \"h.efi\"\n",
    )
    .unwrap();
    let proxy_cfg = DhcpConfig::resolve(Some(&proxy_file), &[]).unwrap();
    cfg.proxy = proxy_cfg.proxy;
    cfg.proxy_interfaces = proxy_cfg.proxy_interfaces;
    cfg.hosts = proxy_cfg.hosts;
    let addrs = [SERVER];
    let ctx = Ctx {
        cfg: &cfg,
        iface: "eth1",
        iface_addrs: &addrs,
    };
    let mut seeds = Vec::new();
    for (k, extra) in [
        (
            MessageType::Discover,
            vec![DhcpOption::ClientSystemArchitecture(v4::Architecture(7))],
        ),
        (
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 101))],
        ),
        (
            MessageType::Inform,
            vec![DhcpOption::UserClass(b"iPXE".to_vec())],
        ),
        (MessageType::Release, vec![]),
        (
            MessageType::Decline,
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 0, 101))],
        ),
        (
            MessageType::Discover,
            vec![
                DhcpOption::ClientSystemArchitecture(v4::Architecture(0)),
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientMachineIdentifier(vec![0; 17]),
            ],
        ),
        (
            MessageType::Request,
            vec![
                DhcpOption::ClientSystemArchitecture(v4::Architecture(11)),
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00011:UNDI:003016".to_vec()),
                DhcpOption::VendorExtensions(vec![71, 4, 0x80, 0, 0, 0, 255]),
                DhcpOption::ServerIdentifier(SERVER),
            ],
        ),
    ] {
        let mut m = request(k, MAC);
        m.set_ciaddr(Ipv4Addr::new(10, 0, 0, 101));
        for o in extra {
            m.opts_mut().insert(o);
        }
        let mut info = relay::RelayAgentInformation::default();
        info.insert(relay::RelayInfo::AgentCircuitId(b"c".to_vec()));
        m.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
        seeds.push(m.to_vec().unwrap());
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xD4C9);
    let (mut answered, mut dropped) = (0u32, 0u32);
    let mut proxy_answered = 0u32;
    for i in 0..100_000u32 {
        let mut p = seeds[i as usize % seeds.len()].clone();
        for _ in 0..rng.gen_range(1..6) {
            match rng.gen_range(0..4) {
                0 => {
                    let at = rng.gen_range(0..p.len());
                    p[at] = rng.gen();
                }
                1 => {
                    // Mostly hit the options area, where the structure is.
                    let at = rng
                        .gen_range(236.min(p.len())..p.len().max(237))
                        .min(p.len() - 1);
                    p[at] = rng.gen();
                }
                2 => p.truncate(rng.gen_range(0..=p.len())),
                _ => {
                    let at = rng.gen_range(0..=p.len());
                    p.insert(at, rng.gen());
                }
            }
            if p.is_empty() {
                break;
            }
        }
        match handle(&p, &ctx, &leases, OffsetDateTime::now_utc()).await {
            Outcome::Respond(r) => {
                answered += 1;
                let _ = r.msg.to_vec();
            }
            _ => dropped += 1,
        }
        for (iface, listener) in [
            ("eth2", proxy::Listener::Dhcp),
            ("eth3", proxy::Listener::BootServer),
        ] {
            let pctx = proxy::ProxyCtx {
                cfg: &cfg,
                iface,
                iface_addrs: &addrs,
                listener,
                from: std::net::SocketAddrV4::new(Ipv4Addr::new(10, 6, 0, 9), 4011),
            };
            if let Outcome::Respond(r) = proxy::handle(&p, &pctx) {
                proxy_answered += 1;
                assert_eq!(r.msg.yiaddr(), Ipv4Addr::UNSPECIFIED);
                let _ = r.msg.to_vec();
            }
        }
        if i % 1000 == 0 {
            leases.0.lock().unwrap().clear();
        }
    }
    assert!(
        answered > 1_000 && dropped > 1_000 && proxy_answered > 1_000,
        "answered {answered}, dropped {dropped}, proxy answered {proxy_answered}"
    );
}
