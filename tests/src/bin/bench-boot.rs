//! The boot benchmark: seconds from power-on to inventory stored, per machine, BIOS and UEFI,
//! against the floor. `scripts/bench-boot` builds everything and runs this.
//!
//! `bench-boot [--rounds N] [--firmware bios|uefi|both]` (rounds also from `BENCH_ROUNDS`,
//! default 2)
//!
//! Each run is one QEMU machine (512 MiB, 1 CPU, one 64 MiB virtio disk, an SMBIOS identity of
//! its own) in a fresh virtual rack (`anneal_tests::rack`), one machine at a time:
//!
//! - **Anneal**: `anneal serve` with full DHCP, TFTP and the discovery image
//!   (`ANNEAL_DISCOVERY_IMAGE`). Measured: QEMU start → the machine's inventory stored (the
//!   record's `inventory_at`, the server's own clock).
//! - **Floor**: no Anneal. dnsmasq gives DHCP and TFTP (Debian's `undionly.kpxe` /
//!   `snponly.efi`; iPXE clients get the script URL instead) and a minimal HTTP server (a thread
//!   of this program inside the namespace, timing every request) serves an iPXE script that
//!   loads the *same* `vmlinuz` with the same kernel arguments, and a bare busybox initrd built
//!   here from the discovery image's own files (its busybox-static binary and NIC modules): an
//!   init that mounts proc/sys/dev, loads the NIC modules, runs `udhcpc` and fetches
//!   `/done?mac=…`. Measured: QEMU start → that request.
//!
//! BIOS is SeaBIOS with QEMU's iPXE ROM on an e1000; UEFI is OVMF's own PXE client on a
//! virtio-net NIC, fetching `snponly.efi` by TFTP. Rounds alternate which side goes first.
//! Every wait has a deadline; an error or Ctrl-C tears down machines, servers and namespace.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use anneal_tests::rack::anneal::log_field;
use anneal_tests::rack::system::{self, Need};
use anneal_tests::rack::{
    image, wait, Anneal, DiskBus, Dnsmasq, Firmware, Machine, MachineSpec, Rack, Smbios, BRIDGE,
};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// Deadline for one machine from power-on to its end point.
const DEADLINE: Duration = Duration::from_secs(600);
/// How often the consoles and logs are looked at (milestones seen by polling are this coarse).
const POLL: Duration = Duration::from_millis(100);
/// How often the operator API is asked about the machine (its times come from the record).
const API_POLL: Duration = Duration::from_secs(2);
/// The HTTP port of the floor's server (Anneal's boot listener uses the same).
const FLOOR_PORT: u16 = 8080;
/// The kernel arguments of Anneal's discovery script without Anneal's own (`anneal.*`,
/// `BOOTIF`): `server/src/boot/render.rs` and the default `discovery_args`.
const KERNEL_ARGS: &str = "initrd=initrd.img rootfstype=ramfs console=tty0 console=ttyS0,115200n8";
/// The NIC drivers the floor's init loads (with their dependencies), for e1000 and virtio-net.
const FLOOR_MODULES: [&str; 3] = ["e1000", "virtio_pci", "virtio_net"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Anneal,
    Floor,
}

struct Options {
    rounds: usize,
    firmwares: Vec<Firmware>,
}

fn options() -> Result<Options> {
    let mut o = Options {
        rounds: match std::env::var("BENCH_ROUNDS") {
            Ok(v) => v.parse().context("BENCH_ROUNDS must be a number")?,
            Err(_) => 2,
        },
        firmwares: vec![Firmware::Bios, Firmware::Uefi],
    };
    let usage = "usage: bench-boot [--rounds N] [--firmware bios|uefi|both]";
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--rounds" => o.rounds = args.next().context(usage)?.parse().context(usage)?,
            "--firmware" => {
                o.firmwares = match args.next().as_deref() {
                    Some("bios") => vec![Firmware::Bios],
                    Some("uefi") => vec![Firmware::Uefi],
                    Some("both") => vec![Firmware::Bios, Firmware::Uefi],
                    _ => bail!(usage),
                }
            }
            _ => bail!(usage),
        }
    }
    ensure!((1..=20).contains(&o.rounds), "rounds must be 1 to 20");
    Ok(o)
}

fn fw_name(fw: Firmware) -> &'static str {
    match fw {
        Firmware::Bios => "BIOS",
        Firmware::Uefi => "UEFI",
    }
}

/// One measured boot: seconds from QEMU start to the end point, and the milestones on the way.
#[derive(Debug, Clone)]
struct Run {
    side: Side,
    firmware: Firmware,
    round: usize,
    /// (milestone, seconds after QEMU start), in the order of [`MILESTONES`].
    marks: HashMap<&'static str, f64>,
    total: f64,
    /// 1-minute load average before and after the run.
    load: (f64, f64),
}

/// Milestones shown per run. `lease`: the firmware's first DHCP ACK; `script`: the iPXE script
/// that loads the kernel was served; `kernel`: "Linux version" on the serial console; `init`:
/// init's first line on the console; `OS lease`: the first DHCP ACK after that script;
/// `enrolled`: the agent's enrollment (Anneal only).
const MILESTONES: [&str; 6] = ["lease", "script", "kernel", "init", "OS lease", "enrolled"];

fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

fn check_stop() -> Result<()> {
    if STOP.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// The machine of run `n`: 512 MiB, 1 CPU, one small virtio disk, its own MAC and identity.
fn spec(fw: Firmware, n: usize, dir: &Path) -> Result<MachineSpec> {
    let mac = format!("52:54:00:be:{:02x}:{:02x}", n / 256, n % 256);
    let disk = dir.join(format!("disk-{n}.img"));
    std::fs::File::create(&disk)
        .and_then(|f| f.set_len(64 << 20))
        .with_context(|| format!("creating {}", disk.display()))?;
    let base = match fw {
        Firmware::Bios => MachineSpec::bios(&mac),
        Firmware::Uefi => MachineSpec::uefi(&mac),
    };
    let mut s = base
        .with_disk_on(DiskBus::Virtio, &disk, &format!("BENCH-DISK-{n:04}"))
        .with_smbios(Smbios {
            manufacturer: "Anneal Bench".into(),
            product: "Boot Bench".into(),
            serial: format!("BENCH-{n:04}"),
            uuid: format!("be4c0000-0000-4000-8000-{n:012x}"),
            chassis_serial: format!("BENCH-CHS-{n:04}"),
        });
    s.name = format!("bench-{}-{n}", fw_name(fw).to_lowercase());
    s.memory_mb = 512;
    s.cpus = 1;
    Ok(s)
}

/// Seconds from `t0` to a tracing log line's leading RFC 3339 timestamp.
fn log_secs(line: &str, t0: SystemTime) -> Option<f64> {
    let stamp = line.split_whitespace().next()?;
    let at =
        time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).ok()?;
    rfc_secs(at, t0)
}

fn rfc_secs(at: time::OffsetDateTime, t0: SystemTime) -> Option<f64> {
    let at = SystemTime::from(at);
    Some(match at.duration_since(t0) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    })
}

fn record_secs(v: &Value, t0: SystemTime) -> Option<f64> {
    let at =
        time::OffsetDateTime::parse(v.as_str()?, &time::format_description::well_known::Rfc3339)
            .ok()?;
    rfc_secs(at, t0)
}

/// Milestones seen on the serial console, stamped when first noticed.
struct Console {
    t0: Instant,
    init_marker: &'static str,
    kernel: Option<f64>,
    init: Option<f64>,
}

impl Console {
    fn look(&mut self, text: &str) {
        let now = self.t0.elapsed().as_secs_f64();
        if self.kernel.is_none() && text.contains("Linux version") {
            self.kernel = Some(now);
        }
        if self.init.is_none() && text.contains(self.init_marker) {
            self.init = Some(now);
        }
    }
}

/// The machine record whose serial is `serial`, in full, if it exists yet.
fn record(server: &Anneal, serial: &str) -> Result<Option<Value>> {
    let list = server.api_get("/api/v1/machines")?;
    for m in list.as_array().context("machine list is an array")? {
        if m["serial"].as_str() == Some(serial) {
            let id = m["id"].as_str().context("machine id")?;
            return server.api_get(&format!("/api/v1/machines/{id}")).map(Some);
        }
    }
    Ok(None)
}

fn run_anneal(fw: Firmware, n: usize, round: usize, work: &Path) -> Result<Run> {
    let load0 = loadavg();
    let rack = Rack::new()?;
    let config = format!("{}{}", image::config_line(), rack.full_dhcp_config());
    let server = Anneal::start(&rack, &config)?;
    let spec = spec(fw, n, work)?;
    let mac = spec.mac.clone();
    let serial = spec
        .smbios
        .as_ref()
        .map(|s| s.serial.clone())
        .unwrap_or_default();
    let t0_sys = SystemTime::now();
    let t0 = Instant::now();
    let mut vm = Machine::start(&rack, spec)?;
    let mut console = Console {
        t0,
        init_marker: "anneal: discovery image up",
        kernel: None,
        init: None,
    };
    let mut last_api = None::<Instant>;
    let mut last_err = None;
    let done = loop {
        check_stop()?;
        if t0.elapsed() > DEADLINE {
            bail!(
                "no inventory from {} within {}s\nlast API error: {last_err:?}\n{}\nserver log:\n{}",
                vm.spec.name,
                DEADLINE.as_secs(),
                vm.tails(),
                server.log_tail(30)
            );
        }
        if !vm.is_running() {
            bail!("QEMU exited\n{}", vm.tails());
        }
        console.look(&vm.serial_text());
        if last_api.is_none_or(|t| t.elapsed() >= API_POLL) && console.kernel.is_some() {
            last_api = Some(Instant::now());
            match record(&server, &serial) {
                Ok(Some(m)) if m["inventory"].is_object() => break m,
                Ok(_) => {}
                Err(e) => last_err = Some(format!("{e:#}")),
            }
        }
        std::thread::sleep(POLL);
    };
    let total = record_secs(&done["inventory_at"], t0_sys).context("inventory_at")?;
    let mut marks = HashMap::new();
    if let Some(s) = record_secs(&done["created_at"], t0_sys) {
        marks.insert("enrolled", s);
    }
    // DHCP and script from the server's log, by its timestamps.
    let log = server.log_text();
    let acks: Vec<f64> = log
        .lines()
        .filter(|l| {
            l.contains("DHCP reply sent")
                && log_field(l, "kind").as_deref() == Some("ack")
                && log_field(l, "mac").as_deref() == Some(mac.as_str())
        })
        .filter_map(|l| log_secs(l, t0_sys))
        .collect();
    let script = server
        .scripts_served()
        .into_iter()
        .find(|s| s.mac == mac)
        .and_then(|s| log_secs(&s.line, t0_sys));
    fill_common(&mut marks, &acks, script, &console);
    let load1 = loadavg();
    vm.quit()?;
    drop(server);
    drop(rack);
    Ok(Run {
        side: Side::Anneal,
        firmware: fw,
        round,
        marks,
        total,
        load: (load0, load1),
    })
}

fn fill_common(
    marks: &mut HashMap<&'static str, f64>,
    acks: &[f64],
    script: Option<f64>,
    console: &Console,
) {
    if let Some(&first) = acks.first() {
        marks.insert("lease", first);
    }
    if let Some(s) = script {
        marks.insert("script", s);
        if let Some(&os) = acks.iter().find(|&&a| a > s) {
            marks.insert("OS lease", os);
        }
    }
    if let Some(k) = console.kernel {
        marks.insert("kernel", k);
    }
    if let Some(i) = console.init {
        marks.insert("init", i);
    }
}

// ------------------------------------------------------------------------------------------
// The floor: a bare busybox initrd, dnsmasq and a minimal HTTP server.

/// Files the floor's HTTP server serves (and the initrd it built).
struct FloorFiles {
    vmlinuz: PathBuf,
    initrd: PathBuf,
    script: PathBuf,
    /// Modules in load order (file names), for the report.
    modules: Vec<String>,
}

fn sh(cmd: &str) -> Result<()> {
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd}"))?;
    ensure!(
        out.status.success(),
        "`{cmd}` failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

fn quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', "'\\''"))
}

/// Build the floor's initrd from the discovery image: its busybox (Debian's busybox-static)
/// and the NIC modules with their dependencies, an init and a udhcpc script; uncompressed
/// newc cpio. The server's URL is written into the init.
fn build_floor(image_dir: &Path, work: &Path, server: &str) -> Result<FloorFiles> {
    let unpacked = work.join("discovery-unpacked");
    let root = work.join("floor-root");
    std::fs::create_dir_all(&unpacked)?;
    let initrd = image_dir.join(anneal_server::boot::INITRD_NAME);
    let mut magic = [0u8; 4];
    std::fs::File::open(&initrd)
        .and_then(|mut f| f.read_exact(&mut magic))
        .with_context(|| format!("reading {}", initrd.display()))?;
    let decompress = match magic {
        [0x28, 0xb5, 0x2f, 0xfd] => "zstd -dc",
        [0x1f, 0x8b, _, _] => "gzip -dc",
        _ => "cat",
    };
    sh(&format!(
        "cd {} && {decompress} {} | cpio -idm --quiet 'bin/busybox' 'lib/modules/*' 'usr/lib/modules/*'",
        quote(&unpacked),
        quote(&initrd)
    ))
    .context("unpacking busybox and modules from the discovery initrd")?;
    let busybox = unpacked.join("bin/busybox");
    ensure!(busybox.is_file(), "no bin/busybox in the discovery initrd");
    let modules_base = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|p| unpacked.join(p))
        .find(|p| p.is_dir())
        .context("no lib/modules in the discovery initrd")?;
    let release = std::fs::read_dir(&modules_base)?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.join("modules.dep").is_file())
        .context("no modules.dep in the discovery initrd")?;
    let dep_text = std::fs::read_to_string(release.join("modules.dep"))?;
    let deps: HashMap<String, Vec<String>> = dep_text
        .lines()
        .filter_map(|l| {
            let (m, d) = l.split_once(':')?;
            Some((
                m.trim().to_string(),
                d.split_whitespace().map(str::to_string).collect(),
            ))
        })
        .collect();
    let by_name = |name: &str| -> Option<String> {
        deps.keys()
            .find(|k| {
                let base = k.rsplit('/').next().unwrap_or(k);
                let stem = base.split(".ko").next().unwrap_or(base);
                stem.replace('-', "_") == name
            })
            .cloned()
    };
    // Load order: every module after its dependencies.
    fn visit(m: &str, deps: &HashMap<String, Vec<String>>, order: &mut Vec<String>, depth: usize) {
        if depth > 32 || order.iter().any(|o| o == m) {
            return;
        }
        for d in deps.get(m).into_iter().flatten() {
            visit(d, deps, order, depth + 1);
        }
        order.push(m.to_string());
    }
    let mut order = Vec::new();
    let builtin = std::fs::read_to_string(release.join("modules.builtin")).unwrap_or_default();
    for name in FLOOR_MODULES {
        match by_name(name) {
            Some(m) => visit(&m, &deps, &mut order, 0),
            None => ensure!(
                builtin.lines().any(|l| l.ends_with(&format!("/{name}.ko"))),
                "module {name} is neither in the image nor built into its kernel"
            ),
        }
    }
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    for d in ["bin", "lib/modules", "proc", "sys", "dev", "tmp"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy(&busybox, root.join("bin/busybox"))?;
    let mut names = Vec::new();
    for m in &order {
        let base = m.rsplit('/').next().unwrap_or(m).to_string();
        std::fs::copy(release.join(m), root.join("lib/modules").join(&base))
            .with_context(|| format!("copying {m}"))?;
        names.push(base);
    }
    let init = format!(
        r#"#!/bin/busybox sh
# The floor: the least a network-booted Linux does before it can report.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "floor: init up"
for m in {modules}; do insmod /lib/modules/$m 2>/dev/null; done
ip link set lo up
IF=
i=0
while [ -z "$IF" ] && [ $i -lt 300 ]; do
	for d in /sys/class/net/*; do
		n=${{d##*/}}
		[ "$n" = lo ] || {{ IF=$n; break; }}
	done
	[ -n "$IF" ] || sleep 0.1
	i=$((i + 1))
done
echo "floor: NIC $IF"
ip link set "$IF" up
udhcpc -i "$IF" -f -q -n -t 30 -T 2 -s /bin/udhcpc.script
MAC=$(cat /sys/class/net/$IF/address)
i=0
# (no -T: busybox 1.35's wget segfaults on it)
until wget -q -O /dev/null "{server}/done?mac=$MAC"; do
	i=$((i + 1))
	[ $i -lt 30 ] || break
	sleep 1
done
echo "floor: done"
exec sleep 2147483647
"#,
        modules = names.join(" "),
    );
    let udhcpc = r#"#!/bin/sh
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set dev "$interface" up
	;;
bound | renew)
	ip -4 addr replace "$ip/${mask:-24}" dev "$interface"
	for r in $router; do
		ip -4 route replace default via "$r" dev "$interface" && break
	done
	;;
esac
exit 0
"#;
    write_exec(&root.join("init"), &init)?;
    write_exec(&root.join("bin/udhcpc.script"), udhcpc)?;
    let floor_initrd = work.join("floor-initrd.img");
    sh(&format!(
        "cd {} && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > {}",
        quote(&root),
        quote(&floor_initrd)
    ))
    .context("packing the floor initrd")?;
    let script = work.join("floor-boot.ipxe");
    std::fs::write(
        &script,
        format!(
            "#!ipxe\n\
             kernel {server}/vmlinuz {KERNEL_ARGS} || shell\n\
             initrd {server}/initrd.img || shell\n\
             boot || shell\n"
        ),
    )?;
    std::fs::remove_dir_all(&unpacked).ok();
    Ok(FloorFiles {
        vmlinuz: image_dir.join(anneal_server::boot::KERNEL_NAME),
        initrd: floor_initrd,
        script,
        modules: names,
    })
}

fn write_exec(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// One request the floor's HTTP server answered.
#[derive(Debug, Clone)]
struct Served {
    path: String,
    start: Instant,
}

/// A minimal HTTP/1.x file server on a thread inside the rack's namespace: GET of a few named
/// files (`sendfile` through `std::io::copy`), `Connection: close`, every request recorded.
struct Httpd {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    served: Arc<Mutex<Vec<Served>>>,
}

impl Httpd {
    fn start(rack: &Rack, port: u16, files: HashMap<String, PathBuf>) -> Result<Httpd> {
        let path = format!("/run/netns/{}", rack.netns.name());
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<Result<()>>();
        let (stop2, served2) = (stop.clone(), served.clone());
        let files = Arc::new(files);
        let thread = std::thread::Builder::new()
            .name("floor-httpd".into())
            .spawn(move || {
                let listener = (|| -> Result<TcpListener> {
                    let fd = std::fs::File::open(&path)?;
                    nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)?;
                    let l = TcpListener::bind(("0.0.0.0", port))?;
                    l.set_nonblocking(true)?;
                    Ok(l)
                })();
                let listener = match listener {
                    Ok(l) => {
                        let _ = tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                while !stop2.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (files, served) = (files.clone(), served2.clone());
                            std::thread::spawn(move || {
                                let _ = serve_one(stream, &files, &served);
                            });
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
            .context("HTTP server thread")?;
        let mut httpd = Httpd {
            stop,
            thread: Some(thread),
            served,
        };
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(httpd),
            Ok(Err(e)) => {
                httpd.shutdown();
                Err(e).context("starting the floor's HTTP server")
            }
            Err(_) => {
                httpd.shutdown();
                bail!("the floor's HTTP server did not start")
            }
        }
    }

    fn served(&self) -> Vec<Served> {
        self.served.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve_one(
    stream: TcpStream,
    files: &HashMap<String, PathBuf>,
    served: &Mutex<Vec<Served>>,
) -> Result<()> {
    let start = Instant::now();
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
    }
    let target = request.split_whitespace().nth(1).unwrap_or("").to_string();
    let name = target
        .split('?')
        .next()
        .unwrap_or("")
        .trim_start_matches('/');
    if let Ok(mut s) = served.lock() {
        s.push(Served {
            path: target.clone(),
            start,
        });
    }
    let mut out = stream;
    match files.get(name) {
        Some(path) => {
            let mut f = std::fs::File::open(path)?;
            let len = f.metadata()?.len();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
            )?;
            std::io::copy(&mut f, &mut out)?;
        }
        None => write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?,
    }
    out.flush()?;
    Ok(())
}

fn run_floor(fw: Firmware, n: usize, round: usize, work: &Path, floor: &FloorFiles) -> Result<Run> {
    let load0 = loadavg();
    let rack = Rack::new()?;
    let server = rack.server_ip();
    let files = HashMap::from([
        ("boot.ipxe".to_string(), floor.script.clone()),
        ("vmlinuz".to_string(), floor.vmlinuz.clone()),
        ("initrd.img".to_string(), floor.initrd.clone()),
        ("done".to_string(), floor.script.clone()),
    ]);
    let httpd = Httpd::start(&rack, FLOOR_PORT, files)?;
    let range = format!(
        "--dhcp-range={},{},255.255.255.0,10m",
        rack.ip(100),
        rack.ip(199)
    );
    let script_url = format!("--dhcp-boot=tag:ipxe,http://{server}:{FLOOR_PORT}/boot.ipxe");
    let dnsmasq = Dnsmasq::start(
        &rack,
        &[
            &format!("--interface={BRIDGE}"),
            "--bind-interfaces",
            &range,
            "--dhcp-authoritative",
            "--no-ping",
            "--dhcp-userclass=set:ipxe,iPXE",
            "--dhcp-match=set:efi64,option:client-arch,7",
            "--dhcp-match=set:efi64,option:client-arch,9",
            &script_url,
            "--dhcp-boot=tag:!ipxe,tag:efi64,snponly.efi",
            "--dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
            "--enable-tftp",
            &format!("--tftp-root={}", system::IPXE_DIR),
        ],
    )?;
    let spec = spec(fw, n, work)?;
    let mac = spec.mac.clone();
    let t0 = Instant::now();
    let mut vm = Machine::start(&rack, spec)?;
    let mut console = Console {
        t0,
        init_marker: "floor: init up",
        kernel: None,
        init: None,
    };
    let mut acks: Vec<f64> = Vec::new();
    let done_path = format!("/done?mac={mac}");
    let total = loop {
        check_stop()?;
        if t0.elapsed() > DEADLINE {
            bail!(
                "no /done from {} within {}s\n{}\ndnsmasq:\n{}",
                vm.spec.name,
                DEADLINE.as_secs(),
                vm.tails(),
                wait::tail(&dnsmasq.log_text(), 30)
            );
        }
        if !vm.is_running() {
            bail!("QEMU exited\n{}", vm.tails());
        }
        let now = t0.elapsed().as_secs_f64();
        let log = dnsmasq.log_text();
        let seen = log
            .lines()
            .filter(|l| l.contains("DHCPACK(") && l.to_ascii_lowercase().contains(&mac))
            .count();
        while acks.len() < seen {
            acks.push(now);
        }
        console.look(&vm.serial_text());
        if let Some(d) = httpd.served().iter().find(|s| s.path == done_path) {
            break d.start.duration_since(t0).as_secs_f64();
        }
        std::thread::sleep(POLL);
    };
    let mut marks = HashMap::new();
    let script = httpd
        .served()
        .iter()
        .find(|s| s.path == "/boot.ipxe")
        .map(|s| s.start.duration_since(t0).as_secs_f64());
    fill_common(&mut marks, &acks, script, &console);
    let load1 = loadavg();
    vm.quit()?;
    drop(dnsmasq);
    drop(httpd);
    drop(rack);
    Ok(Run {
        side: Side::Floor,
        firmware: fw,
        round,
        marks,
        total,
        load: (load0, load1),
    })
}

// ------------------------------------------------------------------------------------------

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn print_report(runs: &[Run], o: &Options, floor: &FloorFiles) {
    println!();
    println!(
        "| firmware | Anneal (best) | floor (best) | difference | ratio | Anneal, every round | floor, every round |"
    );
    println!("|---|---:|---:|---:|---:|---|---|");
    for &fw in &o.firmwares {
        let of = |side| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.firmware == fw && r.side == side)
                .map(|r| r.total)
                .collect()
        };
        let (a, f) = (of(Side::Anneal), of(Side::Floor));
        if a.is_empty() || f.is_empty() {
            continue;
        }
        let (ba, bf) = (min(&a), min(&f));
        let list = |xs: &[f64]| {
            xs.iter()
                .map(|x| format!("{x:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {} | {ba:.1} s | {bf:.1} s | +{:.1} s | {:.2} | {} | {} |",
            fw_name(fw),
            ba - bf,
            ba / bf,
            list(&a),
            list(&f)
        );
    }
    println!();
    println!("Milestones, seconds after QEMU start (`-`: not seen):");
    println!();
    print!("| firmware | side | round |");
    for m in MILESTONES {
        print!(" {m} |");
    }
    println!(" end | load before/after |");
    print!("|---|---|---:|");
    for _ in MILESTONES {
        print!("---:|");
    }
    println!("---:|---|");
    let mut sorted: Vec<&Run> = runs.iter().collect();
    sorted.sort_by_key(|r| (r.firmware as u8, r.side as u8, r.round));
    for r in sorted {
        print!(
            "| {} | {} | {} |",
            fw_name(r.firmware),
            match r.side {
                Side::Anneal => "Anneal",
                Side::Floor => "floor",
            },
            r.round
        );
        for m in MILESTONES {
            match r.marks.get(m) {
                Some(s) => print!(" {s:.1} |"),
                None => print!(" - |"),
            }
        }
        println!(" **{:.1}** | {:.2}/{:.2} |", r.total, r.load.0, r.load.1);
    }
    println!();
    let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let image = image::discovery_dir();
    println!(
        "Anneal: end = inventory stored (the record's inventory_at); lease, script and OS lease from the server log's timestamps; \
         enrolled = the record's created_at. Floor: end = the initrd's GET /done; lease and OS lease when dnsmasq's log showed the ACK \
         (polled every {} ms), script = the GET of the iPXE script. kernel and init: when the serial console showed them (polled).",
        POLL.as_millis()
    );
    println!(
        "Discovery initrd {} bytes; floor initrd {} bytes (busybox + {}); vmlinuz {} bytes (both).",
        size(&image.join(anneal_server::boot::INITRD_NAME)),
        size(&floor.initrd),
        floor.modules.join(", "),
        size(&floor.vmlinuz)
    );
}

fn main() -> Result<()> {
    let o = options()?;
    let needs: Vec<Need> = system::PXE
        .iter()
        .copied()
        .chain([Need::Dnsmasq, Need::DiscoveryImage])
        .collect();
    let missing: Vec<&str> = needs.iter().filter_map(|n| n.missing()).collect();
    if !missing.is_empty() {
        bail!("this machine lacks: {}", missing.join(", "));
    }
    // The rack looks for `anneal` beside a test executable; a binary's neighbour is it.
    if std::env::var_os(anneal_tests::rack::binaries::ANNEAL_BIN_ENV).is_none() {
        let beside = std::env::current_exe()?.with_file_name("anneal");
        ensure!(
            beside.is_file(),
            "no anneal binary at {} (build it, or set ANNEAL_BIN)",
            beside.display()
        );
        std::env::set_var(anneal_tests::rack::binaries::ANNEAL_BIN_ENV, &beside);
    }
    let handler = nix::sys::signal::SigHandler::Handler(on_signal);
    for sig in [nix::sys::signal::SIGINT, nix::sys::signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { nix::sys::signal::signal(sig, handler) }.context("installing a signal handler")?;
    }
    let started = Instant::now();
    let say = |what: &str| eprintln!("[{:>5.0}s] {what}", started.elapsed().as_secs_f64());

    let work = tempfile::tempdir()?;
    // Every rack uses the same subnet, so the floor's server is always at the rack's `.1`.
    let server_url = format!("http://10.55.0.1:{FLOOR_PORT}");
    let floor = build_floor(&image::discovery_dir(), work.path(), &server_url)?;
    say(&format!(
        "floor initrd: {} ({} bytes: busybox, {})",
        floor.initrd.display(),
        std::fs::metadata(&floor.initrd)?.len(),
        floor.modules.join(" ")
    ));

    let mut runs = Vec::new();
    let mut n = 0;
    for round in 1..=o.rounds {
        for &fw in &o.firmwares {
            let order = if round % 2 == 1 {
                [Side::Anneal, Side::Floor]
            } else {
                [Side::Floor, Side::Anneal]
            };
            for side in order {
                check_stop()?;
                n += 1;
                say(&format!(
                    "round {round}, {}, {side:?}: starting",
                    fw_name(fw)
                ));
                let run = match side {
                    Side::Anneal => run_anneal(fw, n, round, work.path()),
                    Side::Floor => run_floor(fw, n, round, work.path(), &floor),
                }
                .with_context(|| format!("round {round}, {}, {side:?}", fw_name(fw)))?;
                let marks: Vec<String> = MILESTONES
                    .iter()
                    .filter_map(|m| run.marks.get(m).map(|s| format!("{m} {s:.1}")))
                    .collect();
                say(&format!(
                    "round {round}, {}, {side:?}: {:.1} s ({}; load {:.2} -> {:.2})",
                    fw_name(fw),
                    run.total,
                    marks.join(", "),
                    run.load.0,
                    run.load.1
                ));
                runs.push(run);
            }
        }
    }
    print_report(&runs, &o, &floor);
    Ok(())
}
