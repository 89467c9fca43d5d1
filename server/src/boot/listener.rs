//! The plain-HTTP boot listener: accepts connections, answers plain artifact GETs itself with
//! `sendfile` (`super::sendfile`), and hands everything else — with the bytes it already read —
//! to hyper and the boot router. On shutdown it stops accepting, lets requests in flight finish
//! (up to [`DRAIN_TIMEOUT`]) and closes idle keep-alive connections.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::sendfile::{self, Head};
use super::{Boot, ConnAddrs};

/// How long shutdown waits for requests in flight.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection may take to send a request head (or sit idle between requests).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Accept and serve until `shutdown`, then drain.
pub async fn run(
    listener: TcpListener,
    boot: Arc<Boot>,
    router: Router,
    shutdown: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "boot HTTP: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let addrs = ConnAddrs {
            local: tcp.local_addr().ok(),
            remote,
        };
        conns.spawn(connection(
            tcp,
            addrs,
            boot.clone(),
            router.clone(),
            shutdown.clone(),
        ));
    }
    if tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("boot HTTP: connections still busy after the drain timeout; closing them");
        conns.abort_all();
    }
}

/// One connection: fast-path artifact GETs for as long as they come, then hyper for the rest.
async fn connection(
    mut tcp: TcpStream,
    addrs: ConnAddrs,
    boot: Arc<Boot>,
    router: Router,
    shutdown: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let head = loop {
            match sendfile::classify(&buf) {
                Head::Partial => {}
                other => break other,
            }
            let mut chunk = [0u8; 2048];
            let read = tokio::select! {
                // Idle between requests: close on shutdown; a started head may finish.
                _ = shutdown.cancelled(), if buf.is_empty() => return,
                r = tokio::time::timeout(HEAD_TIMEOUT, tcp.read(&mut chunk)) => r,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Head::Artifact(get) = head else { break };
        let Some(path) = boot.artifacts.resolve(&get.sha256, &get.name).await else {
            break; // the router answers the 404 with its explanation
        };
        let opened = tokio::task::spawn_blocking(move || {
            let file = std::fs::File::open(&path)?;
            let len = file.metadata()?.len();
            Ok::<_, std::io::Error>((file, len))
        })
        .await;
        let Ok(Ok((file, len))) = opened else {
            break; // the router's path reports the error
        };
        if let Err(e) = sendfile::send(&mut tcp, &file, len, get.close).await {
            metrics::counter!("anneal_boot_artifacts_total", "result" => "aborted").increment(1);
            tracing::debug!(client = %addrs.remote, name = %get.name, error = %e, "boot HTTP: artifact transfer ended early");
            return;
        }
        metrics::counter!("anneal_boot_artifacts_total", "result" => "200").increment(1);
        if get.close || shutdown.is_cancelled() {
            return;
        }
        buf.drain(..get.head_len);
    }
    hyper_rest(tcp, buf, addrs, router, shutdown).await;
}

/// Serve the rest of the connection with hyper, `prefix` being bytes already read from it.
async fn hyper_rest(
    tcp: TcpStream,
    prefix: Vec<u8>,
    addrs: ConnAddrs,
    router: Router,
    shutdown: CancellationToken,
) {
    let remote: SocketAddr = addrs.remote;
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(addrs));
            router.clone().oneshot(req)
        });
    let io = TokioIo::new(Prefixed {
        prefix,
        pos: 0,
        inner: tcp,
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(client = %remote, error = %e, "boot HTTP: connection ended with an error");
    }
}

/// A stream whose first bytes were already read: they are read again first.
struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
