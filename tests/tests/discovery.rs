//! End to end: machines network-boot from Anneal alone (full DHCP, TFTP, iPXE over HTTP) into
//! the real discovery image (`scripts/build-image`: Debian kernel, busybox init, the static
//! agent), enroll with the single-use token from their boot script, and report an inventory
//! that must match their QEMU configuration exactly. Then one is reset into discovery again:
//! same record, a new enrollment, a fresh inventory.
//!
//! A BIOS machine (SeaBIOS, e1000 with iPXE ROM, virtio + SATA disks, 2 CPUs, its clock in
//! 2001) and a UEFI machine (OVMF's own PXE client, virtio-net, NVMe + virtio disks, its clock
//! in 2035), each with 512 MiB, the image's memory budget, booting at the same time. The UEFI
//! machine is why the discovery script says `rootfstype=ramfs`: with the default tmpfs root
//! (capped at half the memory the kernel sees early, less under OVMF) the image stopped
//! unpacking halfway and DHCP never configured the link.
//!
//! Needs what every rack test needs plus the built image (`ANNEAL_DISCOVERY_IMAGE`, set by
//! `scripts/test`): skipped with the reason otherwise, failed under
//! `ANNEAL_REQUIRE_SYSTEM_TESTS=1`.

use std::path::Path;
use std::time::Duration;

use anneal_tests::rack::system::{rack_test, Need};
use anneal_tests::rack::{image, wait, Anneal, DiskBus, Machine, MachineSpec, Rack, Smbios};
use anyhow::{ensure, Context, Result};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;

/// From power-on to an inventory in the store: firmware, DHCP, iPXE, a ~40 MB initrd over
/// emulated NICs, the kernel and the agent, under software emulation with two machines on two
/// busy cores.
const DISCOVERED: Duration = Duration::from_secs(600);

/// One test machine: its QEMU spec and what its inventory must say.
struct Expected {
    spec: MachineSpec,
    smbios: Smbios,
    /// (serial, size in bytes) of every disk.
    disks: Vec<(String, u64)>,
}

fn smbios(n: u32) -> Smbios {
    Smbios {
        manufacturer: "Anneal Rack".into(),
        product: format!("Virtual Server {}", ["A", "B"][n as usize % 2]),
        serial: format!("DISC-SRV-{n:04}"),
        uuid: format!("5d15c0de-0000-4e2e-8a11-{n:012x}"),
        chassis_serial: format!("DISC-CHS-{n:04}"),
    }
}

/// A sparse raw disk of `mib` MiB.
fn disk(dir: &Path, name: &str, mib: u64) -> Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(mib * MIB))
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(path)
}

fn machines(dir: &Path) -> Result<Vec<Expected>> {
    let bios_id = smbios(1);
    let mut bios = MachineSpec::bios("52:54:00:e1:00:01")
        .with_smbios(bios_id.clone())
        .with_disk_on(
            DiskBus::Virtio,
            &disk(dir, "a0.img", 64)?,
            "DISC-A-VIRTIO-0",
        )
        .with_disk_on(DiskBus::Sata, &disk(dir, "a1.img", 40)?, "DISC-A-SATA-1");
    bios.memory_mb = 512;
    bios.cpus = 2;
    bios.rtc_base = Some("2001-01-01".into());
    let uefi_id = smbios(2);
    let mut uefi = MachineSpec::uefi("52:54:00:e1:00:02")
        .with_smbios(uefi_id.clone())
        .with_disk_on(DiskBus::Nvme, &disk(dir, "b0.img", 48)?, "DISC-B-NVME-0")
        .with_disk_on(
            DiskBus::Virtio,
            &disk(dir, "b1.img", 24)?,
            "DISC-B-VIRTIO-1",
        );
    uefi.memory_mb = 512;
    uefi.rtc_base = Some("2035-06-01".into());
    Ok(vec![
        Expected {
            spec: bios,
            smbios: bios_id,
            disks: vec![
                ("DISC-A-VIRTIO-0".into(), 64 * MIB),
                ("DISC-A-SATA-1".into(), 40 * MIB),
            ],
        },
        Expected {
            spec: uefi,
            smbios: uefi_id,
            disks: vec![
                ("DISC-B-NVME-0".into(), 48 * MIB),
                ("DISC-B-VIRTIO-1".into(), 24 * MIB),
            ],
        },
    ])
}

/// The machine record whose inventory names `serial`, once it has one.
fn discovered(server: &Anneal, serial: &str) -> Result<Option<Value>> {
    let list = server.api_get("/api/v1/machines")?;
    for m in list.as_array().context("machine list is an array")? {
        if m["serial"].as_str() != Some(serial) {
            continue;
        }
        let id = m["id"].as_str().context("machine id")?;
        let full = server.api_get(&format!("/api/v1/machines/{id}"))?;
        if full["inventory"].is_object() {
            return Ok(Some(full));
        }
    }
    Ok(None)
}

/// Wait until the machine with `serial` has an inventory stored (QEMU still running).
fn wait_discovered(
    server: &Anneal,
    vm: &mut Machine,
    serial: &str,
    newer_than: Option<&str>,
) -> Result<Value> {
    let what = format!("{serial} to report its inventory");
    let mut last_err = None;
    let found = wait::until(&what, DISCOVERED, || {
        if !vm.is_running() {
            return Some(None);
        }
        match discovered(server, serial) {
            Ok(Some(m)) => {
                let at = m["inventory_at"].as_str().unwrap_or_default().to_string();
                match newer_than {
                    Some(old) if at.as_str() <= old => None,
                    _ => Some(Some(m)),
                }
            }
            Ok(None) => None,
            Err(e) => {
                last_err = Some(e);
                None
            }
        }
    });
    let tails = || {
        format!(
            "{}\nlast API error: {:?}\nserver log:\n{}",
            vm.tails(),
            last_err,
            server.log_tail(30)
        )
    };
    match found {
        Ok(Some(m)) => Ok(m),
        Ok(None) => anyhow::bail!("the machine stopped before {what}\n{}", tails()),
        Err(e) => Err(e).with_context(tails),
    }
}

/// Every field the issue names, compared with the QEMU configuration.
fn check_inventory(m: &Value, want: &Expected) -> Result<()> {
    let inv = &m["inventory"];
    let s = &want.smbios;
    let field = |path: &[&str]| -> String {
        let mut v = inv;
        for p in path {
            v = &v[*p];
        }
        v.as_str().unwrap_or("<absent>").to_string()
    };
    let pairs = [
        (field(&["system", "manufacturer"]), s.manufacturer.clone()),
        (field(&["system", "product"]), s.product.clone()),
        (field(&["system", "serial"]), s.serial.clone()),
        (
            field(&["system", "uuid"]).to_lowercase(),
            s.uuid.to_lowercase(),
        ),
        (field(&["chassis", "serial"]), s.chassis_serial.clone()),
    ];
    for (got, expected) in pairs {
        ensure!(
            got == expected,
            "inventory says {got:?}, QEMU has {expected:?}\n{inv:#}"
        );
    }
    let cpus = inv["cpu"]["logical_cpus"].as_u64();
    ensure!(
        cpus == Some(u64::from(want.spec.cpus)),
        "CPUs: inventory {cpus:?}, QEMU -smp {}",
        want.spec.cpus
    );
    let mem = inv["memory"]["installed_bytes"].as_u64();
    ensure!(
        mem == Some(u64::from(want.spec.memory_mb) * MIB),
        "memory: inventory {mem:?} bytes installed, QEMU -m {} MiB",
        want.spec.memory_mb
    );
    let mut disks: Vec<(String, u64)> = inv["disks"]
        .as_array()
        .context("disks")?
        .iter()
        .map(|d| {
            (
                d["serial"].as_str().unwrap_or("<no serial>").to_string(),
                d["size_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    disks.sort();
    let mut expected = want.disks.clone();
    expected.sort();
    ensure!(
        disks == expected,
        "disks: inventory {disks:?}, QEMU {expected:?}"
    );
    let macs: Vec<String> = inv["nics"]
        .as_array()
        .context("nics")?
        .iter()
        .filter_map(|n| n["mac"].as_str().map(str::to_lowercase))
        .filter(|mac| mac != "00:00:00:00:00:00")
        .collect();
    ensure!(
        macs == vec![want.spec.mac.clone()],
        "MACs: inventory {macs:?}, QEMU {}",
        want.spec.mac
    );
    Ok(())
}

/// Boot `which` machines (indexes into [`machines`]) into discovery, check their inventories,
/// then reset the first one into discovery again.
fn discover_and_rediscover(which: &[usize]) -> Result<()> {
    let rack = Rack::new()?;
    let config = format!("{}{}", image::config_line(), rack.full_dhcp_config());
    let server = Anneal::start(&rack, &config)?;
    let work = tempfile::tempdir()?;
    let all = machines(work.path())?;
    let want: Vec<&Expected> = which.iter().map(|&i| &all[i]).collect();
    let mut vms = Vec::new();
    for w in &want {
        vms.push(Machine::start(&rack, w.spec.clone())?);
    }
    let mut records = Vec::new();
    for (w, vm) in want.iter().zip(vms.iter_mut()) {
        let m = wait_discovered(&server, vm, &w.smbios.serial, None)?;
        check_inventory(&m, w).with_context(|| vm.tails())?;
        ensure!(m["enrollments"] == 1, "one enrollment so far: {m:#}");
        eprintln!(
            "{} discovered as {} (boot {})",
            w.spec.name, m["id"], m["boot_id"]
        );
        records.push(m);
    }
    let count = |list: &Value| list.as_array().map(Vec::len);
    let list = server.api_get("/api/v1/machines")?;
    ensure!(
        count(&list) == Some(want.len()),
        "one record per machine: {list:#}"
    );
    // The list shows installed memory (what QEMU was given), not what the OS keeps.
    for w in &want {
        let row = list
            .as_array()
            .and_then(|l| l.iter().find(|m| m["serial"] == w.smbios.serial.as_str()))
            .context("the machine is in the list")?;
        ensure!(
            row["memory_bytes"].as_u64() == Some(u64::from(w.spec.memory_mb) * MIB),
            "memory in the list: {row:#}"
        );
    }

    // Reset the first machine into discovery again: same record, new boot, new enrollment,
    // inventory refreshed.
    let (w, vm, before) = (want[0], &mut vms[0], &records[0]);
    let id = before["id"].as_str().context("id")?;
    server.api_post(&format!("/api/v1/machines/{id}/rediscover"), None)?;
    vm.reset()?;
    let old_at = before["inventory_at"].as_str().context("inventory_at")?;
    let after = wait_discovered(&server, vm, &w.smbios.serial, Some(old_at))?;
    check_inventory(&after, w)?;
    ensure!(after["id"] == before["id"], "same record: {after:#}");
    ensure!(
        after["enrollments"] == 2 && after["boot_id"] != before["boot_id"],
        "a second enrollment from a new boot: before {before:#}\nafter {after:#}"
    );
    let list = server.api_get("/api/v1/machines")?;
    ensure!(
        count(&list) == Some(want.len()),
        "no new record after the reset: {list:#}"
    );
    for vm in vms {
        vm.quit()?;
    }
    Ok(())
}

#[test]
fn bios_and_uefi_machines_are_discovered_then_one_is_rediscovered_after_a_reset() {
    rack_test(
        "bios_and_uefi_machines_are_discovered_then_one_is_rediscovered_after_a_reset",
        &[Need::DiscoveryImage],
        || discover_and_rediscover(&[0, 1]),
    );
}
