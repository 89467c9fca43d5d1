//! A TCP port on the host's loopback that leads into the rack: so a person (the demo) can use
//! the CLI or a browser on the server inside the namespace. Traffic stays on loopback and
//! inside the namespace: the host side listens on 127.0.0.1 only, and each connection is
//! opened from a thread that has entered the namespace.

use std::net::{SocketAddr, TcpListener};
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use tokio::sync::oneshot;

use super::netns::Netns;

/// A running forwarder; stops when dropped.
pub struct Forward {
    /// Where it listens on the host.
    pub local: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Forward {
    /// Listen on `127.0.0.1:port` (0 picks a free port) and forward every connection to
    /// `target` inside `netns`.
    pub fn start(netns: &Netns, port: u16, target: SocketAddr) -> Result<Forward> {
        // Bound here, in the host's namespace, before the thread moves into the rack's.
        let listener = TcpListener::bind(("127.0.0.1", port))
            .with_context(|| format!("listening on 127.0.0.1:{port}"))?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let path = format!("/run/netns/{}", netns.name());
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rack-forward".into())
            .spawn(move || {
                if let Err(e) = serve(&path, listener, target, stopped) {
                    eprintln!("rack: forwarder {local} -> {target} stopped: {e:#}");
                }
            })
            .context("forwarder thread")?;
        Ok(Forward {
            local,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

fn serve(
    netns_path: &str,
    listener: TcpListener,
    target: SocketAddr,
    mut stopped: oneshot::Receiver<()>,
) -> Result<()> {
    let fd = std::fs::File::open(netns_path).with_context(|| format!("opening {netns_path}"))?;
    nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("entering {netns_path}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        loop {
            tokio::select! {
                _ = &mut stopped => return Ok(()),
                accepted = listener.accept() => {
                    let Ok((mut client, _)) = accepted else { continue };
                    tokio::spawn(async move {
                        // Connected from this thread, so inside the namespace.
                        if let Ok(mut upstream) = tokio::net::TcpStream::connect(target).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                        }
                    });
                }
            }
        }
    })
}

impl Drop for Forward {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
