//! Runs the inventory on sysfs/procfs trees captured from real QEMU machines
//! (`scripts/capture-fixture`) and checks every field the QEMU command line determines against
//! `expected.json`, which is written by hand from that command line.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anneal_agent::inventory::{collect, identity_hints, CollectOptions};
use anneal_shared::inventory::Inventory;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Expected {
    system: ExpectedSystem,
    baseboard_manufacturer: Option<String>,
    baseboard_product: Option<String>,
    baseboard_serial: Option<String>,
    chassis_manufacturer: Option<String>,
    chassis_serial: Option<String>,
    chassis_asset_tag: Option<String>,
    bios_vendor: String,
    bios_version: Option<String>,
    boot_mode: String,
    logical_cpus: u32,
    sockets: usize,
    cores_per_socket: u32,
    ram_bytes: u64,
    disks: Vec<ExpectedDisk>,
    nics: Vec<ExpectedNic>,
}

#[derive(Debug, Deserialize)]
struct ExpectedSystem {
    manufacturer: String,
    product: String,
    version: String,
    serial: String,
    uuid: String,
    sku: String,
    family: String,
}

#[derive(Debug, Deserialize)]
struct ExpectedDisk {
    name: String,
    serial: String,
    size_bytes: u64,
    transport: String,
    #[serde(default)]
    model: Option<String>,
}

#[derive(Debug, Deserialize)]
struct ExpectedNic {
    mac: String,
    driver: String,
    pci_address: String,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

async fn inventory_of(name: &str) -> (Inventory, Expected) {
    let dir = fixture(name);
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    let expected: Expected = serde_json::from_str(&text).expect("expected.json parses");
    let inv = collect(&CollectOptions {
        sysroot: dir.join("root"),
        run_tools: false,
        lldp_listen: Duration::ZERO,
        agent_version: "0.0.0-test".into(),
    })
    .await;
    (inv, expected)
}

fn check(name: &str, inv: &Inventory, want: &Expected) {
    assert!(
        inv.errors.is_empty(),
        "{name}: collector errors {:?}",
        inv.errors
    );

    let system = inv.system.as_ref().expect("system");
    let s = &want.system;
    assert_eq!(
        system.manufacturer.as_deref(),
        Some(s.manufacturer.as_str()),
        "{name}"
    );
    assert_eq!(
        system.product.as_deref(),
        Some(s.product.as_str()),
        "{name}"
    );
    assert_eq!(
        system.version.as_deref(),
        Some(s.version.as_str()),
        "{name}"
    );
    assert_eq!(system.serial.as_deref(), Some(s.serial.as_str()), "{name}");
    assert_eq!(system.uuid.as_deref(), Some(s.uuid.as_str()), "{name}");
    assert_eq!(system.sku.as_deref(), Some(s.sku.as_str()), "{name}");
    assert_eq!(system.family.as_deref(), Some(s.family.as_str()), "{name}");

    let board = inv.baseboard.as_ref().expect("baseboard");
    assert_eq!(board.manufacturer, want.baseboard_manufacturer, "{name}");
    assert_eq!(board.product, want.baseboard_product, "{name}");
    assert_eq!(board.serial, want.baseboard_serial, "{name}");
    let chassis = inv.chassis.as_ref().expect("chassis");
    assert_eq!(chassis.manufacturer, want.chassis_manufacturer, "{name}");
    assert_eq!(chassis.serial, want.chassis_serial, "{name}");
    assert_eq!(chassis.asset_tag, want.chassis_asset_tag, "{name}");
    let bios = inv.bios.as_ref().expect("bios");
    assert_eq!(
        bios.vendor.as_deref(),
        Some(want.bios_vendor.as_str()),
        "{name}"
    );
    assert_eq!(bios.version, want.bios_version, "{name}");

    let os = inv.os.as_ref().expect("os");
    assert_eq!(
        os.boot_mode.as_deref(),
        Some(want.boot_mode.as_str()),
        "{name}"
    );
    assert_eq!(os.agent_version.as_deref(), Some("0.0.0-test"));

    let cpu = inv.cpu.as_ref().expect("cpu");
    assert_eq!(cpu.logical_cpus, want.logical_cpus, "{name}");
    assert_eq!(cpu.sockets.len(), want.sockets, "{name}: sockets");
    for socket in &cpu.sockets {
        assert_eq!(
            socket.cores,
            Some(want.cores_per_socket),
            "{name}: {socket:?}"
        );
    }
    assert!(!cpu.flags.is_empty(), "{name}: cpu flags");

    let mem = inv.memory.as_ref().expect("memory");
    assert_eq!(mem.installed_bytes, want.ram_bytes, "{name}: DIMM total");
    assert_eq!(mem.slots_empty, 0, "{name}");
    // The kernel keeps some RAM for itself and firmware reserves some: MemTotal is a bit less.
    assert!(
        mem.total_bytes <= want.ram_bytes && mem.total_bytes >= want.ram_bytes / 100 * 85,
        "{name}: MemTotal {} for {} of RAM",
        mem.total_bytes,
        want.ram_bytes
    );

    let names: Vec<&str> = inv.disks.iter().map(|d| d.name.as_str()).collect();
    let want_names: Vec<&str> = want.disks.iter().map(|d| d.name.as_str()).collect();
    assert_eq!(names, want_names, "{name}: disks");
    for (disk, w) in inv.disks.iter().zip(&want.disks) {
        assert_eq!(
            disk.serial.as_deref(),
            Some(w.serial.as_str()),
            "{name}: {}",
            w.name
        );
        assert_eq!(disk.size_bytes, w.size_bytes, "{name}: {}", w.name);
        assert_eq!(
            disk.transport.as_deref(),
            Some(w.transport.as_str()),
            "{name}: {}",
            w.name
        );
        if let Some(model) = &w.model {
            assert_eq!(disk.model.as_ref(), Some(model), "{name}: {}", w.name);
        }
        assert_eq!(disk.logical_sector_size, Some(512), "{name}: {}", w.name);
        assert!(!disk.removable);
    }

    // Interface names depend on driver probe order, which the command line does not fix: match
    // by MAC. lo (virtual) must not appear.
    assert_eq!(inv.nics.len(), want.nics.len(), "{name}: {:?}", inv.nics);
    for w in &want.nics {
        let nic = inv
            .nics
            .iter()
            .find(|n| n.mac == w.mac)
            .unwrap_or_else(|| panic!("{name}: no NIC with MAC {}", w.mac));
        assert_eq!(
            nic.driver.as_deref(),
            Some(w.driver.as_str()),
            "{name}: {}",
            w.mac
        );
        assert_eq!(
            nic.pci_address.as_deref(),
            Some(w.pci_address.as_str()),
            "{name}: {}",
            w.mac
        );
        assert_eq!(nic.bus.as_deref(), Some("pci"), "{name}: {}", w.mac);
        assert!(nic.addresses.is_empty(), "fixtures have no live addresses");
    }

    // Every NIC and disk controller shows up as a PCI function too.
    for w in &want.nics {
        assert!(
            inv.pci.iter().any(|p| p.address == w.pci_address),
            "{name}: {} missing from pci",
            w.pci_address
        );
    }
    assert!(
        inv.pci.iter().all(|p| !p.is_gpu),
        "{name}: no GPU configured"
    );

    let hints = identity_hints(inv);
    assert_eq!(hints.system_uuid.as_deref(), Some(s.uuid.as_str()));
    assert_eq!(hints.system_serial.as_deref(), Some(s.serial.as_str()));
    assert_eq!(hints.chassis_serial, want.chassis_serial);
    assert_eq!(hints.baseboard_serial, want.baseboard_serial);
    let mut macs: Vec<&str> = hints.macs.iter().map(|m| m.mac.as_str()).collect();
    macs.sort();
    let mut want_macs: Vec<&str> = want.nics.iter().map(|n| n.mac.as_str()).collect();
    want_macs.sort();
    assert_eq!(macs, want_macs);
    assert!(hints.macs.iter().all(|m| m.bus.as_deref() == Some("pci")));
}

/// Cross-check the UUID against what the capturing kernel itself put in `product_uuid`.
fn check_uuid_against_kernel(name: &str, inv: &Inventory) {
    let path = fixture(name).join("root/sys/devices/virtual/dmi/id/product_uuid");
    let kernel = std::fs::read_to_string(path).expect("product_uuid in fixture");
    assert_eq!(
        inv.system.as_ref().and_then(|s| s.uuid.as_deref()),
        Some(kernel.trim()),
        "{name}"
    );
}

#[tokio::test]
async fn bios_e1000() {
    let (inv, want) = inventory_of("bios-e1000").await;
    check("bios-e1000", &inv, &want);
    check_uuid_against_kernel("bios-e1000", &inv);
    let e1000 = inv
        .nics
        .iter()
        .find(|n| n.driver.as_deref() == Some("e1000"));
    assert_eq!(e1000.and_then(|n| n.speed_mbps), Some(1000));
}

#[tokio::test]
async fn uefi_virtio() {
    let (inv, want) = inventory_of("uefi-virtio").await;
    check("uefi-virtio", &inv, &want);
    check_uuid_against_kernel("uefi-virtio", &inv);
    let nvme = inv.disks.iter().find(|d| d.name == "nvme0n1");
    assert_eq!(nvme.and_then(|d| d.rotational), Some(false));
}
