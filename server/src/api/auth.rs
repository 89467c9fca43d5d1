//! Operator authentication: `Authorization: Bearer <token>`, looked up by hash, with a role.

use std::net::SocketAddr;
use std::sync::Arc;

use anneal_shared::api::Role;
use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::Response;

use crate::app::App;
use crate::problem::ApiError;
use crate::tls::PeerInfo;
use crate::tokens::hash_secret;

/// Who is calling, as handlers see it.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Public id of the API token.
    pub token_id: String,
    /// Its role.
    pub role: Role,
    /// Its name (for the audit log).
    pub name: String,
    /// Where the request came from, when the listener knows it.
    pub address: Option<SocketAddr>,
}

impl Caller {
    /// Refuse unless the caller's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), ApiError> {
        let rank = |r: Role| match r {
            Role::Admin => 3,
            Role::Operator => 2,
            Role::Viewer => 1,
            Role::Unknown => 0,
        };
        if rank(self.role) >= rank(needed) {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this needs the {needed:?} role; token {} has {:?}",
                self.token_id, self.role
            )))
        }
    }
}

/// Middleware: resolve the bearer token or answer 401.
pub async fn authenticate(
    State(app): State<Arc<App>>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = req
        .headers()
        .get(AUTHORIZATION)
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let secret = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| ApiError::unauthorized("Authorization header is not `Bearer <token>`"))?;
    let token = app
        .store
        .find_api_token(&hash_secret(secret))
        .await?
        .ok_or_else(|| {
            metrics::counter!("anneal_api_auth_refused_total").increment(1);
            ApiError::unauthorized("unknown API token")
        })?;
    let address = req.extensions().get::<PeerInfo>().map(|p| p.addr);
    req.extensions_mut().insert(Caller {
        token_id: token.id,
        role: token.role,
        name: token.name,
        address,
    });
    Ok(next.run(req).await)
}
