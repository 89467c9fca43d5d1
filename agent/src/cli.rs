//! The `anneal-agent` command line.

use std::path::PathBuf;
use std::time::Duration;

use anneal_shared::cmdline;
use anneal_shared::content::BOOTENV_INSTALLED;
use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::clock::Clock;
use crate::inventory::{self, CollectOptions};
use crate::runner::{self, RunConfig, RunOptions};

/// anneal-agent: inventories this machine and does its work, reporting to an Anneal server
/// over mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "anneal-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll with the server and work for it (flags default to the kernel command line's
    /// anneal.url, anneal.ca and anneal.token).
    Run(RunArgs),
    /// Print this machine's inventory as JSON.
    Inventory {
        /// Read the machine from this root instead of / (captured fixture trees).
        #[arg(long, default_value = "/")]
        sysroot: PathBuf,
        /// Also run smartctl and ipmitool when present.
        #[arg(long)]
        tools: bool,
    },
    /// Scale benchmark: run many simulated agents against one server, each with its own key,
    /// certificate and kept-alive mutual-TLS connection, and report enrolls/s, heartbeat
    /// latency and errors (scripts/bench-agents).
    Simulate(SimulateArgs),
    /// Simulate COUNT machines that PXE-boot, enroll and run their workflows to the end
    /// through the agent's real job code; report stage transitions/s and job-dispatch latency
    /// (scripts/bench-workflows).
    SimulateWorkflow(SimulateWorkflowArgs),
}

#[derive(Debug, clap::Args)]
struct SimulateWorkflowArgs {
    /// Enrollment URL, e.g. https://127.0.0.1:8443.
    #[arg(long, env = "ANNEAL_URL")]
    server: String,
    /// The server CA's fingerprint, `sha256:HEX`.
    #[arg(long, env = "ANNEAL_CA_FINGERPRINT")]
    ca_fingerprint: String,
    /// The boot listener, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    boot_url: String,
    /// Number of simulated machines.
    #[arg(long)]
    count: u32,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    /// First simulated machine number (identities derive from it).
    #[arg(long, default_value_t = 0)]
    id_base: u32,
    /// Seconds between heartbeats while a machine waits for work.
    #[arg(long, default_value_t = 2)]
    heartbeat_secs: u64,
    /// Machines not finished after this many seconds give up.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// Append `MACHINE LABEL` to this file for every `noop` job run.
    #[arg(long)]
    witness: Option<PathBuf>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct SimulateArgs {
    /// Enrollment URL, e.g. https://127.0.0.1:8443.
    #[arg(long, env = "ANNEAL_URL")]
    server: String,
    /// The server CA's fingerprint, `sha256:HEX`.
    #[arg(long, env = "ANNEAL_CA_FINGERPRINT")]
    ca_fingerprint: String,
    /// Bootstrap token with at least COUNT uses.
    #[arg(long, env = "ANNEAL_BOOTSTRAP_TOKEN", hide_env_values = true)]
    token: String,
    /// Number of simulated agents.
    #[arg(long)]
    count: u32,
    /// Enrollments in flight at once.
    #[arg(long, default_value_t = 64)]
    enroll_concurrency: usize,
    /// Seconds between one agent's heartbeats (the first at a random point inside the first
    /// interval).
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u64,
    /// How long all agents heartbeat together once the last one has enrolled (agents that
    /// enrolled earlier heartbeat meanwhile too).
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// First simulated machine number (identities derive from it; use distinct ranges for
    /// repeated runs against one server) [default: random].
    #[arg(long)]
    id_base: Option<u32>,
    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Enrollment URL, e.g. https://10.0.0.1:8443.
    #[arg(long, env = "ANNEAL_URL")]
    server: Option<String>,
    /// The server CA's fingerprint, `sha256:HEX`.
    #[arg(long, env = "ANNEAL_CA_FINGERPRINT")]
    ca_fingerprint: Option<String>,
    /// Bootstrap token (not needed when --state-dir holds an enrollment of this boot, or with
    /// --installed a usable kept certificate).
    #[arg(long, env = "ANNEAL_BOOTSTRAP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Read the bootstrap token from this file instead (e.g. /etc/anneal-agent/token).
    #[arg(long, value_name = "PATH", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// Run on the machine's installed OS rather than the discovery image: keep the key and
    /// certificate in the state directory (default /var/lib/anneal-agent) across boots, report
    /// each new boot to the server, renew the certificate before it runs out, and enroll with a
    /// bootstrap token only when no kept certificate is usable. --server and --ca-fingerprint
    /// default to those recorded there.
    #[arg(long)]
    installed: bool,
    /// With --installed: the boot environment this OS runs as (one flagged `installed` on the
    /// server).
    #[arg(long, default_value = BOOTENV_INSTALLED, value_name = "NAME", requires = "installed")]
    environment: String,
    /// Keep the key, certificate, machine id and boot id here (created 0700, files 0600). A
    /// restarted agent in the same boot resumes with them instead of enrolling again (the
    /// token may be spent by then); another boot id, or a certificate the pinned CA or the
    /// server refuses, means a fresh enrollment.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Once the server's time is known, set the system clock (CLOCK_REALTIME; needs root) if
    /// it is off by more than 2 s. A failure is only a warning.
    #[arg(long, conflicts_with = "fake_clock")]
    set_clock: bool,
    /// Keep one line describing what the agent is doing in this file (replaced atomically),
    /// for the console.
    #[arg(long, value_name = "PATH")]
    status_file: Option<PathBuf>,
    /// The command a workflow's `reboot` runs (split on spaces). The discovery image passes
    /// `reboot -f` (nothing to unmount in RAM).
    #[arg(long, default_value = "reboot", value_name = "COMMAND")]
    reboot_command: String,
    /// The command a workflow's `power_off` runs (split on spaces).
    #[arg(long, default_value = "poweroff", value_name = "COMMAND")]
    poweroff_command: String,
    /// Where job scripts are written before they run (default: the state directory, else
    /// the system's temporary directory).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Read the machine from this root instead of /.
    #[arg(long, default_value = "/")]
    sysroot: PathBuf,
    /// Do not run smartctl/ipmitool.
    #[arg(long)]
    no_tools: bool,
    /// Seconds to listen for LLDP on each link (0 skips).
    #[arg(long, default_value_t = 0)]
    lldp_secs: u64,
    /// Enroll, send the inventory, heartbeat once, and exit.
    #[arg(long)]
    once: bool,
    /// Override the kernel boot id (simulations and tests).
    #[arg(long, hide = true)]
    boot_id: Option<String>,
    /// Pretend the local clock reads this RFC 3339 time (tests of wrong RTCs).
    #[arg(long, hide = true)]
    fake_clock: Option<String>,
}

fn from_cmdline(sysroot: &std::path::Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(sysroot.join("proc/cmdline")).ok()?;
    cmdline::get(&text, key).filter(|v| !v.is_empty())
}

/// Write a line to stdout; a reader that went away (`| head`, `| grep -q`) ends the
/// output quietly instead of panicking as `println!` does on a broken pipe.
fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// Run the command line; `main` only calls this.
pub async fn run(cli: Cli) -> Result<()> {
    crate::install_crypto_provider();
    match cli.command {
        Command::Inventory { sysroot, tools } => {
            let inv = inventory::collect(&CollectOptions {
                sysroot,
                run_tools: tools,
                lldp_listen: Duration::ZERO,
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .await;
            print_stdout(&serde_json::to_string_pretty(&inv)?)
        }
        Command::Simulate(a) => {
            let count = a.count;
            let id_base = a.id_base.unwrap_or_else(|| {
                use rand::Rng;
                let room = crate::simulate::ID_SPACE.saturating_sub(count);
                rand::thread_rng().gen_range(0..=room)
            });
            let report = crate::simulate::run(crate::simulate::SimConfig {
                url: a.server,
                ca_fingerprint: a.ca_fingerprint,
                token: a.token,
                count,
                enroll_concurrency: a.enroll_concurrency,
                heartbeat_secs: a.heartbeat_secs,
                duration_secs: a.duration_secs,
                id_base,
            })
            .await?;
            if a.json {
                print_stdout(&serde_json::to_string_pretty(&report)?)
            } else {
                print_stdout(&report.summary())
            }
        }
        Command::SimulateWorkflow(a) => {
            let report =
                crate::simulate_workflow::run(crate::simulate_workflow::WorkflowSimConfig {
                    url: a.server,
                    ca_fingerprint: a.ca_fingerprint,
                    boot_url: a.boot_url,
                    count: a.count,
                    enroll_concurrency: a.enroll_concurrency,
                    id_base: a.id_base,
                    heartbeat_secs: a.heartbeat_secs,
                    timeout_secs: a.timeout_secs,
                    witness: a.witness,
                })
                .await?;
            match a.json {
                true => print_stdout(&serde_json::to_string_pretty(&report)?),
                false => print_stdout(&report.summary()),
            }
        }
        Command::Run(a) => {
            let status_file = a.status_file.clone();
            let (cfg, opts, clock) = match run_config(a) {
                Ok(c) => c,
                Err(e) => {
                    // The console shows the status file: say why the agent is not running.
                    if let Some(path) = status_file {
                        let line = format!("anneal-agent: stopped: {e:#}\n");
                        let _ = crate::state::write_atomic(&path, line.as_bytes(), 0o644);
                    }
                    return Err(e);
                }
            };
            runner::run_with(cfg, opts, clock).await
        }
    }
}

/// Where `--installed` keeps its key and certificate unless `--state-dir` says otherwise.
pub const INSTALLED_STATE_DIR: &str = "/var/lib/anneal-agent";

/// `run`'s flags, with the kernel command line's `anneal.*` filling in what they leave out
/// (and, with `--installed`, the server recorded in the state directory before that).
fn run_config(mut a: RunArgs) -> Result<(RunConfig, RunOptions, std::sync::Arc<Clock>)> {
    if a.installed && a.state_dir.is_none() {
        a.state_dir = Some(PathBuf::from(INSTALLED_STATE_DIR));
    }
    let recorded = a
        .state_dir
        .as_deref()
        .filter(|_| a.installed)
        .and_then(crate::state::recorded_server);
    let (recorded_url, recorded_ca) = recorded.unzip();
    // Where else each could have come from, for the error.
    let elsewhere = |key: &str| match a.installed {
        true => "a state directory copied from provisioning (which records it)".to_string(),
        false => format!("{key}= on the kernel command line"),
    };
    let url = a
        .server
        .or(recorded_url)
        .or_else(|| from_cmdline(&a.sysroot, cmdline::URL))
        .with_context(|| {
            format!(
                "no server URL: give --server or {}",
                elsewhere(cmdline::URL)
            )
        })?;
    let ca_fingerprint = a
        .ca_fingerprint
        .or(recorded_ca)
        .or_else(|| from_cmdline(&a.sysroot, cmdline::CA))
        .with_context(|| {
            format!(
                "no CA fingerprint: give --ca-fingerprint or {}",
                elsewhere(cmdline::CA)
            )
        })?;
    let token = match &a.token_file {
        Some(path) => Some(read_token_file(path)?),
        None => a.token,
    };
    let token = token.or_else(|| from_cmdline(&a.sysroot, cmdline::TOKEN));
    // With a state directory the token may legitimately be absent (spent and gone); the runner
    // says so if it turns out to be needed.
    let token = match (token, &a.state_dir) {
        (Some(t), _) => t,
        (None, Some(_)) => String::new(),
        (None, None) => anyhow::bail!(
            "no bootstrap token: give --token or anneal.token= on the kernel command line"
        ),
    };
    let clock = match a.fake_clock {
        Some(t) => {
            let t = time::OffsetDateTime::parse(&t, &time::format_description::well_known::Rfc3339)
                .with_context(|| format!("--fake-clock {t:?} is not RFC 3339"))?;
            Clock::fake((t.unix_timestamp_nanos() / 1_000_000) as i64)
        }
        None => Clock::system(),
    };
    let split = |c: &str| c.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    let jobs = runner::JobOptions {
        work_dir: a
            .work_dir
            .or_else(|| a.state_dir.as_ref().map(|d| d.join("jobs")))
            .unwrap_or_else(|| std::env::temp_dir().join("anneal-jobs")),
        reboot: split(&a.reboot_command),
        power_off: split(&a.poweroff_command),
    };
    let opts = RunOptions {
        jobs: Some(jobs),
        state_dir: a.state_dir,
        installed: a.installed.then_some(a.environment),
        set_clock: a.set_clock.then(|| {
            std::sync::Arc::new(crate::clock::SystemRealtime)
                as std::sync::Arc<dyn crate::clock::ClockSetter>
        }),
        status_file: a.status_file,
    };
    let cfg = RunConfig {
        url,
        ca_fingerprint,
        token,
        sysroot: a.sysroot,
        run_tools: !a.no_tools,
        lldp_listen: Duration::from_secs(a.lldp_secs),
        boot_id: a.boot_id,
        once: a.once,
    };
    Ok((cfg, opts, clock))
}

/// A bootstrap token kept in a file: its one line, trimmed.
fn read_token_file(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let token = text.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "the token file {} is empty",
        path.display()
    );
    Ok(token.to_string())
}
