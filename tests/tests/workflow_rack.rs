//! End to end in the virtual rack: the issue's three-boot workflow on a BIOS and a UEFI
//! machine — a discovery stage with script tasks → reboot → a second stage in the discovery
//! image → reboot → local boot — and again when it is re-run.
//!
//! Each task appends a line to the machine's own (virtual) disk, read from the host
//! afterwards: the witness that every task ran exactly once per run, independent of what the
//! server's tables say. The agent reboots the machine itself (`reboot -f` from the image's
//! init); for the re-run, the machine sits in its local boot, so the test power-cycles it
//! through QMP, as an operator's BMC would.
//!
//! Needs the rack and the built image (`ANNEAL_DISCOVERY_IMAGE`, set by `scripts/test`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anneal_tests::rack::system::{rack_test, Need};
use anneal_tests::rack::{image, Anneal, DiskBus, Machine, MachineSpec, Rack, Smbios};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

/// Both machines, both runs: six boots each under software emulation on two cores.
const DEADLINE: Duration = Duration::from_secs(1500);

/// Appends `$1` to the text at the start of the first virtio disk (NUL-terminated).
const WITNESS: &str = r#"mark() {
  n=$(head -c 4096 /dev/vda | tr -d '\000' | wc -c)
  printf '%s\n' "$1" | dd of=/dev/vda bs=1 seek="$n" conv=notrunc 2>/dev/null
  sync
}"#;

fn content() -> String {
    let task = |name: &str, extra: &str| {
        format!(
            "kind: task\nname: {name}\ntimeout_secs: 120\nscript: |\n{}\n  {extra}\n  mark {name}\n",
            WITNESS
                .lines()
                .map(|l| format!("  {l}"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    [
        task(
            "first-a",
            "echo \"first stage, booted $(cat /proc/sys/kernel/random/boot_id)\"",
        ),
        task("first-b", "echo to stderr >&2; uname -r"),
        task(
            "second-a",
            "echo \"second stage, booted $(cat /proc/sys/kernel/random/boot_id)\"",
        ),
        "kind: stage\nname: first\nboot_env: discovery\ntasks: [first-a, first-b]\nthen: reboot\n"
            .into(),
        "kind: stage\nname: second\nboot_env: discovery\ntasks: [second-a]\n".into(),
        "kind: workflow\nname: three-boot\nstages: [first, second, local-boot]\n".into(),
    ]
    .join("---\n")
}

struct Subject<'r> {
    name: &'static str,
    serial: String,
    disk: PathBuf,
    vm: Machine<'r>,
    id: Option<String>,
    /// Runs completed so far.
    done: u32,
}

fn spec(uefi: bool, dir: &Path) -> Result<(MachineSpec, String, PathBuf)> {
    let n = if uefi { 2 } else { 1 };
    let disk = dir.join(format!("disk-{n}.img"));
    std::fs::File::create(&disk)?.set_len(64 << 20)?;
    let serial = format!("FLOW-{n:04}");
    let mac = format!("52:54:00:f1:00:{n:02x}");
    let base = if uefi {
        MachineSpec::uefi(&mac)
    } else {
        MachineSpec::bios(&mac)
    };
    let mut s = base
        .with_disk_on(DiskBus::Virtio, &disk, &format!("FLOW-DISK-{n}"))
        .with_smbios(Smbios {
            manufacturer: "Anneal Rack".into(),
            product: "Workflow Server".into(),
            serial: serial.clone(),
            uuid: format!("f10f0000-0000-4000-8000-{n:012x}"),
            chassis_serial: format!("FLOW-CHS-{n:04}"),
        });
    s.memory_mb = 512;
    Ok((s, serial, disk))
}

/// The text the tasks wrote to the start of a disk image.
fn witness(disk: &Path) -> Result<String> {
    let bytes = std::fs::read(disk)?;
    let end = bytes[..4096].iter().position(|b| *b == 0).unwrap_or(4096);
    Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

fn machine_id(server: &Anneal, serial: &str) -> Result<Option<String>> {
    let list = server.api_get("/api/v1/machines")?;
    Ok(list
        .as_array()
        .context("machine list")?
        .iter()
        .find(|m| m["serial"].as_str() == Some(serial))
        .and_then(|m| m["id"].as_str().map(str::to_string)))
}

fn assign(server: &Anneal, id: &str) -> Result<Value> {
    server.api_put(
        &format!("/api/v1/machines/{id}/workflow"),
        json!({ "workflow": "three-boot" }),
    )
}

/// Check a finished run: every job succeeded with its log retrievable; the disk says each
/// task ran once per completed run.
fn check_done(server: &Anneal, s: &Subject) -> Result<()> {
    let id = s.id.as_deref().context("id")?;
    let jobs = server.api_get(&format!("/api/v1/jobs?machine={id}"))?;
    let jobs = jobs.as_array().context("jobs")?;
    ensure!(
        jobs.len() == 3 * s.done as usize,
        "{}: {} jobs after {} run(s): {jobs:#?}",
        s.name,
        jobs.len(),
        s.done
    );
    for j in jobs {
        ensure!(j["state"] == "succeeded", "{}: {j:#}", s.name);
        let attempt = j["id"].as_str().context("attempt id")?;
        let log = server.api_get_text(&format!("/api/v1/jobs/{attempt}/log"))?;
        ensure!(
            j["log_bytes"].as_u64() == Some(log.len() as u64) && !log.is_empty(),
            "{}: log of {} has {} bytes: {log:?}",
            s.name,
            j["task"],
            log.len()
        );
        if j["task"] == "first-b" {
            ensure!(log.contains("to stderr\n"), "stderr in the log: {log:?}");
        }
    }
    let once = "first-a\nfirst-b\nsecond-a\n";
    let want = once.repeat(s.done as usize);
    let got = witness(&s.disk)?;
    ensure!(
        got == want,
        "{}: the disk says {got:?}, want {want:?}",
        s.name
    );
    Ok(())
}

fn three_boot_twice() -> Result<()> {
    let rack = Rack::new()?;
    let config = format!("{}{}", image::config_line(), rack.full_dhcp_config());
    let server = Anneal::start(&rack, &config)?;
    let applied = server.api_post(
        "/api/v1/content",
        Some(json!({ "files": [{ "path": "rack.yaml", "text": content() }] })),
    )?;
    ensure!(applied["version"] == 1, "content applied: {applied:#}");
    let work = tempfile::tempdir()?;
    let mut subjects = Vec::new();
    for (name, uefi) in [("bios", false), ("uefi", true)] {
        let (spec, serial, disk) = spec(uefi, work.path())?;
        let vm = Machine::start(&rack, spec)?;
        subjects.push(Subject {
            name,
            serial,
            disk,
            vm,
            id: None,
            done: 0,
        });
    }
    let started = Instant::now();
    while subjects.iter().any(|s| s.done < 2) {
        if started.elapsed() > DEADLINE {
            let states: Vec<String> = subjects
                .iter()
                .map(|s| {
                    let run = s.id.as_deref().and_then(|id| {
                        server
                            .api_get(&format!("/api/v1/machines/{id}/workflow"))
                            .ok()
                    });
                    format!(
                        "{}: {} run(s) done, now {run:#?}\n{}",
                        s.name,
                        s.done,
                        s.vm.tails()
                    )
                })
                .collect();
            bail!(
                "not done within {} s:\n{}\nserver log:\n{}",
                DEADLINE.as_secs(),
                states.join("\n"),
                server.log_tail(40)
            );
        }
        for s in subjects.iter_mut().filter(|s| s.done < 2) {
            ensure!(s.vm.is_running(), "{} stopped\n{}", s.name, s.vm.tails());
            let Some(id) = s.id.clone() else {
                // Discovered: its agent runs in the discovery image, where the first stage
                // starts at once.
                if let Some(id) = machine_id(&server, &s.serial)? {
                    let run = assign(&server, &id)?;
                    ensure!(run["phase"] == "ready", "{}: {run:#}", s.name);
                    eprintln!(
                        "[{:>4.0}s] {}: discovered, workflow assigned",
                        started.elapsed().as_secs_f64(),
                        s.name
                    );
                    s.id = Some(id);
                }
                continue;
            };
            let run = server.api_get(&format!("/api/v1/machines/{id}/workflow"))?;
            match run["phase"].as_str() {
                Some("done") => {
                    s.done += 1;
                    eprintln!(
                        "[{:>4.0}s] {}: run {} done",
                        started.elapsed().as_secs_f64(),
                        s.name,
                        s.done
                    );
                    check_done(&server, s)?;
                    if s.done == 1 {
                        // Re-run: it sits in its local boot (an empty disk), so power-cycle it.
                        let again = assign(&server, &id)?;
                        ensure!(again["phase"] == "booting", "{}: {again:#}", s.name);
                        s.vm.reset()?;
                    }
                }
                Some("failed" | "cancelled") => bail!("{}: {run:#}\n{}", s.name, s.vm.tails()),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    for s in subjects {
        s.vm.quit()?;
    }
    Ok(())
}

#[test]
fn three_boot_workflow_completes_on_bios_and_uefi_and_again_when_rerun() {
    rack_test(
        "three_boot_workflow_completes_on_bios_and_uefi_and_again_when_rerun",
        &[Need::DiscoveryImage],
        three_boot_twice,
    );
}
