//! DHCP proxy mode beside a real DHCP server (dnsmasq) on the same link, across network
//! namespaces.
//!
//! The test makes two namespaces (`anneal-prx-s-PID` with dnsmasq and the real `anneal serve`
//! in proxy mode on one veth end, `anneal-prx-c-PID` with the client end). Shown here:
//! (b) a crafted PXE DISCOVER (UEFI x64, BIOS, iPXE) gets dnsmasq's offer with an address and
//!     anneal's proxy offer with none, option 60 `PXEClient`, option 43 where it belongs and
//!     the right boot file; an ARM64 DISCOVER (no ARM64 file configured) gets nothing from
//!     anneal;
//! (a) busybox `udhcpc`, an ordinary client, still gets its lease from dnsmasq and anneal sends
//!     it nothing (its log shows the drop);
//! (c) a unicast REQUEST to port 4011, as UEFI firmware sends after getting its address, gets
//!     an ACK with the boot file from port 4011.
//!
//! Needs root, iproute2, busybox (udhcpc) and dnsmasq (`dnsmasq-base`); skipped with the reason
//! printed when one is missing, unless `ANNEAL_REQUIRE_SYSTEM_TESTS=1` makes that a failure.
//! Namespaces and processes are removed by drop guards however the test ends; processes are
//! killed by the PID we started.

mod common;
use common::{must, run, Netns, Proc};

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use dhcproto::v4::{self, DhcpOption, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Encodable};
use socket2::{Domain, Protocol, Socket, Type};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const CLIENT_MAC: &str = "02:00:00:79:00:02";

/// dnsmasq lives in /usr/sbin, which a non-login PATH may lack.
fn dnsmasq_bin() -> String {
    if run(&["dnsmasq", "--version"]) {
        "dnsmasq".into()
    } else {
        "/usr/sbin/dnsmasq".into()
    }
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    if !run(&["ip", "-V"]) {
        return Some("needs iproute2 (`ip`)".into());
    }
    let udhcpc = Command::new("busybox")
        .arg("--list")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "udhcpc")
        })
        .unwrap_or(false);
    if !udhcpc {
        return Some("needs busybox with udhcpc".into());
    }
    if !run(&[&dnsmasq_bin(), "--version"]) {
        return Some("needs dnsmasq (Debian package dnsmasq-base)".into());
    }
    None
}

fn wait_for(path: &Path, needle: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(Instant::now() < deadline, "{what} did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_dnsmasq(ns: &str, dir: &Path) -> Proc {
    let conf = dir.join("dnsmasq.conf");
    let log = dir.join("dnsmasq.log");
    std::fs::write(
        &conf,
        format!(
            "port=0\n\
             interface=srvA\n\
             bind-interfaces\n\
             dhcp-range=10.79.0.100,10.79.0.150,255.255.255.0,10m\n\
             dhcp-leasefile={leases}\n\
             pid-file={pid}\n\
             user=root\n\
             no-ping\n\
             log-dhcp\n\
             log-facility={log}\n",
            leases = dir.join("dnsmasq.leases").display(),
            pid = dir.join("dnsmasq.pid").display(),
            log = log.display(),
        ),
    )
    .expect("dnsmasq.conf");
    // `ip netns exec` execs dnsmasq in place, so the child's PID is dnsmasq's own.
    let child = Command::new("ip")
        .args(["netns", "exec", ns, &dnsmasq_bin(), "--keep-in-foreground"])
        .arg(format!("--conf-file={}", conf.display()))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("dnsmasq.stderr")).expect("stderr"))
        .spawn()
        .expect("spawn dnsmasq");
    let proc = Proc(child);
    wait_for(&log, "DHCP, IP range", "dnsmasq");
    proc
}

fn start_anneal(ns: &str, dir: &Path) -> (Proc, PathBuf) {
    let config = dir.join("anneal.toml");
    // Written as an operator (or a later QEMU test) would write it.
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\napi_listen = \"127.0.0.1:0\"\nagent_listen = \"127.0.0.1:0\"\n\
             [dhcp]\nhttp_port = 8080\n\
             [[dhcp.proxy]]\ninterface = \"srvA\"\nsubnet = \"10.79.0.0/24\"\n",
            dir.join("data").display()
        ),
    )
    .expect("anneal.toml");
    let log = dir.join("anneal.log");
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_anneal"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("ANNEAL_LOG", "info,anneal_server::dhcp=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("spawn anneal serve");
    let proc = Proc(child);
    wait_for(&log, "anneal is serving", "anneal");
    (proc, log)
}

/// Runs `f` on a thread that has entered network namespace `ns`; sockets made there stay in it.
fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
    .join()
    .expect("namespace thread")
}

/// A UDP socket in the client namespace, on `cliA`, bound to `port`.
fn client_socket(ns: &str, port: u16) -> UdpSocket {
    in_netns(ns, move || {
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        s.set_reuse_address(true).expect("reuseaddr");
        s.set_broadcast(true).expect("broadcast");
        s.bind_device(Some(b"cliA")).expect("bind to cliA");
        s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
            .expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        s.into()
    })
}

fn pxe_request(kind: MessageType, xid: u32, mac: [u8; 6], opts: Vec<DhcpOption>) -> Message {
    let mut m = Message::default();
    m.set_opcode(Opcode::BootRequest)
        .set_htype(v4::HType::Eth)
        .set_chaddr(&mac)
        .set_xid(xid)
        .set_flags(v4::Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(kind));
    o.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::VendorExtensions,
        OptionCode::ClassIdentifier,
        OptionCode::BootfileName,
    ]));
    for x in opts {
        o.insert(x);
    }
    m
}

fn uefi_opts(arch: u16) -> Vec<DhcpOption> {
    vec![
        DhcpOption::ClientSystemArchitecture(v4::Architecture(arch)),
        DhcpOption::ClassIdentifier(format!("PXEClient:Arch:{arch:05}:UNDI:003016").into_bytes()),
        DhcpOption::ClientMachineIdentifier([0u8].into_iter().chain(1..=16).collect::<Vec<u8>>()),
    ]
}

/// Replies with this xid that arrive within `wait`, with where they came from.
fn collect(sock: &UdpSocket, xid: u32, wait: Duration) -> Vec<(Message, SocketAddr)> {
    let mut out = Vec::new();
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if let Ok(m) = Message::from_bytes(&buf[..n]) {
                if m.opcode() == Opcode::BootReply && m.xid() == xid {
                    out.push((m, from));
                }
            }
        }
    }
    out
}

fn file(m: &Message) -> String {
    match m.opts().get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(f)) => String::from_utf8_lossy(f).into_owned(),
        _ => String::new(),
    }
}

fn vendor_class(m: &Message) -> Vec<u8> {
    match m.opts().get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(v)) => v.clone(),
        _ => Vec::new(),
    }
}

fn option43(m: &Message) -> Option<Vec<u8>> {
    match m.opts().get(OptionCode::VendorExtensions) {
        Some(DhcpOption::VendorExtensions(v)) => Some(v.clone()),
        _ => None,
    }
}

/// Broadcast a DISCOVER from 0.0.0.0:68; return (dnsmasq's offers, anneal's proxy offers).
fn discover(sock: &UdpSocket, xid: u32, opts: Vec<DhcpOption>) -> (Vec<Message>, Vec<Message>) {
    // Not cliA's own MAC, so the log tells these apart from udhcpc.
    let mac = [0x02, 0, 0, 0x79, 0xb0, (xid & 0xff) as u8];
    let msg = pxe_request(MessageType::Discover, xid, mac, opts);
    let to = SocketAddrV4::new(Ipv4Addr::BROADCAST, 67);
    let mut replies = Vec::new();
    // Retransmit like firmware does, until both servers were heard (or time is up).
    for _ in 0..4 {
        sock.send_to(&msg.to_vec().expect("encode"), to)
            .expect("send DISCOVER");
        replies.extend(collect(sock, xid, Duration::from_millis(1500)));
        let has_lease = replies.iter().any(|(m, _)| !m.yiaddr().is_unspecified());
        let has_proxy = replies.iter().any(|(m, _)| m.yiaddr().is_unspecified());
        if has_lease && has_proxy {
            break;
        }
    }
    let (proxy, lease): (Vec<_>, Vec<_>) = replies
        .into_iter()
        .map(|(m, _)| m)
        .filter(|m| m.opts().msg_type() == Some(MessageType::Offer))
        .partition(|m| m.yiaddr().is_unspecified());
    (lease, proxy)
}

fn write_udhcpc_script(dir: &Path) -> PathBuf {
    let path = dir.join("udhcpc.sh");
    let events = dir.join("events");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             echo \"$1 ip=$ip mask=$mask serverid=$serverid boot_file=$boot_file\" >> {events}\n\
             case \"$1\" in\n\
               bound|renew) ip addr flush dev \"$interface\"; ip addr add \"$ip/$mask\" dev \"$interface\" ;;\n\
               deconfig) ip addr flush dev \"$interface\" ;;\n\
             esac\n\
             exit 0\n",
            events = events.display()
        ),
    )
    .expect("script");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path
}

fn log_text(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn proxy_mode_beside_dnsmasq() {
    if let Some(why) = skip_reason() {
        if std::env::var("ANNEAL_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1") {
            panic!("dhcp proxy namespace test cannot run: {why} (ANNEAL_REQUIRE_SYSTEM_TESTS=1)");
        }
        eprintln!("dhcp proxy namespace test skipped: {why}");
        return;
    }
    let pid = std::process::id();
    let ns = Netns {
        server: format!("anneal-prx-s-{pid}"),
        client: format!("anneal-prx-c-{pid}"),
    };
    let (s, c) = (ns.server.clone(), ns.client.clone());
    must(&["ip", "netns", "add", &s]);
    must(&["ip", "netns", "add", &c]);
    must(&[
        "ip", "-n", &s, "link", "add", "srvA", "type", "veth", "peer", "name", "cliA", "address",
        CLIENT_MAC, "netns", &c,
    ]);
    must(&["ip", "-n", &s, "addr", "add", "10.79.0.1/24", "dev", "srvA"]);
    for (n, l) in [(&s, "srvA"), (&s, "lo"), (&c, "cliA"), (&c, "lo")] {
        must(&["ip", "-n", n, "link", "set", l, "up"]);
    }
    // The client end has no address yet; let broadcasts from the server in regardless.
    for key in ["all", "default", "cliA"] {
        let _ = run(&[
            "ip",
            "netns",
            "exec",
            &c,
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{key}.rp_filter=0"),
        ]);
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let _dnsmasq = start_dnsmasq(&s, d);
    let (_anneal, log) = start_anneal(&s, d);
    let sock68 = client_socket(&c, 68);

    // (b) PXE DISCOVERs: dnsmasq offers an address, anneal only the boot information.
    let (lease, proxy) = discover(&sock68, 0x7001, uefi_opts(7));
    assert!(
        lease.iter().any(|m| {
            let last = m.yiaddr().octets();
            last[..3] == [10, 79, 0] && (100..=150).contains(&last[3])
        }),
        "dnsmasq's offer with an address: {lease:?}\nanneal log:\n{}",
        log_text(&log)
    );
    // (One per DISCOVER sent; retransmissions may bring more, all alike.)
    assert!(
        !proxy.is_empty(),
        "a proxy offer from anneal: {proxy:?}\nanneal log:\n{}",
        log_text(&log)
    );
    let offer = &proxy[0];
    assert_eq!(vendor_class(offer), b"PXEClient");
    assert_eq!(offer.siaddr(), SERVER_IP);
    assert_eq!(
        offer.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER_IP))
    );
    assert_eq!(file(offer), "snponly.efi");
    assert_eq!(option43(offer), None, "UEFI is sent to 4011 (BINL offer)");
    assert!(
        offer
            .opts()
            .get(OptionCode::ClientMachineIdentifier)
            .is_some(),
        "option 97 echoed"
    );
    assert!(offer.opts().get(OptionCode::SubnetMask).is_none());

    let bios = vec![
        DhcpOption::ClientSystemArchitecture(v4::Architecture(0)),
        DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
    ];
    let (lease, proxy) = discover(&sock68, 0x7002, bios);
    assert!(!lease.is_empty(), "dnsmasq answers BIOS PXE too");
    assert!(!proxy.is_empty(), "{proxy:?}");
    assert_eq!(file(&proxy[0]), "undionly.kpxe");
    assert_eq!(vendor_class(&proxy[0]), b"PXEClient");
    assert_eq!(option43(&proxy[0]), Some(vec![6, 1, 8, 255]));

    let mut ipxe = uefi_opts(7);
    ipxe.push(DhcpOption::UserClass(b"iPXE".to_vec()));
    let (_, proxy) = discover(&sock68, 0x7003, ipxe);
    assert!(!proxy.is_empty(), "{proxy:?}");
    assert_eq!(file(&proxy[0]), "http://10.79.0.1:8080/boot.ipxe");
    assert_eq!(vendor_class(&proxy[0]), b"PXEClient");

    // ARM64: no ARM64 iPXE is configured, so anneal stays silent (dnsmasq still answers).
    let (lease, proxy) = discover(&sock68, 0x7004, uefi_opts(11));
    assert!(!lease.is_empty());
    assert!(proxy.is_empty(), "{proxy:?}");
    assert!(log_text(&log).contains("no_boot_file_for_arch"));
    drop(sock68);

    // (a) An ordinary client: its lease from dnsmasq, nothing from anneal.
    let script = write_udhcpc_script(d);
    let sent_before = log_text(&log).matches("DHCP reply sent").count();
    let status = Command::new("ip")
        .args([
            "netns", "exec", &c, "busybox", "udhcpc", "-i", "cliA", "-f", "-q",
        ])
        .args(["-n", "-t", "5", "-T", "1", "-A", "1", "-s"])
        .arg(&script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("udhcpc");
    assert!(status.success(), "udhcpc got no lease");
    let events = std::fs::read_to_string(d.join("events")).unwrap_or_default();
    let bound = events
        .lines()
        .find(|l| l.starts_with("bound "))
        .unwrap_or_else(|| panic!("no bound event: {events}"))
        .to_string();
    assert!(bound.contains("serverid=10.79.0.1"), "{bound}");
    assert!(bound.ends_with("boot_file="), "no boot file: {bound}");
    let client_ip: Ipv4Addr = bound
        .split("ip=")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| panic!("address in {bound}"));
    let text = log_text(&log);
    assert_eq!(
        text.matches("DHCP reply sent").count(),
        sent_before,
        "anneal answered an ordinary client:\n{text}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.contains("DHCP reply sent") && l.contains(CLIENT_MAC)),
        "{text}"
    );
    assert!(text.contains("not_pxe"), "the drop is logged:\n{text}");

    // (c) Boot server discovery: UEFI's unicast REQUEST to 4011 (from port 4011, with ciaddr).
    let sock4011 = client_socket(&c, 4011);
    let mac = [0x02, 0, 0, 0x79, 0, 0x99];
    let mut req = pxe_request(MessageType::Request, 0x7011, mac, uefi_opts(7));
    req.set_ciaddr(client_ip).set_flags(v4::Flags::default());
    let mut acks = Vec::new();
    for _ in 0..4 {
        sock4011
            .send_to(
                &req.to_vec().expect("encode"),
                SocketAddrV4::new(SERVER_IP, 4011),
            )
            .expect("send to 4011");
        acks = collect(&sock4011, 0x7011, Duration::from_millis(1500));
        if !acks.is_empty() {
            break;
        }
    }
    assert_eq!(
        acks.len(),
        1,
        "one ACK from 4011: {acks:?}\nanneal log:\n{}",
        log_text(&log)
    );
    let (ack, from) = &acks[0];
    assert_eq!(*from, SocketAddr::from((SERVER_IP, 4011)), "from port 4011");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(ack.ciaddr(), client_ip);
    assert_eq!(file(ack), "snponly.efi");
    assert_eq!(ack.siaddr(), SERVER_IP);
    assert_eq!(vendor_class(ack), b"PXEClient");
    assert_eq!(
        ack.opts().get(OptionCode::ServerIdentifier),
        Some(&DhcpOption::ServerIdentifier(SERVER_IP))
    );
    // Locals drop in reverse: sockets, anneal, dnsmasq, then the namespaces.
}
