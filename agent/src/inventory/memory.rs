//! Memory: `MemTotal` from `/proc/meminfo`, DIMMs from SMBIOS type 17.

use anneal_shared::inventory::Memory;

use super::root::Root;
use super::smbios::SmbiosMemory;
use super::CollectError;

/// Reads `MemTotal` (bytes) from `/proc/meminfo` under the sysroot.
pub fn read_mem_total(root: &Root) -> Result<u64, CollectError> {
    let text = root.read_string("/proc/meminfo")?;
    parse_mem_total(&text)
        .ok_or_else(|| CollectError::Invalid("/proc/meminfo has no MemTotal".into()))
}

/// `MemTotal` in bytes from the text of `/proc/meminfo`.
pub fn parse_mem_total(text: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        let mut parts = rest.split_whitespace();
        let value: u64 = parts.next()?.parse().ok()?;
        match parts.next() {
            Some("kB") | None => value.checked_mul(1024),
            Some(_) => None,
        }
    })
}

/// Combines the kernel's total and the SMBIOS memory devices; `None` only when both are missing.
pub fn merge(total: Option<u64>, devices: Option<SmbiosMemory>) -> Option<Memory> {
    if total.is_none() && devices.is_none() {
        return None;
    }
    let devices = devices.unwrap_or_default();
    Some(Memory {
        total_bytes: total.unwrap_or(0),
        installed_bytes: devices.dimms.iter().map(|d| d.size_bytes).sum(),
        slots_total: devices.slots_total,
        slots_empty: devices.slots_empty,
        dimms: devices.dimms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anneal_shared::inventory::Dimm;

    #[test]
    fn parses_meminfo() {
        let text = "MemTotal:        1004300 kB\nMemFree:          900000 kB\n";
        assert_eq!(parse_mem_total(text), Some(1_004_300 * 1024));
        assert_eq!(parse_mem_total("MemFree: 1 kB\n"), None);
        assert_eq!(parse_mem_total("MemTotal: lots kB\n"), None);
    }

    #[test]
    fn merge_sums_dimms() {
        let dimm = |gib: u64| Dimm {
            size_bytes: gib << 30,
            ..Default::default()
        };
        let mem = merge(
            Some(3 << 30),
            Some(SmbiosMemory {
                slots_total: 4,
                slots_empty: 2,
                dimms: vec![dimm(2), dimm(2)],
            }),
        )
        .unwrap();
        assert_eq!(mem.installed_bytes, 4 << 30);
        assert_eq!(mem.slots_empty, 2);
        assert_eq!(merge(None, None), None);
    }
}
