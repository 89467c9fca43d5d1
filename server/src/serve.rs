//! `anneal serve`: bind the listeners, run until SIGINT/SIGTERM, drain, stop.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use rustls::ServerConfig;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;

use crate::app::{self, App};
use crate::config::Config;
use crate::pki::IssuedCert;
use crate::problem;

/// A started server.
pub struct Running {
    /// Shared state (tests reach into the store through it).
    pub app: Arc<App>,
    /// Where the operator API and enrollment listen.
    pub api_addr: SocketAddr,
    /// Where the agent API listens.
    pub agent_addr: SocketAddr,
    /// Where plain HTTP for iPXE (scripts, artifacts) listens.
    pub http_addr: SocketAddr,
    /// Where TFTP listens, when enabled.
    pub tftp_addr: Option<SocketAddr>,
    /// The admin token, on the very first start only.
    pub first_admin_token: Option<String>,
    /// Cancel to stop.
    pub shutdown: CancellationToken,
    /// Finishes when every listener has drained.
    pub done: JoinHandle<()>,
    /// Finishes when queued heartbeats are written (after the listeners and `app` are gone).
    pub heartbeat_writer: JoinHandle<()>,
}

impl Running {
    /// Stop and wait until the listeners have drained.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.done.await;
        // The writer ends once the last handle to the app is gone, after flushing its queue.
        drop(self.app);
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.heartbeat_writer)
            .await
            .is_err()
        {
            tracing::warn!("heartbeat writer still busy after 10 s; exiting anyway");
        }
    }
}

/// The server certificate chain: our certificate, then the CA (agents pin the CA by fingerprint
/// and find it in the chain).
pub fn server_chain(app: &App, cert: &IssuedCert) -> Result<Vec<CertificateDer<'static>>> {
    let mut chain = rustls_pemfile::certs(&mut cert.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("server certificate PEM")?;
    chain.push(app.ca.cert_der());
    Ok(chain)
}

/// The server certificate's private key.
pub fn server_key(cert: &IssuedCert) -> Result<PrivateKeyDer<'static>> {
    let pem = cert
        .key_pem
        .as_deref()
        .context("server certificate has no key")?;
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .context("server key PEM")?
        .context("server key PEM holds no key")
}

fn api_tls(app: &App, cert: &IssuedCert) -> Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(server_chain(app, cert)?, server_key(cert)?)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

async fn healthz(State(app): State<Arc<App>>) -> (StatusCode, Json<serde_json::Value>) {
    match app.store.ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(serde_json::json!({"status": "ok", "store": app.store.engine()})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                serde_json::json!({"status": "unavailable", "store": app.store.engine(), "error": e.to_string()}),
            ),
        ),
    }
}

/// The operator listener's routes: API, enrollment, health, metrics.
fn api_router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(crate::metrics::render))
        .with_state(app.clone())
        .merge(crate::api::router(app.clone()))
        .merge(crate::enroll::router(app))
        .fallback(problem::not_found)
        .layer(axum::middleware::from_fn(
            crate::http_util::stamp_server_time,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(problem::ApiError::internal(
                "handler panicked",
            ))
        }))
}

/// Bind both listeners and prepare state; serving runs in the background.
pub async fn start(mut config: Config) -> Result<Running> {
    crate::install_crypto_provider();
    crate::metrics::handle();
    let api_listener = TcpListener::bind(config.api_listen)
        .await
        .with_context(|| format!("binding the API listener on {}", config.api_listen))?;
    let agent_listener = TcpListener::bind(config.agent_listen)
        .await
        .with_context(|| format!("binding the agent listener on {}", config.agent_listen))?;
    let http_listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding the boot HTTP listener on {}", config.http_listen))?;
    // TFTP (off unless configured): bound here so a bad directory or port fails start-up.
    let tftp = match config.tftp_listen {
        Some(listen) => Some(
            crate::tftp::bind(crate::tftp::TftpConfig::new(
                listen,
                config.tftp_root.clone(),
                config.ipxe_dir.clone(),
            ))
            .await?,
        ),
        None => None,
    };
    let tftp_addr = tftp.as_ref().map(|t| t.local_addr()).transpose()?;
    let api_addr = api_listener.local_addr()?;
    let agent_addr = agent_listener.local_addr()?;
    let http_addr = http_listener.local_addr()?;
    // The configured ports may be 0 (tests); agents must be told the real ones.
    config.api_listen = api_addr;
    config.agent_listen = agent_addr;
    config.http_listen = http_addr;
    let prepared = app::prepare(config).await?;
    let app = prepared.app;
    let api_cfg = Arc::new(api_tls(&app, &prepared.server_cert)?);
    let agent_cfg = Arc::new(crate::agent_api::tls_config(&app, &prepared.server_cert)?);

    let shutdown = CancellationToken::new();
    let dhcp = crate::dhcp::start(
        &app.config.dhcp,
        app.store.clone(),
        app.events.clone(),
        shutdown.clone(),
    )?;
    if app.config.dhcp.enabled() && tftp_addr.is_none() {
        // Not an error: another host may serve TFTP (`next_server`), or every client may be
        // iPXE or HTTP boot already. But the usual set-up needs it, and a silent PXE-E32
        // timeout on the console is the classic symptom.
        tracing::warn!(
            "DHCP is on but TFTP is off: PXE firmware will be told to fetch iPXE by TFTP from \
             this host and time out; add --tftp-listen 0.0.0.0:69 unless next_server points \
             elsewhere"
        );
    }
    let api = tokio::spawn(crate::tls::serve(
        "api",
        api_listener,
        api_cfg,
        api_router(app.clone()),
        None,
        shutdown.clone(),
    ));
    let agent = tokio::spawn(crate::tls::serve(
        "agent",
        agent_listener,
        agent_cfg,
        crate::agent_api::router(app.clone()),
        Some(crate::agent_api::HTTP1_MAX_BUF),
        shutdown.clone(),
    ));
    let http = tokio::spawn(crate::boot::serve(
        http_listener,
        app.clone(),
        shutdown.clone(),
    ));
    let tftp = tftp.map(|t| tokio::spawn(t.run(shutdown.clone())));
    // Workflow deadlines (boots, attempts, stages) are enforced by this ticker.
    let ticker = tokio::spawn(crate::workflow::service::ticker(
        app.clone(),
        shutdown.clone(),
    ));
    let retention = tokio::spawn(crate::workflow::retention::run(
        app.clone(),
        shutdown.clone(),
    ));
    // Event streams never end by themselves: end them so the API listener can drain.
    let events = app.events.clone();
    let closer = shutdown.clone();
    let events_closed = tokio::spawn(async move {
        closer.cancelled().await;
        events.close();
    });
    let done = tokio::spawn(async move {
        let _ = events_closed.await;
        let _ = ticker.await;
        let _ = retention.await;
        let _ = api.await;
        let _ = agent.await;
        let _ = dhcp.await;
        let _ = http.await;
        if let Some(t) = tftp {
            let _ = t.await;
        }
    });
    tracing::info!(%api_addr, %agent_addr, %http_addr, store = app.store.engine(), ca = %app.ca.fingerprint(), "anneal serving");
    Ok(Running {
        app,
        api_addr,
        agent_addr,
        http_addr,
        tftp_addr,
        first_admin_token: prepared.first_admin_token,
        shutdown,
        done,
        heartbeat_writer: prepared.heartbeat_writer,
    })
}

/// Run until SIGINT or SIGTERM, then shut down gracefully.
pub async fn run(config: Config) -> Result<()> {
    let data_dir = config.data_dir.clone();
    let running = start(config).await?;
    let ca_fp = running.app.ca.fingerprint();
    eprintln!("anneal is serving");
    eprintln!("  operator API + enrollment: https://{}", running.api_addr);
    eprintln!(
        "  agent API (mutual TLS):    https://{}",
        running.agent_addr
    );
    eprintln!(
        "  iPXE (plain HTTP):         http://{}/boot.ipxe",
        running.http_addr
    );
    if let Some(tftp) = running.tftp_addr {
        eprintln!("  TFTP (iPXE binaries):      {tftp}");
    }
    eprintln!("  CA fingerprint:            {ca_fp}");
    if let Some(token) = &running.first_admin_token {
        eprintln!();
        eprintln!(
            "  First start: admin API token (shown once; also in {}/{}, mode 0600):",
            data_dir.display(),
            app::ADMIN_TOKEN_FILE
        );
        eprintln!("  {token}");
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
