//! The `anneal` command line: `serve`, and the operator commands that talk to a server's API.

mod client;
mod output;
mod params;
pub mod sse;
pub mod watch;

use std::path::PathBuf;

use anneal_shared::api::{
    ApplyContent, ApplyReport, AssignWorkflow, BootstrapToken, BulkAssign, BulkAssignReport,
    ContentFile, CreateBootstrapToken, CreatedBootstrapToken, JobAttempt, Location, Machine,
    MachineSummary, QuarantinedEnrollment, UpdateMachine, WorkflowRun, WorkflowSummary,
};
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::config::{Config, ServeArgs};
use client::ApiClient;
pub use output::Format;

/// Anneal: discover, burn in, scrub and hand over bare-metal machines.
#[derive(Debug, Parser)]
#[command(name = "anneal", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: operator and agent APIs, plus DHCP, TFTP and iPXE over HTTP when
    /// configured.
    Serve(Box<ServeArgs>),
    /// List, inspect, approve and revoke machines.
    Machines {
        #[command(flatten)]
        conn: ClientOpts,
        #[command(subcommand)]
        command: MachinesCmd,
    },
    /// Bootstrap tokens for enrolling machines.
    Tokens {
        #[command(flatten)]
        conn: ClientOpts,
        #[command(subcommand)]
        command: TokensCmd,
    },
    /// Create or update workflow content from YAML files (a file or a directory, recursively).
    Apply {
        #[command(flatten)]
        conn: ClientOpts,
        /// The file or directory.
        #[arg(short, long = "file", value_name = "PATH")]
        file: PathBuf,
        /// Check and report only; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Workflows in force (built-in and applied).
    Workflows {
        #[command(flatten)]
        conn: ClientOpts,
        #[command(subcommand)]
        command: WorkflowsCmd,
    },
    /// Job attempts of workflows, and their logs.
    Jobs {
        #[command(flatten)]
        conn: ClientOpts,
        #[command(subcommand)]
        command: JobsCmd,
    },
    /// Enrollments held back for conflicting identity evidence.
    Quarantine {
        #[command(flatten)]
        conn: ClientOpts,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
        output: Format,
    },
    /// Print the operator API's OpenAPI document.
    Openapi,
    /// Follow the server's events: live progress per machine on a terminal, else one line
    /// per event.
    Watch {
        #[command(flatten)]
        conn: ClientOpts,
        /// Only this machine's events (id or id prefix).
        #[arg(long)]
        machine: Option<String>,
        /// Only these kinds, comma-separated (e.g. run_phase,attempt_ended).
        #[arg(long)]
        kind: Option<String>,
        /// Only events of runs of this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Start after this event id (replaying what followed it, while the server holds it).
        #[arg(long)]
        since: Option<String>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Output format: `table` is the live view on a terminal, one line per event otherwise.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Changes made through the operator API: who, from where, when, before and after.
    Audit {
        #[command(flatten)]
        conn: ClientOpts,
        /// Only changes to this machine (id or unique id prefix).
        #[arg(long)]
        machine: Option<String>,
        /// Only changes made with this API token (id or name).
        #[arg(long)]
        actor: Option<String>,
        /// At most this many, newest first.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// How to reach and authenticate to a server.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOpts {
    /// Server URL.
    #[arg(
        long,
        global = true,
        env = "ANNEAL_SERVER",
        default_value = "https://127.0.0.1:8443"
    )]
    pub server: String,
    /// API token [default: the admin token in DATA_DIR/admin.token].
    #[arg(long, global = true, env = "ANNEAL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate to trust [default: DATA_DIR/ca.pem].
    #[arg(long, global = true, env = "ANNEAL_CA")]
    pub ca: Option<PathBuf>,
    /// Data directory of a local server, for the defaults above.
    #[arg(
        long,
        global = true,
        env = "ANNEAL_DATA_DIR",
        default_value = "anneal-data"
    )]
    pub data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum MachinesCmd {
    /// List machines (all, or those a selector matches).
    Ls {
        /// Only machines this selector matches, e.g. `tag=web,product~PowerEdge,disks>=2`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show one machine and its inventory (id or unique id prefix).
    Show {
        id: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Approve a pending machine.
    Approve { id: String },
    /// Revoke a machine's certificates: its agent is refused from its next request.
    Revoke { id: String },
    /// Boot a known machine into the discovery image at its next PXE boot.
    Rediscover { id: String },
    /// Assign a workflow to a machine (`ID WORKFLOW`), or to every machine a selector matches
    /// (`--selector SEL WORKFLOW`); a machine's current run, if any, is cancelled.
    SetWorkflow {
        /// `ID WORKFLOW`, or only `WORKFLOW` with --selector.
        #[arg(value_name = "[ID] WORKFLOW", required = true, num_args = 1..=2)]
        args: Vec<String>,
        /// Every machine this selector matches, e.g. `tag=web,rack=r12`.
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// With --selector: report what would happen, assign nothing.
        #[arg(long, requires = "selector")]
        dry_run: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Show a machine's workflow params (secrets masked), or change them.
    Params {
        id: String,
        #[command(subcommand)]
        change: Option<params::ParamsCmd>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table, global = true)]
        output: Format,
    },
    /// Add and remove tags: `+web` (or `web`) adds, `-old` removes.
    Tag {
        id: String,
        #[arg(value_name = "+TAG|-TAG", required = true, allow_hyphen_values = true)]
        changes: Vec<String>,
    },
    /// Set where a machine stands; an empty value (`--slot ""`) clears a field.
    Locate {
        id: String,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        row: Option<String>,
        #[arg(long)]
        rack: Option<String>,
        #[arg(long)]
        slot: Option<String>,
    },
    /// Claim a machine: it may run one destructive workflow (wipe, RAID, install).
    Claim { id: String },
    /// Give up a machine's claim (or its mark as new).
    Unclaim { id: String },
    /// Show a machine's workflow run, or steer it: retry, restart, cancel, continue.
    Workflow {
        id: String,
        #[arg(value_parser = ["retry", "restart", "cancel", "continue"])]
        action: Option<String>,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum WorkflowsCmd {
    /// List workflows.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

#[derive(Debug, Subcommand)]
enum JobsCmd {
    /// List job attempts, newest first.
    Ls {
        /// Only this machine's (id or unique id prefix).
        #[arg(long)]
        machine: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// Print a job attempt's log.
    Logs {
        /// The attempt id.
        attempt: uuid::Uuid,
        /// Keep printing as the log grows, until the attempt ends.
        #[arg(short, long)]
        follow: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCmd {
    /// Create a bootstrap token (the secret is printed once).
    Create {
        /// Lifetime: seconds, or with a unit: 90s, 30m, 12h, 7d.
        #[arg(long, default_value = "1h", value_parser = parse_duration_secs)]
        ttl: u64,
        /// How many enrollments it allows.
        #[arg(long, default_value_t = 1)]
        uses: u32,
        /// Only a machine presenting this MAC may use it.
        #[arg(long)]
        mac: Option<String>,
        /// Free text shown in listings.
        #[arg(long)]
        description: Option<String>,
        /// Machines it enrolls for the first time are marked new: each may run one destructive
        /// workflow without a claim.
        #[arg(long)]
        new: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
    /// List usable bootstrap tokens.
    Ls {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Format::Table)]
        output: Format,
    },
}

/// Parse `90`, `90s`, `30m`, `12h`, `7d` into seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("not a duration: {s:?} (use e.g. 3600, 90s, 30m, 12h, 7d)"))
}

/// Run the command line; the binary's `main` only calls this.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => crate::serve::run(Config::resolve(&args)?).await,
        Command::Openapi => {
            print!("{}", crate::api::openapi_json());
            Ok(())
        }
        Command::Machines { conn, command } => machines(ApiClient::new(&conn)?, command).await,
        Command::Tokens { conn, command } => tokens(ApiClient::new(&conn)?, command).await,
        Command::Jobs { conn, command } => jobs(ApiClient::new(&conn)?, command).await,
        Command::Apply {
            conn,
            file,
            dry_run,
            output,
        } => {
            let files = read_content_files(&file)?;
            let req = ApplyContent { files, dry_run };
            let report: ApplyReport = ApiClient::new(&conn)?.post("/api/v1/content", &req).await?;
            output::applied(&report, output)
        }
        Command::Workflows {
            conn,
            command: WorkflowsCmd::Ls { output },
        } => {
            let list: Vec<WorkflowSummary> =
                ApiClient::new(&conn)?.get("/api/v1/workflows").await?;
            output::workflows(&list, output)
        }
        Command::Watch {
            conn,
            machine,
            kind,
            workflow,
            since,
            count,
            output,
        } => {
            let query = [("machine", machine), ("kind", kind), ("workflow", workflow)]
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| format!("{k}={}", query_value(&v))))
                .collect::<Vec<_>>()
                .join("&");
            let opts = watch::WatchOpts {
                query,
                since,
                count,
                output,
            };
            watch::watch(&ApiClient::new(&conn)?, opts).await
        }
        Command::Audit {
            conn,
            machine,
            actor,
            limit,
            output,
        } => {
            let api = ApiClient::new(&conn)?;
            let mut path = format!("/api/v1/audit?limit={limit}");
            if let Some(m) = machine {
                path += &format!("&machine={}", resolve_id(&api, &m).await?);
            }
            if let Some(a) = actor {
                path += &format!("&actor={}", query_value(&a));
            }
            let list: Vec<anneal_shared::events::AuditEntry> = api.get(&path).await?;
            output::audit(&list, output)
        }
        Command::Quarantine { conn, output } => {
            let q: Vec<QuarantinedEnrollment> =
                ApiClient::new(&conn)?.get("/api/v1/quarantine").await?;
            output::quarantine(&q, output)
        }
    }
}

/// The content files under `path` with their text, as the server's loader would find them;
/// the server parses them, so that its errors name these paths.
fn read_content_files(path: &std::path::Path) -> Result<Vec<ContentFile>> {
    let paths = crate::content::content_files(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    if paths.is_empty() {
        bail!("no *.yaml or *.yml files in {}", path.display());
    }
    paths
        .into_iter()
        .map(|p| {
            let text =
                std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
            Ok(ContentFile {
                path: p.display().to_string(),
                text,
            })
        })
        .collect()
}

/// A query-string value, percent-encoded.
fn query_value(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Resolve an id or a unique prefix of one.
async fn resolve_id(api: &ApiClient, id: &str) -> Result<String> {
    if uuid::Uuid::parse_str(id).is_ok() {
        return Ok(id.to_string());
    }
    let all: Vec<MachineSummary> = api.get("/api/v1/machines").await?;
    let hits: Vec<_> = all
        .iter()
        .filter(|m| m.id.to_string().starts_with(&id.to_lowercase()))
        .collect();
    match hits.as_slice() {
        [one] => Ok(one.id.to_string()),
        [] => bail!("no machine id starts with {id:?}"),
        _ => bail!(
            "{} machines' ids start with {id:?}; give more of it",
            hits.len()
        ),
    }
}

async fn machines(api: ApiClient, cmd: MachinesCmd) -> Result<()> {
    match cmd {
        MachinesCmd::Ls { selector, output } => {
            let path = match selector {
                Some(s) => format!("/api/v1/machines?selector={}", query_escape(&s)),
                None => "/api/v1/machines".into(),
            };
            let list: Vec<MachineSummary> = api.get(&path).await?;
            output::machines(&list, output)
        }
        MachinesCmd::Show { id, output } => {
            let id = resolve_id(&api, &id).await?;
            let m: Machine = api.get(&format!("/api/v1/machines/{id}")).await?;
            output::machine(&m, output)
        }
        MachinesCmd::Approve { id } => {
            let id = resolve_id(&api, &id).await?;
            let m: Machine = api
                .post(
                    &format!("/api/v1/machines/{id}/approve"),
                    &serde_json::json!({}),
                )
                .await?;
            println!("machine {} approved (state: {})", m.id, m.state.as_str());
            Ok(())
        }
        MachinesCmd::Revoke { id } => {
            let id = resolve_id(&api, &id).await?;
            let r: serde_json::Value = api
                .post(
                    &format!("/api/v1/machines/{id}/revoke"),
                    &serde_json::json!({}),
                )
                .await?;
            println!(
                "machine {id}: {} certificate(s) revoked",
                r.get("revoked").and_then(|v| v.as_u64()).unwrap_or(0)
            );
            Ok(())
        }
        MachinesCmd::Rediscover { id } => {
            let id = resolve_id(&api, &id).await?;
            let _: serde_json::Value = api
                .post(
                    &format!("/api/v1/machines/{id}/rediscover"),
                    &serde_json::json!({}),
                )
                .await?;
            println!("machine {id} boots the discovery image at its next PXE boot");
            Ok(())
        }
        MachinesCmd::SetWorkflow {
            args,
            selector,
            dry_run,
            output,
        } => match (selector, args.as_slice()) {
            (Some(selector), [workflow]) => {
                let body = BulkAssign { selector, dry_run };
                let path = format!("/api/v1/workflows/{}/assign", query_escape(workflow));
                let report: BulkAssignReport = api.post(&path, &body).await?;
                output::bulk(&report, output)
            }
            (None, [id, workflow]) => {
                let id = resolve_id(&api, id).await?;
                let body = AssignWorkflow {
                    workflow: workflow.clone(),
                };
                let run: WorkflowRun = api
                    .put(&format!("/api/v1/machines/{id}/workflow"), &body)
                    .await?;
                output::run(&run, output)
            }
            (Some(_), _) => bail!("with --selector, give only the workflow"),
            (None, _) => bail!("give a machine id and a workflow (or --selector SEL WORKFLOW)"),
        },
        MachinesCmd::Tag { id, changes } => {
            let mut edit = UpdateMachine::default();
            for c in changes {
                match c.strip_prefix('-') {
                    Some(t) => edit.remove_tags.push(t.to_string()),
                    None => edit.add_tags.push(c.trim_start_matches('+').to_string()),
                }
            }
            let m = update_machine(&api, &id, &edit).await?;
            println!("machine {}: tags {}", m.id, m.tags.join(", "));
            Ok(())
        }
        MachinesCmd::Locate {
            id,
            site,
            row,
            rack,
            slot,
        } => {
            let location = Location {
                site,
                row,
                rack,
                slot,
            };
            if location == Location::default() {
                bail!("give at least one of --site, --row, --rack, --slot");
            }
            let edit = UpdateMachine {
                location,
                ..UpdateMachine::default()
            };
            let m = update_machine(&api, &id, &edit).await?;
            println!("machine {}: {}", m.id, serde_json::to_string(&m.location)?);
            Ok(())
        }
        MachinesCmd::Claim { id } => {
            let id = resolve_id(&api, &id).await?;
            let path = format!("/api/v1/machines/{id}/claim");
            let m: Machine = api.post(&path, &serde_json::json!({})).await?;
            println!(
                "machine {} claimed: it may run one destructive workflow",
                m.id
            );
            Ok(())
        }
        MachinesCmd::Unclaim { id } => {
            let id = resolve_id(&api, &id).await?;
            let m: Machine = api.delete(&format!("/api/v1/machines/{id}/claim")).await?;
            println!(
                "machine {} unclaimed: destructive workflows are refused",
                m.id
            );
            Ok(())
        }
        MachinesCmd::Params { id, change, output } => {
            let id = resolve_id(&api, &id).await?;
            output::params(&params::run(&api, &id, change).await?, output)
        }
        MachinesCmd::Workflow { id, action, output } => {
            let id = resolve_id(&api, &id).await?;
            let path = format!("/api/v1/machines/{id}/workflow");
            let run: WorkflowRun = match action {
                None => api.get(&path).await?,
                Some(a) => {
                    api.post(&format!("{path}/{a}"), &serde_json::json!({}))
                        .await?
                }
            };
            output::run(&run, output)
        }
    }
}

/// `PATCH` a machine with `edit`, over the version just read (a concurrent change is refused
/// by the server rather than overwritten).
async fn update_machine(api: &ApiClient, id: &str, edit: &UpdateMachine) -> Result<Machine> {
    let id = resolve_id(api, id).await?;
    let path = format!("/api/v1/machines/{id}");
    let current: Machine = api.get(&path).await?;
    let edit = UpdateMachine {
        version: Some(current.version),
        ..edit.clone()
    };
    api.patch(&path, &edit).await
}

/// Percent-encode everything but unreserved characters, for a query value or a path segment.
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn jobs(api: ApiClient, cmd: JobsCmd) -> Result<()> {
    match cmd {
        JobsCmd::Ls {
            machine,
            limit,
            output,
        } => {
            let mut path = format!("/api/v1/jobs?limit={limit}");
            if let Some(m) = machine {
                path += &format!("&machine={}", resolve_id(&api, &m).await?);
            }
            let list: Vec<JobAttempt> = api.get(&path).await?;
            output::jobs(&list, output)
        }
        JobsCmd::Logs { attempt, follow } => follow_log(&api, attempt, follow).await,
    }
}

/// Print a job's log from the start; with `follow`, poll for more until the attempt ended and
/// everything it logged was printed.
async fn follow_log(api: &ApiClient, attempt: uuid::Uuid, follow: bool) -> Result<()> {
    use std::io::Write;
    let mut offset = 0u64;
    loop {
        let path = format!("/api/v1/jobs/{attempt}/log?offset={offset}");
        let (bytes, len) = api
            .get_bytes(&path, crate::api::workflows::HEADER_LOG_LENGTH)
            .await?;
        std::io::stdout().write_all(&bytes)?;
        std::io::stdout().flush()?;
        offset += bytes.len() as u64;
        let len: u64 = len.and_then(|l| l.parse().ok()).unwrap_or(offset);
        if offset < len {
            continue;
        }
        if !follow {
            return Ok(());
        }
        let list: Vec<JobAttempt> = api.get("/api/v1/jobs?limit=1000").await?;
        let ended = list
            .iter()
            .find(|j| j.id == attempt)
            .is_none_or(|j| !matches!(j.state.as_str(), "created" | "running"));
        if ended {
            // One last read: bytes may have arrived just before the end was recorded.
            let path = format!("/api/v1/jobs/{attempt}/log?offset={offset}");
            let (bytes, _) = api.get_bytes(&path, "x-none").await?;
            std::io::stdout().write_all(&bytes)?;
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn tokens(api: ApiClient, cmd: TokensCmd) -> Result<()> {
    match cmd {
        TokensCmd::Create {
            ttl,
            uses,
            mac,
            description,
            new,
            output,
        } => {
            let req = CreateBootstrapToken {
                ttl_secs: Some(ttl),
                uses: Some(uses),
                mac,
                description,
                new,
            };
            let t: CreatedBootstrapToken = api.post("/api/v1/tokens", &req).await?;
            output::created_token(&t, output)
        }
        TokensCmd::Ls { output } => {
            let list: Vec<BootstrapToken> = api.get("/api/v1/tokens").await?;
            output::tokens(&list, output)
        }
    }
    .context("tokens")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_secs("90"), Ok(90));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("12h"), Ok(43_200));
        assert_eq!(parse_duration_secs("7d"), Ok(604_800));
        assert!(parse_duration_secs("0").is_err());
        assert!(parse_duration_secs("h").is_err());
        assert!(parse_duration_secs("5w").is_err());
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
