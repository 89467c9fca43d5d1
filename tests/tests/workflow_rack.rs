//! End to end in the virtual rack: the issue's three-boot workflow on a BIOS and a UEFI
//! machine — a discovery stage with script tasks → reboot → a second stage in the discovery
//! image → reboot → local boot — and again when it is re-run. In the first run the server is
//! killed (`kill -9`) while the first task runs with part of its log uploaded, kept down a few
//! seconds and started again on the same data: nothing may be lost or run twice.
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

/// How long the killed server stays down: several of the agents' retries (1 s, 2 s, …) fail.
const DOWN: Duration = Duration::from_secs(4);

/// The line `first-a` prints after its pause, the moment the server is killed in.
const AFTER_PAUSE: &str = "first stage, after the pause\n";

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
        // The pause is where the server gets killed: a line uploaded before, one after.
        task(
            "first-a",
            "echo \"first stage, booted $(cat /proc/sys/kernel/random/boot_id)\"\n  \
             sleep 6\n  \
             echo first stage, after the pause",
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
    /// Its run at the last look.
    run: Value,
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
        if j["task"] == "first-a" {
            let before = log.find("first stage, booted ");
            let after = log.find(AFTER_PAUSE);
            ensure!(
                matches!((before, after), (Some(b), Some(a)) if b < a),
                "{}: both lines of first-a, in order: {log:?}",
                s.name
            );
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

/// A job the kill interrupted: the machine, the attempt, its log as stored just before.
struct Cut {
    name: &'static str,
    attempt: String,
    log: String,
}

/// `kill -9` the server while a machine runs `first-a` with part of its log uploaded (the
/// attempt acknowledged, log chunks on both sides of the crash, the result still to come),
/// keep it down for [`DOWN`], and start it again on the same data. Returns the jobs cut.
///
/// Only while every machine is at its first task (`ready` or running it): its agent is up, and
/// no machine can be told to reboot before the kill. Firmware that finds no server gives up
/// that boot device instead of retrying (SeaBIOS's iPXE ROM after a failed boot-file fetch,
/// OVMF after a failed TFTP) — a limit of the firmware, not of the server — and has no agent
/// yet to retry for it.
fn kill_mid_job(server: &mut Anneal, subjects: &[Subject]) -> Result<Vec<Cut>> {
    let at_first_task = |s: &Subject| {
        matches!(s.run["phase"].as_str(), Some("ready" | "running"))
            && s.run["stage"] == 0
            && s.run["task"] == 0
    };
    if !subjects.iter().all(at_first_task) {
        return Ok(Vec::new());
    }
    let mut cut = Vec::new();
    for s in subjects.iter().filter(|s| s.run["phase"] == "running") {
        let id = s.id.as_deref().context("id")?;
        let jobs = server.api_get(&format!("/api/v1/jobs?machine={id}"))?;
        for j in jobs.as_array().context("jobs")? {
            if j["task"] != "first-a" || j["state"] != "running" {
                continue;
            }
            let attempt = j["id"].as_str().context("attempt id")?.to_string();
            let log = server.api_get_text(&format!("/api/v1/jobs/{attempt}/log"))?;
            if !log.is_empty() && !log.contains(AFTER_PAUSE) {
                cut.push(Cut {
                    name: s.name,
                    attempt,
                    log,
                });
            }
        }
    }
    if !cut.is_empty() {
        server.kill9()?;
        std::thread::sleep(DOWN);
        server.restart()?;
    }
    Ok(cut)
}

/// After the run: each cut job's log is what the server had before the kill followed by the
/// rest (uploaded to the restarted server) — nothing lost, nothing twice.
fn check_cut(server: &Anneal, cut: &Cut) -> Result<()> {
    let log = server.api_get_text(&format!("/api/v1/jobs/{}/log", cut.attempt))?;
    ensure!(
        log.len() > cut.log.len() && log.starts_with(&cut.log) && log.contains(AFTER_PAUSE),
        "{}: first-a's log was {:?} at the kill, now {log:?}",
        cut.name,
        cut.log
    );
    Ok(())
}

fn three_boot_twice() -> Result<()> {
    let rack = Rack::new()?;
    let config = format!("{}{}", image::config_line(), rack.full_dhcp_config());
    let mut server = Anneal::start(&rack, &config)?;
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
            run: Value::Null,
        });
    }
    let started = Instant::now();
    let mut cut = Vec::new();
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
        if subjects.iter().any(|s| s.id.is_none()) {
            for s in subjects.iter_mut().filter(|s| s.id.is_none()) {
                ensure!(s.vm.is_running(), "{} stopped\n{}", s.name, s.vm.tails());
                s.id = machine_id(&server, &s.serial)?;
            }
            // Once both are discovered, both get the workflow: their agents run in the
            // discovery image, where the first stage starts at once, and both are at their
            // first task together (the kill's moment, see `kill_mid_job`).
            if subjects.iter().all(|s| s.id.is_some()) {
                for s in &mut subjects {
                    s.run = assign(&server, s.id.as_deref().context("id")?)?;
                    ensure!(s.run["phase"] == "ready", "{}: {:#}", s.name, s.run);
                }
                eprintln!(
                    "[{:>4.0}s] both discovered, workflow assigned",
                    started.elapsed().as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_secs(2));
            continue;
        }
        for s in subjects.iter_mut().filter(|s| s.done < 2) {
            ensure!(s.vm.is_running(), "{} stopped\n{}", s.name, s.vm.tails());
            let id = s.id.clone().context("id")?;
            let run = server.api_get(&format!("/api/v1/machines/{id}/workflow"))?;
            s.run = run.clone();
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
        if cut.is_empty() {
            cut = kill_mid_job(&mut server, &subjects)?;
            for c in &cut {
                eprintln!(
                    "[{:>4.0}s] {}: server killed (kill -9) during first-a ({} log bytes \
                     stored), started again {} s later",
                    started.elapsed().as_secs_f64(),
                    c.name,
                    c.log.len(),
                    DOWN.as_secs()
                );
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    ensure!(!cut.is_empty(), "the server was never killed mid-job");
    for c in &cut {
        check_cut(&server, c)?;
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
