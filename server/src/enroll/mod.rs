//! Enrollment: the one agent path without a client certificate. The agent pins our CA by
//! fingerprint, reads our clock, and trades a bootstrap token plus a CSR for a client
//! certificate naming its machine.

use std::sync::Arc;

use anneal_shared::events::{Event, EventKind};
use anneal_shared::protocol::{
    EnrollRequest, EnrollResponse, TimeResponse, PATH_CA, PATH_ENROLL, PATH_TIME,
};
use anneal_shared::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use time::OffsetDateTime;

use crate::app::App;
use crate::http_util::{now_ms, request_host};
use crate::identity::{self, Evidence};
use crate::problem::{ApiError, ApiJson};
use crate::store::{EnrollInput, EnrollOutcome, SignedCert, TokenRefusal};
use crate::tokens::hash_secret;
use crate::workflow::installed;

/// Routes served on the operator HTTPS listener without authentication.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route(PATH_CA, get(ca))
        .route(PATH_TIME, get(server_time))
        .route(PATH_ENROLL, post(enroll))
        .with_state(app)
}

async fn ca(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        app.ca.cert_pem().to_string(),
    )
}

async fn server_time() -> Json<TimeResponse> {
    Json(TimeResponse {
        protocol: PROTOCOL_VERSION,
        unix_ms: now_ms(),
    })
}

/// Reject requests whose fields are out of bounds before touching the store.
fn validate(req: &EnrollRequest) -> Result<(), ApiError> {
    if req.protocol < MIN_PROTOCOL_VERSION {
        return Err(ApiError::bad_request(format!(
            "agent protocol {} is too old; this server accepts {MIN_PROTOCOL_VERSION} and newer",
            req.protocol
        )));
    }
    if req.token.is_empty() {
        return Err(ApiError::unauthorized("a bootstrap token is required"));
    }
    if req.boot_id.is_empty() || req.boot_id.len() > 64 {
        return Err(ApiError::bad_request("boot_id must be 1 to 64 characters"));
    }
    if req.hostname.len() > 255 {
        return Err(ApiError::bad_request("hostname longer than 255 characters"));
    }
    if req.identity.macs.len() > 256 {
        return Err(ApiError::bad_request("more than 256 MAC addresses"));
    }
    if req
        .environment
        .as_ref()
        .is_some_and(|e| e.is_empty() || e.len() > 64)
    {
        return Err(ApiError::bad_request(
            "environment must be 1 to 64 characters",
        ));
    }
    Ok(())
}

async fn enroll(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    uri: Uri,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> Result<Json<EnrollResponse>, ApiError> {
    validate(&req)?;
    // An installed agent's environment is checked before a token use is spent on it.
    let named_env = match &req.environment {
        Some(env) => match installed::check(&app, env).await {
            Ok(e) => Some(e.name),
            Err(e) => {
                metrics::counter!("anneal_enrollments_total", "result" => "refused_environment")
                    .increment(1);
                return Err(e.into());
            }
        },
        None => None,
    };
    let now = OffsetDateTime::now_utc();
    let lifetime = time::Duration::seconds(app.config.client_cert_secs as i64);
    // Check the CSR before the transaction so a bad one is the caller's 400, not our 500.
    app.ca
        .sign_client_csr(&req.csr_pem, uuid::Uuid::nil(), now, lifetime)
        .map_err(|e| ApiError::bad_request(format!("invalid CSR: {e}")))?;

    let input = EnrollInput {
        token_hash: hash_secret(&req.token),
        evidence: Evidence::from_hints(&req.identity),
        macs: req
            .identity
            .macs
            .iter()
            .filter_map(|n| identity::normalize_mac(&n.mac))
            .collect(),
        hints: req.identity.clone(),
        boot_id: req.boot_id.clone(),
        hostname: (!req.hostname.is_empty()).then(|| req.hostname.clone()),
        require_approval: app.config.require_approval,
        now,
    };
    let ca = &app.ca;
    let csr = req.csr_pem.as_str();
    let sign = move |id| {
        ca.sign_client_csr(csr, id, now, lifetime)
            .map(|c| SignedCert {
                cert_pem: c.cert_pem,
                serial: c.serial_hex,
                not_after: c.not_after,
            })
            .map_err(|e| e.to_string())
    };
    match app.store.enroll(&input, &sign).await? {
        EnrollOutcome::Enrolled {
            machine_id,
            created,
            state,
            cert,
            same_boot,
            replayed,
            via_env,
        } => {
            let result = match (created, replayed) {
                (_, true) => "replayed",
                (true, false) => "created",
                (false, false) => "recognised",
            };
            metrics::counter!("anneal_enrollments_total", "result" => result).increment(1);
            tracing::info!(%machine_id, result, state = state.as_str(), boot_id = %req.boot_id, "machine enrolled");
            if same_boot {
                metrics::counter!("anneal_alerts_total", "kind" => "reenroll_same_boot")
                    .increment(1);
                tracing::warn!(%machine_id, boot_id = %req.boot_id, "second enrollment within one boot");
            }
            app.events.emit(Event {
                hostname: (!req.hostname.is_empty()).then(|| req.hostname.clone()),
                state: Some(result.into()),
                ..Event::of(EventKind::MachineEnrolled).machine(machine_id)
            });
            let via_env =
                installed::enrolled_via(&app, machine_id, &req.boot_id, via_env, named_env).await;
            crate::workflow::service::enrolled(&app, machine_id, &req.boot_id, via_env.as_deref())
                .await;
            let host = request_host(&headers, &uri).unwrap_or_else(|| "localhost".into());
            Ok(Json(EnrollResponse {
                protocol: PROTOCOL_VERSION,
                machine_id,
                cert_pem: cert.cert_pem,
                ca_pem: app.ca.cert_pem().to_string(),
                not_after: cert.not_after,
                agent_url: format!("https://{host}:{}", app.config.agent_listen.port()),
                created,
            }))
        }
        EnrollOutcome::Quarantined { id, reason } => {
            metrics::counter!("anneal_enrollments_total", "result" => "quarantined").increment(1);
            tracing::warn!(quarantine_id = %id, %reason, "enrollment quarantined");
            app.events.emit(Event {
                hostname: (!req.hostname.is_empty()).then(|| req.hostname.clone()),
                reason: Some(format!("{reason} (quarantine entry {id})")),
                ..Event::of(EventKind::MachineQuarantined)
            });
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "quarantined",
                format!(
                    "identity evidence conflicts with existing machines ({reason}); \
                     held as quarantine entry {id} for an operator"
                ),
            ))
        }
        EnrollOutcome::TokenRefused(why) => {
            let (kind, detail) = match why {
                TokenRefusal::Unknown => ("unknown", "bootstrap token not recognised"),
                TokenRefusal::Expired => ("expired", "bootstrap token has expired"),
                TokenRefusal::UsedUp => ("used_up", "bootstrap token has no uses left"),
                TokenRefusal::WrongMac => (
                    "wrong_mac",
                    "bootstrap token is bound to a MAC address this machine did not present",
                ),
                TokenRefusal::WrongMachine => (
                    "wrong_machine",
                    "bootstrap token was issued for another machine's rediscovery boot",
                ),
            };
            metrics::counter!("anneal_enrollments_total", "result" => "token_refused", "reason" => kind)
                .increment(1);
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "token-refused",
                detail,
            ))
        }
    }
}
