//! `/api/v1/machines/{id}/params`: a machine's own param values and its profiles, the layers
//! over `global` and the defaults that its tasks are rendered with. Secret values never leave
//! the server through here: they are shown masked.

use std::sync::Arc;

use anneal_shared::api::{MachineParams, ParamValue, Problem, Role, UpdateMachineParams};
use anneal_shared::events::{Event, EventKind};
use anneal_shared::MachineId;
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::Value;
use time::OffsetDateTime;

use super::auth::Caller;
use crate::app::App;
use crate::audit::{self, Change};
use crate::content::{ContentSet, Resolved, ValueSource, MASK};
use crate::problem::{ApiError, ApiJson, ApiPath};
use crate::store::workflow::MachineParams as Stored;
use crate::store::Cas;
use crate::workflow::service::current_content;

/// A machine's params and profiles, with every value resolved (secrets masked).
#[utoipa::path(get, path = "/api/v1/machines/{id}/params", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    responses((status = 200, body = MachineParams), (status = 404, body = Problem)),
    security(("bearer" = [])))]
pub async fn show(
    State(app): State<Arc<App>>,
    ApiPath(id): ApiPath<MachineId>,
) -> Result<Json<MachineParams>, ApiError> {
    let stored = find(&app, id).await?;
    let (_, content) = current_content(&app).await?;
    Ok(Json(view(&stored, &content)))
}

/// Change a machine's params and profiles. The result is checked against the current content
/// (every param defined, every value of its type, every profile present) and stored only when
/// all is well; every problem is reported at once.
#[utoipa::path(patch, path = "/api/v1/machines/{id}/params", tag = "workflows",
    params(("id" = uuid::Uuid, Path, description = "machine id")),
    request_body = UpdateMachineParams,
    responses((status = 200, body = MachineParams), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn update(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiPath(id): ApiPath<MachineId>,
    ApiJson(req): ApiJson<UpdateMachineParams>,
) -> Result<Json<MachineParams>, ApiError> {
    caller.require(Role::Operator)?;
    let stored = find(&app, id).await?;
    if req.version.is_some_and(|v| v != stored.version) {
        return Err(changed(id));
    }
    let mut next = stored.clone();
    if let Some(profiles) = &req.profiles {
        next.profiles = profiles.clone();
    }
    for name in &req.unset {
        next.params.remove(name);
    }
    next.params.extend(req.set.clone());
    let (_, content) = current_content(&app).await?;
    if let Err(errors) = Resolved::resolve(&content, &next.params, &next.profiles) {
        metrics::counter!("anneal_machine_params_rejected_total").increment(1);
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-params",
            format!("machine {id}: {errors}"),
        ));
    }
    let now = OffsetDateTime::now_utc();
    match app
        .store
        .set_machine_params(id, &next, stored.version, now)
        .await?
    {
        Cas::Done(version) => next.version = version,
        Cas::Conflict => return Err(changed(id)),
    }
    let names: Vec<&String> = req.set.keys().chain(&req.unset).collect();
    tracing::info!(machine_id = %id, by = %caller.token_id, params = ?names, profiles = ?next.profiles, "machine params changed");
    // Own values and profiles only; secret params are masked by name as well as by the view.
    let own = |p: &Stored| serde_json::json!({"profiles": p.profiles, "params": view(p, &content).params});
    let secrets: Vec<&str> = (content.params.iter())
        .filter(|(_, d)| d.secret)
        .map(|(n, _)| n.as_str())
        .collect();
    let change = Change::machine("machine.params", id)
        .before(&own(&stored))
        .after(&own(&next))
        .redacting(&secrets);
    audit::record(&app, &caller, change).await;
    app.events.emit(Event {
        reason: Some(format!(
            "params {}",
            names
                .iter()
                .map(|n| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
        ..Event::of(EventKind::MachineUpdated).machine(id)
    });
    Ok(Json(view(&next, &content)))
}

async fn find(app: &App, id: MachineId) -> Result<Stored, ApiError> {
    app.store
        .machine_params(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no machine {id}")))
}

fn changed(id: MachineId) -> ApiError {
    ApiError::conflict(format!(
        "the params of machine {id} changed meanwhile; read them again and retry"
    ))
}

/// The API's view: own values and resolved values, secrets masked.
fn view(stored: &Stored, content: &ContentSet) -> MachineParams {
    let secret = |name: &str| content.params.get(name).is_some_and(|d| d.secret);
    let mask = |name: &str, v: &Value| match secret(name) {
        true => Value::String(MASK.into()),
        false => v.clone(),
    };
    let (resolved, errors) = match Resolved::resolve(content, &stored.params, &stored.profiles) {
        Ok(r) => (r.masked(), Vec::new()),
        Err(e) => (
            Default::default(),
            e.0.iter().map(ToString::to_string).collect(),
        ),
    };
    MachineParams {
        profiles: stored.profiles.clone(),
        params: (stored.params.iter())
            .map(|(k, v)| (k.clone(), mask(k, v)))
            .collect(),
        resolved: (resolved.into_iter())
            .map(|(name, p)| {
                let source = match p.source {
                    ValueSource::Machine => "machine".to_string(),
                    ValueSource::Profile(p) => format!("profile {p}"),
                    ValueSource::Global => "global".to_string(),
                    ValueSource::Default => "default".to_string(),
                };
                let secret = secret(&name);
                let value = p.value;
                (
                    name,
                    ParamValue {
                        value,
                        source,
                        secret,
                    },
                )
            })
            .collect(),
        errors,
        version: stored.version,
    }
}
