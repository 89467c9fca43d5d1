//! One QEMU machine on the rack's bridge: BIOS (SeaBIOS) or UEFI (OVMF, q35, its own copy of
//! the variable store), an e1000 or virtio-net NIC with a fixed MAC, SMBIOS identity, raw
//! disks, the serial console captured to a file, and a QMP socket for power control.
//!
//! Firmware notes (seen on this machine, Debian 12 packages):
//! - `-machine …,graphics=off` with no VGA makes SeaBIOS mirror its text console (and so
//!   iPXE's) to the serial port; OVMF writes its console there anyway.
//! - Every BIOS option ROM QEMU ships here is iPXE, so a BIOS machine's network boot starts
//!   in iPXE. Under OVMF, a virtio-net NIC with an empty `romfile=` runs the firmware's own
//!   PXE client instead (DHCP with option 93 = 7, then TFTP).
//! - Boot order comes from `bootindex` (QEMU's `bootorder` fw_cfg file), honoured by both
//!   SeaBIOS and OVMF; OVMF turns it into Boot#### entries in its fresh variable store.
//! - OVMF makes four boot entries per NIC: PXEv4, PXEv6, HTTPv4, HTTPv6, all at the NIC's
//!   place in the boot order. When network boot hands back to the firmware (`exit 1`, local
//!   boot), OVMF tries the others first: PXEv6 and HTTPv6 each wait about 90 s for a DHCPv6
//!   answer that never comes. Like a provisioning network's firmware set to IPv4 only,
//!   UEFI machines here run with IPv6 off (`opt/org.tianocore/IPv6Support=no`) unless
//!   [`MachineSpec::uefi_ipv6`] is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use tempfile::TempDir;

use super::qmp::Qmp;
use super::slots::Slot;
use super::{system, wait, Rack, BRIDGE};

/// Set to print every machine's console tail when it stops (they print on panics anyway).
pub const SHOW_CONSOLE_ENV: &str = "ANNEAL_RACK_SHOW_CONSOLE";

/// Which firmware the machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS on the `pc` machine type.
    Bios,
    /// OVMF on `q35`.
    Uefi,
}

/// The NIC model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicModel {
    /// Intel e1000.
    E1000,
    /// virtio-net-pci.
    VirtioNet,
}

/// What network boot code the NIC carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NicRom {
    /// QEMU's default option ROM for the model (iPXE, from `ipxe-qemu`).
    Default,
    /// No option ROM (`romfile=`): under OVMF, the firmware's own PXE client runs.
    None,
    /// This ROM file.
    File(PathBuf),
}

/// SMBIOS identity (type 1 system, type 3 chassis).
#[derive(Debug, Clone, Default)]
pub struct Smbios {
    /// System manufacturer.
    pub manufacturer: String,
    /// System product name.
    pub product: String,
    /// System serial number.
    pub serial: String,
    /// System UUID.
    pub uuid: String,
    /// Chassis serial number.
    pub chassis_serial: String,
}

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    /// virtio-blk (PCI).
    Virtio,
    /// NVMe controller with one namespace.
    Nvme,
    /// SATA on an AHCI controller.
    Sata,
}

/// A raw disk image; its size is the file's size.
#[derive(Debug, Clone)]
pub struct Disk {
    /// The image file (raw).
    pub path: PathBuf,
    /// The serial number the guest sees.
    pub serial: String,
    /// How it is attached.
    pub bus: DiskBus,
}

/// Everything about a machine before it starts.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    /// Name (QEMU `-name`, file names).
    pub name: String,
    /// Firmware.
    pub firmware: Firmware,
    /// NIC model.
    pub nic: NicModel,
    /// NIC option ROM.
    pub nic_rom: NicRom,
    /// NIC MAC, `52:54:00:…`.
    pub mac: String,
    /// SMBIOS identity; QEMU's defaults when `None`.
    pub smbios: Option<Smbios>,
    /// Disks, in order.
    pub disks: Vec<Disk>,
    /// Memory in MiB.
    pub memory_mb: u32,
    /// Virtual CPUs.
    pub cpus: u32,
    /// Where the real-time clock starts (QEMU `-rtc base=`, e.g. `2001-01-01`); now if `None`.
    pub rtc_base: Option<String>,
    /// Network before disks in the boot order (else disks first).
    pub network_first: bool,
    /// UEFI only: keep OVMF's IPv6 network stack (PXEv6 and HTTPv6 boot entries).
    pub uefi_ipv6: bool,
    /// Extra QEMU arguments.
    pub extra_args: Vec<String>,
}

impl MachineSpec {
    /// A BIOS machine: SeaBIOS, e1000 with QEMU's iPXE ROM, 256 MiB, network first.
    pub fn bios(mac: &str) -> MachineSpec {
        MachineSpec {
            name: format!("bios-{}", mac.replace(':', "")),
            firmware: Firmware::Bios,
            nic: NicModel::E1000,
            nic_rom: NicRom::Default,
            mac: mac.to_ascii_lowercase(),
            smbios: None,
            disks: Vec::new(),
            memory_mb: 256,
            cpus: 1,
            rtc_base: None,
            network_first: true,
            uefi_ipv6: false,
            extra_args: Vec::new(),
        }
    }

    /// A UEFI machine: OVMF, virtio-net without option ROM (OVMF's own PXE client), 256 MiB,
    /// network first.
    pub fn uefi(mac: &str) -> MachineSpec {
        MachineSpec {
            name: format!("uefi-{}", mac.replace(':', "")),
            firmware: Firmware::Uefi,
            nic: NicModel::VirtioNet,
            nic_rom: NicRom::None,
            ..MachineSpec::bios(mac)
        }
    }

    /// With this SMBIOS identity.
    pub fn with_smbios(mut self, smbios: Smbios) -> MachineSpec {
        self.smbios = Some(smbios);
        self
    }

    /// With one more virtio disk.
    pub fn with_disk(self, path: &Path, serial: &str) -> MachineSpec {
        self.with_disk_on(DiskBus::Virtio, path, serial)
    }

    /// With one more disk on `bus`.
    pub fn with_disk_on(mut self, bus: DiskBus, path: &Path, serial: &str) -> MachineSpec {
        self.disks.push(Disk {
            path: path.to_path_buf(),
            serial: serial.to_string(),
            bus,
        });
        self
    }

    /// The QEMU command line (without the program), given the machine's files.
    pub fn qemu_args(&self, tap: &str, files: &MachineFiles) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        let machine = match self.firmware {
            Firmware::Bios => "pc,graphics=off",
            Firmware::Uefi => "q35,graphics=off",
        };
        push(&["-name", &self.name, "-accel", "tcg", "-machine", machine]);
        push(&["-m", &self.memory_mb.to_string()]);
        push(&["-smp", &self.cpus.to_string()]);
        if let Some(base) = &self.rtc_base {
            push(&["-rtc", &format!("base={base}")]);
        }
        // No default devices, no display: the serial port is the console.
        push(&["-nodefaults", "-no-user-config", "-display", "none"]);
        push(&["-serial", &format!("file:{}", files.serial.display())]);
        push(&[
            "-qmp",
            &format!("unix:{},server=on,wait=off", files.qmp.display()),
        ]);
        if self.firmware == Firmware::Uefi {
            push(&[
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=0,readonly=on,file={}",
                    system::OVMF_CODE
                ),
                "-drive",
                &format!(
                    "if=pflash,format=raw,unit=1,file={}",
                    files.ovmf_vars.display()
                ),
            ]);
            if !self.uefi_ipv6 {
                push(&["-fw_cfg", "name=opt/org.tianocore/IPv6Support,string=no"]);
            }
        }
        let (net_index, disk_base) = if self.network_first {
            (1, 2)
        } else {
            (1 + self.disks.len(), 1)
        };
        push(&[
            "-netdev",
            &format!("tap,id=net0,ifname={tap},script=no,downscript=no"),
        ]);
        let model = match self.nic {
            NicModel::E1000 => "e1000",
            NicModel::VirtioNet => "virtio-net-pci",
        };
        let rom = match &self.nic_rom {
            NicRom::Default => String::new(),
            NicRom::None => ",romfile=".to_string(),
            NicRom::File(p) => format!(",romfile={}", p.display()),
        };
        push(&[
            "-device",
            &format!(
                "{model},netdev=net0,mac={},bootindex={net_index}{rom}",
                self.mac
            ),
        ]);
        if self.disks.iter().any(|d| d.bus == DiskBus::Sata) {
            push(&["-device", "ahci,id=ahci"]);
        }
        for (i, d) in self.disks.iter().enumerate() {
            push(&[
                "-drive",
                &format!(
                    "if=none,id=disk{i},format=raw,file={}",
                    qemu_escape(&d.path.display().to_string())
                ),
            ]);
            let serial = qemu_escape(&d.serial);
            let boot = disk_base + i;
            let device = match d.bus {
                DiskBus::Virtio => {
                    format!("virtio-blk-pci,drive=disk{i},serial={serial},bootindex={boot}")
                }
                DiskBus::Nvme => {
                    format!("nvme,drive=disk{i},serial={serial},bootindex={boot}")
                }
                // One port per SATA disk: ahci.0, ahci.1, …
                DiskBus::Sata => {
                    let port = self.disks[..i]
                        .iter()
                        .filter(|d| d.bus == DiskBus::Sata)
                        .count();
                    format!("ide-hd,drive=disk{i},bus=ahci.{port},serial={serial},bootindex={boot}")
                }
            };
            push(&["-device", &device]);
        }
        if let Some(s) = &self.smbios {
            push(&[
                "-smbios",
                &format!(
                    "type=1,manufacturer={},product={},serial={},uuid={}",
                    qemu_escape(&s.manufacturer),
                    qemu_escape(&s.product),
                    qemu_escape(&s.serial),
                    qemu_escape(&s.uuid)
                ),
                "-smbios",
                &format!("type=3,serial={}", qemu_escape(&s.chassis_serial)),
            ]);
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }
}

/// QEMU option values separate on commas; a literal comma is written twice.
fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// Per-machine files.
#[derive(Debug, Clone)]
pub struct MachineFiles {
    /// Serial console output.
    pub serial: PathBuf,
    /// QMP socket.
    pub qmp: PathBuf,
    /// This machine's copy of the OVMF variable store.
    pub ovmf_vars: PathBuf,
    /// QEMU's own stderr.
    pub stderr: PathBuf,
}

/// A running machine, killed when dropped. Holds one of the process-wide machine slots
/// ([`Slot`]) and borrows its rack, so it always goes before the namespace does.
pub struct Machine<'r> {
    /// What it was started with.
    pub spec: MachineSpec,
    /// Its files.
    pub files: MachineFiles,
    /// Its tap device in the rack's namespace.
    pub tap: String,
    child: Child,
    _dir: TempDir,
    _rack: &'r Rack,
    // Declared last: freed only after the process is gone.
    _slot: Slot,
}

impl<'r> Machine<'r> {
    /// Wait for a machine slot, then start the machine on a new tap on the rack's bridge.
    pub fn start(rack: &'r Rack, spec: MachineSpec) -> Result<Machine<'r>> {
        let slot = Slot::acquire();
        let dir = tempfile::tempdir().context("temp dir for a machine")?;
        let files = MachineFiles {
            serial: dir.path().join("serial.log"),
            qmp: dir.path().join("qmp.sock"),
            ovmf_vars: dir.path().join("OVMF_VARS.fd"),
            stderr: dir.path().join("qemu.stderr"),
        };
        if spec.firmware == Firmware::Uefi {
            // A fresh variable store per machine: OVMF writes boot entries into it.
            std::fs::copy(system::OVMF_VARS, &files.ovmf_vars)
                .with_context(|| format!("copying {}", system::OVMF_VARS))?;
        }
        let tap = rack.netns.next_tap_name();
        rack.netns.add_tap(&tap, BRIDGE)?;
        let child = rack
            .netns
            .command("qemu-system-x86_64")
            .args(spec.qemu_args(&tap, &files))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&files.stderr)?)
            .spawn()
            .context("spawning qemu-system-x86_64")?;
        Ok(Machine {
            spec,
            files,
            tap,
            child,
            _dir: dir,
            _rack: rack,
            _slot: slot,
        })
    }

    /// QEMU's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The serial console output so far.
    pub fn serial_text(&self) -> String {
        wait::read_lossy(&self.files.serial)
    }

    /// The console's and QEMU's last lines, for failure messages.
    pub fn tails(&self) -> String {
        format!(
            "--- serial console of {} (last 40 lines) ---\n{}\n--- qemu stderr ---\n{}",
            self.spec.name,
            wait::tail(&self.serial_text(), 40),
            wait::tail(&wait::read_lossy(&self.files.stderr), 10)
        )
    }

    /// Whether QEMU is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Wait until the serial console shows `needle`. Fails early if QEMU exits.
    pub fn wait_serial(&mut self, needle: &str, deadline: Duration) -> Result<()> {
        let found = wait::until(&format!("`{needle}` on the console"), deadline, || {
            if self.serial_text().contains(needle) {
                return Some(true);
            }
            (!self.is_running()).then_some(false)
        })
        .with_context(|| self.tails())?;
        if !found {
            anyhow::bail!("QEMU exited before `{needle}`\n{}", self.tails());
        }
        Ok(())
    }

    /// A QMP connection (power control and any other QMP command).
    pub fn qmp(&self) -> Result<Qmp> {
        // The socket appears a moment after QEMU starts.
        let qmp = wait::until("the QMP socket", wait::START, || {
            self.files.qmp.exists().then_some(())
        });
        qmp.and_then(|_| Qmp::connect(&self.files.qmp))
    }

    /// Hard reset (the reset button).
    pub fn reset(&self) -> Result<()> {
        self.qmp()?
            .execute("system_reset", serde_json::json!({}))
            .map(|_| ())
    }

    /// Stop QEMU now with QMP `quit` and wait for it to exit. An error says QMP did not
    /// work; the machine is killed (on drop) either way.
    pub fn quit(mut self) -> Result<()> {
        self.qmp()?
            .execute("quit", serde_json::json!({}))
            .or_else(|e| {
                // QEMU may close the socket before answering `quit`.
                if e.to_string().contains("closed") {
                    Ok(serde_json::Value::Null)
                } else {
                    Err(e)
                }
            })?;
        wait::until("QEMU to exit after quit", Duration::from_secs(30), || {
            (!self.is_running()).then_some(())
        })
    }
}

impl Drop for Machine<'_> {
    fn drop(&mut self) {
        // A test that panics shows how far the machine got; so does `ANNEAL_RACK_SHOW_CONSOLE=1`.
        if std::thread::panicking() || std::env::var_os(SHOW_CONSOLE_ENV).is_some() {
            eprintln!("{}", self.tails());
        }
        // Our own child, by PID (ip netns exec became QEMU itself).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
