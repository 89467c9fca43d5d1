//! SMBIOS tables from `/sys/firmware/dmi/tables` (the kernel's copy; no `/dev/mem`, no dmidecode).

use anneal_shared::inventory::{Baseboard, Bios, Bmc, Chassis, CpuSocket, Dimm, System};
use smbioslib::{
    CoreCount, CoreCount2, IpmiInterfaceType, MemorySize, MemorySizeExtended, MemorySpeed,
    MemorySpeedExtended, ProcessorSpeed, SMBiosBaseboardInformation, SMBiosData, SMBiosInformation,
    SMBiosIpmiDeviceInformation, SMBiosMemoryDevice, SMBiosProcessorInformation, SMBiosString,
    SMBiosSystemChassisInformation, SMBiosSystemInformation, SMBiosVersion, SystemUuidData,
    ThreadCount, ThreadCount2,
};

use super::root::Root;
use super::CollectError;

const ENTRY_POINT: &str = "/sys/firmware/dmi/tables/smbios_entry_point";
const TABLE: &str = "/sys/firmware/dmi/tables/DMI";

/// Everything the inventory takes from SMBIOS.
#[derive(Debug, Clone, Default)]
pub struct SmbiosInfo {
    /// Type 1.
    pub system: Option<System>,
    /// Type 2.
    pub baseboard: Option<Baseboard>,
    /// Type 3.
    pub chassis: Option<Chassis>,
    /// Type 0.
    pub bios: Option<Bios>,
    /// Populated processor sockets.
    pub sockets: Vec<CpuSocket>,
    /// Memory devices; `None` when the table has no type 17 at all.
    pub memory: Option<SmbiosMemory>,
    /// Type 38; `present: false` when the table has none.
    pub bmc: Bmc,
}

/// Memory devices (type 17).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SmbiosMemory {
    /// Every type 17 entry, populated or not.
    pub slots_total: u32,
    /// Entries whose size says "not installed".
    pub slots_empty: u32,
    /// Populated entries.
    pub dimms: Vec<Dimm>,
}

/// Reads and decodes the SMBIOS tables under the sysroot.
pub fn collect(root: &Root) -> Result<SmbiosInfo, CollectError> {
    let table = root.read_bytes(TABLE)?;
    // Without the entry point the version is unknown; every table this agent meets is ≥ 2.6.
    let version = root
        .read_bytes(ENTRY_POINT)
        .ok()
        .and_then(|raw| entry_point_version(raw).ok());
    if table.is_empty() {
        return Err(CollectError::Invalid(format!("{TABLE} is empty")));
    }
    Ok(decode(table, version))
}

/// The SMBIOS version from an entry point (64-bit `_SM3_` or 32-bit `_SM_`).
///
/// Parsed here rather than by smbios-lib, whose 32-bit parser indexes past the end of some
/// malformed entry points; a panic would abort the static agent.
pub fn entry_point_version(raw: Vec<u8>) -> Result<SMBiosVersion, CollectError> {
    // (anchor, offset of the length byte, offset of major, minor, docrev if any)
    let (length_at, major_at, minor_at, docrev_at) = if raw.starts_with(b"_SM3_") {
        (6, 7, 8, Some(9))
    } else if raw.starts_with(b"_SM_") {
        (5, 6, 7, None)
    } else {
        return Err(CollectError::Invalid(
            "SMBIOS entry point has neither an _SM_ nor an _SM3_ anchor".into(),
        ));
    };
    let byte = |i: usize| {
        raw.get(i).copied().ok_or_else(|| {
            CollectError::Invalid(format!(
                "SMBIOS entry point is truncated ({} bytes)",
                raw.len()
            ))
        })
    };
    let length = byte(length_at)? as usize;
    let covered = raw
        .get(..length)
        .filter(|c| c.len() > minor_at)
        .ok_or_else(|| {
            CollectError::Invalid(format!(
                "SMBIOS entry point length {length} does not fit its {} bytes",
                raw.len()
            ))
        })?;
    if covered.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 {
        return Err(CollectError::Invalid(
            "SMBIOS entry point checksum mismatch".into(),
        ));
    }
    let docrev = match docrev_at {
        Some(i) => byte(i)?,
        None => 0,
    };
    Ok(SMBiosVersion::new(byte(major_at)?, byte(minor_at)?, docrev))
}

/// Decodes a raw structure table.
pub fn decode(table: Vec<u8>, version: Option<SMBiosVersion>) -> SmbiosInfo {
    let data = SMBiosData::from_vec_and_version(table, version);
    // SMBIOS 2.6 changed the UUID's first three fields to little-endian.
    let uuid_le = version.is_none_or(|v| (v.major, v.minor) >= (2, 6));

    let system = data.first::<SMBiosSystemInformation>().map(|s| System {
        manufacturer: text(s.manufacturer()),
        product: text(s.product_name()),
        version: text(s.version()),
        serial: text(s.serial_number()),
        uuid: match s.uuid() {
            Some(SystemUuidData::Uuid(u)) => Some(format_uuid(&u.raw, uuid_le)),
            _ => None,
        },
        sku: text(s.sku_number()),
        family: text(s.family()),
    });
    let baseboard = data
        .first::<SMBiosBaseboardInformation>()
        .map(|b| Baseboard {
            manufacturer: text(b.manufacturer()),
            product: text(b.product()),
            version: text(b.version()),
            serial: text(b.serial_number()),
            asset_tag: text(b.asset_tag()),
        });
    let chassis = data
        .first::<SMBiosSystemChassisInformation>()
        .map(|c| Chassis {
            manufacturer: text(c.manufacturer()),
            chassis_type: c.chassis_type().and_then(|t| chassis_type_name(t.raw)),
            serial: text(c.serial_number()),
            asset_tag: text(c.asset_tag_number()),
        });
    let bios = data.first::<SMBiosInformation>().map(|b| Bios {
        vendor: text(b.vendor()),
        version: text(b.version()),
        release_date: text(b.release_date()),
    });

    let sockets = data
        .collect::<SMBiosProcessorInformation>()
        .iter()
        .filter(|p| p.status().is_some_and(|s| s.socket_populated()))
        .map(socket)
        .collect();

    let devices = data.collect::<SMBiosMemoryDevice>();
    let memory = (!devices.is_empty()).then(|| {
        let mut mem = SmbiosMemory {
            slots_total: devices.len() as u32,
            ..Default::default()
        };
        for dev in &devices {
            match dimm_size(dev) {
                Some(0) => mem.slots_empty += 1,
                size => mem.dimms.push(dimm(dev, size.unwrap_or(0))),
            }
        }
        mem
    });

    let bmc = match data.first::<SMBiosIpmiDeviceInformation>() {
        Some(ipmi) => Bmc {
            present: true,
            interface_type: ipmi.interface_type().and_then(|t| match t.value {
                IpmiInterfaceType::KeyboardControllerStyle => Some("KCS".to_string()),
                IpmiInterfaceType::ServerManagementInterfaceChip => Some("SMIC".to_string()),
                IpmiInterfaceType::BlockTransfer => Some("BT".to_string()),
                IpmiInterfaceType::SMBusSystemInterface => Some("SSIF".to_string()),
                IpmiInterfaceType::Unknown => None,
                IpmiInterfaceType::None => Some(format!("type {}", t.raw)),
            }),
            ..Default::default()
        },
        None => Bmc::default(),
    };

    SmbiosInfo {
        system,
        baseboard,
        chassis,
        bios,
        sockets,
        memory,
        bmc,
    }
}

/// A string field, trimmed; empty or missing → `None`.
fn text(s: SMBiosString) -> Option<String> {
    s.to_utf8_lossy()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// The UUID as Linux's `product_uuid` shows it: lower-case; for SMBIOS ≥ 2.6 the first three
/// fields are stored little-endian and are swapped for display.
pub fn format_uuid(raw: &[u8; 16], little_endian: bool) -> String {
    let mut b = *raw;
    if little_endian {
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
    }
    let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        hex[0..4].concat(),
        hex[4..6].concat(),
        hex[6..8].concat(),
        hex[8..10].concat(),
        hex[10..16].concat()
    )
}

/// One populated processor socket.
fn socket(p: &SMBiosProcessorInformation) -> CpuSocket {
    let cores = match p.core_count() {
        Some(CoreCount::Count(n)) => Some(u32::from(n)),
        Some(CoreCount::SeeCoreCount2) => match p.core_count_2() {
            Some(CoreCount2::Count(n)) => Some(u32::from(n)),
            _ => None,
        },
        _ => None,
    };
    let threads = match p.thread_count() {
        Some(ThreadCount::Count(n)) => Some(u32::from(n)),
        Some(ThreadCount::SeeThreadCount2) => match p.thread_count_2() {
            Some(ThreadCount2::Count(n)) => Some(u32::from(n)),
            _ => None,
        },
        _ => None,
    };
    let mhz = |s: Option<ProcessorSpeed>| match s {
        Some(ProcessorSpeed::MHz(n)) => Some(u32::from(n)),
        _ => None,
    };
    CpuSocket {
        designation: text(p.socket_designation()),
        manufacturer: text(p.processor_manufacturer()),
        version: text(p.processor_version()),
        cores,
        threads,
        max_speed_mhz: mhz(p.max_speed()),
        current_speed_mhz: mhz(p.current_speed()),
    }
}

/// Size in bytes: `Some(0)` for an empty slot, `None` when unknown.
fn dimm_size(dev: &SMBiosMemoryDevice) -> Option<u64> {
    const MIB: u64 = 1024 * 1024;
    match dev.size()? {
        MemorySize::NotInstalled => Some(0),
        MemorySize::Unknown => None,
        MemorySize::Kilobytes(k) => Some(u64::from(k) * 1024),
        MemorySize::Megabytes(m) => Some(u64::from(m) * MIB),
        MemorySize::SeeExtendedSize => match dev.extended_size()? {
            MemorySizeExtended::Megabytes(m) => Some(u64::from(m) * MIB),
            MemorySizeExtended::SeeSize => None,
        },
    }
}

/// One populated memory device.
fn dimm(dev: &SMBiosMemoryDevice, size_bytes: u64) -> Dimm {
    let speed_mts = match dev.speed() {
        Some(MemorySpeed::MTs(n)) => Some(u32::from(n)),
        Some(MemorySpeed::SeeExtendedSpeed) => match dev.extended_speed() {
            Some(MemorySpeedExtended::MTs(n)) => Some(n),
            _ => None,
        },
        _ => None,
    };
    Dimm {
        locator: text(dev.device_locator()),
        bank_locator: text(dev.bank_locator()),
        size_bytes,
        memory_type: dev.memory_type().and_then(|t| memory_type_name(t.raw)),
        speed_mts,
        manufacturer: text(dev.manufacturer()),
        serial: text(dev.serial_number()),
        part_number: text(dev.part_number()),
    }
}

/// Chassis type names as the SMBIOS specification (7.4.1) spells them.
fn chassis_type_name(raw: u8) -> Option<String> {
    let name = match raw & 0x7f {
        0x01 => "Other",
        0x02 => return None,
        0x03 => "Desktop",
        0x04 => "Low Profile Desktop",
        0x05 => "Pizza Box",
        0x06 => "Mini Tower",
        0x07 => "Tower",
        0x08 => "Portable",
        0x09 => "Laptop",
        0x0a => "Notebook",
        0x0b => "Hand Held",
        0x0c => "Docking Station",
        0x0d => "All in One",
        0x0e => "Sub Notebook",
        0x0f => "Space-saving",
        0x10 => "Lunch Box",
        0x11 => "Main Server Chassis",
        0x12 => "Expansion Chassis",
        0x13 => "SubChassis",
        0x14 => "Bus Expansion Chassis",
        0x15 => "Peripheral Chassis",
        0x16 => "RAID Chassis",
        0x17 => "Rack Mount Chassis",
        0x18 => "Sealed-case PC",
        0x19 => "Multi-system chassis",
        0x1a => "Compact PCI",
        0x1b => "Advanced TCA",
        0x1c => "Blade",
        0x1d => "Blade Enclosure",
        0x1e => "Tablet",
        0x1f => "Convertible",
        0x20 => "Detachable",
        0x21 => "IoT Gateway",
        0x22 => "Embedded PC",
        0x23 => "Mini PC",
        0x24 => "Stick PC",
        0 => return None,
        other => return Some(format!("type {other:#04x}")),
    };
    Some(name.to_string())
}

/// Memory type names as the SMBIOS specification (7.18.2) spells them.
fn memory_type_name(raw: u8) -> Option<String> {
    let name = match raw {
        0x01 => "Other",
        0x02 => return None,
        0x03 => "DRAM",
        0x04 => "EDRAM",
        0x05 => "VRAM",
        0x06 => "SRAM",
        0x07 => "RAM",
        0x08 => "ROM",
        0x09 => "Flash",
        0x0a => "EEPROM",
        0x0b => "FEPROM",
        0x0c => "EPROM",
        0x0d => "CDRAM",
        0x0e => "3DRAM",
        0x0f => "SDRAM",
        0x10 => "SGRAM",
        0x11 => "RDRAM",
        0x12 => "DDR",
        0x13 => "DDR2",
        0x14 => "DDR2 FB-DIMM",
        0x18 => "DDR3",
        0x19 => "FBD2",
        0x1a => "DDR4",
        0x1b => "LPDDR",
        0x1c => "LPDDR2",
        0x1d => "LPDDR3",
        0x1e => "LPDDR4",
        0x1f => "Logical non-volatile device",
        0x20 => "HBM",
        0x21 => "HBM2",
        0x22 => "DDR5",
        0x23 => "LPDDR5",
        0x24 => "HBM3",
        0 => return None,
        other => return Some(format!("type {other:#04x}")),
    };
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_byte_order_follows_the_version() {
        let raw = [
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff,
        ];
        assert_eq!(
            format_uuid(&raw, true),
            "00112233-4455-6677-8899-aabbccddeeff"
        );
        assert_eq!(
            format_uuid(&raw, false),
            "33221100-5544-7766-8899-aabbccddeeff"
        );
    }

    /// A type 1 structure followed by its strings, then end-of-table.
    fn table_with_system(uuid: [u8; 16]) -> Vec<u8> {
        // Version (string 0) is absent; the other strings are numbered in order.
        let mut t = vec![1u8, 0x1b, 0x00, 0x01, 1, 2, 0, 3];
        t.extend_from_slice(&uuid);
        t.extend_from_slice(&[0x06, 4, 5]); // wake-up type, SKU, family
        t.extend_from_slice(b"Maker\0Box\0SN-1\0SKU-9\0Fam\0\0");
        t.extend_from_slice(&[127, 4, 0xff, 0xff, 0, 0]);
        t
    }

    #[test]
    fn decodes_system_and_drops_empty_strings() {
        let uuid = [
            0x78, 0x56, 0x34, 0x12, 0x34, 0x12, 0x78, 0x56, 0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc,
            0xde, 0xf0,
        ];
        let info = decode(table_with_system(uuid), Some(SMBiosVersion::new(2, 8, 0)));
        let s = info.system.unwrap();
        assert_eq!(s.manufacturer.as_deref(), Some("Maker"));
        assert_eq!(s.product.as_deref(), Some("Box"));
        assert_eq!(s.version, None);
        assert_eq!(s.serial.as_deref(), Some("SN-1"));
        assert_eq!(s.sku.as_deref(), Some("SKU-9"));
        assert_eq!(s.family.as_deref(), Some("Fam"));
        assert_eq!(
            s.uuid.as_deref(),
            Some("12345678-1234-5678-1234-56789abcdef0")
        );
        assert!(!info.bmc.present);
        assert!(info.memory.is_none());

        let zero = decode(table_with_system([0; 16]), None);
        assert_eq!(zero.system.unwrap().uuid, None);
    }

    /// A structure: formatted area (type, length and handle are filled in) plus strings.
    fn structure(kind: u8, handle: u16, body: &[u8], strings: &[&str]) -> Vec<u8> {
        let mut s = vec![kind, (4 + body.len()) as u8];
        s.extend_from_slice(&handle.to_le_bytes());
        s.extend_from_slice(body);
        if strings.is_empty() {
            s.extend_from_slice(&[0, 0]);
        } else {
            for text in strings {
                s.extend_from_slice(text.as_bytes());
                s.push(0);
            }
            s.push(0);
        }
        s
    }

    /// Type 4 body (SMBIOS 2.6 layout, 0x2a bytes in all).
    fn processor(status: u8, cores: u8, threads: u8) -> Vec<u8> {
        // Offsets as in the specification; the header is cut off at the end.
        let mut b = vec![0u8; 0x2a];
        b[0x04] = 1; // socket designation
        b[0x05] = 3; // central processor
        b[0x07] = 2; // manufacturer
        b[0x10] = 3; // version
        b[0x14..0x16].copy_from_slice(&3500u16.to_le_bytes());
        b[0x16..0x18].copy_from_slice(&2400u16.to_le_bytes());
        b[0x18] = status;
        b[0x23] = cores;
        b[0x25] = threads;
        b.split_off(4)
    }

    /// Type 17 body (SMBIOS 2.7 layout, 0x22 bytes in all).
    fn memory_device(size: u16, extended_mb: u32, kind: u8, speed: u16) -> Vec<u8> {
        let mut b = vec![0u8; 0x22];
        b[0x0c..0x0e].copy_from_slice(&size.to_le_bytes());
        b[0x10] = 1; // device locator
        b[0x11] = 2; // bank locator
        b[0x12] = kind;
        b[0x15..0x17].copy_from_slice(&speed.to_le_bytes());
        if size != 0 {
            b[0x17] = 3; // manufacturer
            b[0x18] = 4; // serial
            b[0x1a] = 5; // part number
        }
        b[0x1c..0x20].copy_from_slice(&extended_mb.to_le_bytes());
        b.split_off(4)
    }

    #[test]
    fn decodes_sockets_dimms_and_ipmi() {
        let mut t = Vec::new();
        t.extend(structure(
            4,
            0x400,
            &processor(0x41, 16, 32),
            &["CPU1", "Intel", "Xeon Test"],
        ));
        t.extend(structure(4, 0x401, &processor(0x00, 0, 0), &["CPU2"]));
        t.extend(structure(
            17,
            0x1100,
            &memory_device(0x7fff, 64 * 1024, 0x1a, 3200),
            &["DIMM_A1", "NODE 0", "Samsung", "S3R1AL", "M393A8G40AB2"],
        ));
        t.extend(structure(
            17,
            0x1101,
            &memory_device(0, 0, 0x02, 0),
            &["DIMM_A2", "NODE 0"],
        ));
        t.extend(structure(
            17,
            0x1102,
            &memory_device(16384, 0, 0x22, 4800),
            &["DIMM_B1", "NODE 1", "Micron", "MU-1", "MTC20F"],
        ));
        let mut ipmi = vec![0u8; 0x12 - 4];
        ipmi[0] = 1; // KCS
        ipmi[1] = 0x20;
        t.extend(structure(38, 0x2600, &ipmi, &[]));
        t.extend(structure(127, 0xffff, &[], &[]));

        let info = decode(t, Some(SMBiosVersion::new(3, 2, 0)));
        assert_eq!(info.sockets.len(), 1, "only populated sockets");
        let cpu = &info.sockets[0];
        assert_eq!(cpu.designation.as_deref(), Some("CPU1"));
        assert_eq!(cpu.version.as_deref(), Some("Xeon Test"));
        assert_eq!((cpu.cores, cpu.threads), (Some(16), Some(32)));
        assert_eq!(
            (cpu.max_speed_mhz, cpu.current_speed_mhz),
            (Some(3500), Some(2400))
        );

        let mem = info.memory.unwrap();
        assert_eq!((mem.slots_total, mem.slots_empty), (3, 1));
        assert_eq!(mem.dimms.len(), 2);
        let a1 = &mem.dimms[0];
        assert_eq!(a1.size_bytes, 64 << 30, "extended size");
        assert_eq!(a1.memory_type.as_deref(), Some("DDR4"));
        assert_eq!(a1.speed_mts, Some(3200));
        assert_eq!(a1.locator.as_deref(), Some("DIMM_A1"));
        assert_eq!(a1.bank_locator.as_deref(), Some("NODE 0"));
        assert_eq!(a1.manufacturer.as_deref(), Some("Samsung"));
        assert_eq!(a1.serial.as_deref(), Some("S3R1AL"));
        assert_eq!(a1.part_number.as_deref(), Some("M393A8G40AB2"));
        assert_eq!(mem.dimms[1].size_bytes, 16 << 30);
        assert_eq!(mem.dimms[1].memory_type.as_deref(), Some("DDR5"));

        assert!(info.bmc.present);
        assert_eq!(info.bmc.interface_type.as_deref(), Some("KCS"));
    }

    #[test]
    fn garbage_does_not_panic() {
        let _ = decode(vec![0xff; 7], None);
        let _ = decode(vec![4, 0xff, 0, 0, 1, 2, 3], None);
        assert!(entry_point_version(b"_SM_xx".to_vec()).is_err());
    }
}
