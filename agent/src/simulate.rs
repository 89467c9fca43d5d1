//! `anneal-agent simulate`: many simulated agents in one process, for the scale benchmark
//! (`scripts/bench-agents`, docs/performance.md).
//!
//! Each simulated agent is what a real agent is on the wire, built from the same client code
//! ([`Enroller`], [`Session`]): its own clock sync, its own fresh key, CSR and client
//! certificate, its own HTTP client holding one kept-alive mutual-TLS connection. It enrolls
//! with distinct identity evidence (globally administered MACs, distinct UUIDs and serials, so
//! the identity rules see distinct machines), sends a realistic synthetic inventory, then
//! heartbeats on a fixed schedule whose phase is random per agent (spread, not lockstep).
//! Agents heartbeat from the moment they have enrolled until `duration` after the *last* agent
//! enrolled, so for that final stretch every agent is connected at once: the steady state of a
//! fleet of `count` machines.
//!
//! What is measured: enrollment wall time (enrolls/s), per-request latency (send → decoded
//! response) of enrollments, inventories and heartbeats, and every error by phase and kind.
//! Nothing is dropped silently: an agent whose enrollment fails is counted and stops.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anneal_shared::inventory::{
    Baseboard, Bios, Bmc, Chassis, Cpu, CpuSocket, Dimm, Disk, Inventory, Memory, NetInterface,
    OsInfo, PciDevice, SmartHealth, System,
};
use anneal_shared::protocol::{Directive, IdentityHints, Nic};
use anyhow::{Context, Result};
use rand::Rng;
use serde::Serialize;
use tokio::sync::{watch, Semaphore};

use crate::client::{ClientError, Enroller, Session};
use crate::clock::Clock;

/// Intel's OUI: globally administered, so these MACs identify (QEMU's locally administered
/// 52:54:00 never does).
const MAC_OUI: [u8; 3] = [0x00, 0x1b, 0x21];
/// Identity-bearing NICs per simulated machine (two dual-port cards' first ports and the LOMs).
const NICS_PER_MACHINE: u32 = 4;
/// Simulated machines per `--id-base` block: the 24 MAC bits shared by 4 NICs each.
pub const ID_SPACE: u32 = (1 << 24) / NICS_PER_MACHINE;

/// Everything `anneal-agent simulate` needs.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Enrollment URL (`https://host:port`).
    pub url: String,
    /// `sha256:HEX` of the server's CA.
    pub ca_fingerprint: String,
    /// A bootstrap token with at least `count` uses.
    pub token: String,
    /// How many agents.
    pub count: u32,
    /// Enrollments (clock sync + enroll + inventory) in flight at once.
    pub enroll_concurrency: usize,
    /// Seconds between one agent's heartbeats.
    pub heartbeat_secs: u64,
    /// How long every agent heartbeats after the last one has enrolled (agents that enrolled
    /// earlier heartbeat meanwhile too).
    pub duration_secs: u64,
    /// Simulated machine numbers start here (keeps identities distinct across runs against
    /// one server); `count + id_base` must not exceed [`ID_SPACE`].
    pub id_base: u32,
}

/// Latency percentiles in milliseconds (nearest rank over all samples).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

impl Latency {
    /// Percentiles of `samples` (microseconds); sorts them.
    pub fn of(samples: &mut [u64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_unstable();
        let n = samples.len();
        let at = |q: f64| {
            // Nearest rank: the smallest sample with at least q of all samples at or below it.
            let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
            samples[rank - 1] as f64 / 1000.0
        };
        let sum: u128 = samples.iter().map(|&s| s as u128).sum();
        Latency {
            count: n,
            mean_ms: sum as f64 / n as f64 / 1000.0,
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: samples[n - 1] as f64 / 1000.0,
        }
    }
}

/// The outcome of one simulation run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Agents started.
    pub count: u32,
    /// Enrollment concurrency used.
    pub enroll_concurrency: usize,
    /// Heartbeat interval.
    pub heartbeat_secs: u64,
    /// Heartbeating time after the last enrollment.
    pub duration_secs: u64,
    /// First simulated machine number.
    pub id_base: u32,
    /// Agents that enrolled.
    pub enrolled: u32,
    /// Most agents connected (enrolled, heartbeating) at one time.
    pub peak_connected: u64,
    /// Agents whose enrollment failed (they stop; see `errors`).
    pub enroll_failed: u32,
    /// From the start until the last enrollment finished (succeeded or failed).
    pub enroll_wall_secs: f64,
    /// `enrolled / enroll_wall_secs`.
    pub enrolls_per_sec: f64,
    /// One enrollment: clock sync, key + CSR, enroll, mTLS client set-up.
    pub enroll_latency: Latency,
    /// Inventories accepted.
    pub inventories_sent: u32,
    /// Serialized size of one synthetic inventory, in bytes.
    pub inventory_bytes: usize,
    /// `PUT inventory` round trips.
    pub inventory_latency: Latency,
    /// Heartbeats attempted.
    pub heartbeats_sent: u64,
    /// Heartbeats answered with success.
    pub heartbeats_ok: u64,
    /// Fewest successful heartbeats of any enrolled agent.
    pub min_heartbeats_per_agent: u64,
    /// All successful heartbeats.
    pub heartbeat_latency: Latency,
    /// Only heartbeats sent after every agent had finished enrolling: all agents connected,
    /// no enrollment load.
    pub heartbeat_latency_steady: Latency,
    /// How late the simulator's heartbeat timers fired. When this is large the simulator
    /// itself was short of CPU, and every latency it measured is inflated by as much.
    pub timer_lag: Latency,
    /// Heartbeats answered `send_inventory` (the server lost our inventory): resent.
    pub inventory_resends: u64,
    /// Errors by `phase:kind`.
    pub errors: BTreeMap<String, u64>,
    /// The first message of each `phase:kind`.
    pub error_examples: BTreeMap<String, String>,
    /// Sum of `errors`.
    pub total_errors: u64,
    /// The whole run.
    pub wall_secs: f64,
    /// This process's CPU time (user + system).
    pub client_cpu_secs: f64,
    /// This process's peak RSS, MiB.
    pub client_peak_rss_mib: f64,
    /// The open-files limit in effect.
    pub nofile_limit: u64,
}

impl Report {
    /// A human-readable summary.
    pub fn summary(&self) -> String {
        let l = |x: &Latency| {
            format!(
                "p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms ({} samples)",
                x.p50_ms, x.p90_ms, x.p99_ms, x.p999_ms, x.max_ms, x.count
            )
        };
        let mut s = String::new();
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "simulated agents: {} (ids from {}), enrollment concurrency {}, heartbeat every {} s for {} s",
            self.count, self.id_base, self.enroll_concurrency, self.heartbeat_secs, self.duration_secs
        );
        let _ = writeln!(
            s,
            "enrolled:         {} in {:.2} s = {:.1} enrolls/s ({} failed); {} connected at once",
            self.enrolled,
            self.enroll_wall_secs,
            self.enrolls_per_sec,
            self.enroll_failed,
            self.peak_connected
        );
        let _ = writeln!(s, "enroll latency:   {}", l(&self.enroll_latency));
        let _ = writeln!(
            s,
            "inventories:      {} of {} bytes; {}",
            self.inventories_sent,
            self.inventory_bytes,
            l(&self.inventory_latency)
        );
        let _ = writeln!(
            s,
            "heartbeats:       {} sent, {} ok, at least {} per enrolled agent",
            self.heartbeats_sent, self.heartbeats_ok, self.min_heartbeats_per_agent
        );
        let _ = writeln!(s, "heartbeat (all):  {}", l(&self.heartbeat_latency));
        let _ = writeln!(s, "heartbeat steady: {}", l(&self.heartbeat_latency_steady));
        let _ = writeln!(s, "timer lag:        {}", l(&self.timer_lag));
        let _ = writeln!(s, "errors:           {}", self.total_errors);
        for (k, n) in &self.errors {
            let example = self.error_examples.get(k).map(String::as_str).unwrap_or("");
            let _ = writeln!(s, "  {k}: {n}  (first: {example})");
        }
        let _ = write!(
            s,
            "simulator:        {:.1} s wall, {:.1} s CPU, peak RSS {:.0} MiB, open-files limit {}",
            self.wall_secs, self.client_cpu_secs, self.client_peak_rss_mib, self.nofile_limit
        );
        s
    }
}

/// `(phase:kind, message)` of a client error, as the reports count them.
pub fn labelled(phase: &str, e: &ClientError) -> (String, String) {
    (format!("{phase}:{}", error_kind(e)), format!("{e:#}"))
}

/// Count one error of `kind` and keep its first example.
pub fn tally(
    counts: &mut BTreeMap<String, u64>,
    examples: &mut BTreeMap<String, String>,
    kind: String,
    example: String,
) {
    *counts.entry(kind.clone()).or_default() += 1;
    examples.entry(kind).or_insert(example);
}

/// A short, stable name for an error, for counting.
pub fn error_kind(e: &ClientError) -> String {
    match e {
        ClientError::BadFingerprint(_) => "bad_fingerprint".into(),
        ClientError::FingerprintMismatch { .. } => "fingerprint_mismatch".into(),
        ClientError::Transport { source, .. } => {
            if source.is_timeout() {
                "timeout".into()
            } else if source.is_connect() {
                "connect".into()
            } else {
                "transport".into()
            }
        }
        ClientError::TokenRefused(_) => "token_refused".into(),
        ClientError::Quarantined(_) => "quarantined".into(),
        ClientError::Unauthorized(_) => "unauthorized".into(),
        ClientError::Problem { status, .. } => format!("http_{status}"),
        ClientError::Crypto(_) => "crypto".into(),
        ClientError::Decode(_) => "decode".into(),
    }
}

/// Raise this process's open-files soft limit to the hard limit; returns the limit in effect.
pub fn raise_nofile_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    lim.rlim_cur
}

/// CPU seconds (user + system) and peak RSS (MiB) of this process.
fn own_usage() -> (f64, f64) {
    // SAFETY: getrusage fills the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (
        secs(ru.ru_utime) + secs(ru.ru_stime),
        ru.ru_maxrss as f64 / 1024.0,
    )
}

fn mac(machine: u32, port: u32) -> String {
    let n = machine * NICS_PER_MACHINE + port;
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        MAC_OUI[0],
        MAC_OUI[1],
        MAC_OUI[2],
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

/// Deterministic per-machine UUID: random-looking, version 4 bits, never a placeholder.
fn system_uuid(machine: u32) -> String {
    let mut bytes = [0u8; 16];
    let seed = (machine as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5851_f42d_4c95_7f2d;
    bytes[..8].copy_from_slice(&seed.to_be_bytes());
    bytes[8..12].copy_from_slice(&0x4c4c_4544u32.to_be_bytes());
    bytes[12..].copy_from_slice(&machine.to_be_bytes());
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    uuid::Uuid::from_bytes(bytes).to_string()
}

fn serial(prefix: &str, machine: u32) -> String {
    format!("{prefix}{machine:08}")
}

/// The identity evidence of simulated machine `machine`.
pub fn identity(machine: u32) -> IdentityHints {
    IdentityHints {
        system_uuid: Some(system_uuid(machine)),
        system_serial: Some(serial("SIM", machine)),
        chassis_serial: Some(serial("SIMC", machine)),
        baseboard_serial: Some(serial("SIMB", machine)),
        manufacturer: Some("Anneal Simulated Systems".into()),
        product: Some("SIM-2U-8".into()),
        os_machine_id: None,
        macs: (0..NICS_PER_MACHINE)
            .map(|p| Nic {
                mac: mac(machine, p),
                bus: Some("pci".into()),
            })
            .collect(),
    }
}

const CPU_FLAGS: &str = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 \
clflush dts acpi mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc art \
arch_perfmon pebs bts rep_good nopl xtopology nonstop_tsc cpuid aperfmperf pni pclmulqdq dtes64 \
monitor ds_cpl vmx smx est tm2 ssse3 sdbg fma cx16 xtpr pdcm pcid dca sse4_1 sse4_2 x2apic movbe \
popcnt tsc_deadline_timer aes xsave avx f16c rdrand lahf_lm abm 3dnowprefetch cpuid_fault epb \
cat_l3 cdp_l3 invpcid_single intel_ppin ssbd mba ibrs ibpb stibp ibrs_enhanced tpr_shadow vnmi \
flexpriority ept vpid ept_ad fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid cqm rdt_a \
avx512f avx512dq rdseed adx smap avx512ifma clflushopt clwb intel_pt avx512cd sha_ni avx512bw \
avx512vl xsaveopt xsavec xgetbv1 xsaves cqm_llc cqm_occup_llc cqm_mbm_total cqm_mbm_local \
split_lock_detect wbnoinvd dtherm ida arat pln pts avx512vbmi umip pku ospke avx512_vbmi2 gfni \
vaes vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 rdpid fsrm md_clear pconfig \
flush_l1d arch_capabilities";

/// A plausible 2U two-socket server: 16 DIMMs, 4 disks, 4 NICs, 100 PCI functions.
pub fn inventory(machine: u32) -> Inventory {
    let id = identity(machine);
    let socket = |n: u32| CpuSocket {
        designation: Some(format!("CPU{n}")),
        manufacturer: Some("Intel(R) Corporation".into()),
        version: Some("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into()),
        cores: Some(32),
        threads: Some(64),
        max_speed_mhz: Some(3200),
        current_speed_mhz: Some(2000),
    };
    let dimms = (0..16u32)
        .map(|d| Dimm {
            locator: Some(format!(
                "CPU{}_DIMM_{}{}",
                d / 8 + 1,
                (b'A' + (d % 8) as u8) as char,
                1
            )),
            bank_locator: Some(format!("NODE {}", d / 8)),
            size_bytes: 32 << 30,
            memory_type: Some("DDR4".into()),
            speed_mts: Some(3200),
            manufacturer: Some("Samsung".into()),
            serial: Some(format!("{:08X}", machine.wrapping_mul(16).wrapping_add(d))),
            part_number: Some("M393A4K40EB3-CWE".into()),
        })
        .collect();
    let disk = |name: &str, n: u32, nvme: bool| Disk {
        name: name.to_string(),
        size_bytes: if nvme {
            3_840_755_982_336
        } else {
            960_197_124_096
        },
        model: Some(
            if nvme {
                "SAMSUNG MZQL23T8HCLS-00A07"
            } else {
                "MTFDDAK960TDS"
            }
            .into(),
        ),
        serial: Some(format!(
            "S{}{:09}{n}",
            if nvme { "64H" } else { "ATA" },
            machine
        )),
        wwn: Some(format!("eui.{:016x}", (machine as u64) << 8 | n as u64)),
        rotational: Some(false),
        transport: Some(if nvme { "nvme" } else { "sata" }.into()),
        removable: false,
        logical_sector_size: Some(512),
        physical_sector_size: Some(if nvme { 4096 } else { 512 }),
        smart: Some(SmartHealth {
            passed: Some(true),
            power_on_hours: Some(1000 + (machine % 5000) as u64),
            temperature_c: Some(34),
            message: None,
        }),
    };
    let nic = |name: &str, port: u32, addr: &str, driver: &str, speed: u32| NetInterface {
        name: name.to_string(),
        mac: mac(machine, port),
        driver: Some(driver.into()),
        pci_address: Some(addr.into()),
        bus: Some("pci".into()),
        speed_mbps: Some(speed),
        link_up: Some(port == 0),
        mtu: Some(1500),
        addresses: if port == 0 {
            vec![format!(
                "10.{}.{}.{}/16",
                (machine >> 16) & 0xff,
                (machine >> 8) & 0xff,
                machine & 0xff
            )]
        } else {
            Vec::new()
        },
    };
    let mut pci: Vec<PciDevice> = Vec::with_capacity(100);
    for n in 0..100u32 {
        let (vendor, device, class, name, driver) = match n {
            0..=3 => (
                "8086",
                "1572",
                "020000",
                "Ethernet Controller X710 for 10GbE SFP+",
                "i40e",
            ),
            4..=5 => (
                "144d",
                "a80a",
                "010802",
                "NVMe SSD Controller PM9A1/PM9A3/980PRO",
                "nvme",
            ),
            6 => (
                "102b",
                "0536",
                "030000",
                "Integrated Matrox G200eW3 Graphics Controller",
                "mgag200",
            ),
            7 => (
                "8086",
                "a1d2",
                "010601",
                "C620 Series Chipset Family SSATA Controller [AHCI mode]",
                "ahci",
            ),
            8 => (
                "8086",
                "a1af",
                "0c0330",
                "C620 Series Chipset Family USB 3.0 xHCI Controller",
                "xhci_hcd",
            ),
            _ => ("8086", "09a2", "088000", "Ice Lake Memory Map/VT-d", ""),
        };
        pci.push(PciDevice {
            address: format!(
                "0000:{:02x}:{:02x}.{}",
                n / 32,
                (n / 8) % 4 * 8 + n % 8 / 2,
                n % 2
            ),
            vendor_id: vendor.into(),
            device_id: device.into(),
            class: class.into(),
            subsystem_vendor_id: Some("15d9".into()),
            subsystem_device_id: Some("1c48".into()),
            vendor_name: Some(
                if vendor == "144d" {
                    "Samsung Electronics Co Ltd"
                } else if vendor == "102b" {
                    "Matrox Electronics Systems Ltd."
                } else {
                    "Intel Corporation"
                }
                .into(),
            ),
            device_name: Some(name.into()),
            driver: (!driver.is_empty()).then(|| driver.to_string()),
            is_gpu: false,
        });
    }
    Inventory {
        system: Some(System {
            manufacturer: id.manufacturer.clone(),
            product: id.product.clone(),
            version: Some("0123456789".into()),
            serial: id.system_serial.clone(),
            uuid: id.system_uuid.clone(),
            sku: Some("091ABCDEF".into()),
            family: Some("Server".into()),
        }),
        baseboard: Some(Baseboard {
            manufacturer: id.manufacturer.clone(),
            product: Some("X12DPi-NT6".into()),
            version: Some("1.01".into()),
            serial: id.baseboard_serial.clone(),
            asset_tag: None,
        }),
        chassis: Some(Chassis {
            manufacturer: id.manufacturer.clone(),
            chassis_type: Some("Rack Mount Chassis".into()),
            serial: id.chassis_serial.clone(),
            asset_tag: Some(format!("RACK{:03}-U{:02}", machine / 40, machine % 40)),
        }),
        bios: Some(Bios {
            vendor: Some("American Megatrends International, LLC.".into()),
            version: Some("1.4a".into()),
            release_date: Some("08/15/2023".into()),
        }),
        cpu: Some(Cpu {
            model: Some("Intel(R) Xeon(R) Gold 6338 CPU @ 2.00GHz".into()),
            logical_cpus: 128,
            flags: CPU_FLAGS.split_whitespace().map(str::to_string).collect(),
            sockets: vec![socket(1), socket(2)],
        }),
        memory: Some(Memory {
            total_bytes: 527_999_000_000,
            installed_bytes: 16 * (32 << 30),
            slots_total: 32,
            slots_empty: 16,
            dimms,
        }),
        disks: vec![
            disk("nvme0n1", 0, true),
            disk("nvme1n1", 1, true),
            disk("sda", 2, false),
            disk("sdb", 3, false),
        ],
        nics: vec![
            nic("ens1f0", 0, "0000:00:00.0", "i40e", 10_000),
            nic("ens1f1", 1, "0000:00:00.1", "i40e", 10_000),
            nic("ens2f0", 2, "0000:00:01.0", "i40e", 10_000),
            nic("ens2f1", 3, "0000:00:01.1", "i40e", 10_000),
        ],
        pci,
        bmc: Some(Bmc {
            present: true,
            interface_type: Some("KCS".into()),
            ip_address: Some(format!(
                "10.250.{}.{}",
                (machine >> 8) & 0xff,
                machine & 0xff
            )),
            mac: Some(format!(
                "3c:ec:ef:{:02x}:{:02x}:{:02x}",
                (machine >> 16) & 0xff,
                (machine >> 8) & 0xff,
                machine & 0xff
            )),
        }),
        lldp: Vec::new(),
        os: Some(OsInfo {
            boot_mode: Some("uefi".into()),
            kernel: Some("6.1.0-18-amd64".into()),
            agent_version: Some(env!("CARGO_PKG_VERSION").into()),
            hostname: Some(format!("sim-{machine:08}")),
            machine_id: None,
        }),
        errors: Vec::new(),
    }
}

/// Counts and samples one agent gathers; merged at the end (no shared locks on the hot path).
#[derive(Default)]
struct AgentResult {
    enrolled: bool,
    enroll_us: Option<u64>,
    inventory_us: Vec<u64>,
    inventories_ok: u32,
    inventory_resends: u64,
    heartbeats_sent: u64,
    heartbeats_ok: u64,
    /// (latency µs, sent after every agent had finished enrolling)
    heartbeat_us: Vec<(u64, bool)>,
    /// How late each heartbeat timer fired, µs.
    timer_lag_us: Vec<u64>,
    errors: Vec<(String, String)>,
}

impl AgentResult {
    fn error(&mut self, phase: &str, e: &ClientError) {
        self.errors.push(labelled(phase, e));
    }
}

struct Shared {
    cfg: SimConfig,
    gate: Semaphore,
    /// Agents that have finished enrolling (successfully or not).
    onboarded: AtomicUsize,
    started: Instant,
    /// When the last agent finished enrolling, in µs since `started` (0: not yet).
    enroll_end_us: AtomicU64,
    /// When heartbeating stops: `duration` after the last enrollment (None until then).
    end: watch::Sender<Option<tokio::time::Instant>>,
    /// Agents holding a session now, and the most at once.
    connected: AtomicU64,
    peak_connected: AtomicU64,
}

fn us(d: Duration) -> u64 {
    d.as_micros().min(u64::MAX as u128) as u64
}

async fn one_agent(sh: Arc<Shared>, n: u32) -> AgentResult {
    let mut r = AgentResult::default();
    let machine = sh.cfg.id_base + n;
    let session = {
        let _permit = sh.gate.acquire().await.expect("semaphore never closed");
        let enrolled = enroll_one(&sh, machine, &mut r).await;
        if enrolled.is_some() {
            let now = sh.connected.fetch_add(1, Ordering::SeqCst) + 1;
            sh.peak_connected.fetch_max(now, Ordering::SeqCst);
        }
        let done = sh.onboarded.fetch_add(1, Ordering::SeqCst) + 1;
        if done == sh.cfg.count as usize {
            sh.enroll_end_us
                .store(us(sh.started.elapsed()).max(1), Ordering::SeqCst);
            let end = tokio::time::Instant::now() + Duration::from_secs(sh.cfg.duration_secs);
            sh.end.send_replace(Some(end));
            // Progress for whoever watches (scripts/bench-agents samples the server then).
            eprintln!(
                "simulate: all {} agents have enrolled after {:.1} s; heartbeating {} s more",
                sh.cfg.count,
                sh.started.elapsed().as_secs_f64(),
                sh.cfg.duration_secs
            );
        }
        match enrolled {
            Some(s) => s,
            None => return r,
        }
    };
    heartbeat_loop(&sh, machine, &session, &mut r).await;
    // The connection closes with the session, as when a real agent stops.
    drop(session);
    sh.connected.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Clock sync, enroll (own key, CSR and certificate), inventory.
async fn enroll_one(sh: &Shared, machine: u32, r: &mut AgentResult) -> Option<Session> {
    let t0 = Instant::now();
    let enroller = match Enroller::new(&sh.cfg.url, &sh.cfg.ca_fingerprint, Clock::system()) {
        Ok(e) => e,
        Err(e) => {
            r.error("enroll", &e);
            return None;
        }
    };
    let boot_id = uuid::Uuid::new_v4().to_string();
    let hostname = format!("sim-{machine:08}");
    let session = match enroller
        .enroll(&sh.cfg.token, identity(machine), &boot_id, &hostname)
        .await
    {
        Ok(s) => s,
        Err(e) => {
            r.error("enroll", &e);
            return None;
        }
    };
    // The enrollment connection goes away with the enroller, as in a real agent.
    drop(enroller);
    r.enrolled = true;
    r.enroll_us = Some(us(t0.elapsed()));
    send_inventory(machine, &session, r).await;
    Some(session)
}

async fn send_inventory(machine: u32, session: &Session, r: &mut AgentResult) {
    let inv = inventory(machine);
    let t = Instant::now();
    match session.send_inventory(&inv).await {
        Ok(()) => {
            r.inventory_us.push(us(t.elapsed()));
            r.inventories_ok += 1;
        }
        Err(e) => r.error("inventory", &e),
    }
}

/// Heartbeat on a fixed schedule (random phase, then every interval) until the end, which is
/// known once the last agent has enrolled.
async fn heartbeat_loop(sh: &Shared, machine: u32, session: &Session, r: &mut AgentResult) {
    let interval = Duration::from_secs(sh.cfg.heartbeat_secs.max(1));
    let offset = interval.mul_f64(rand::thread_rng().gen_range(0.0..1.0));
    let mut next = tokio::time::Instant::now() + offset;
    let past_end = |at: tokio::time::Instant| matches!(*sh.end.borrow(), Some(end) if at >= end);
    loop {
        if past_end(next) {
            break;
        }
        tokio::time::sleep_until(next).await;
        r.timer_lag_us.push(us(
            tokio::time::Instant::now().saturating_duration_since(next)
        ));
        // The end may have become known while we slept.
        if past_end(next) {
            break;
        }
        next += interval;
        let steady = sh.end.borrow().is_some();
        let t = Instant::now();
        r.heartbeats_sent += 1;
        match session.heartbeat("idle").await {
            Ok(hb) => {
                r.heartbeat_us.push((us(t.elapsed()), steady));
                r.heartbeats_ok += 1;
                if matches!(hb.directive, Directive::SendInventory) {
                    r.inventory_resends += 1;
                    send_inventory(machine, session, r).await;
                }
            }
            Err(e) => r.error("heartbeat", &e),
        }
        // A heartbeat slower than the interval does not cause a burst of catch-up requests.
        let now = tokio::time::Instant::now();
        while next < now {
            next += interval;
        }
    }
}

/// Run the simulation to the end and report.
pub async fn run(cfg: SimConfig) -> Result<Report> {
    anyhow::ensure!(cfg.count > 0, "--count must be at least 1");
    anyhow::ensure!(
        cfg.id_base as u64 + cfg.count as u64 <= ID_SPACE as u64,
        "--id-base + --count must not exceed {ID_SPACE} (the MAC space)"
    );
    crate::install_crypto_provider();
    let nofile = raise_nofile_limit();
    // One connection per agent, plus enrollment connections in flight and a few spare.
    let needed = cfg.count as u64 + cfg.enroll_concurrency as u64 + 64;
    if nofile < needed {
        tracing::warn!(
            nofile,
            needed,
            "the open-files limit is below one connection per agent; expect connect errors"
        );
    }
    let inventory_bytes = serde_json::to_vec(&inventory(cfg.id_base))
        .context("serializing the synthetic inventory")?
        .len();
    let sh = Arc::new(Shared {
        gate: Semaphore::new(cfg.enroll_concurrency.max(1)),
        onboarded: AtomicUsize::new(0),
        started: Instant::now(),
        enroll_end_us: Default::default(),
        end: watch::channel(None).0,
        connected: AtomicU64::new(0),
        peak_connected: AtomicU64::new(0),
        cfg: cfg.clone(),
    });
    let tasks: Vec<_> = (0..cfg.count)
        .map(|n| tokio::spawn(one_agent(sh.clone(), n)))
        .collect();

    let mut report = Report {
        count: cfg.count,
        enroll_concurrency: cfg.enroll_concurrency,
        heartbeat_secs: cfg.heartbeat_secs,
        duration_secs: cfg.duration_secs,
        id_base: cfg.id_base,
        inventory_bytes,
        nofile_limit: nofile,
        min_heartbeats_per_agent: u64::MAX,
        ..Default::default()
    };
    let (mut enroll_us, mut inv_us, mut hb_all, mut hb_steady, mut lag_us) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for t in tasks {
        let r = match t.await {
            Ok(r) => r,
            Err(e) => {
                let (counts, examples) = (&mut report.errors, &mut report.error_examples);
                tally(counts, examples, "sim:task_panicked".into(), e.to_string());
                continue;
            }
        };
        if r.enrolled {
            report.enrolled += 1;
            report.min_heartbeats_per_agent = report.min_heartbeats_per_agent.min(r.heartbeats_ok);
        } else {
            report.enroll_failed += 1;
        }
        enroll_us.extend(r.enroll_us);
        inv_us.extend(r.inventory_us);
        lag_us.extend(r.timer_lag_us);
        report.inventories_sent += r.inventories_ok;
        report.inventory_resends += r.inventory_resends;
        report.heartbeats_sent += r.heartbeats_sent;
        report.heartbeats_ok += r.heartbeats_ok;
        for (l, steady) in r.heartbeat_us {
            hb_all.push(l);
            if steady {
                hb_steady.push(l);
            }
        }
        for (kind, msg) in r.errors {
            tally(&mut report.errors, &mut report.error_examples, kind, msg);
        }
    }
    if report.min_heartbeats_per_agent == u64::MAX {
        report.min_heartbeats_per_agent = 0;
    }
    report.peak_connected = sh.peak_connected.load(Ordering::SeqCst);
    let enroll_end = sh.enroll_end_us.load(Ordering::SeqCst);
    report.enroll_wall_secs = enroll_end as f64 / 1e6;
    if enroll_end > 0 {
        report.enrolls_per_sec = report.enrolled as f64 / report.enroll_wall_secs;
    }
    report.enroll_latency = Latency::of(&mut enroll_us);
    report.inventory_latency = Latency::of(&mut inv_us);
    report.heartbeat_latency = Latency::of(&mut hb_all);
    report.heartbeat_latency_steady = Latency::of(&mut hb_steady);
    report.timer_lag = Latency::of(&mut lag_us);
    report.total_errors = report.errors.values().sum();
    report.wall_secs = sh.started.elapsed().as_secs_f64();
    let (cpu, rss) = own_usage();
    report.client_cpu_secs = cpu;
    report.client_peak_rss_mib = rss;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s: Vec<u64> = (1..=1000).rev().map(|n| n * 1000).collect();
        let l = Latency::of(&mut s);
        assert_eq!(l.count, 1000);
        assert_eq!(l.p50_ms, 500.0);
        assert_eq!(l.p99_ms, 990.0);
        assert_eq!(l.p999_ms, 999.0);
        assert_eq!(l.max_ms, 1000.0);
        assert_eq!(Latency::of(&mut []).count, 0);
    }

    #[test]
    fn identities_are_distinct_global_and_not_placeholders() {
        let a = identity(0);
        let b = identity(1);
        assert_ne!(a.system_uuid, b.system_uuid);
        assert_ne!(a.system_serial, b.system_serial);
        let macs: std::collections::HashSet<String> = (0..1000)
            .flat_map(|m| identity(m).macs.into_iter().map(|n| n.mac))
            .collect();
        assert_eq!(macs.len(), 4000);
        for m in &macs {
            let first = u8::from_str_radix(&m[..2], 16).unwrap();
            assert_eq!(first & 0x02, 0, "{m} must be globally administered");
        }
        assert_eq!(mac(ID_SPACE - 1, 3), "00:1b:21:ff:ff:ff");
        let u = a.system_uuid.unwrap();
        assert_eq!(uuid::Uuid::parse_str(&u).unwrap().get_version_num(), 4);
    }

    #[test]
    fn inventory_is_realistically_sized() {
        let inv = inventory(42);
        assert_eq!(inv.pci.len(), 100);
        assert_eq!(inv.memory.as_ref().unwrap().dimms.len(), 16);
        let bytes = serde_json::to_vec(&inv).unwrap().len();
        assert!((20_000..200_000).contains(&bytes), "{bytes} bytes");
    }
}
