//! The operator REST API under `/api/v1`: bearer-token auth with roles, RFC 9457 errors,
//! and an OpenAPI document generated from these handlers (committed as `docs/openapi.json`
//! and checked by a test).

mod audit;
mod auth;
mod boot;
mod content;
mod events;
mod fleet;
mod machines;
mod params;
mod tokens;
pub mod workflows;

use std::sync::Arc;

use anneal_shared::api::{Alert, Machine, MachineSummary, QuarantinedEnrollment};
use axum::middleware;
use axum::routing::{get, post, put};
use axum::Router;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::app::App;
use crate::store::{MachineRecord, QuarantineRecord};

pub use auth::Caller;
pub use events::KEEP_ALIVE as EVENTS_KEEP_ALIVE;

/// Routes under `/api/v1`, all behind token authentication.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/api/v1/machines", get(machines::list))
        .route(
            "/api/v1/machines/{id}",
            get(machines::show).patch(fleet::update),
        )
        .route("/api/v1/machines/{id}/approve", post(machines::approve))
        .route("/api/v1/machines/{id}/revoke", post(machines::revoke))
        .route("/api/v1/machines/{id}/rediscover", post(boot::rediscover))
        .route("/api/v1/quarantine", get(machines::quarantine))
        .route("/api/v1/tokens", post(tokens::create).get(tokens::list))
        .route(
            "/api/v1/machines/{id}/workflow",
            put(workflows::assign).get(workflows::show),
        )
        .route(
            "/api/v1/machines/{id}/workflow/{action}",
            post(workflows::act),
        )
        .route("/api/v1/content", post(content::apply))
        .route("/api/v1/workflows", get(content::list))
        .route(
            "/api/v1/machines/{id}/params",
            get(params::show).patch(params::update),
        )
        .route("/api/v1/jobs", get(workflows::jobs))
        .route("/api/v1/jobs/{id}/log", get(workflows::log))
        .route(
            "/api/v1/machines/{id}/claim",
            post(fleet::claim).delete(fleet::unclaim),
        )
        .route("/api/v1/workflows/{name}/assign", post(fleet::bulk_assign))
        .route("/api/v1/events", get(events::stream))
        .route("/api/v1/audit", get(audit::list))
        .layer(middleware::from_fn_with_state(
            app.clone(),
            auth::authenticate,
        ))
        .with_state(app)
}

/// The OpenAPI document of the operator API.
#[derive(OpenApi)]
#[openapi(
    info(title = "Anneal operator API", description = "Machines, enrollment tokens, quarantine and workflows of an Anneal server."),
    paths(
        machines::list,
        machines::show,
        machines::approve,
        machines::revoke,
        boot::rediscover,
        machines::quarantine,
        tokens::create,
        tokens::list,
        content::apply,
        content::list,
        workflows::assign,
        workflows::show,
        workflows::act,
        workflows::jobs,
        workflows::log,
        params::show,
        params::update,
        fleet::update,
        fleet::claim,
        fleet::unclaim,
        fleet::bulk_assign,
        events::stream,
        audit::list,
    ),
    modifiers(&BearerAuth),
    tags((name = "machines"), (name = "tokens"), (name = "workflows"), (name = "events"), (name = "audit"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document as pretty JSON, exactly as committed in `docs/openapi.json`.
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    // The crate version would make the committed document drift on every release bump.
    doc.info.version = "v1".into();
    doc.to_pretty_json().unwrap_or_default() + "\n"
}

/// A stored machine as the API shows it in full.
pub fn machine_view(m: MachineRecord) -> Machine {
    Machine {
        id: m.id,
        state: m.state,
        identity: m.identity,
        hostname: m.hostname,
        inventory: m.inventory,
        inventory_at: m.inventory_at,
        boot_id: m.boot_id,
        enrollments: m.enrollments,
        created_at: m.created_at,
        last_seen: m.last_seen,
        status: m.status,
        alerts: m
            .alerts
            .into_iter()
            .map(|a| Alert {
                kind: a.kind,
                message: a.message,
                at: a.at,
            })
            .collect(),
        tags: m.fleet.tags,
        location: m.fleet.location,
        claim: m.fleet.claim,
        rule: m.fleet.rule,
        version: m.version,
    }
}

/// A stored machine as listed.
pub fn machine_summary(m: &MachineRecord) -> MachineSummary {
    let inv = m.inventory.as_ref();
    let system = inv.and_then(|i| i.system.as_ref());
    MachineSummary {
        id: m.id,
        state: m.state,
        hostname: m.hostname.clone(),
        manufacturer: system
            .and_then(|s| s.manufacturer.clone())
            .or_else(|| m.identity.manufacturer.clone()),
        product: system
            .and_then(|s| s.product.clone())
            .or_else(|| m.identity.product.clone()),
        serial: system
            .and_then(|s| s.serial.clone())
            .or_else(|| m.identity.system_serial.clone()),
        macs: m.identity.macs.iter().map(|n| n.mac.clone()).collect(),
        cpus: inv.and_then(|i| i.cpu.as_ref()).map(|c| c.logical_cpus),
        // What was bought (the DIMMs), not what the OS keeps after the firmware's share.
        memory_bytes: inv
            .and_then(|i| i.memory.as_ref())
            .map(|m| match m.installed_bytes {
                0 => m.total_bytes,
                installed => installed,
            }),
        disks: inv.map(|i| i.disks.len() as u32),
        last_seen: m.last_seen,
        status: m.status.clone(),
        tags: m.fleet.tags.clone(),
        location: m.fleet.location.clone(),
        claim: m.fleet.claim.as_ref().map(|c| c.kind),
    }
}

fn quarantine_view(q: QuarantineRecord) -> QuarantinedEnrollment {
    QuarantinedEnrollment {
        id: q.id,
        identity: q.identity,
        candidates: q.candidates,
        reason: q.reason,
        boot_id: q.boot_id,
        at: q.at,
        attempts: q.attempts,
    }
}
