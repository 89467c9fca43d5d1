//! The agent API: HTTPS on its own listener whose TLS layer demands a client certificate
//! signed by our CA. On top of that, one middleware in front of every route checks, per
//! request, that the certificate is on record and not revoked (a kept-alive connection does
//! not outlive `revoke`) and that the machine in the path is the one the certificate names.

mod handlers;

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
        .fallback(problem::not_found)
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .layer(middleware::from_fn(crate::http_util::stamp_server_time))
        .with_state(app)
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
