//! Operator-defined boot environments (any but `discovery` and `local`): a machine's script, and
//! the environment's per-machine files.
//!
//! - The definition is read at the content version the machine's run was pinned at, so
//!   `anneal apply` never changes a run under way; param values are read now, as for jobs, so
//!   fixing a param and retrying works.
//! - Artifacts (kernel, initrds) are files in `<bootenvs_dir>/<env>/`, linked under the
//!   content-addressed `/artifacts/<sha256>/<name>` like the discovery image.
//! - Files (`templates`, e.g. an installer's `preseed.cfg`) are served at
//!   `/boot/files/<token>/<name>`; the token is minted into this one script
//!   ([`super::file_token`]). Every file is rendered once before the script is given out, so
//!   a file that cannot be rendered stops the boot before the installer starts.
//! - An environment without the agent (an installer) is served only while the machine's run is
//!   booting into it ([`hold`]), so an installer that reboots at its end never installs again.
//! - Anything that cannot be rendered (the environment missing from the content, a missing or
//!   ill-typed param, a secret in the script, a missing artifact) gives the machine the retry
//!   script with the reason, is logged and counted (`anneal_boot_env_failures_total{kind}`:
//!   `definition`, `params`, `template`, `artifact`, or `server` for the server's own failures),
//!   and fails the machine's run with the reason; an operator fixes it and retries.
//!   Reasons name params, never their values.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use anneal_shared::content::{BootEnv, ContentObject};
use anneal_shared::MachineId;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use minijinja::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::file_token::{FileGrant, FILE_URL_TTL_SECS};
use super::render::error_script;
use super::{agent_boot, Boot};
use crate::app::App;
use crate::config::Config;
use crate::content::bootenv::{self, BootEnvError, BootInputs};
use crate::content::ParamError;
use crate::store::workflow::RunRecord;
use crate::workflow::run::Phase;
use crate::workflow::service::{self, InputsError};

/// The directory operators put environment `env`'s kernel and initrds in.
pub fn artifact_dir(config: &Config, env: &str) -> PathBuf {
    config.bootenvs_dir.join(env)
}

/// A known machine booting an operator environment.
pub(super) struct Booting<'a> {
    /// The machine.
    pub machine: MachineId,
    /// The MAC it boots from (normalized).
    pub mac: &'a str,
    /// The environment its run (or an operator) assigned.
    pub env: &'a str,
    /// `http://host:port` of this listener as the machine reached it.
    pub base_url: &'a str,
    /// The bare host, for URLs on the other listeners.
    pub host: &'a str,
    /// The entry script, for the retry script.
    pub retry: &'a str,
}

/// Why a script or file could not be rendered.
#[derive(Debug)]
enum Failure {
    /// The environment, a param or an artifact is wrong or missing; only a fix helps. `kind`
    /// labels the metric.
    Machine { kind: &'static str, reason: String },
    /// The machine is not to boot the environment now (see [`hold`]): it waits.
    Held(String),
    /// The server failed (its database): asking again may work.
    Server(String),
}

impl From<InputsError> for Failure {
    fn from(e: InputsError) -> Failure {
        match e {
            InputsError::Server(e) => Failure::Server(e.to_string()),
            InputsError::Machine(reason) => Failure::Machine {
                kind: "params",
                reason,
            },
        }
    }
}

impl From<BootEnvError> for Failure {
    fn from(e: BootEnvError) -> Failure {
        let template = (e.errors.0.iter()).all(|e| matches!(e, ParamError::Template { .. }));
        Failure::Machine {
            kind: if template { "template" } else { "params" },
            reason: e.errors.to_string(),
        }
    }
}

/// The machine's script for its environment: (metric label, script). On failure, the retry
/// script with the reason, and the machine's run fails with it.
pub(super) async fn script(boot: &Boot, b: &Booting<'_>) -> (&'static str, String) {
    let app = &boot.app;
    match render_script(boot, b).await {
        Ok(body) => {
            service::script_served(app, b.machine, b.env).await;
            ("custom", body)
        }
        Err(Failure::Machine { kind, reason }) => {
            tracing::warn!(machine_id = %b.machine, mac = b.mac, env = b.env, kind, %reason, "boot environment cannot be rendered for the machine; it was told to retry");
            metrics::counter!("anneal_boot_env_failures_total", "kind" => kind).increment(1);
            service::boot_unrenderable(app, b.machine, b.env, &reason).await;
            let message = format!("boot environment {}: {reason}", b.env);
            ("error", error_script(&message, b.retry))
        }
        Err(Failure::Held(why)) => {
            tracing::info!(machine_id = %b.machine, env = b.env, %why, "boot environment held back; the machine was told to retry");
            metrics::counter!("anneal_boot_env_failures_total", "kind" => "held").increment(1);
            let message = format!("not booting {}: {why}", b.env);
            ("error", error_script(&message, b.retry))
        }
        Err(Failure::Server(e)) => {
            tracing::error!(machine_id = %b.machine, env = b.env, error = %e, "rendering a boot environment failed");
            metrics::counter!("anneal_boot_env_failures_total", "kind" => "server").increment(1);
            let message = "the server could not read its database";
            ("error", error_script(message, b.retry))
        }
    }
}

async fn render_script(boot: &Boot, b: &Booting<'_>) -> Result<String, Failure> {
    let app = &boot.app;
    let run =
        (app.store.current_run(b.machine).await).map_err(|e| Failure::Server(e.to_string()))?;
    let (env, content_version) = definition_for_boot(app, run.as_ref(), b.env).await?;
    if let Some(why) = hold(run.as_ref(), &env) {
        return Err(Failure::Held(why));
    }
    let run = run.map_or(Uuid::nil(), |r| r.id);
    let (resolved, machine) = service::machine_inputs(app, b.machine).await?;
    let artifacts = link_artifacts(boot, &env, b.base_url).await?;
    let grant = FileGrant {
        machine: b.machine,
        run,
        content_version,
        env: env.name.clone(),
        mac: b.mac.to_string(),
        expires: OffsetDateTime::now_utc().unix_timestamp() + FILE_URL_TTL_SECS,
    };
    let token = (boot.file_tokens.mint(&grant))
        .ok_or_else(|| Failure::Server(format!("MAC {} cannot be put in a URL", b.mac)))?;
    let inputs = BootInputs {
        resolved: &resolved,
        machine: &machine,
        files: file_urls(&env, b.base_url, &token),
        artifacts: artifacts
            .iter()
            .map(|a| (a.path.clone(), a.url.clone()))
            .collect(),
        mac: b.mac.to_string(),
        base_url: b.base_url.to_string(),
    };
    bootenv::check_files(&env, &inputs)?;
    let kernel_args = bootenv::kernel_args(&env, &inputs)?;
    // Minted once the files and kernel arguments rendered; should an own ipxe script then
    // fail, the unused token just expires. An installed environment's agent is on the disk
    // with its own certificate: nothing to mint.
    let agent = if env.agent && !env.installed {
        let minted = agent_boot(boot, b.mac, Some(b.machine), &env.name, b.host).await;
        let minted =
            minted.ok_or_else(|| Failure::Server("minting a bootstrap token failed".into()))?;
        Some(minted.kernel_args())
    } else {
        None
    };
    if let Some(own) = bootenv::ipxe(&env, &inputs, &kernel_args, agent.as_deref())? {
        return Ok(own);
    }
    // Validation makes an environment without its own script have a kernel.
    let kernel = (artifacts.first())
        .filter(|_| env.kernel.is_some())
        .ok_or_else(|| Failure::Machine {
            kind: "definition",
            reason: "it has neither a kernel nor an ipxe script".into(),
        })?;
    let initrds: Vec<Value> = (artifacts.iter().skip(1))
        .map(|a| {
            Value::from_pairs([
                ("name", Value::from(a.name.as_str())),
                ("url", Value::from(a.url.as_str())),
            ])
        })
        .collect();
    let all_args = [Some(kernel_args), agent].into_iter().flatten();
    let ctx = minijinja::context! {
        env => env.name.as_str(),
        mac => b.mac,
        machine => b.machine.to_string(),
        kernel_url => kernel.url.as_str(),
        initrds => initrds,
        kernel_args => all_args.collect::<Vec<_>>().join(" "),
    };
    (boot.templates.render("env", ctx, b.retry))
        .map_err(|_| Failure::Server("the generated script did not render".into()))
}

/// Why the machine must not boot `env` now, if so. An environment without the agent runs
/// unsupervised (an installer), so it is served only while the machine's run is booting into
/// it: never again once the run has moved on, stopped or is waiting with it still assigned —
/// an installer that reboots at its end must not install again.
fn hold(run: Option<&RunRecord>, env: &BootEnv) -> Option<String> {
    if env.agent {
        return None;
    }
    match run.map(|r| &r.run.phase) {
        Some(Phase::Booting { env: want, .. }) if *want == env.name => None,
        Some(Phase::Failed { reason }) => Some(format!(
            "the machine's workflow run failed ({reason}): an operator retries it"
        )),
        Some(phase) => Some(format!(
            "the machine's workflow run is {}, not booting into it: an operator retries it or assigns a workflow",
            phase.name()
        )),
        None => Some("the machine has no workflow run booting into it".into()),
    }
}

/// The environment for a machine booting into it: as its run pinned it (when the run uses
/// it), else as the newest content has it; with the version read.
async fn definition_for_boot(
    app: &App,
    run: Option<&RunRecord>,
    env: &str,
) -> Result<(BootEnv, i64), Failure> {
    let pinned = run.filter(|r| r.plan.stages.iter().any(|s| s.boot_env == env));
    let version = pinned.as_ref().map(|r| r.plan.content_version);
    let (version, found) = definition_at(app, env, version).await?;
    let env = found.ok_or_else(|| Failure::Machine {
        kind: "definition",
        reason: format!("it is not defined (content version {version})"),
    })?;
    Ok((env, version))
}

/// Environment `env` at content `version` (the newest when `None`), if defined there.
async fn definition_at(
    app: &App,
    env: &str,
    version: Option<i64>,
) -> Result<(i64, Option<BootEnv>), Failure> {
    let (version, objects) =
        (app.store.content_at(version).await).map_err(|e| Failure::Server(e.to_string()))?;
    let found = objects.into_iter().find_map(|o| match o {
        ContentObject::BootEnv(b) if b.name == env => Some(b),
        _ => None,
    });
    Ok((version, found))
}

/// One of the environment's artifacts, linked.
struct Linked {
    /// The path the environment gives (`artifacts[PATH]` in templates).
    path: String,
    /// Its file name: the last part of its URL.
    name: String,
    /// Its content-addressed URL.
    url: String,
}

/// The kernel (first) and initrds, hashed and linked; a missing one is the machine's failure,
/// naming the file and where it belongs.
async fn link_artifacts(
    boot: &Boot,
    env: &BootEnv,
    base_url: &str,
) -> Result<Vec<Linked>, Failure> {
    let dir = artifact_dir(&boot.app.config, &env.name);
    let mut out = Vec::new();
    for path in env.kernel.iter().chain(&env.initrds) {
        let file = dir.join(path);
        let name = (file.file_name().and_then(|n| n.to_str()))
            .unwrap_or(path)
            .to_string();
        let sha256 = boot.artifacts.sha256(&file).await.map_err(|e| {
            tracing::debug!(file = %file.display(), error = %e, "boot environment artifact unreadable");
            Failure::Machine {
                kind: "artifact",
                reason: format!(
                    "artifact {path:?} is missing or unreadable ({}): put it in {}",
                    e.kind(),
                    dir.display()
                ),
            }
        })?;
        let url = format!("{base_url}/artifacts/{sha256}/{name}");
        out.push(Linked {
            path: path.clone(),
            name,
            url,
        });
    }
    Ok(out)
}

fn file_urls(env: &BootEnv, base_url: &str, token: &str) -> BTreeMap<String, String> {
    (env.templates.keys())
        .map(|name| {
            (
                name.clone(),
                format!("{base_url}/boot/files/{token}/{name}"),
            )
        })
        .collect()
}

/// Serve `GET /boot/files/<token>/<name>`: the file rendered for the machine the token names.
/// An unknown, altered or expired token, or a machine given another run since, is a plain 404
/// (the client is an installer, not iPXE); a render failure a 503 with the reason.
pub(super) async fn file(
    boot: &Boot,
    token: &str,
    name: &str,
    base_url: &str,
    client: SocketAddr,
) -> Response {
    match render_file(boot, token, name, base_url).await {
        Ok((grant, body)) => {
            tracing::info!(machine_id = %grant.machine, env = %grant.env, file = name, %client, "boot environment file served");
            metrics::counter!("anneal_boot_files_total", "result" => "served").increment(1);
            (
                [
                    (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                    (header::CACHE_CONTROL, "no-store"),
                ],
                body,
            )
                .into_response()
        }
        Err(FileError::Refused(why)) => {
            // The token itself is a secret: never logged.
            tracing::info!(%client, file = name, why, "boot environment file refused");
            metrics::counter!("anneal_boot_files_total", "result" => "refused").increment(1);
            let text = "no such file (the link is unknown or expired): boot the machine again\n";
            (StatusCode::NOT_FOUND, text).into_response()
        }
        Err(FileError::Failed(machine, failure)) => {
            let (kind, reason) = match failure {
                Failure::Machine { kind, reason } => (kind, reason),
                Failure::Held(why) => ("held", why),
                Failure::Server(e) => ("server", e),
            };
            tracing::warn!(machine_id = %machine, file = name, kind, %reason, "boot environment file cannot be rendered");
            metrics::counter!("anneal_boot_files_total", "result" => "failed").increment(1);
            let text = format!("Anneal could not render {name}: {reason}\n");
            (StatusCode::SERVICE_UNAVAILABLE, text).into_response()
        }
    }
}

/// Why a file was not served.
enum FileError {
    /// Not this client's to have (why, for the log).
    Refused(&'static str),
    /// The machine's file cannot be rendered.
    Failed(MachineId, Failure),
}

async fn render_file(
    boot: &Boot,
    token: &str,
    name: &str,
    base_url: &str,
) -> Result<(FileGrant, String), FileError> {
    let app = &boot.app;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let grant = (boot.file_tokens.open(token, now)).map_err(|e| match e {
        super::file_token::TokenError::Expired => FileError::Refused("expired"),
        _ => FileError::Refused("not a token of this server"),
    })?;
    let failed = |f: Failure| FileError::Failed(grant.machine, f);
    // A machine given another workflow since has no business with its old run's files.
    let run = (app.store.current_run(grant.machine).await)
        .map_err(|e| failed(Failure::Server(e.to_string())))?;
    if !grant.run.is_nil() && run.is_none_or(|r| r.id != grant.run) {
        return Err(FileError::Refused("the machine has another run now"));
    }
    let (_, env) =
        (definition_at(app, &grant.env, Some(grant.content_version)).await).map_err(failed)?;
    let Some(env) = env.filter(|e| e.templates.contains_key(name)) else {
        return Err(FileError::Refused("no such file in the environment"));
    };
    let (resolved, machine) =
        (service::machine_inputs(app, grant.machine).await).map_err(|e| failed(e.into()))?;
    let artifacts = (link_artifacts(boot, &env, base_url).await).map_err(failed)?;
    let inputs = BootInputs {
        resolved: &resolved,
        machine: &machine,
        files: file_urls(&env, base_url, token),
        artifacts: artifacts.into_iter().map(|a| (a.path, a.url)).collect(),
        mac: grant.mac.clone(),
        base_url: base_url.to_string(),
    };
    let body = bootenv::file(&env, name, &inputs).map_err(|e| failed(e.into()))?;
    Ok((grant, body))
}
