//! The agent API: HTTPS on its own listener whose TLS layer demands a client certificate
//! signed by our CA. On top of that, one middleware in front of every route checks, per
//! request, that the certificate is on record and not revoked (a kept-alive connection does
//! not outlive `revoke`) and that the machine in the path is the one the certificate names.

mod boot;
mod handlers;
mod jobs;

use std::sync::Arc;

use anneal_shared::MachineId;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;

use crate::app::App;
use crate::pki::{self, IssuedCert};
use crate::problem::{self, ApiError};
use crate::tls::PeerInfo;

/// Read buffer per agent connection (hyper's minimum). Every agent holds one kept-alive
/// connection; with hyper's adaptive default a single inventory upload (tens of KB) grows that
/// connection's buffer to 16 KB or more and it stays that size while the agent idles between
/// heartbeats: about 8 KB per agent, 80 MB at 10,000 agents (docs/performance.md). Agent
/// request heads are a few hundred bytes; bodies stream through the buffer in 8 KB reads.
pub const HTTP1_MAX_BUF: usize = 8192;

/// The authenticated caller, inserted by the middleware for the handlers.
#[derive(Debug, Clone, Copy)]
pub struct AgentIdentity {
    /// The machine the client certificate names.
    pub machine_id: MachineId,
}

/// Routes of the agent listener.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/agent/v1/machines/{id}", get(handlers::own_record))
        .route(
            "/agent/v1/machines/{id}/heartbeat",
            post(handlers::heartbeat),
        )
        .route(
            "/agent/v1/machines/{id}/inventory",
            put(handlers::inventory),
        )
        .route("/agent/v1/machines/{id}/renew", post(handlers::renew))
        .route("/agent/v1/machines/{id}/boot", post(boot::report))
        .route("/agent/v1/machines/{id}/next", post(jobs::next))
        .route(
            "/agent/v1/machines/{id}/attempts/{attempt}/start",
            post(jobs::start),
        )
        .route(
            "/agent/v1/machines/{id}/attempts/{attempt}/log",
            put(jobs::log).layer(axum::extract::DefaultBodyLimit::max(
                jobs::MAX_LOG_CHUNK + 1,
            )),
        )
        .route(
            "/agent/v1/machines/{id}/attempts/{attempt}/result",
            post(jobs::result),
        )
        .fallback(problem::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .layer(middleware::from_fn(crate::http_util::stamp_server_time))
        .layer(middleware::from_fn(timed))
        .with_state(app)
}

/// Server-side latency of agent requests by route, `anneal_agent_request_seconds`: from the
/// parsed request head to the response, authentication and store calls included (the scale
/// benchmark compares it with what agents observe).
async fn timed(req: Request, next: Next) -> Response {
    let route = match req.uri().path().rsplit('/').next() {
        Some("heartbeat") => "heartbeat",
        Some("inventory") => "inventory",
        Some("renew") => "renew",
        Some("boot") => "boot",
        Some("next") => "next",
        Some("start") => "start",
        Some("log") => "log",
        Some("result") => "result",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    metrics::histogram!("anneal_agent_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    res
}

/// TLS for the agent listener: client certificates required, verified against our CA only.
pub fn tls_config(app: &App, server: &IssuedCert) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(app.ca.cert_der())?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            crate::serve::server_chain(app, server)?,
            crate::serve::server_key(server)?,
        )?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

async fn authenticate(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let refused = |why: &str| {
        metrics::counter!("anneal_agent_auth_refused_total", "reason" => why.to_string())
            .increment(1);
        ApiError::unauthorized(why.to_string())
    };
    let cert = req
        .extensions()
        .get::<PeerInfo>()
        .and_then(|p| p.client_cert.clone())
        .ok_or_else(|| refused("client certificate required"))?;
    let ident = pki::client_identity(&cert)
        .map_err(|e| refused(&format!("client certificate names no machine: {e}")))?;
    let record = app
        .store
        .get_cert(&ident.serial_hex)
        .await?
        .ok_or_else(|| refused("client certificate is not on record"))?;
    if record.revoked_at.is_some() {
        return Err(refused("client certificate has been revoked"));
    }
    if record.machine_id != ident.machine_id {
        return Err(refused("client certificate does not match its record"));
    }
    // Ownership is checked here, for every route under the prefix, so no handler can forget it.
    if let Some(rest) = req.uri().path().strip_prefix("/agent/v1/machines/") {
        let segment = rest.split('/').next().unwrap_or_default();
        if segment.parse::<MachineId>().ok() != Some(ident.machine_id) {
            metrics::counter!("anneal_agent_auth_refused_total", "reason" => "other machine")
                .increment(1);
            return Err(ApiError::forbidden(
                "a machine may read and write only its own record",
            ));
        }
    }
    req.extensions_mut().insert(AgentIdentity {
        machine_id: ident.machine_id,
    });
    Ok(next.run(req).await)
}
