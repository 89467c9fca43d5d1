//! PCI functions from `/sys/bus/pci/devices`, named from a `pci.ids` file when one is present.

use std::collections::HashMap;
use std::path::PathBuf;

use anneal_shared::inventory::PciDevice;

use super::root::Root;
use super::CollectError;

/// Where distributions keep `pci.ids` (Debian: `/usr/share/misc`, Fedora: `/usr/share/hwdata`).
const PCI_IDS: &[&str] = &["/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids"];

/// Lists the PCI functions under the sysroot.
pub fn collect(root: &Root) -> Result<Vec<PciDevice>, CollectError> {
    let ids = PCI_IDS
        .iter()
        .find_map(|p| root.read_bytes(p).ok())
        .map(|b| PciIds::parse(&String::from_utf8_lossy(&b)))
        .unwrap_or_default();
    let mut devices = Vec::new();
    for address in root.list_dir("/sys/bus/pci/devices")? {
        let dir = PathBuf::from("/sys/bus/pci/devices").join(&address);
        let hex =
            |attr: &str, width: usize| root.attr(dir.join(attr)).and_then(|v| hex_id(&v, width));
        let (Some(vendor_id), Some(device_id)) = (hex("vendor", 4), hex("device", 4)) else {
            continue;
        };
        let class = hex("class", 6).unwrap_or_default();
        let vendor_name = ids.vendor(&vendor_id).map(str::to_string);
        let device_name = ids.device(&vendor_id, &device_id).map(str::to_string);
        devices.push(PciDevice {
            is_gpu: is_gpu_class(&class),
            address,
            subsystem_vendor_id: hex("subsystem_vendor", 4),
            subsystem_device_id: hex("subsystem_device", 4),
            vendor_name,
            device_name,
            driver: root.link_name(dir.join("driver")),
            vendor_id,
            device_id,
            class,
        });
    }
    Ok(devices)
}

/// `0x8086` → `8086`, zero-padded to `width` lower-case digits.
fn hex_id(raw: &str, width: usize) -> Option<String> {
    let digits = raw.trim().trim_start_matches("0x").trim_start_matches("0X");
    let value = u32::from_str_radix(digits, 16).ok()?;
    Some(format!("{value:0width$x}"))
}

/// Display controllers (class 03) and processing accelerators (class 12).
fn is_gpu_class(class: &str) -> bool {
    class.starts_with("03") || class.starts_with("12")
}

/// Vendor and device names from a `pci.ids` file.
#[derive(Debug, Default)]
pub struct PciIds {
    vendors: HashMap<String, (String, HashMap<String, String>)>,
}

impl PciIds {
    /// Parses `pci.ids`, skipping anything it does not understand; class definitions (`C …`)
    /// at the end of the file are not needed.
    pub fn parse(text: &str) -> Self {
        let mut ids = PciIds::default();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with("C ") {
                break;
            }
            if line.starts_with("\t\t") {
                // Subsystem names are not used.
                continue;
            }
            if let Some(rest) = line.strip_prefix('\t') {
                let (Some(vendor), Some((id, name))) = (current.as_ref(), split_id(rest)) else {
                    continue;
                };
                if let Some(entry) = ids.vendors.get_mut(vendor) {
                    entry.1.insert(id, name);
                }
                continue;
            }
            match split_id(line) {
                Some((id, name)) => {
                    ids.vendors.insert(id.clone(), (name, HashMap::new()));
                    current = Some(id);
                }
                None => current = None,
            }
        }
        ids
    }

    /// The vendor's name.
    pub fn vendor(&self, vendor: &str) -> Option<&str> {
        self.vendors.get(vendor).map(|v| v.0.as_str())
    }

    /// The device's name.
    pub fn device(&self, vendor: &str, device: &str) -> Option<&str> {
        self.vendors
            .get(vendor)
            .and_then(|v| v.1.get(device))
            .map(String::as_str)
    }
}

/// `8086  Intel Corporation` → (`8086`, `Intel Corporation`).
fn split_id(line: &str) -> Option<(String, String)> {
    let (id, name) = line.split_once(char::is_whitespace)?;
    if id.len() != 4 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let name = name.trim();
    (!name.is_empty()).then(|| (id.to_ascii_lowercase(), name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDS: &str = "# comment
#\tdevice  device_name
1af4  Red Hat, Inc.
\t1000  Virtio network device
\t\t1af4 0001  Virtio network device
\t1001  Virtio block device
8086  Intel Corporation
\t100e  82540EM Gigabit Ethernet Controller
broken line without id
\tffff  orphan after a broken vendor
10DE  NVIDIA Corporation
\t2330  GH100 [H100 SXM5 80GB]

C 00  Unclassified device
\t00  Non-VGA unclassified device
";

    #[test]
    fn parses_pci_ids() {
        let ids = PciIds::parse(IDS);
        assert_eq!(ids.vendor("1af4"), Some("Red Hat, Inc."));
        assert_eq!(ids.device("1af4", "1001"), Some("Virtio block device"));
        assert_eq!(
            ids.device("8086", "100e"),
            Some("82540EM Gigabit Ethernet Controller")
        );
        assert_eq!(ids.device("8086", "ffff"), None);
        assert_eq!(ids.device("10de", "2330"), Some("GH100 [H100 SXM5 80GB]"));
        assert_eq!(ids.vendor("c 00"), None);
        assert_eq!(ids.vendor("0000"), None);
    }

    #[test]
    fn ids_and_classes() {
        assert_eq!(hex_id("0x8086\n", 4).as_deref(), Some("8086"));
        assert_eq!(hex_id("0x020000", 6).as_deref(), Some("020000"));
        assert_eq!(hex_id("0x0", 4).as_deref(), Some("0000"));
        assert_eq!(hex_id("zz", 4), None);
        assert!(is_gpu_class("030000"));
        assert!(is_gpu_class("120000"));
        assert!(!is_gpu_class("020000"));
    }
}
