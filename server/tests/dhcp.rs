//! DHCP full mode against a real client (busybox `udhcpc`) across network namespaces.
//!
//! Two namespaces made by this test (`anneal-dhcp-s-PID` for the server, `anneal-dhcp-c-PID` for
//! the client) joined by two veth pairs: on the first the server is configured, on the second it
//! is not. The real `anneal serve` runs inside the server namespace. Shown here: a lease with
//! router, DNS, domain and MTU; renewal; a server restart after which the client renews the same
//! address; release recorded in the store; the released address comes back to its client; no
//! answer at all on the unconfigured interface; PXE BIOS clients get `undionly.kpxe` from us,
//! iPXE clients the HTTP URL of their script. Needs root (namespaces); prints why when skipped.

mod common;
use common::{must, run, Netns, Proc};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anneal_server::store::{LeaseState, LeaseStore, SqliteStore};

fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root (network namespaces)".into());
    }
    if !run(&["ip", "-V"]) {
        return Some("needs iproute2 (`ip`)".into());
    }
    let applets = Command::new("busybox").arg("--list").output();
    match applets {
        Ok(o)
            if String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l == "udhcpc") =>
        {
            None
        }
        _ => Some("needs busybox with udhcpc".into()),
    }
}

fn start_server(ns: &str, config: &Path, log: &Path) -> Proc {
    let child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(env!("CARGO_BIN_EXE_anneal"))
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env("ANNEAL_LOG", "info,anneal_server::dhcp=debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("spawn anneal serve");
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.contains("anneal is serving") {
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

/// The script udhcpc calls: logs one line per event and configures the address (renewals are
/// unicast from it).
fn write_script(dir: &Path) -> PathBuf {
    let path = dir.join("udhcpc.sh");
    let events = dir.join("events");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\n\
             echo \"$1 ip=$ip mask=$mask router=$router dns=$dns domain=$domain mtu=$mtu \
             lease=$lease serverid=$serverid siaddr=$siaddr boot_file=$boot_file \
             bootfile=$bootfile\" >> {events}\n\
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

fn events(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("events"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Wait for the `n`-th event line (1-based) starting with `kind`.
fn wait_event(dir: &Path, after: usize, kind: &str, log: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(l) = events(dir)
            .into_iter()
            .skip(after)
            .find(|l| l.starts_with(&format!("{kind} ")))
        {
            return l;
        }
        assert!(
            Instant::now() < deadline,
            "no `{kind}` event; events: {:?}\nserver log:\n{}",
            events(dir),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(&format!("{key}="))
        .nth(1)
        .map(|r| {
            // Values end where the next ` key=` begins (dns holds spaces).
            let end = r
                .match_indices(' ')
                .find(|(i, _)| {
                    r[i + 1..]
                        .split(' ')
                        .next()
                        .is_some_and(|w| w.contains('='))
                })
                .map(|(i, _)| i)
                .unwrap_or(r.len());
            &r[..end]
        })
        .unwrap_or("")
}

fn udhcpc(ns: &str, iface: &str, script: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args([
        "netns", "exec", ns, "busybox", "udhcpc", "-i", iface, "-f", "-s",
    ])
    .arg(script)
    .args(extra)
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    c
}

#[test]
fn full_mode_with_a_real_client() {
    if let Some(why) = skip_reason() {
        assert!(
            std::env::var("ANNEAL_REQUIRE_SYSTEM_TESTS").as_deref() != Ok("1"),
            "ANNEAL_REQUIRE_SYSTEM_TESTS=1 but the dhcp namespace test cannot run: {why}"
        );
        eprintln!("SKIPPED: dhcp namespace test: {why}");
        return;
    }
    let pid = std::process::id();
    let ns = Netns {
        server: format!("anneal-dhcp-s-{pid}"),
        client: format!("anneal-dhcp-c-{pid}"),
    };
    let (s, c) = (ns.server.clone(), ns.client.clone());
    must(&["ip", "netns", "add", &s]);
    must(&["ip", "netns", "add", &c]);
    // veth names are per-namespace, so fixed short names are fine.
    must(&[
        "ip", "-n", &s, "link", "add", "srvA", "type", "veth", "peer", "name", "cliA", "netns", &c,
    ]);
    must(&[
        "ip", "-n", &s, "link", "add", "srvB", "type", "veth", "peer", "name", "cliB", "netns", &c,
    ]);
    must(&["ip", "-n", &s, "addr", "add", "10.77.0.1/24", "dev", "srvA"]);
    must(&["ip", "-n", &s, "addr", "add", "10.78.0.1/24", "dev", "srvB"]);
    for (n, l) in [
        (&s, "srvA"),
        (&s, "srvB"),
        (&s, "lo"),
        (&c, "cliA"),
        (&c, "cliB"),
        (&c, "lo"),
    ] {
        must(&["ip", "-n", n, "link", "set", l, "up"]);
    }

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = d.join("anneal.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = \"{}\"\napi_listen = \"127.0.0.1:0\"\nagent_listen = \"127.0.0.1:0\"\n\
             [dhcp]\nhttp_port = 8080\n\
             [[dhcp.subnets]]\ninterface = \"srvA\"\nsubnet = \"10.77.0.0/24\"\n\
             range = [\"10.77.0.100\", \"10.77.0.120\"]\nrouter = \"10.77.0.1\"\n\
             dns = [\"10.77.0.53\", \"10.77.0.54\"]\ndomain = \"rack.test\"\n\
             lease_secs = 600\nmtu = 1400\n",
            d.join("data").display()
        ),
    )
    .unwrap();
    let log = d.join("server.log");
    let script = write_script(d);
    let server = start_server(&s, &config, &log);

    // 1. A lease with every option.
    let client = Proc(
        udhcpc(
            &c,
            "cliA",
            &script,
            &["-t", "5", "-T", "1", "-A", "1", "-n"],
        )
        .spawn()
        .expect("udhcpc"),
    );
    let bound = wait_event(d, 0, "bound", &log);
    let ip = field(&bound, "ip").to_string();
    let last: u8 = ip
        .strip_prefix("10.77.0.")
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    assert!(
        (100..=120).contains(&last),
        "address from the range: {bound}"
    );
    assert_eq!(field(&bound, "router"), "10.77.0.1", "{bound}");
    assert_eq!(field(&bound, "dns"), "10.77.0.53 10.77.0.54", "{bound}");
    assert_eq!(field(&bound, "domain"), "rack.test", "{bound}");
    assert_eq!(field(&bound, "mtu"), "1400", "{bound}");
    assert_eq!(field(&bound, "mask"), "24", "{bound}");
    assert_eq!(field(&bound, "lease"), "600", "{bound}");
    assert_eq!(field(&bound, "serverid"), "10.77.0.1", "{bound}");
    assert_eq!(
        field(&bound, "boot_file"),
        "",
        "no boot file for an ordinary host"
    );

    // 2. Renew (unicast REQUEST from the bound address).
    let signal = |p: &Proc, sig| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(p.0.id() as i32), sig).expect("signal")
    };
    let n = events(d).len();
    signal(&client, nix::sys::signal::Signal::SIGUSR1);
    let renew = wait_event(d, n, "renew", &log);
    assert_eq!(field(&renew, "ip"), ip, "{renew}");

    // 3. Restart the server: the lease survives, the client renews the same address.
    stop_server(server);
    let server = start_server(&s, &config, &log);
    let n = events(d).len();
    signal(&client, nix::sys::signal::Signal::SIGUSR1);
    let renew = wait_event(d, n, "renew", &log);
    assert_eq!(
        field(&renew, "ip"),
        ip,
        "same address after a restart: {renew}"
    );

    // 4. Release: recorded in the store.
    let n = events(d).len();
    signal(&client, nix::sys::signal::Signal::SIGUSR2);
    wait_event(d, n, "deconfig", &log);
    drop(client);
    let store = tokio::runtime::Runtime::new().unwrap().block_on(async {
        SqliteStore::open(&d.join("data").join("anneal.db"))
            .await
            .expect("open store")
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lease = rt
            .block_on(store.get_lease(ip.parse().unwrap()))
            .expect("get lease")
            .expect("lease stored");
        if lease.state == LeaseState::Released {
            break;
        }
        assert!(Instant::now() < deadline, "release not recorded: {lease:?}");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 5. The released address comes back to the same client (a fresh DISCOVER).
    let n = events(d).len();
    let status = udhcpc(
        &c,
        "cliA",
        &script,
        &["-q", "-n", "-t", "5", "-T", "1", "-A", "1"],
    )
    .status()
    .expect("udhcpc");
    assert!(status.success(), "udhcpc -q failed");
    let bound = wait_event(d, n, "bound", &log);
    assert_eq!(field(&bound, "ip"), ip, "{bound}");

    // 6. The unconfigured interface never gets an answer.
    let n = events(d).len();
    let started = Instant::now();
    let status = udhcpc(
        &c,
        "cliB",
        &script,
        &["-q", "-n", "-t", "2", "-T", "1", "-A", "1"],
    )
    .status()
    .expect("udhcpc");
    assert!(!status.success(), "no lease on the unconfigured interface");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        !events(d).iter().skip(n).any(|l| l.starts_with("bound")),
        "{:?}",
        events(d)
    );

    // 7. PXE: a BIOS client (option 93 = 0) gets undionly.kpxe from us by TFTP…
    let n = events(d).len();
    let status = udhcpc(
        &c,
        "cliA",
        &script,
        &[
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-A",
            "1",
            "-x",
            "0x5d:0000",
            "-V",
            "PXEClient:Arch:00000:UNDI:002001",
        ],
    )
    .status()
    .expect("udhcpc");
    assert!(status.success());
    let bound = wait_event(d, n, "bound", &log);
    assert_eq!(field(&bound, "boot_file"), "undionly.kpxe", "{bound}");
    assert_eq!(field(&bound, "siaddr"), "10.77.0.1", "{bound}");

    // …and iPXE (user class "iPXE") gets its script over HTTP, never iPXE again.
    let n = events(d).len();
    let status = udhcpc(
        &c,
        "cliA",
        &script,
        &[
            "-q",
            "-n",
            "-t",
            "5",
            "-T",
            "1",
            "-A",
            "1",
            "-x",
            "0x4d:69505845",
            "-x",
            "0x5d:0000",
        ],
    )
    .status()
    .expect("udhcpc");
    assert!(status.success());
    let bound = wait_event(d, n, "bound", &log);
    assert_eq!(
        field(&bound, "boot_file"),
        "http://10.77.0.1:8080/boot.ipxe",
        "{bound}"
    );

    stop_server(server);
    let leases = rt.block_on(store.list_leases()).expect("list");
    assert!(leases
        .iter()
        .all(|l| l.ip.to_string().starts_with("10.77.0.")));
    drop(ns);
}
