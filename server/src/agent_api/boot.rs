//! `POST /agent/v1/machines/{id}/boot`: an installed agent's boot report (see
//! `workflow/installed.rs`). Authentication and ownership were checked by the middleware.

use std::sync::Arc;

use anneal_shared::protocol::BootReport;
use anneal_shared::{MachineId, MIN_PROTOCOL_VERSION};
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;

use super::AgentIdentity;
use crate::app::App;
use crate::content::validate::MAX_NAME_LEN;
use crate::problem::{ApiError, ApiJson, ApiPath};
use crate::workflow::installed::{self, InstalledError};

impl From<InstalledError> for ApiError {
    fn from(e: InstalledError) -> ApiError {
        match e {
            InstalledError::Workflow(e) => e.into(),
            e => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not-installed-environment",
                e.to_string(),
            ),
        }
    }
}

/// Bounds on a report's fields, checked before anything is read.
fn validate(req: &BootReport) -> Result<(), ApiError> {
    if req.protocol < MIN_PROTOCOL_VERSION {
        return Err(ApiError::bad_request(format!(
            "agent protocol {} is too old; this server accepts {MIN_PROTOCOL_VERSION} and newer",
            req.protocol
        )));
    }
    if req.boot_id.is_empty() || req.boot_id.len() > 64 {
        return Err(ApiError::bad_request("boot_id must be 1 to 64 characters"));
    }
    if req.environment.is_empty() || req.environment.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "environment must be 1 to {MAX_NAME_LEN} characters"
        )));
    }
    Ok(())
}

/// `POST /agent/v1/machines/{id}/boot`: 204 once recorded (and the run stepped).
pub async fn report(
    State(app): State<Arc<App>>,
    Extension(me): Extension<AgentIdentity>,
    ApiPath(_id): ApiPath<MachineId>,
    ApiJson(req): ApiJson<BootReport>,
) -> Result<StatusCode, ApiError> {
    let counted = |result: &'static str| {
        metrics::counter!("anneal_boot_reports_total", "result" => result).increment(1);
    };
    if let Err(e) = validate(&req) {
        counted("bad_request");
        return Err(e);
    }
    match installed::booted(&app, me.machine_id, &req.boot_id, &req.environment).await {
        Ok(()) => {
            counted("recorded");
            tracing::info!(machine_id = %me.machine_id, boot_id = %req.boot_id, env = %req.environment, "installed agent reported a boot");
            Ok(StatusCode::NO_CONTENT)
        }
        Err(e) => {
            counted(e.label());
            tracing::warn!(machine_id = %me.machine_id, env = %req.environment, error = %e, "boot report refused");
            Err(e.into())
        }
    }
}
