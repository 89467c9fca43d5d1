//! Agents on an installed OS (`anneal-agent run --installed`). Such an agent boots from the
//! machine's disk, not from a script that minted it a token, so it proves a new boot another
//! way: with the certificate it kept it reports the boot (`POST …/boot`), or, without one, it
//! enrolls with an operator's token and names its environment. Either counts as the machine's
//! boot through that environment — only for an environment flagged `installed`, so no agent
//! can claim to have booted the discovery image or an installer.

use anneal_shared::content::BootEnv;
use anneal_shared::events::{Event, EventKind};
use anneal_shared::MachineId;
use time::OffsetDateTime;

use super::service::{self, current_content, WorkflowError};
use crate::app::App;

/// Why an installed agent's environment was refused.
#[derive(Debug, thiserror::Error)]
pub enum InstalledError {
    /// No such boot environment in the current content.
    #[error("boot environment {0:?} is not defined")]
    Unknown(String),
    /// Defined, but its agent does not run from the machine's disk.
    #[error(
        "boot environment {0:?} is not flagged installed: only an environment with \
         `installed: true` (such as the built-in `installed`) may be named by an agent running \
         from the machine's disk"
    )]
    NotInstalled(String),
    /// The content could not be read.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
}

impl InstalledError {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            InstalledError::Unknown(_) => "unknown_env",
            InstalledError::NotInstalled(_) => "not_installed",
            InstalledError::Workflow(_) => "server",
        }
    }
}

/// The environment `env` as the newest content defines it, if it is flagged `installed`.
pub async fn check(app: &App, env: &str) -> Result<BootEnv, InstalledError> {
    let (_, content) = current_content(app).await?;
    match content.boot_envs.get(env) {
        None => Err(InstalledError::Unknown(env.to_string())),
        Some(e) if !e.installed || !e.agent => Err(InstalledError::NotInstalled(env.to_string())),
        Some(e) => Ok(e.clone()),
    }
}

/// An installed agent's boot report: machine `machine` runs boot `boot_id` of `env`. Recorded
/// as its latest boot, emitted, and handed to the workflow like an enrollment through `env`.
pub async fn booted(
    app: &App,
    machine: MachineId,
    boot_id: &str,
    env: &str,
) -> Result<(), InstalledError> {
    check(app, env).await?;
    app.store
        .report_boot(machine, boot_id, env, OffsetDateTime::now_utc())
        .await
        .map_err(WorkflowError::from)?;
    app.events.emit(Event {
        boot_env: Some(env.to_string()),
        reason: Some(format!("boot {boot_id}")),
        ..Event::of(EventKind::MachineBooted).machine(machine)
    });
    service::enrolled(app, machine, boot_id, Some(env)).await;
    Ok(())
}

/// The environment an enrollment booted through: the one whose script minted its token
/// (`minted`), else the installed environment the agent named (`named`, checked by [`check`]
/// before the enrollment), recorded as the machine's latest boot.
pub async fn enrolled_via(
    app: &App,
    machine: MachineId,
    boot_id: &str,
    minted: Option<String>,
    named: Option<String>,
) -> Option<String> {
    let Some(env) = named.filter(|_| minted.is_none()) else {
        // A boot script's token is the stronger proof; an agent naming another environment
        // beside it is misconfigured but harmless.
        return minted;
    };
    let now = OffsetDateTime::now_utc();
    if let Err(e) = app.store.report_boot(machine, boot_id, &env, now).await {
        tracing::error!(machine_id = %machine, error = %e, "recording an installed agent's boot failed");
    }
    Some(env)
}
