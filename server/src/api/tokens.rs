//! `/api/v1/tokens`: bootstrap tokens for enrolling machines.

use std::sync::Arc;

use anneal_shared::api::{
    BootstrapToken, CreateBootstrapToken, CreatedBootstrapToken, Problem, Role,
};
use anneal_shared::events::{Event, EventKind};
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};
use time::OffsetDateTime;

use super::Caller;
use crate::app::App;
use crate::audit::{self, Change};
use crate::identity::normalize_mac;
use crate::problem::{ApiError, ApiJson};
use crate::store::BootstrapTokenRecord;
use crate::tokens::{hash_secret, new_secret, public_id, BOOTSTRAP_PREFIX};

/// Longest lifetime a bootstrap token may have: 30 days.
const MAX_TTL_SECS: u64 = 30 * 24 * 3600;

fn view(t: BootstrapTokenRecord, new: bool) -> BootstrapToken {
    BootstrapToken {
        id: t.id,
        uses_left: t.uses_left,
        expires_at: t.expires_at,
        mac: t.mac,
        description: t.description,
        new,
    }
}

/// Create a bootstrap token; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = CreateBootstrapToken,
    responses((status = 201, body = CreatedBootstrapToken), (status = 400, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
pub async fn create(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<CreateBootstrapToken>,
) -> Result<(StatusCode, Json<CreatedBootstrapToken>), ApiError> {
    caller.require(Role::Operator)?;
    let ttl = req.ttl_secs.unwrap_or(3600);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiError::bad_request(format!(
            "ttl_secs must be between 1 and {MAX_TTL_SECS}"
        )));
    }
    let uses = req.uses.unwrap_or(1);
    if uses == 0 || uses > 100_000 {
        return Err(ApiError::bad_request("uses must be between 1 and 100000"));
    }
    let mac = match &req.mac {
        Some(m) => Some(
            normalize_mac(m)
                .ok_or_else(|| ApiError::bad_request(format!("not a MAC address: {m:?}")))?,
        ),
        None => None,
    };
    let secret = new_secret(BOOTSTRAP_PREFIX);
    let hash = hash_secret(&secret);
    let now = OffsetDateTime::now_utc();
    let record = BootstrapTokenRecord {
        id: public_id(&hash),
        hash,
        uses_left: uses,
        expires_at: now + time::Duration::seconds(ttl as i64),
        mac,
        description: req.description.clone(),
        created_at: now,
    };
    app.store.insert_bootstrap_token(&record).await?;
    // Marked before the secret leaves the server, so no enrollment can use it unmarked.
    if req.new && !app.store.mark_token_new(&record.id).await? {
        return Err(ApiError::internal(format!(
            "bootstrap token {} vanished before it was marked new",
            record.id
        )));
    }
    tracing::info!(token_id = %record.id, uses, ttl, new = req.new, by = %caller.token_id, "bootstrap token created");
    let info = view(record, req.new);
    let change = Change::new("token.create", "token", info.id.clone()).after(&info);
    audit::record(&app, &caller, change).await;
    app.events.emit(Event {
        reason: Some(info.id.clone()),
        ..Event::of(EventKind::TokenCreated)
    });
    Ok((
        StatusCode::CREATED,
        Json(CreatedBootstrapToken {
            token: secret,
            info,
        }),
    ))
}

/// Bootstrap tokens still usable (no secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<BootstrapToken>), (status = 401, body = Problem)),
    security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<BootstrapToken>>, ApiError> {
    let tokens = app
        .store
        .list_bootstrap_tokens(OffsetDateTime::now_utc())
        .await?;
    let new = app.store.tokens_marking_new().await?;
    Ok(Json(
        tokens
            .into_iter()
            .map(|t| {
                let marks = new.contains(&t.id);
                view(t, marks)
            })
            .collect(),
    ))
}
