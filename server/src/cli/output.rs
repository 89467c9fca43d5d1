//! How the CLI prints: aligned tables for people, JSON or YAML for scripts.

use anneal_shared::api::{
    ApplyReport, AssignResult, BootstrapToken, BulkAssignReport, CreatedBootstrapToken, JobAttempt,
    Location, Machine, MachineParams, MachineSummary, QuarantinedEnrollment, WorkflowRun,
    WorkflowSummary,
};
use anneal_shared::events::AuditEntry;
use anyhow::Result;
use serde::Serialize;
use time::OffsetDateTime;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// JSON, as the API returns it.
    Json,
    /// YAML.
    Yaml,
}

fn structured<T: Serialize>(v: &T, f: Format) -> Result<bool> {
    match f {
        Format::Json => println!("{}", serde_json::to_string_pretty(v)?),
        Format::Yaml => print!("{}", serde_yaml_ng::to_string(v)?),
        Format::Table => return Ok(false),
    }
    Ok(true)
}

/// Print rows as left-aligned columns separated by two spaces.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// `1.5 GiB`-style sizes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// `12s ago`-style times.
pub fn ago(t: Option<OffsetDateTime>) -> String {
    let Some(t) = t else { return "never".into() };
    let s = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86_399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

fn dash(v: Option<impl ToString>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// `anneal machines ls`.
pub fn machines(list: &[MachineSummary], f: Format) -> Result<()> {
    if structured(&list, f)? {
        return Ok(());
    }
    if list.is_empty() {
        println!("no machines yet");
        return Ok(());
    }
    table(
        &[
            "ID",
            "STATE",
            "SERIAL",
            "PRODUCT",
            "CPUS",
            "MEMORY",
            "DISKS",
            "TAGS",
            "RACK/SLOT",
            "CLAIM",
            "LAST SEEN",
            "STATUS",
        ],
        list.iter()
            .map(|m| {
                vec![
                    m.id.to_string(),
                    m.state.as_str().into(),
                    dash(m.serial.as_ref()),
                    dash(m.product.as_ref()),
                    dash(m.cpus),
                    dash(m.memory_bytes.map(bytes)),
                    dash(m.disks),
                    dash((!m.tags.is_empty()).then(|| m.tags.join(","))),
                    rack_slot(&m.location),
                    dash(m.claim.map(|c| c.as_str())),
                    ago(m.last_seen),
                    dash(m.status.as_ref()),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `anneal machines show`.
pub fn machine(m: &Machine, f: Format) -> Result<()> {
    if structured(m, f)? {
        return Ok(());
    }
    println!("Machine   {}", m.id);
    println!("State     {}", m.state.as_str());
    println!("Hostname  {}", dash(m.hostname.as_ref()));
    println!(
        "Enrolled  {} time(s), last boot {}",
        m.enrollments,
        dash(m.boot_id.as_ref())
    );
    println!(
        "Last seen {}   status: {}",
        ago(m.last_seen),
        dash(m.status.as_ref())
    );
    for a in &m.alerts {
        println!("ALERT     {} ({}): {}", a.kind, a.at, a.message);
    }
    println!(
        "Tags      {}",
        dash((!m.tags.is_empty()).then(|| m.tags.join(", ")))
    );
    let l = &m.location;
    println!(
        "Location  site {}  row {}  rack {}  slot {}",
        dash(l.site.as_ref()),
        dash(l.row.as_ref()),
        dash(l.rack.as_ref()),
        dash(l.slot.as_ref())
    );
    match &m.claim {
        Some(c) => println!(
            "Claim     {} (by {}, {}): may run one destructive workflow",
            c.kind.as_str(),
            c.by,
            c.at
        ),
        None => println!("Claim     none: destructive workflows are refused"),
    }
    if let Some(r) = &m.rule {
        println!(
            "Rules     {:?}: rule {} workflow {} ({}){}",
            r.result,
            dash(r.rule.as_ref()),
            dash(r.workflow.as_ref()),
            r.at,
            r.reason
                .as_ref()
                .map(|w| format!(": {w}"))
                .unwrap_or_default()
        );
    }
    let Some(inv) = &m.inventory else {
        println!("\nNo inventory yet.");
        return Ok(());
    };
    if let Some(s) = &inv.system {
        println!(
            "\nSystem    {} {} (version {})",
            dash(s.manufacturer.as_ref()),
            dash(s.product.as_ref()),
            dash(s.version.as_ref())
        );
        println!(
            "  serial {}  uuid {}  sku {}  family {}",
            dash(s.serial.as_ref()),
            dash(s.uuid.as_ref()),
            dash(s.sku.as_ref()),
            dash(s.family.as_ref())
        );
    }
    if let Some(c) = &inv.chassis {
        println!(
            "Chassis   {}  serial {}  asset {}",
            dash(c.chassis_type.as_ref()),
            dash(c.serial.as_ref()),
            dash(c.asset_tag.as_ref())
        );
    }
    if let Some(b) = &inv.baseboard {
        println!(
            "Board     {} {}  serial {}",
            dash(b.manufacturer.as_ref()),
            dash(b.product.as_ref()),
            dash(b.serial.as_ref())
        );
    }
    if let Some(b) = &inv.bios {
        println!(
            "BIOS      {} {} ({})",
            dash(b.vendor.as_ref()),
            dash(b.version.as_ref()),
            dash(b.release_date.as_ref())
        );
    }
    if let Some(os) = &inv.os {
        println!(
            "Boot      {}  kernel {}  agent {}",
            dash(os.boot_mode.as_ref()),
            dash(os.kernel.as_ref()),
            dash(os.agent_version.as_ref())
        );
    }
    if let Some(c) = &inv.cpu {
        println!(
            "\nCPU       {} x {}",
            c.logical_cpus,
            dash(c.model.as_ref())
        );
        for s in &c.sockets {
            println!(
                "  {}: {} cores / {} threads, {}",
                dash(s.designation.as_ref()),
                dash(s.cores),
                dash(s.threads),
                dash(s.version.as_ref())
            );
        }
    }
    if let Some(mem) = &inv.memory {
        println!(
            "Memory    {} usable, {} installed, {} of {} slots empty",
            bytes(mem.total_bytes),
            bytes(mem.installed_bytes),
            mem.slots_empty,
            mem.slots_total
        );
        for d in &mem.dimms {
            println!(
                "  {}: {} {} {} MT/s serial {}",
                dash(d.locator.as_ref()),
                bytes(d.size_bytes),
                dash(d.memory_type.as_ref()),
                dash(d.speed_mts),
                dash(d.serial.as_ref())
            );
        }
    }
    if !inv.disks.is_empty() {
        println!();
        table(
            &["DISK", "SIZE", "MODEL", "SERIAL", "TRANSPORT", "SMART"],
            inv.disks
                .iter()
                .map(|d| {
                    vec![
                        d.name.clone(),
                        bytes(d.size_bytes),
                        dash(d.model.as_ref()),
                        dash(d.serial.as_ref()),
                        dash(d.transport.as_ref()),
                        dash(d.smart.as_ref().and_then(|s| s.passed).map(|p| {
                            if p {
                                "passed"
                            } else {
                                "FAILED"
                            }
                        })),
                    ]
                })
                .collect(),
        );
    }
    if !inv.nics.is_empty() {
        println!();
        table(
            &["NIC", "MAC", "DRIVER", "PCI", "LINK", "SPEED", "ADDRESSES"],
            inv.nics
                .iter()
                .map(|n| {
                    vec![
                        n.name.clone(),
                        n.mac.clone(),
                        dash(n.driver.as_ref()),
                        dash(n.pci_address.as_ref()),
                        dash(n.link_up.map(|u| if u { "up" } else { "down" })),
                        dash(n.speed_mbps.map(|s| format!("{s} Mb/s"))),
                        n.addresses.join(" "),
                    ]
                })
                .collect(),
        );
    }
    let gpus = inv.pci.iter().filter(|p| p.is_gpu).count();
    println!("\nPCI       {} devices, {} GPU(s)", inv.pci.len(), gpus);
    if let Some(b) = &inv.bmc {
        println!(
            "BMC       present {}  {}  ip {}  mac {}",
            b.present,
            dash(b.interface_type.as_ref()),
            dash(b.ip_address.as_ref()),
            dash(b.mac.as_ref())
        );
    }
    for n in &inv.lldp {
        println!(
            "LLDP      {} -> switch {} port {}",
            n.interface,
            dash(n.chassis_id.as_ref()),
            dash(n.port_id.as_ref())
        );
    }
    for e in &inv.errors {
        println!("COLLECTOR {} failed: {}", e.collector, e.message);
    }
    Ok(())
}

/// `anneal tokens ls`.
pub fn tokens(list: &[BootstrapToken], f: Format) -> Result<()> {
    if structured(&list, f)? {
        return Ok(());
    }
    table(
        &["ID", "USES LEFT", "EXPIRES", "MAC", "NEW", "DESCRIPTION"],
        list.iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    t.uses_left.to_string(),
                    t.expires_at.to_string(),
                    dash(t.mac.as_ref()),
                    if t.new { "yes" } else { "no" }.into(),
                    dash(t.description.as_ref()),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `anneal tokens create`.
pub fn created_token(t: &CreatedBootstrapToken, f: Format) -> Result<()> {
    if structured(t, f)? {
        return Ok(());
    }
    println!("{}", t.token);
    eprintln!(
        "bootstrap token {}: {} use(s), expires {}{} (the secret above is not shown again)",
        t.info.id,
        t.info.uses_left,
        t.info.expires_at,
        if t.info.new {
            ", marks the machines it enrolls first as new"
        } else {
            ""
        }
    );
    Ok(())
}

/// `anneal machines workflow` and `set-workflow`.
pub fn run(r: &WorkflowRun, f: Format) -> Result<()> {
    if structured(r, f)? {
        return Ok(());
    }
    println!(
        "run {} of workflow {} (content version {})",
        r.id, r.workflow, r.content_version
    );
    println!("machine  {}", r.machine_id);
    println!("phase    {}", r.phase);
    for (i, name) in r.stages.iter().enumerate() {
        let mark = match i.cmp(&r.stage) {
            std::cmp::Ordering::Less => "done",
            std::cmp::Ordering::Equal if r.phase == "done" => "done",
            std::cmp::Ordering::Equal => "now",
            std::cmp::Ordering::Greater => "",
        };
        println!("  {:>2}. {name:<24} {mark}", i + 1);
    }
    if let Some(env) = &r.booting {
        println!("booting  into `{env}`");
    }
    if let Some(reason) = &r.reason {
        println!("reason   {reason}");
    }
    if let (Some(attempt), Some(tail)) = (r.failed_attempt, &r.log_tail) {
        println!("log of the failed job {attempt} (its end; `anneal jobs logs {attempt}`):");
        for line in tail.lines() {
            println!("  | {line}");
        }
    }
    Ok(())
}

/// `anneal apply`.
pub fn applied(r: &ApplyReport, f: Format) -> Result<()> {
    if structured(r, f)? {
        return Ok(());
    }
    for o in &r.objects {
        let verb = if r.dry_run { "would be" } else { "" };
        println!("{} {:<24} {verb} {}", o.kind, o.name, o.action);
    }
    if r.dry_run {
        println!("dry run: nothing changed (content version {})", r.version);
    } else {
        println!("content version {}", r.version);
    }
    Ok(())
}

/// `anneal workflows ls`.
pub fn workflows(list: &[WorkflowSummary], f: Format) -> Result<()> {
    if structured(&list, f)? {
        return Ok(());
    }
    table(
        &["NAME", "STAGES", "DESTRUCTIVE", "SOURCE", "DESCRIPTION"],
        list.iter()
            .map(|w| {
                vec![
                    w.name.clone(),
                    w.stages.join(" → "),
                    if w.destructive { "yes" } else { "no" }.into(),
                    if w.builtin { "built-in" } else { "applied" }.into(),
                    w.description.clone(),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `anneal jobs ls`.
pub fn jobs(list: &[JobAttempt], f: Format) -> Result<()> {
    if structured(&list, f)? {
        return Ok(());
    }
    table(
        &[
            "ATTEMPT", "MACHINE", "STAGE", "TASK", "STATE", "EXIT", "LOG", "CREATED", "REASON",
        ],
        list.iter()
            .map(|j| {
                vec![
                    j.id.to_string(),
                    j.machine_id.to_string()[..8].to_string(),
                    j.stage.clone(),
                    j.task.clone(),
                    j.state.clone(),
                    dash(j.exit_code.as_ref()),
                    match j.log_pruned_at {
                        Some(_) => format!("{} (pruned)", bytes(j.log_bytes)),
                        None => bytes(j.log_bytes),
                    },
                    ago(Some(j.created_at)),
                    dash(j.reason.as_ref()),
                ]
            })
            .collect(),
    );
    Ok(())
}

/// `anneal machines params ID`.
pub fn params(p: &MachineParams, f: Format) -> Result<()> {
    if structured(p, f)? {
        return Ok(());
    }
    let profiles = match p.profiles.as_slice() {
        [] => "(none)".to_string(),
        list => list.join(", "),
    };
    println!("profiles: {profiles} (then global)");
    table(
        &["PARAM", "VALUE", "FROM"],
        (p.resolved.iter())
            .map(|(name, v)| {
                let value = match &v.value {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                vec![name.clone(), value, v.source.clone()]
            })
            .collect(),
    );
    for e in &p.errors {
        println!("error: {e}");
    }
    Ok(())
}

/// `anneal quarantine`.
pub fn quarantine(list: &[QuarantinedEnrollment], f: Format) -> Result<()> {
    if structured(&list, f)? {
        return Ok(());
    }
    if list.is_empty() {
        println!("no quarantined enrollments");
        return Ok(());
    }
    for q in list {
        println!(
            "{}  {}  boot {}  attempts {}",
            q.id, q.at, q.boot_id, q.attempts
        );
        println!("  reason: {}", q.reason);
        println!(
            "  candidates: {}",
            q.candidates
                .iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `r12/7`: rack and slot, the part of a location a table has room for.
fn rack_slot(l: &Location) -> String {
    match (&l.rack, &l.slot) {
        (None, None) => "-".into(),
        (rack, slot) => format!("{}/{}", dash(rack.as_ref()), dash(slot.as_ref())),
    }
}

/// `anneal machines set-workflow --selector`.
pub fn bulk(r: &BulkAssignReport, f: Format) -> Result<()> {
    if structured(r, f)? {
        return Ok(());
    }
    if !r.destructive_tasks.is_empty() {
        println!(
            "workflow {} is destructive (tasks: {}): only claimed or new machines get it",
            r.workflow,
            r.destructive_tasks.join(", ")
        );
    }
    if r.machines.is_empty() {
        println!("no machine matches {:?}", r.selector);
        return Ok(());
    }
    table(
        &["MACHINE", "HOSTNAME", "RESULT", "REASON"],
        r.machines
            .iter()
            .map(|m| {
                vec![
                    m.machine_id.to_string(),
                    dash(m.hostname.as_ref()),
                    match m.result {
                        AssignResult::Assigned => "assigned",
                        AssignResult::WouldAssign => "would assign",
                        AssignResult::Refused => "refused",
                        AssignResult::Unknown => "unknown",
                    }
                    .into(),
                    dash(m.reason.as_ref()),
                ]
            })
            .collect(),
    );
    let ok = r
        .machines
        .iter()
        .filter(|m| m.result != AssignResult::Refused)
        .count();
    println!(
        "{} of {} machine(s) {}{}",
        ok,
        r.machines.len(),
        if r.dry_run { "would get " } else { "got " },
        r.workflow
    );
    Ok(())
}

/// `anneal audit`.
pub fn audit(list: &[AuditEntry], f: Format) -> Result<()> {
    if structured(&list, f)? {
        return Ok(());
    }
    if list.is_empty() {
        println!("no audit entries");
        return Ok(());
    }
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    table(
        &["WHEN", "WHO", "ROLE", "FROM", "ACTION", "TARGET", "CHANGE"],
        list.iter()
            .map(|e| {
                let change = match (&e.before, &e.after) {
                    (Some(b), Some(a)) => format!("{b} -> {a}"),
                    (None, Some(a)) => a.to_string(),
                    (Some(b), None) => format!("{b} -> (gone)"),
                    (None, None) => "-".into(),
                };
                vec![
                    e.at.format(&fmt).unwrap_or_default(),
                    e.actor.name.clone(),
                    format!("{:?}", e.actor.role).to_lowercase(),
                    dash(e.actor.address.as_ref()),
                    e.action.clone(),
                    e.target.clone(),
                    change.chars().take(120).collect(),
                ]
            })
            .collect(),
    );
    Ok(())
}
