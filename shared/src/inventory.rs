//! The hardware inventory an agent reports. Every section is optional: a collector that fails
//! leaves its section empty and records why in [`Inventory::errors`], and the others still report.

use serde::{Deserialize, Serialize};

/// Everything the agent learned about the machine in one pass.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Inventory {
    #[serde(default)]
    pub system: Option<System>,
    #[serde(default)]
    pub baseboard: Option<Baseboard>,
    #[serde(default)]
    pub chassis: Option<Chassis>,
    #[serde(default)]
    pub bios: Option<Bios>,
    #[serde(default)]
    pub cpu: Option<Cpu>,
    #[serde(default)]
    pub memory: Option<Memory>,
    #[serde(default)]
    pub disks: Vec<Disk>,
    #[serde(default)]
    pub nics: Vec<NetInterface>,
    #[serde(default)]
    pub pci: Vec<PciDevice>,
    #[serde(default)]
    pub bmc: Option<Bmc>,
    #[serde(default)]
    pub lldp: Vec<LldpNeighbor>,
    #[serde(default)]
    pub os: Option<OsInfo>,
    /// One entry per collector that failed or was skipped for a reason worth showing.
    #[serde(default)]
    pub errors: Vec<CollectorError>,
}

/// A collector that could not report, and why.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CollectorError {
    /// Collector name, e.g. `smbios`, `disks`, `smart`.
    pub collector: String,
    pub message: String,
}

/// SMBIOS type 1.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct System {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    /// As Linux presents it (lower-case, RFC 4122 text, SMBIOS ≥ 2.6 byte order applied).
    pub uuid: Option<String>,
    pub sku: Option<String>,
    pub family: Option<String>,
}

/// SMBIOS type 2.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Baseboard {
    pub manufacturer: Option<String>,
    pub product: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    pub asset_tag: Option<String>,
}

/// SMBIOS type 3.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Chassis {
    pub manufacturer: Option<String>,
    /// Chassis type as SMBIOS names it (`Rack Mount Chassis`, `Other`, …).
    pub chassis_type: Option<String>,
    pub serial: Option<String>,
    pub asset_tag: Option<String>,
}

/// SMBIOS type 0.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bios {
    pub vendor: Option<String>,
    pub version: Option<String>,
    pub release_date: Option<String>,
}

/// Processors: SMBIOS type 4 sockets plus what `/proc/cpuinfo` says.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cpu {
    /// Model name from `/proc/cpuinfo`.
    pub model: Option<String>,
    /// Logical CPUs the kernel sees.
    pub logical_cpus: u32,
    pub flags: Vec<String>,
    pub sockets: Vec<CpuSocket>,
}

/// One populated processor socket (SMBIOS type 4).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CpuSocket {
    pub designation: Option<String>,
    pub manufacturer: Option<String>,
    pub version: Option<String>,
    pub cores: Option<u32>,
    pub threads: Option<u32>,
    pub max_speed_mhz: Option<u32>,
    pub current_speed_mhz: Option<u32>,
}

/// Memory: total from `/proc/meminfo`, DIMMs from SMBIOS type 17.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Memory {
    /// `MemTotal` from `/proc/meminfo`, in bytes.
    pub total_bytes: u64,
    /// Sum of populated DIMM sizes, in bytes (0 when SMBIOS has no type 17).
    pub installed_bytes: u64,
    pub slots_total: u32,
    pub slots_empty: u32,
    /// Populated slots only.
    pub dimms: Vec<Dimm>,
}

/// One populated memory device (SMBIOS type 17).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Dimm {
    pub locator: Option<String>,
    pub bank_locator: Option<String>,
    pub size_bytes: u64,
    pub memory_type: Option<String>,
    pub speed_mts: Option<u32>,
    pub manufacturer: Option<String>,
    pub serial: Option<String>,
    pub part_number: Option<String>,
}

/// A block device from `/sys/block` (loop, ram and zram excluded).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Disk {
    /// Kernel name, e.g. `sda`, `vda`, `nvme0n1`.
    pub name: String,
    pub size_bytes: u64,
    pub model: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    pub rotational: Option<bool>,
    /// `sata`, `sas`, `nvme`, `virtio`, `usb`, `scsi`, …
    pub transport: Option<String>,
    pub removable: bool,
    pub logical_sector_size: Option<u32>,
    pub physical_sector_size: Option<u32>,
    /// From `smartctl --json`, when smartctl is present.
    pub smart: Option<SmartHealth>,
}

/// SMART summary for one disk.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SmartHealth {
    pub passed: Option<bool>,
    pub power_on_hours: Option<u64>,
    pub temperature_c: Option<i64>,
    /// Why the SMART data is missing or partial (e.g. the device does not support SMART).
    pub message: Option<String>,
}

/// A network interface from `/sys/class/net` (virtual interfaces excluded).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetInterface {
    pub name: String,
    pub mac: String,
    pub driver: Option<String>,
    /// PCI address (`0000:00:03.0`) when the NIC is on PCI.
    pub pci_address: Option<String>,
    /// `pci`, `usb`, `virtio`, … (the bus of the underlying device).
    pub bus: Option<String>,
    pub speed_mbps: Option<u32>,
    pub link_up: Option<bool>,
    pub mtu: Option<u32>,
    /// Addresses in CIDR notation.
    pub addresses: Vec<String>,
}

/// A PCI function from `/sys/bus/pci/devices`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PciDevice {
    pub address: String,
    /// Hex, 4 digits, lower-case, no `0x`.
    pub vendor_id: String,
    pub device_id: String,
    /// Hex, 6 digits (class, subclass, prog-if).
    pub class: String,
    pub subsystem_vendor_id: Option<String>,
    pub subsystem_device_id: Option<String>,
    pub vendor_name: Option<String>,
    pub device_name: Option<String>,
    pub driver: Option<String>,
    /// A display controller (class 03xx) or a 3D/processing accelerator.
    pub is_gpu: bool,
}

/// The baseboard management controller.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Bmc {
    /// SMBIOS type 38 present.
    pub present: bool,
    /// `KCS`, `SMIC`, `BT`, `SSIF` from type 38.
    pub interface_type: Option<String>,
    /// From `ipmitool lan print`.
    pub ip_address: Option<String>,
    pub mac: Option<String>,
}

/// A neighbour heard via LLDP on one of our links.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LldpNeighbor {
    pub interface: String,
    pub chassis_id: Option<String>,
    pub port_id: Option<String>,
    pub system_name: Option<String>,
    pub port_description: Option<String>,
}

/// The running environment.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OsInfo {
    /// `uefi` or `legacy`.
    pub boot_mode: Option<String>,
    pub kernel: Option<String>,
    pub agent_version: Option<String>,
    pub hostname: Option<String>,
    /// `/etc/machine-id`, when the OS has one (installed systems; not the discovery image).
    #[serde(default)]
    pub machine_id: Option<String>,
}

impl Inventory {
    /// Sum of all disk sizes, in bytes.
    pub fn total_disk_bytes(&self) -> u64 {
        self.disks.iter().map(|d| d.size_bytes).sum()
    }
}
