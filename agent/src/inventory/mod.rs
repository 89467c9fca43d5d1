//! The hardware inventory: one collector per file, each fault-isolated so that one failing
//! collector records a [`CollectorError`] and the others still report.

use std::any::Any;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anneal_shared::inventory::{CollectorError, Inventory};
use anneal_shared::protocol::{IdentityHints, Nic};

pub mod bmc;
pub mod cpu;
pub mod disks;
pub mod lldp;
pub mod memory;
pub mod nics;
pub mod os;
pub mod pci;
pub mod root;
pub mod smart;
pub mod smbios;
pub mod tools;

use root::Root;

/// Upper bound for one sysfs/procfs collector: they only read small files, so more means a hang.
const FILE_COLLECTOR_LIMIT: Duration = Duration::from_secs(60);

/// What to collect and from where.
#[derive(Debug, Clone)]
pub struct CollectOptions {
    /// Root to read from: "/" on a real machine, a captured fixture tree in tests.
    pub sysroot: PathBuf,
    /// Run external tools (smartctl, ipmitool) when present. Off for fixtures.
    pub run_tools: bool,
    /// How long to listen for LLDP frames on each link; zero skips LLDP.
    pub lldp_listen: Duration,
    /// Agent version to record in OsInfo.
    pub agent_version: String,
}

impl Default for CollectOptions {
    fn default() -> Self {
        Self {
            sysroot: PathBuf::from("/"),
            run_tools: true,
            lldp_listen: Duration::ZERO,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// Why a collector could not report.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A file the collector needs could not be read.
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The data was there but made no sense.
    #[error("{0}")]
    Invalid(String),
    /// An external tool failed or is missing.
    #[error("{tool}: {message}")]
    Tool { tool: &'static str, message: String },
    /// The collector panicked (a bug, or data a library could not cope with).
    #[error("collector panicked: {0}")]
    Panicked(String),
    /// The collector did not finish in time.
    #[error("did not finish within {0:?}")]
    TimedOut(Duration),
}

impl CollectError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// Runs every collector; a collector that fails records a CollectorError and the others still report.
pub async fn collect(opts: &CollectOptions) -> Inventory {
    let root = Arc::new(Root::new(&opts.sysroot));
    let mut errors = Vec::new();

    let (smbios, cpuinfo, mem_total, disks, nics, pci, os) = tokio::join!(
        blocking("smbios", FILE_COLLECTOR_LIMIT, {
            let root = root.clone();
            move || smbios::collect(&root)
        }),
        blocking("cpu", FILE_COLLECTOR_LIMIT, {
            let root = root.clone();
            move || cpu::read_cpuinfo(&root)
        }),
        blocking("memory", FILE_COLLECTOR_LIMIT, {
            let root = root.clone();
            move || memory::read_mem_total(&root)
        }),
        blocking("disks", FILE_COLLECTOR_LIMIT, {
            let root = root.clone();
            move || disks::collect(&root)
        }),
        blocking("nics", FILE_COLLECTOR_LIMIT, {
            let root = root.clone();
            move || nics::collect(&root)
        }),
        blocking("pci", FILE_COLLECTOR_LIMIT, {
            let root = root.clone();
            move || pci::collect(&root)
        }),
        blocking("os", FILE_COLLECTOR_LIMIT, {
            let root = root.clone();
            let version = opts.agent_version.clone();
            move || os::collect(&root, &version)
        }),
    );

    let smbios = keep(smbios, &mut errors);
    let cpuinfo = keep(cpuinfo, &mut errors);
    let mem_total = keep(mem_total, &mut errors);
    let mut disks = keep(disks, &mut errors).unwrap_or_default();
    let nics = keep(nics, &mut errors).unwrap_or_default();
    let pci = keep(pci, &mut errors).unwrap_or_default();
    let os = keep(os, &mut errors);

    let cpu = cpu::merge(
        cpuinfo,
        smbios
            .as_ref()
            .map(|s| s.sockets.clone())
            .unwrap_or_default(),
    );
    let memory = memory::merge(mem_total, smbios.as_ref().and_then(|s| s.memory.clone()));
    let smbios_bmc = smbios.as_ref().map(|s| s.bmc.clone());

    let disk_names: Vec<String> = disks.iter().map(|d| d.name.clone()).collect();
    let nic_names: Vec<String> = nics.iter().map(|n| n.name.clone()).collect();
    let lldp_wanted = !opts.lldp_listen.is_zero() && root.is_host() && !nic_names.is_empty();
    let listen = opts.lldp_listen;
    let (smart, bmc, lldp) = tokio::join!(
        async {
            if opts.run_tools && !disk_names.is_empty() {
                Some(isolated("smart", smart::collect(disk_names)).await)
            } else {
                None
            }
        },
        async {
            match smbios_bmc {
                Some(bmc) if bmc.present && opts.run_tools => {
                    // Without ipmitool's answer, what SMBIOS said still stands.
                    Some(
                        isolated("bmc", bmc::collect(bmc.clone()))
                            .await
                            .map_err(|e| (e, bmc)),
                    )
                }
                other => other.map(Ok),
            }
        },
        async {
            if lldp_wanted {
                Some(
                    blocking("lldp", listen + Duration::from_secs(10), move || {
                        lldp::collect(&nic_names, listen)
                    })
                    .await,
                )
            } else {
                None
            }
        },
    );

    if let Some(smart) = smart {
        match smart {
            Ok(results) => {
                for disk in &mut disks {
                    if let Some(health) = results.get(&disk.name) {
                        disk.smart = Some(health.clone());
                    }
                }
            }
            Err(e) => errors.push(e),
        }
    }
    let bmc = match bmc {
        Some(Ok(b)) => Some(b),
        Some(Err((e, smbios_only))) => {
            errors.push(e);
            Some(smbios_only)
        }
        None => None,
    };
    let mut neighbors = Vec::new();
    if let Some(lldp) = lldp {
        match lldp {
            Ok(report) => {
                neighbors = report.neighbors;
                errors.extend(report.errors.into_iter().map(|message| CollectorError {
                    collector: "lldp".into(),
                    message,
                }));
            }
            Err(e) => errors.push(e),
        }
    }

    let smbios = smbios.unwrap_or_default();
    Inventory {
        system: smbios.system,
        baseboard: smbios.baseboard,
        chassis: smbios.chassis,
        bios: smbios.bios,
        cpu,
        memory,
        disks,
        nics,
        pci,
        bmc,
        lldp: neighbors,
        os,
        errors,
    }
}

/// The identity evidence the agent sends when enrolling, taken from an inventory (physical NICs only, with their bus).
pub fn identity_hints(inv: &Inventory) -> IdentityHints {
    let system = inv.system.as_ref();
    IdentityHints {
        system_uuid: system.and_then(|s| s.uuid.clone()),
        system_serial: system.and_then(|s| s.serial.clone()),
        chassis_serial: inv.chassis.as_ref().and_then(|c| c.serial.clone()),
        baseboard_serial: inv.baseboard.as_ref().and_then(|b| b.serial.clone()),
        manufacturer: system.and_then(|s| s.manufacturer.clone()),
        product: system.and_then(|s| s.product.clone()),
        os_machine_id: inv.os.as_ref().and_then(|o| o.machine_id.clone()),
        macs: inv
            .nics
            .iter()
            .filter(|n| !n.mac.is_empty())
            .map(|n| Nic {
                mac: n.mac.to_ascii_lowercase(),
                bus: n.bus.clone(),
            })
            .collect(),
    }
}

/// Moves a collector's value out, or records its error.
fn keep<T>(result: Result<T, CollectorError>, errors: &mut Vec<CollectorError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

/// Runs a blocking collector on its own thread, turning errors, panics and hangs into a
/// [`CollectorError`] named `name`.
async fn blocking<T, F>(name: &'static str, limit: Duration, f: F) -> Result<T, CollectorError>
where
    F: FnOnce() -> Result<T, CollectError> + Send + 'static,
    T: Send + 'static,
{
    let task = tokio::task::spawn_blocking(f);
    settle(name, limit, task).await
}

/// Runs an async collector as its own task, with the same isolation as [`blocking`].
async fn isolated<T, F>(name: &'static str, fut: F) -> Result<T, CollectorError>
where
    F: Future<Output = Result<T, CollectError>> + Send + 'static,
    T: Send + 'static,
{
    // The collector bounds its own tool runs; this outer limit only catches bugs.
    settle(name, Duration::from_secs(300), tokio::spawn(fut)).await
}

/// Waits for a collector task and names whatever went wrong.
async fn settle<T>(
    name: &'static str,
    limit: Duration,
    task: tokio::task::JoinHandle<Result<T, CollectError>>,
) -> Result<T, CollectorError> {
    let outcome = match tokio::time::timeout(limit, task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) if join.is_panic() => {
            Err(CollectError::Panicked(panic_text(join.into_panic())))
        }
        Ok(Err(join)) => Err(CollectError::Panicked(join.to_string())),
        Err(_) => Err(CollectError::TimedOut(limit)),
    };
    outcome.map_err(|e| {
        tracing::warn!(collector = name, error = %e, "inventory collector failed");
        CollectorError {
            collector: name.to_string(),
            message: e.to_string(),
        }
    })
}

/// The message of a panic payload.
fn panic_text(payload: Box<dyn Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A sysroot with one PCI NIC and no `/sys/block` at all.
    fn nic_only_root() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let dev = base.join("sys/devices/pci0000:00/0000:00:03.0");
        fs::create_dir_all(dev.join("net/eth0")).unwrap();
        fs::create_dir_all(base.join("sys/bus/pci/drivers/e1000")).unwrap();
        fs::create_dir_all(base.join("sys/class/net")).unwrap();
        symlink("../../../bus/pci/drivers/e1000", dev.join("driver")).unwrap();
        symlink("../../../bus/pci", dev.join("subsystem")).unwrap();
        symlink("../../../0000:00:03.0", dev.join("net/eth0/device")).unwrap();
        fs::write(dev.join("net/eth0/address"), "52:54:00:AA:BB:CC\n").unwrap();
        fs::write(dev.join("net/eth0/mtu"), "1500\n").unwrap();
        symlink(
            "../../devices/pci0000:00/0000:00:03.0/net/eth0",
            base.join("sys/class/net/eth0"),
        )
        .unwrap();
        dir
    }

    #[tokio::test]
    async fn missing_sys_block_still_reports_nics() {
        let dir = nic_only_root();
        let inv = collect(&CollectOptions {
            sysroot: dir.path().to_path_buf(),
            run_tools: false,
            lldp_listen: Duration::ZERO,
            agent_version: "test".into(),
        })
        .await;
        assert_eq!(inv.nics.len(), 1);
        assert_eq!(inv.nics[0].mac, "52:54:00:aa:bb:cc");
        assert_eq!(inv.nics[0].driver.as_deref(), Some("e1000"));
        assert!(inv.disks.is_empty());
        assert!(
            inv.errors.iter().any(|e| e.collector == "disks"),
            "{:?}",
            inv.errors
        );
        assert!(inv.errors.iter().any(|e| e.collector == "smbios"));
        assert!(!inv.errors.iter().any(|e| e.collector == "nics"));
        assert_eq!(
            inv.os.and_then(|o| o.agent_version).as_deref(),
            Some("test")
        );

        let hints = identity_hints(&Inventory {
            nics: inv.nics.clone(),
            ..Default::default()
        });
        assert_eq!(hints.macs.len(), 1);
        assert_eq!(hints.macs[0].bus.as_deref(), Some("pci"));
    }

    #[tokio::test]
    async fn a_panicking_collector_is_recorded() {
        let r: Result<(), CollectorError> = blocking("boom", Duration::from_secs(5), || {
            panic!("kaboom");
        })
        .await;
        let err = r.unwrap_err();
        assert_eq!(err.collector, "boom");
        assert!(err.message.contains("kaboom"), "{}", err.message);
    }

    #[tokio::test]
    async fn a_hanging_collector_times_out() {
        let r: Result<(), CollectorError> = blocking("slow", Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_millis(300));
            Ok(())
        })
        .await;
        assert!(r.unwrap_err().message.contains("did not finish"));
    }
}
