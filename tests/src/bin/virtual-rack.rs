//! The demo: a virtual rack of QEMU machines network-booting from a real `anneal serve` into the
//! discovery image, with their progress shown as it happens. `scripts/demo` builds everything
//! and runs this; Ctrl-C tears it all down (machines, server, namespace).
//!
//! `virtual-rack [--machines N] [--api-port PORT] [--exit-when-discovered]`
//!
//! The server runs inside the rack's network namespace; its operator API is forwarded to
//! `127.0.0.1:PORT` on the host so the CLI (and later the dashboard) can be used from outside.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anneal_tests::rack::forward::Forward;
use anneal_tests::rack::system::{self, Need};
use anneal_tests::rack::{image, Anneal, DiskBus, Machine, MachineSpec, Rack, Smbios};
use anyhow::{bail, Context, Result};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// What the demo was asked for.
struct Options {
    machines: usize,
    api_port: u16,
    exit_when_discovered: bool,
}

fn options() -> Result<Options> {
    let mut o = Options {
        machines: 3,
        api_port: 8443,
        exit_when_discovered: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--machines" => o.machines = args.next().context("--machines N")?.parse()?,
            "--api-port" => o.api_port = args.next().context("--api-port PORT")?.parse()?,
            "--exit-when-discovered" => o.exit_when_discovered = true,
            _ => bail!(
                "usage: virtual-rack [--machines N] [--api-port PORT] [--exit-when-discovered]"
            ),
        }
    }
    if !(1..=6).contains(&o.machines) {
        bail!("--machines must be 1 to 6 (software emulation on this machine's cores)");
    }
    Ok(o)
}

/// Machine `n` (1-based): alternately BIOS and UEFI, different NICs and disks, 512 MiB each.
fn spec(n: usize, dir: &std::path::Path) -> Result<MachineSpec> {
    let mac = format!("52:54:00:de:00:{n:02x}");
    let smbios = Smbios {
        manufacturer: "Anneal Demo".into(),
        product: ["Rack Server R1", "Rack Server R2"][n % 2].into(),
        serial: format!("DEMO-{n:04}"),
        uuid: format!("de300000-0000-4000-8000-{n:012x}"),
        chassis_serial: format!("DEMO-CHS-{n:04}"),
    };
    let disk = |name: String, mib: u64| -> Result<std::path::PathBuf> {
        let p = dir.join(name);
        std::fs::File::create(&p)?.set_len(mib << 20)?;
        Ok(p)
    };
    let mut s = if n % 2 == 1 {
        MachineSpec::bios(&mac)
            .with_disk_on(
                DiskBus::Virtio,
                &disk(format!("{n}-0.img"), 64)?,
                &format!("DEMO-{n}-D0"),
            )
            .with_disk_on(
                DiskBus::Sata,
                &disk(format!("{n}-1.img"), 32)?,
                &format!("DEMO-{n}-D1"),
            )
    } else {
        MachineSpec::uefi(&mac).with_disk_on(
            DiskBus::Nvme,
            &disk(format!("{n}-0.img"), 48)?,
            &format!("DEMO-{n}-N0"),
        )
    };
    if n == 3 {
        s.nic = anneal_tests::rack::NicModel::VirtioNet;
    }
    s.name = format!("rack-{n}");
    s.memory_mb = 512;
    s.cpus = if n == 1 { 2 } else { 1 };
    Ok(s.with_smbios(smbios))
}

/// How far one machine has come, from what the server shows.
#[derive(Debug, Clone, PartialEq)]
enum Stage {
    PoweredOn,
    Lease(String),
    Script(String),
    Enrolled(String),
    Inventory(String),
}

fn stage(server: &Anneal, mac: &str, machines: &serde_json::Value) -> Stage {
    if let Some(m) = machines
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["macs"].as_array().into_iter().flatten().any(|x| x == mac))
    {
        let id = m["id"].as_str().unwrap_or("?");
        let short = &id[..id.len().min(8)];
        if m["last_seen"].is_string() && m["cpus"].is_number() {
            let disks = m["disks"].as_u64().unwrap_or(0);
            let mem = m["memory_bytes"].as_u64().unwrap_or(0) >> 20;
            return Stage::Inventory(format!(
                "discovered as {short}: {} {}, serial {}, {} CPU(s), {mem} MiB, {disks} disk(s)",
                m["manufacturer"].as_str().unwrap_or("?"),
                m["product"].as_str().unwrap_or("?"),
                m["serial"].as_str().unwrap_or("?"),
                m["cpus"]
            ));
        }
        return Stage::Enrolled(format!("enrolled as machine {short}"));
    }
    if let Some(s) = server
        .scripts_served()
        .into_iter()
        .rev()
        .find(|s| s.mac == mac)
    {
        return Stage::Script(format!(
            "iPXE ({}) fetched its `{}` script; loading the discovery image",
            s.platform, s.env
        ));
    }
    if let Ok(leases) = server.leases() {
        if let Some(l) = leases.iter().find(|l| l.mac == mac) {
            return Stage::Lease(format!("DHCP lease {}", l.ip));
        }
    }
    Stage::PoweredOn
}

fn main() -> Result<()> {
    let o = options()?;
    let needs: Vec<Need> = system::PXE
        .iter()
        .copied()
        .chain([Need::DiscoveryImage])
        .collect();
    let missing: Vec<&str> = needs.iter().filter_map(|n| n.missing()).collect();
    if !missing.is_empty() {
        bail!("this machine lacks: {}", missing.join(", "));
    }
    let handler = nix::sys::signal::SigHandler::Handler(on_signal);
    for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::signal(sig, handler) }.context("installing a signal handler")?;
    }

    let started = Instant::now();
    let say = |what: &str| eprintln!("[{:>4}s] {what}", started.elapsed().as_secs());
    let rack = Rack::new()?;
    say(&format!(
        "rack: network namespace {} with bridge br0 {}",
        rack.netns.name(),
        rack.subnet()
    ));
    let config = format!("{}{}", image::config_line(), rack.full_dhcp_config())
        .replace("advertise = [\"", "advertise = [\"127.0.0.1\", \"");
    let server = Anneal::start(&rack, &config)?;
    let api = format!("{}:8443", rack.server_ip()).parse()?;
    let forward = Forward::start(&rack.netns, o.api_port, api)?;
    let url = format!("https://{}", forward.local);
    say(&format!(
        "anneal serve is up in the rack (DHCP, TFTP, HTTP on {})",
        rack.server_ip()
    ));
    let data = server.data_dir.display().to_string();
    eprintln!(
        "\n  Operator API:  {url}   (CA fingerprint {fp})\n  \
         CLI:           ANNEAL_SERVER={url} ANNEAL_DATA_DIR={data} anneal machines ls\n  \
         Server log:    {log}\n  \
         Dashboard:     not yet (a later release)\n",
        fp = server.ca_fingerprint,
        log = server.log.display(),
    );

    let work = tempfile::tempdir()?;
    let mut vms = Vec::new();
    for n in 1..=o.machines {
        let s = spec(n, work.path())?;
        let firmware = format!("{:?}", s.firmware);
        let vm = Machine::start(&rack, s)?;
        say(&format!(
            "{}: powered on ({firmware}, {}), console: {}",
            vm.spec.name,
            vm.spec.mac,
            vm.files.serial.display()
        ));
        vms.push((vm, Stage::PoweredOn, None::<Instant>));
    }

    let mut all_done = false;
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(500));
        let machines = server.api_get("/api/v1/machines").unwrap_or_default();
        for (vm, last, done) in vms.iter_mut() {
            if !vm.is_running() {
                if done.is_none() {
                    say(&format!("{}: QEMU exited\n{}", vm.spec.name, vm.tails()));
                    *done = Some(Instant::now());
                }
                continue;
            }
            let now = stage(&server, &vm.spec.mac, &machines);
            if now != *last {
                let text = match &now {
                    Stage::PoweredOn => "powered on".to_string(),
                    Stage::Lease(t)
                    | Stage::Script(t)
                    | Stage::Enrolled(t)
                    | Stage::Inventory(t) => t.clone(),
                };
                say(&format!("{}: {text}", vm.spec.name));
                if matches!(now, Stage::Inventory(_)) {
                    *done = Some(Instant::now());
                }
                *last = now;
            }
        }
        if !all_done && vms.iter().all(|(_, _, d)| d.is_some()) {
            all_done = true;
            say(&format!(
                "all {} machines are in; try the CLI line above. Ctrl-C tears the rack down.",
                vms.len()
            ));
            if o.exit_when_discovered {
                break;
            }
        }
    }
    let missing: Vec<String> = vms
        .iter()
        .filter(|(_, st, _)| !matches!(st, Stage::Inventory(_)))
        .map(|(vm, _, _)| vm.spec.name.clone())
        .collect();
    say("stopping: machines, server, namespace");
    drop(vms);
    drop(forward);
    drop(server);
    drop(rack);
    say("done");
    if o.exit_when_discovered && !missing.is_empty() {
        bail!("not discovered: {}", missing.join(", "));
    }
    Ok(())
}
