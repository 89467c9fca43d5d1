//! `/api/v1/machines/{id}/rediscover`: boot a known machine into discovery once more.

use std::sync::Arc;

use anneal_shared::api::{Problem, Role};
use anneal_shared::events::{Event, EventKind};
use anneal_shared::MachineId;
use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::Caller;
use crate::app::App;
use crate::audit::{self, Change};
use crate::problem::{ApiError, ApiPath};
use crate::store::boot::BOOT_ENV_DISCOVERY;

/// The boot environment a machine will get at its next PXE boot.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NextBoot {
    /// The machine.
    #[schema(value_type = String, format = Uuid)]
    pub machine_id: MachineId,
    /// `discovery`: the discovery image, with a bootstrap token valid only for this machine.
    pub boot_env: String,
}

/// Boot the machine into the discovery image at its next PXE boot (instead of its local disk),
/// until it has enrolled again.
#[utoipa::path(post, path = "/api/v1/machines/{id}/rediscover", tag = "machines",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    responses((status = 200, body = NextBoot), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn rediscover(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<MachineId>,
) -> Result<Json<NextBoot>, ApiError> {
    caller.require(Role::Operator)?;
    if !app
        .store
        .request_boot_env(id, BOOT_ENV_DISCOVERY, OffsetDateTime::now_utc())
        .await?
    {
        return Err(ApiError::not_found(format!("no machine {id}")));
    }
    tracing::info!(machine_id = %id, by = %caller.token_id, "rediscovery requested for the next PXE boot");
    let next = NextBoot {
        machine_id: id,
        boot_env: BOOT_ENV_DISCOVERY.into(),
    };
    audit::record(
        &app,
        &caller,
        Change::machine("machine.rediscover", id).after(&next),
    )
    .await;
    app.events.emit(Event {
        boot_env: Some(BOOT_ENV_DISCOVERY.into()),
        ..Event::of(EventKind::RediscoverRequested).machine(id)
    });
    Ok(Json(next))
}
