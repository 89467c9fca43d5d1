//! Block devices from `/sys/block`: every whole disk with a backing device, mounted or not.

use std::path::{Component, Path, PathBuf};

use anneal_shared::inventory::Disk;

use super::root::Root;
use super::CollectError;

/// Name prefixes of purely virtual block devices (md arrays are left out for now too: they are
/// built from disks that are listed themselves).
const VIRTUAL_PREFIXES: &[&str] = &["loop", "ram", "zram", "dm-", "md", "nbd"];

/// Lists the disks under the sysroot.
pub fn collect(root: &Root) -> Result<Vec<Disk>, CollectError> {
    let mut disks = Vec::new();
    for name in root.list_dir("/sys/block")? {
        if VIRTUAL_PREFIXES.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let dir = PathBuf::from("/sys/block").join(&name);
        // Devices without a `device` link are virtual (e.g. a ublk or a brd disk).
        if !root.is_link(dir.join("device")) {
            continue;
        }
        disks.push(read_disk(root, &name, &dir));
    }
    Ok(disks)
}

/// Reads one disk's attributes; anything missing stays `None`.
fn read_disk(root: &Root, name: &str, dir: &Path) -> Disk {
    let device = dir.join("device");
    let device_path = root.resolve(dir);
    let bool_attr = |p: PathBuf| root.attr(p).map(|v| v == "1");
    let serial = root
        .attr(dir.join("serial"))
        .or_else(|| root.attr(device.join("serial")))
        .or_else(|| {
            root.read_bytes(device.join("vpd_pg80"))
                .ok()
                .and_then(|b| parse_vpd_serial(&b))
        });
    Disk {
        name: name.to_string(),
        // `size` counts 512-byte sectors whatever the device's own sector size.
        size_bytes: root
            .attr_u64(dir.join("size"))
            .and_then(|s| s.checked_mul(512))
            .unwrap_or(0),
        model: root.attr(device.join("model")),
        serial,
        wwn: root
            .attr(dir.join("wwid"))
            .or_else(|| root.attr(device.join("wwid"))),
        rotational: bool_attr(dir.join("queue/rotational")),
        transport: transport(root, name, &device_path),
        removable: bool_attr(dir.join("removable")).unwrap_or(false),
        logical_sector_size: root
            .attr_u64(dir.join("queue/logical_block_size"))
            .and_then(|v| u32::try_from(v).ok()),
        physical_sector_size: root
            .attr_u64(dir.join("queue/physical_block_size"))
            .and_then(|v| u32::try_from(v).ok()),
        smart: None,
    }
}

/// The unit serial number from SCSI VPD page 0x80 (what libata reports for SATA disks too).
pub fn parse_vpd_serial(page: &[u8]) -> Option<String> {
    if page.len() < 4 || page[1] != 0x80 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([page[2], page[3]]));
    let body = page.get(4..4 + len).unwrap_or(&page[4..]);
    let text: String = String::from_utf8_lossy(body)
        .trim_matches(|c: char| c.is_whitespace() || c == '\0')
        .to_string();
    (!text.is_empty()).then_some(text)
}

/// The transport, from the path of the block device in `/sys/devices`.
fn transport(root: &Root, name: &str, path: &Path) -> Option<String> {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    let has = |pred: &dyn Fn(&str) -> bool| parts.iter().any(|p| pred(p));
    let numbered = |p: &str, prefix: &str| {
        p.strip_prefix(prefix)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()))
    };
    let t = if name.starts_with("nvme") || has(&|p| p == "nvme" || p.starts_with("nvme-subsys")) {
        "nvme"
    } else if has(&|p| numbered(p, "usb")) {
        "usb"
    } else if has(&|p| p.starts_with("end_device-") || p.starts_with("expander-")) {
        "sas"
    } else if has(&|p| numbered(p, "ata")) {
        // libata serves both SATA (AHCI) and parallel ATA; the controller's class tells them apart.
        if controller_class(root, &parts).is_some_and(|c| c.starts_with("0x0106")) {
            "sata"
        } else {
            "ata"
        }
    } else if has(&|p| numbered(p, "host")) && has(&|p| p.starts_with("target")) {
        "scsi"
    } else if has(&|p| numbered(p, "virtio")) {
        "virtio"
    } else if has(&|p| numbered(p, "mmc") || p.starts_with("mmc_host")) {
        "mmc"
    } else {
        return None;
    };
    Some(t.to_string())
}

/// The PCI class of the nearest PCI function above a device.
fn controller_class(root: &Root, parts: &[String]) -> Option<String> {
    let last_pci = parts.iter().rposition(|p| is_pci_address(p))?;
    let mut dir = PathBuf::from("/");
    dir.extend(&parts[..=last_pci]);
    root.attr(dir.join("class"))
}

/// Whether `s` looks like `0000:00:1f.2`.
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && b.iter()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vpd_serial() {
        let mut page = vec![0x00, 0x80, 0x00, 0x0c];
        page.extend_from_slice(b"  SATA-0001 \0");
        assert_eq!(parse_vpd_serial(&page).as_deref(), Some("SATA-0001"));
        assert_eq!(parse_vpd_serial(&[0, 0x83, 0, 0]), None);
        assert_eq!(parse_vpd_serial(&[0, 0x80, 0, 0]), None);
        assert_eq!(parse_vpd_serial(&[0, 0x80]), None);
    }

    #[test]
    fn transport_from_paths() {
        let root = Root::new("/nonexistent-sysroot");
        let t = |name: &str, p: &str| transport(&root, name, Path::new(p));
        assert_eq!(
            t(
                "vda",
                "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda"
            )
            .as_deref(),
            Some("virtio")
        );
        assert_eq!(
            t(
                "nvme0n1",
                "/sys/devices/pci0000:00/0000:00:05.0/nvme/nvme0/nvme0n1"
            )
            .as_deref(),
            Some("nvme")
        );
        assert_eq!(
            t(
                "sdb",
                "/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host4/target4:0:0/4:0:0:0/block/sdb"
            )
            .as_deref(),
            Some("usb")
        );
        assert_eq!(
            t(
                "sda",
                "/sys/devices/pci0000:00/0000:00:05.0/virtio2/host2/target2:0:0/2:0:0:0/block/sda"
            )
            .as_deref(),
            Some("scsi")
        );
        // No class file in this sysroot: libata without a known SATA controller.
        assert_eq!(
            t(
                "sda",
                "/sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda"
            )
            .as_deref(),
            Some("ata")
        );
        assert!(is_pci_address("0000:00:1f.2"));
        assert!(!is_pci_address("pci0000:00"));
    }
}
