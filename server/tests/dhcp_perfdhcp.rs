//! Kea's `perfdhcp` against `anneal serve` in full mode, across network namespaces.
//!
//! Two namespaces made by this test (`anneal-pd-s-PID` for the server, `anneal-pd-c-PID` for
//! perfdhcp) joined by one veth pair. perfdhcp acts as a relay (giaddr = its own address), so
//! anneal picks the subnet by giaddr and answers unicast to it. A bounded run (a few hundred
//! DORA exchanges from a pool of simulated clients, so some clients come back and must get
//! their own address again), then these checks:
//!
//! - no address was ACKed to two clients (every ACK anneal sent, from its debug log);
//! - every ACKed lease is stored, bound, to that client (the store, read after the server
//!   stopped), and every address perfdhcp saw ACKed is among them;
//! - perfdhcp counted no drops, orphans, rejected leases or malformed packets.
//!
//! Needs root, iproute2 and perfdhcp (Debian: `kea-admin`); prints why when skipped, and fails
//! instead when `ANNEAL_REQUIRE_SYSTEM_TESTS=1`. No timed assertions: the drop time is generous
//! (a loaded 2-core machine must not turn slowness into failures).

mod common;
use common::{must, run, Netns, Proc};

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anneal_server::store::{LeaseState, LeaseStore, SqliteStore};

/// Simulated clients (perfdhcp `-R`).
const CLIENTS: u32 = 400;
/// Exchanges per second (`-r`) and seconds (`-p`): 600 DORA exchanges.
const RATE: u32 = 120;
const SECONDS: u32 = 5;

/// perfdhcp's path: on PATH, or in /usr/sbin (where Debian puts it; not on every user's PATH).
fn perfdhcp() -> Option<PathBuf> {
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin")]);
    for dir in candidates {
        let p = dir.join("perfdhcp");
        if p.is_file() {
            return Some(p);
        }
    }
    None
}

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    if !run(&["ip", "-V"]) {
        return Some("needs iproute2 (`ip`)".into());
    }
    if perfdhcp().is_none() {
        return Some("needs perfdhcp (Debian package kea-admin)".into());
    }
    None
}

fn start_server(ns: &str, config: &Path, log: &Path) -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_anneal"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        // Debug for the DHCP module: one line per reply sent, with its client and address.
        .env("ANNEAL_LOG", "warn,anneal=info,anneal_server::dhcp=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn anneal serve");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("DHCP answering") {
            return proc;
        }
        assert!(Instant::now() < deadline, "server did not start:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn stop_server(mut p: Proc) {
    let pid = nix::unistd::Pid::from_raw(p.0.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = p.0.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(p);
}

/// perfdhcp's counters for one exchange (`DISCOVER-OFFER` or `REQUEST-ACK`).
#[derive(Debug, Default)]
struct Exchange {
    sent: u64,
    received: u64,
    drops: u64,
    orphans: u64,
    rejected: u64,
}

/// The counters of each exchange, the malformed-packet count, and the addresses perfdhcp
/// printed as ACKed (`-x l`).
fn parse_report(out: &str) -> (HashMap<String, Exchange>, u64, Vec<Ipv4Addr>) {
    let mut stats: HashMap<String, Exchange> = HashMap::new();
    let mut malformed = 0;
    let mut acked = Vec::new();
    let mut section = String::new();
    for line in out.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("***") {
            section = rest.trim_end_matches('*').to_string();
            continue;
        }
        let num = |key: &str| -> Option<u64> {
            line.strip_prefix(key)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v as u64)
        };
        if let Some(n) = num("Malformed packets:") {
            malformed = n;
        }
        if let Some(x) = section.strip_prefix("Statistics for: ") {
            let e = stats.entry(x.to_string()).or_default();
            if let Some(n) = num("sent packets:") {
                e.sent = n;
            } else if let Some(n) = num("received packets:") {
                e.received = n;
            } else if let Some(n) = num("drops:") {
                e.drops = n;
            } else if let Some(n) = num("orphans:") {
                e.orphans = n;
            } else if let Some(n) = num("rejected leases:") {
                e.rejected = n;
            }
        }
        if section == "Leases for REQUEST-ACK" {
            // Lines are `client_id,address,prefix` (client_id empty for DHCPv4).
            if let Some(ip) = line.split(',').nth(1).and_then(|a| a.parse().ok()) {
                acked.push(ip);
            }
        }
    }
    (stats, malformed, acked)
}

/// Every ACK anneal sent, in order: (client MAC, address), from its `DHCP reply sent` lines.
fn acks_in_log(log: &str) -> Vec<(String, Ipv4Addr)> {
    let field = |line: &str, key: &str| -> Option<String> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{key}=")))
            .map(|v| v.trim_matches('"').to_string())
    };
    log.lines()
        .filter(|l| l.contains("DHCP reply sent"))
        .filter(|l| field(l, "kind").as_deref() == Some("ack"))
        .filter_map(|l| Some((field(l, "mac")?, field(l, "yiaddr")?.parse().ok()?)))
        .collect()
}

#[test]
fn perfdhcp_load_hands_out_unique_durable_leases() {
    if let Some(why) = skip_reason() {
        if std::env::var("ANNEAL_REQUIRE_SYSTEM_TESTS").as_deref() == Ok("1") {
            panic!("perfdhcp test cannot run ({why}) and ANNEAL_REQUIRE_SYSTEM_TESTS=1");
        }
        eprintln!("perfdhcp test skipped: {why}");
        return;
    }
    let perfdhcp = perfdhcp().expect("checked above");
    let pid = std::process::id();
    let ns = Netns {
        server: format!("anneal-pd-s-{pid}"),
        client: format!("anneal-pd-c-{pid}"),
    };
    let (s, c) = (ns.server.clone(), ns.client.clone());
    must(&["ip", "netns", "add", &s]);
    must(&["ip", "netns", "add", &c]);
    must(&[
        "ip", "-n", &s, "link", "add", "srvP", "type", "veth", "peer", "name", "cliP", "netns", &c,
    ]);
    must(&["ip", "-n", &s, "addr", "add", "10.81.0.1/16", "dev", "srvP"]);
    must(&["ip", "-n", &c, "addr", "add", "10.81.0.2/16", "dev", "cliP"]);
    for (n, l) in [(&s, "srvP"), (&s, "lo"), (&c, "cliP"), (&c, "lo")] {
        must(&["ip", "-n", n, "link", "set", l, "up"]);
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("anneal.toml");
    // 2,048 addresses for 400 clients; leases outlive the run.
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\napi_listen = \"127.0.0.1:0\"\nagent_listen = \"127.0.0.1:0\"\n\
             http_listen = \"127.0.0.1:0\"\n\
             [[dhcp.subnets]]\ninterface = \"srvP\"\nsubnet = \"10.81.0.0/16\"\n\
             range = [\"10.81.1.0\", \"10.81.8.255\"]\nrouter = \"10.81.0.1\"\n\
             lease_secs = 3600\n",
            d.join("data").display()
        ),
    )
    .unwrap();
    let log = d.join("server.log");
    let server = start_server(&s, &config, &log);

    // -d 5: an answer is "dropped" only after 5 s; -W 3 s: wait for late answers at the end;
    // -x l: print the ACKed addresses. timeout(1) bounds the whole run.
    let args = [
        "-4".to_string(),
        "-l".into(),
        "cliP".into(),
        "-R".into(),
        CLIENTS.to_string(),
        "-r".into(),
        RATE.to_string(),
        "-p".into(),
        SECONDS.to_string(),
        "-d".into(),
        "5".into(),
        "-W".into(),
        "3000000".into(),
        "-x".into(),
        "l".into(),
        "10.81.0.1".into(),
    ];
    let out = Command::new("timeout")
        .args(["60", "ip", "netns", "exec", &c])
        .arg(&perfdhcp)
        .args(&args)
        .output()
        .expect("run perfdhcp");
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let server_log_now = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        out.status.success(),
        "perfdhcp failed ({}):\n{report}\n{}\nserver log tail:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        tail(&server_log_now(), 40)
    );
    stop_server(server);
    let server_log = server_log_now();
    let (stats, malformed, perf_acked) = parse_report(&report);
    let summary = report
        .lines()
        .filter(|l| !l.starts_with(','))
        .collect::<Vec<_>>()
        .join("\n");
    eprintln!("{summary}");

    let dora = stats.get("DISCOVER-OFFER").expect("DISCOVER-OFFER stats");
    let ra = stats.get("REQUEST-ACK").expect("REQUEST-ACK stats");
    assert!(
        dora.sent >= u64::from(RATE * SECONDS) * 9 / 10,
        "perfdhcp sent what was asked: {summary}"
    );
    assert_eq!(malformed, 0, "{summary}");
    for (name, e) in [("DISCOVER-OFFER", dora), ("REQUEST-ACK", ra)] {
        assert_eq!(e.drops, 0, "{name}: no drops\n{summary}");
        assert_eq!(e.orphans, 0, "{name}: no orphans\n{summary}");
        assert_eq!(e.rejected, 0, "{name}: no rejected leases\n{summary}");
    }
    assert_eq!(ra.sent, dora.received, "a REQUEST for every OFFER");
    assert_eq!(ra.received, ra.sent, "an ACK for every REQUEST");

    // No address ACKed to two clients, from what anneal itself sent.
    let acks = acks_in_log(&server_log);
    assert!(
        acks.len() as u64 >= ra.received,
        "anneal logged {} ACKs, perfdhcp received {}",
        acks.len(),
        ra.received
    );
    let mut holder: HashMap<Ipv4Addr, String> = HashMap::new();
    for (mac, ip) in &acks {
        if let Some(other) = holder.insert(*ip, mac.clone()) {
            assert_eq!(&other, mac, "{ip} ACKed to {other} and to {mac}");
        }
    }
    let clients: std::collections::HashSet<&String> = holder.values().collect();
    assert_eq!(clients.len(), holder.len(), "one address per client");
    for ip in &perf_acked {
        assert!(
            holder.contains_key(ip),
            "perfdhcp saw {ip} ACKed; anneal logged no such ACK"
        );
    }
    eprintln!(
        "{} ACKs for {} distinct clients and addresses",
        acks.len(),
        holder.len()
    );

    // Every ACKed lease is stored, bound to its client.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = rt
        .block_on(SqliteStore::open(&d.join("data").join("anneal.db")))
        .expect("open store");
    let stored: HashMap<Ipv4Addr, _> = rt
        .block_on(store.list_leases())
        .expect("list leases")
        .into_iter()
        .map(|l| (l.ip, l))
        .collect();
    for (ip, mac) in &holder {
        let l = stored
            .get(ip)
            .unwrap_or_else(|| panic!("ACKed {ip} ({mac}) is not in the store"));
        assert_eq!(&l.mac, mac, "stored holder of {ip}");
        assert_eq!(l.state, LeaseState::Bound, "{ip}: {l:?}");
    }
    drop(ns);
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
