//! The TFTP server on loopback against real clients (curl, tftp-hpa) and our raw client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anneal_server::tftp::client::{self, FetchError};
use anneal_server::tftp::packet::{self, Packet};
use anneal_server::tftp::{self as tftp, TftpConfig};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ipxe: PathBuf,
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Pseudo-random bytes (deterministic).
fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A server on 127.0.0.1 with a root holding `big` (~1 MB), `exact` (a multiple of 512) and a
/// symlink to outside, and built-ins in a fake iPXE directory.
async fn start(timeout: Duration, retries: u32) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ipxe = dir.path().join("ipxe");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::write(root.join("big"), bytes(1_000_123, 1)).unwrap();
    std::fs::write(root.join("exact"), bytes(512 * 20, 2)).unwrap();
    std::fs::write(root.join("etc/passwd"), b"inside the root\n").unwrap();
    std::fs::write(dir.path().join("secret"), b"outside").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret"), root.join("escape")).unwrap();
    std::fs::write(ipxe.join("undionly.kpxe"), bytes(74_213, 3)).unwrap();
    std::fs::write(ipxe.join("ipxe.efi"), bytes(1_000_000, 4)).unwrap();
    let mut cfg = TftpConfig::new("127.0.0.1:0".parse().unwrap(), root.clone(), ipxe.clone());
    cfg.timeout = timeout;
    cfg.retries = retries;
    let server = tftp::bind(cfg).await.unwrap();
    let addr = server.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    Fixture {
        _dir: dir,
        root,
        ipxe,
        addr,
        stop,
    }
}

fn have(bin: &str) -> bool {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !found {
        assert!(
            std::env::var("ANNEAL_REQUIRE_SYSTEM_TESTS").as_deref() != Ok("1"),
            "ANNEAL_REQUIRE_SYSTEM_TESTS=1 but `{bin}` is not installed"
        );
        eprintln!(
            "SKIPPED: `{bin}` is not installed (scripts/test installs it); this check did not run"
        );
    }
    found
}

async fn run(cmd: &str, args: Vec<String>) -> std::process::Output {
    let cmd = cmd.to_string();
    tokio::task::spawn_blocking(move || Command::new(&cmd).args(&args).output().unwrap())
        .await
        .unwrap()
}

async fn curl(addr: SocketAddr, name: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<String> = vec![
        "-sS".into(),
        "--max-time".into(),
        "20".into(),
        "--path-as-is".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend([
        "-o".into(),
        out.display().to_string(),
        format!("tftp://{addr}/{name}"),
    ]);
    run("curl", args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_fetches_byte_exact_with_default_and_1468_blksize() {
    if !have("curl") {
        return;
    }
    let f = start(Duration::from_secs(1), 5).await;
    let out = f.root.join("..").join("out");
    for (name, src, extra) in [
        ("big", f.root.join("big"), vec![]),
        ("big", f.root.join("big"), vec!["--tftp-blksize", "1468"]),
        (
            "/ipxe.efi",
            f.ipxe.join("ipxe.efi"),
            vec!["--tftp-blksize", "1468"],
        ),
        ("undionly.kpxe", f.ipxe.join("undionly.kpxe"), vec![]),
        ("exact", f.root.join("exact"), vec![]),
    ] {
        let o = curl(f.addr, name, &out, &extra).await;
        assert!(
            o.status.success(),
            "curl {name} {extra:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            std::fs::read(&out).unwrap() == std::fs::read(&src).unwrap(),
            "{name} {extra:?} differs"
        );
    }
    // Missing file and escapes: curl reports the server's error.
    let o = curl(f.addr, "nope", &out, &[]).await;
    assert_eq!(
        o.status.code(),
        Some(68),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    ); // TFTP: file not found
    let o = curl(f.addr, "escape", &out, &[]).await;
    assert_eq!(
        o.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    ); // TFTP: permission problem
    let o = curl(f.addr, "../../etc/passwd", &out, &[]).await;
    assert_eq!(
        o.status.code(),
        Some(69),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // Upload: refused (read-only).
    let src = f.root.join("exact").display().to_string();
    let o = run(
        "curl",
        vec![
            "-sS".into(),
            "--max-time".into(),
            "10".into(),
            "-T".into(),
            src,
            format!("tftp://{}/new", f.addr),
        ],
    )
    .await;
    assert!(!o.status.success());
    assert!(!f.root.join("new").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tftp_hpa_client_gets_files_and_reports_errors() {
    if !have("tftp") {
        return;
    }
    let f = start(Duration::from_secs(1), 5).await;
    let out = f.root.join("..").join("hpa-out");
    let get = |name: &str| {
        let args = vec![
            "127.0.0.1".to_string(),
            f.addr.port().to_string(),
            "-m".into(),
            "binary".into(),
            "-c".into(),
            "get".into(),
            name.to_string(),
            out.display().to_string(),
        ];
        run("tftp", args)
    };
    let o = get("/ipxe.efi").await;
    assert!(o.status.success(), "{o:?}");
    assert!(std::fs::read(&out).unwrap() == std::fs::read(f.ipxe.join("ipxe.efi")).unwrap());
    let o = get("big").await;
    assert!(
        std::fs::read(&out).unwrap() == std::fs::read(f.root.join("big")).unwrap(),
        "{o:?}"
    );
    let o = get("nope").await;
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("Error code 1"), "{said}");
    let o = get("../../etc/passwd").await;
    let said = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(said.contains("Error code 2"), "{said}");
}

fn expect_error(r: Result<client::Fetched, FetchError>, code: u16, what: &str) {
    match r {
        Err(FetchError::Tftp(c, _)) if c == code => {}
        other => panic!("{what}: expected ERROR {code}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_is_refused_and_absolute_names_stay_inside_the_root() {
    let f = start(Duration::from_secs(1), 5).await;
    for bad in [
        "../../etc/passwd",
        "a/../../x",
        "escape",
        "\\..\\secret",
        "etc",
    ] {
        expect_error(client::get(f.addr, bad, &[], None).await, 2, bad);
    }
    // A leading slash means "in the root": /etc/passwd is the root's own etc/passwd.
    let got = client::get(f.addr, "/etc/passwd", &[], None).await.unwrap();
    assert_eq!(got.data, b"inside the root\n");
    std::fs::remove_file(f.root.join("etc/passwd")).unwrap();
    expect_error(
        client::get(f.addr, "/etc/passwd", &[], None).await,
        1,
        "/etc/passwd",
    );
    expect_error(
        client::get(f.addr, "missing.efi", &[], None).await,
        1,
        "missing",
    );
    // The reply comes from a new port (transfer ID) on the address that was asked.
    let got = client::get(f.addr, "undionly.kpxe", &[], None)
        .await
        .unwrap();
    assert_eq!(got.server_tid.ip(), f.addr.ip());
    assert_ne!(got.server_tid.port(), f.addr.port());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_requests_are_refused_and_garbage_is_dropped() {
    let f = start(Duration::from_secs(1), 5).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Garbage first: dropped without an answer, and the server keeps serving.
    for junk in [
        &b""[..],
        b"\x00",
        b"\x00\x09abc",
        b"\x00\x01noterm",
        b"\x00\x04\x00\x01",
    ] {
        sock.send_to(junk, f.addr).await.unwrap();
    }
    sock.send_to(
        &packet::request(packet::OP_WRQ, "new", "octet", &[]),
        f.addr,
    )
    .await
    .unwrap();
    let mut buf = [0u8; 600];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    match packet::parse(&buf[..n]).unwrap() {
        Packet::Error { code, .. } => assert_eq!(code, 4, "illegal operation"),
        other => panic!("{other:?}"),
    }
    assert!(!f.root.join("new").exists());
    let got = client::get(f.addr, "exact", &[], None).await.unwrap();
    assert_eq!(got.data.len(), 512 * 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_transfers_are_byte_exact() {
    let f = start(Duration::from_secs(1), 5).await;
    let want = std::fs::read(f.ipxe.join("ipxe.efi")).unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let addr = f.addr;
        tasks.push(tokio::spawn(async move {
            let opts: &[(&str, &str)] = if i % 2 == 0 {
                &[("blksize", "1468"), ("tsize", "0")]
            } else {
                &[("blksize", "1468"), ("windowsize", "8")]
            };
            client::get(addr, "ipxe.efi", opts, None).await
        }));
    }
    for t in tasks {
        let got = t.await.unwrap().unwrap();
        assert!(got.data == want);
    }
    eprintln!("50 x 1 MB in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowsize_16_negotiated_and_a_lost_block_is_resent() {
    let f = start(Duration::from_millis(300), 5).await;
    let want = std::fs::read(f.root.join("big")).unwrap();
    let got = client::get(
        f.addr,
        "big",
        &[("blksize", "99999"), ("tsize", "0"), ("windowsize", "16")],
        Some(5),
    )
    .await
    .unwrap();
    let oack = got.oack.clone().unwrap();
    let get = |k: &str| oack.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("windowsize"), Some("16"));
    assert_eq!(
        get("blksize"),
        Some("1468"),
        "clamped to the configured maximum"
    );
    assert_eq!(get("tsize"), Some("1000123"));
    assert_eq!(got.dropped, 1);
    assert!(
        got.data == want,
        "file arrives intact despite the lost DATA 5"
    );
    // Losing the last block of a window, and lock-step losses, recover too (server timeout).
    let got = client::get(f.addr, "big", &[("windowsize", "16")], Some(16))
        .await
        .unwrap();
    assert!(got.data == want);
    let got = client::get(f.addr, "exact", &[], Some(3)).await.unwrap();
    assert_eq!(got.data, std::fs::read(f.root.join("exact")).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_client_times_out_without_stalling_others() {
    anneal_server::metrics::handle();
    let f = start(Duration::from_millis(200), 2).await;
    let dead = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    dead.send_to(
        &packet::request(packet::OP_RRQ, "big", "octet", &[]),
        f.addr,
    )
    .await
    .unwrap();
    let started = Instant::now();
    // Meanwhile a live client gets a whole file.
    let want = std::fs::read(f.root.join("big")).unwrap();
    let got = client::get(f.addr, "big", &[("blksize", "1468")], None)
        .await
        .unwrap();
    assert!(got.data == want);
    // The dead client saw DATA 1 once plus `retries` retransmissions, then silence.
    let mut copies = 0;
    let mut buf = [0u8; 600];
    while let Ok(Ok((n, _))) =
        tokio::time::timeout(Duration::from_millis(700), dead.recv_from(&mut buf)).await
    {
        assert!(matches!(
            packet::parse(&buf[..n]),
            Ok(Packet::Data { block: 1, .. })
        ));
        copies += 1;
    }
    assert_eq!(copies, 3, "one send + 2 retries");
    assert!(started.elapsed() < Duration::from_secs(5));
    let text = anneal_server::metrics::handle().render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("anneal_tftp_transfers_total{outcome=\"timeout\"}")),
        "timeout counted: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anneal_serve_starts_tftp_only_when_asked_and_needs_ipxe() {
    use anneal_server::config::{Config, ServeArgs};
    let dir = tempfile::tempdir().unwrap();
    let args = |tftp: Option<&str>, ipxe: Option<PathBuf>| ServeArgs {
        data_dir: Some(dir.path().to_path_buf()),
        api_listen: Some("127.0.0.1:0".parse().unwrap()),
        agent_listen: Some("127.0.0.1:0".parse().unwrap()),
        advertise: Some(vec!["127.0.0.1".into()]),
        tftp_listen: tftp.map(|t| t.parse().unwrap()),
        ipxe_dir: ipxe,
        ..Default::default()
    };
    let missing = dir.path().join("no-ipxe");
    let err = match anneal_server::serve::start(
        Config::resolve(&args(Some("127.0.0.1:0"), Some(missing))).unwrap(),
    )
    .await
    {
        Ok(_) => panic!("started without iPXE binaries"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("apt-get install ipxe"), "{err}");

    let running = anneal_server::serve::start(Config::resolve(&args(None, None)).unwrap())
        .await
        .unwrap();
    assert!(running.tftp_addr.is_none(), "TFTP off by default");
    running.stop().await;

    let ipxe = dir.path().join("ipxe");
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::write(ipxe.join("snponly.efi"), bytes(173_792, 9)).unwrap();
    let running = anneal_server::serve::start(
        Config::resolve(&args(Some("127.0.0.1:0"), Some(ipxe.clone()))).unwrap(),
    )
    .await
    .unwrap();
    let addr = running.tftp_addr.unwrap();
    assert!(dir.path().join("tftp").is_dir(), "DATA_DIR/tftp created");
    let got = client::get(addr, "snponly.efi", &[("blksize", "1468")], None)
        .await
        .unwrap();
    assert!(got.data == std::fs::read(ipxe.join("snponly.efi")).unwrap());
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debian_ipxe_binaries_are_served_when_installed() {
    let real = Path::new(tftp::DEFAULT_IPXE_DIR);
    if !real.join("ipxe.efi").exists() {
        assert!(
            std::env::var("ANNEAL_REQUIRE_SYSTEM_TESTS").as_deref() != Ok("1"),
            "ANNEAL_REQUIRE_SYSTEM_TESTS=1 but Debian's ipxe package is not installed"
        );
        eprintln!("SKIPPED: Debian's ipxe package is not installed (scripts/test installs it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = tftp::bind(TftpConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("root"),
        real.to_path_buf(),
    ))
    .await
    .unwrap();
    let addr = server.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));
    for name in tftp::files::BUILT_INS {
        let got = client::get(
            addr,
            name,
            &[("blksize", "1468"), ("windowsize", "4")],
            None,
        )
        .await
        .unwrap();
        assert!(
            got.data == std::fs::read(real.join(name)).unwrap(),
            "{name}"
        );
    }
    stop.cancel();
}

/// Seeded mutation run: the packet parser and the transfer state machine, fed mutated and
/// random datagrams, never panic (100k iterations).
#[test]
fn packet_parser_and_transfer_survive_garbage() {
    use anneal_server::tftp::transfer::{negotiate, Event, Transfer};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let seeds: Vec<Vec<u8>> = vec![
        packet::request(
            packet::OP_RRQ,
            "/ipxe.efi",
            "octet",
            &[("blksize", "1468"), ("tsize", "0"), ("windowsize", "16")],
        ),
        packet::request(packet::OP_WRQ, "x", "netascii", &[]),
        packet::ack(3).to_vec(),
        packet::error(packet::ErrorCode::FileNotFound, "nope"),
        packet::oack(&[("blksize".into(), "512".into())]),
        vec![0, 3, 0, 1, 1, 2, 3],
    ];
    let mut rng = StdRng::seed_from_u64(0x7f7f);
    let mut parsed_ok = 0;
    let mut t = Transfer::new(
        &negotiate(
            &[("windowsize".into(), "4".into())],
            Some(9),
            1468,
            Duration::from_secs(1),
        ),
        1_000_000,
    );
    for i in 0..100_000u32 {
        let seed = &seeds[rng.gen_range(0..seeds.len())];
        let mut v = seed.clone();
        match rng.gen_range(0..4) {
            0 => {
                for _ in 0..rng.gen_range(1..6) {
                    let i = rng.gen_range(0..v.len());
                    v[i] = rng.gen();
                }
            }
            1 => v.truncate(rng.gen_range(0..v.len())),
            2 => v.extend((0..rng.gen_range(0..40)).map(|_| rng.gen::<u8>())),
            _ => v = (0..rng.gen_range(0..80)).map(|_| rng.gen()).collect(),
        }
        if let Ok(Packet::Rrq(r)) = packet::parse(&v) {
            parsed_ok += 1;
            let n = negotiate(
                &r.options,
                Some(rng.gen()),
                rng.gen(),
                Duration::from_secs(1),
            );
            assert!(n.windowsize >= 1 && n.blksize >= 8);
        }
        // The state machine: blocks, garbage, ACKs near the window, timeouts.
        while t.wants_block() {
            let len = if rng.gen_ratio(1, 50) {
                rng.gen_range(0..512)
            } else {
                512
            };
            t.push_block(&vec![0u8; len]);
        }
        let _ = t.pending().count();
        t.mark_sent();
        let ev = match rng.gen_range(0..3) {
            0 => t.on_datagram(&v),
            1 => t.on_datagram(&packet::ack(rng.gen_range(0..40))),
            _ => {
                let _ = t.on_timeout();
                Event::Continue
            }
        };
        if ev == Event::Complete || i % 5000 == 0 {
            t = Transfer::new(
                &negotiate(&[], None, 1468, Duration::from_secs(1)),
                1_000_000,
            );
        }
    }
    assert!(parsed_ok > 100, "some mutants still parse: {parsed_ok}");
}

/// With a wildcard listen address the server has several addresses; each transfer must come
/// from the address the client asked, or a client behind a firewall (or a picky PXE ROM) drops
/// it. Loopback owns all of 127.0.0.0/8, so 127.0.0.1 and 127.0.0.2 are two addresses of one
/// host without touching any real interface.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_listener_replies_from_the_address_asked() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let ipxe = dir.path().join("ipxe");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&ipxe).unwrap();
    std::fs::write(root.join("small"), bytes(2_000, 5)).unwrap();
    std::fs::write(ipxe.join("undionly.kpxe"), bytes(1_000, 6)).unwrap();
    let server = tftp::bind(TftpConfig::new("0.0.0.0:0".parse().unwrap(), root, ipxe))
        .await
        .unwrap();
    let port = server.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));

    for asked in ["127.0.0.1", "127.0.0.2", "127.0.0.3"] {
        let asked: std::net::IpAddr = asked.parse().unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let rrq = packet::request(1, "small", "octet", &[]);
        sock.send_to(&rrq, (asked, port)).await.unwrap();
        let mut buf = [0u8; 1024];
        let (n, from) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
            .await
            .expect("no reply")
            .unwrap();
        assert_eq!(from.ip(), asked, "first DATA came from {from}, not {asked}");
        assert_ne!(from.port(), port, "a transfer has its own port (TID)");
        assert!(matches!(
            packet::parse(&buf[..n]),
            Ok(Packet::Data { block: 1, .. })
        ));
        // Finish the transfer from the same TID, so nothing is left retransmitting.
        let mut block = 1u16;
        let mut len = n;
        loop {
            sock.send_to(&packet::ack(block), from).await.unwrap();
            if len < 4 + 512 {
                break;
            }
            let (n, f2) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
                .await
                .expect("no next block")
                .unwrap();
            assert_eq!(f2, from, "every block from the same address and port");
            block += 1;
            len = n;
        }
        assert_eq!(block, 4, "2,000 bytes = 3 full blocks + 1 short");
    }
    stop.cancel();
}
