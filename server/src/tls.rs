//! Serving an axum router over TLS, handing every request the client certificate (if any)
//! that was presented in the handshake, with graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::graceful::GracefulShutdown;
use rustls::ServerConfig;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// What the TLS layer knows about the peer, inserted into every request's extensions.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// Remote socket address.
    pub addr: SocketAddr,
    /// The client's end-entity certificate, when one was presented and verified.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// A handshake that has not finished by then is dropped (slow or idle clients hold nothing).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long open connections get to finish after shutdown is requested.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Accept TLS connections on `listener` until `shutdown` fires, then drain.
/// `name` labels logs and metrics (`api`, `agent`). `http1_max_buf` caps each HTTP/1
/// connection's read buffer (hyper's default lets it grow to ~400 KB and keeps what it grew to
/// for the life of the connection); it also bounds the request head.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    tls: Arc<ServerConfig>,
    router: Router,
    http1_max_buf: Option<usize>,
    shutdown: CancellationToken,
) {
    let acceptor = TlsAcceptor::from(tls);
    let graceful = GracefulShutdown::new();
    loop {
        let (tcp, addr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    metrics::counter!("anneal_tls_handshake_failures_total", "listener" => name)
                        .increment(1);
                    tracing::debug!(listener = name, peer = %addr, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    metrics::counter!("anneal_tls_handshake_failures_total", "listener" => name)
                        .increment(1);
                    tracing::debug!(listener = name, peer = %addr, "TLS handshake timed out");
                    return;
                }
            };
            let client_cert = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let peer = PeerInfo { addr, client_cert };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(peer.clone());
                    router.clone().oneshot(req)
                },
            );
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Some(max) = http1_max_buf {
                builder.http1().max_buf_size(max);
            }
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(listener = name, peer = %addr, error = %e, "connection ended with an error");
            }
        });
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(DRAIN_TIMEOUT) => {
            tracing::warn!(listener = name, "connections still open after drain timeout; closing");
        }
    }
}
