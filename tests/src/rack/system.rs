//! What a system test needs from the machine, and what happens when something is missing:
//! the test is skipped with the reason printed, unless `ANNEAL_REQUIRE_SYSTEM_TESTS=1` (CI),
//! where a missing requirement fails the test instead — a green CI run must have booted.

use std::path::Path;
use std::process::{Command, Stdio};

/// Debian's iPXE binaries (`ipxe` package), served over TFTP.
pub const IPXE_DIR: &str = "/usr/lib/ipxe";
/// OVMF firmware code (read-only, shared).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
/// OVMF variable store template; each machine gets its own copy.
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Set to `1` to turn skips into failures.
pub const REQUIRE_ENV: &str = "ANNEAL_REQUIRE_SYSTEM_TESTS";

/// One requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Root (network namespaces, taps).
    Root,
    /// `ip` from iproute2.
    Iproute2,
    /// `qemu-system-x86_64` (Debian `qemu-system-x86`).
    Qemu,
    /// QEMU's iPXE option ROMs (Debian `ipxe-qemu`).
    IpxeRoms,
    /// Debian's iPXE binaries for TFTP (`ipxe`).
    Ipxe,
    /// OVMF (`ovmf`).
    Ovmf,
    /// mtools (`mformat`, `mmd`, `mcopy`): FAT images without mounting.
    Mtools,
    /// `grub-mkstandalone` with x86_64-efi modules (`grub-efi-amd64-bin`).
    GrubEfi,
    /// `dnsmasq` (`dnsmasq-base`).
    Dnsmasq,
    /// The discovery image (`scripts/build-image`; see [`super::image`]).
    DiscoveryImage,
}

/// What every PXE test needs.
pub const PXE: [Need; 6] = [
    Need::Root,
    Need::Iproute2,
    Need::Qemu,
    Need::IpxeRoms,
    Need::Ipxe,
    Need::Ovmf,
];

fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

impl Need {
    /// Why it is missing, if it is.
    pub fn missing(self) -> Option<&'static str> {
        let ok = match self {
            Need::Root => nix::unistd::geteuid().is_root(),
            Need::Iproute2 => runs("ip", &["-V"]),
            Need::Qemu => runs("qemu-system-x86_64", &["--version"]),
            Need::IpxeRoms => Path::new("/usr/lib/ipxe/qemu/pxe-e1000.rom").exists(),
            Need::Ipxe => ["undionly.kpxe", "snponly.efi"]
                .iter()
                .all(|f| Path::new(IPXE_DIR).join(f).exists()),
            Need::Ovmf => Path::new(OVMF_CODE).exists() && Path::new(OVMF_VARS).exists(),
            Need::Mtools => runs("mformat", &["--version"]),
            Need::GrubEfi => {
                runs("grub-mkstandalone", &["--version"])
                    && Path::new("/usr/lib/grub/x86_64-efi/normal.mod").exists()
            }
            Need::Dnsmasq => runs("dnsmasq", &["--version"]),
            Need::DiscoveryImage => super::image::is_built(),
        };
        if ok {
            return None;
        }
        Some(match self {
            Need::Root => "root (network namespaces, tap devices)",
            Need::Iproute2 => "iproute2 (`ip`)",
            Need::Qemu => "qemu-system-x86_64 (apt-get install qemu-system-x86)",
            Need::IpxeRoms => "QEMU's iPXE option ROMs (apt-get install ipxe-qemu)",
            Need::Ipxe => "iPXE binaries in /usr/lib/ipxe (apt-get install ipxe)",
            Need::Ovmf => "OVMF (apt-get install ovmf)",
            Need::Mtools => "mtools (apt-get install mtools)",
            Need::GrubEfi => {
                "grub-mkstandalone for x86_64-efi (apt-get install grub-efi-amd64-bin)"
            }
            Need::Dnsmasq => "dnsmasq (apt-get install dnsmasq-base)",
            Need::DiscoveryImage => {
                "the discovery image (run scripts/build-image, or set ANNEAL_DISCOVERY_IMAGE to its directory)"
            }
        })
    }
}

/// Whether `test` can run. When something is missing: prints why and returns `false` (skip),
/// or panics when `ANNEAL_REQUIRE_SYSTEM_TESTS=1`.
pub fn ready(test: &str, needs: &[Need]) -> bool {
    let missing: Vec<&str> = needs.iter().filter_map(|n| n.missing()).collect();
    if missing.is_empty() {
        return true;
    }
    let why = missing.join(", ");
    if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") {
        panic!("{test}: {REQUIRE_ENV}=1 but this machine lacks: {why}");
    }
    eprintln!("{test} skipped: needs {why} (set {REQUIRE_ENV}=1 to fail instead)");
    false
}

/// Run a rack test: skip (or fail under `ANNEAL_REQUIRE_SYSTEM_TESTS=1`) when the machine lacks
/// one of [`PXE`] or `extra`, else run `body` and turn its error (which carries the console and
/// log tails) into a panic; prints the wall time when it passes.
pub fn rack_test(name: &str, extra: &[Need], body: impl FnOnce() -> anyhow::Result<()>) {
    let needs: Vec<Need> = PXE.iter().chain(extra).copied().collect();
    if !ready(name, &needs) {
        return;
    }
    let started = std::time::Instant::now();
    if let Err(e) = body() {
        panic!("{name} failed:\n{e:#}");
    }
    eprintln!("{name}: passed in {:.1}s", started.elapsed().as_secs_f64());
}
