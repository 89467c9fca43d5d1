//! A TCP link on loopback that a test can cut and restore: a forwarder from `listen` to a
//! target that, while cut, closes every open connection and every new one at once — what an agent
//! sees when its switch port or the server's network goes away.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A cuttable forwarder. Dropping it stops it.
pub struct Link {
    /// Where clients connect.
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
    /// Connections refused while the link was cut.
    pub refused: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// Forward `listen` (e.g. `127.0.0.1:PORT`) to `target`.
    pub async fn start(listen: SocketAddr, target: SocketAddr) -> std::io::Result<Link> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let up = Arc::new(AtomicBool::new(true));
        let refused = Arc::new(AtomicU64::new(0));
        let (cuts, _) = watch::channel(0u64);
        let task = tokio::spawn({
            let (up, refused, cuts) = (up.clone(), refused.clone(), cuts.clone());
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !up.load(Ordering::SeqCst) {
                        refused.fetch_add(1, Ordering::Relaxed);
                        drop(client); // closed at once: nothing gets through
                        continue;
                    }
                    let mut cut = cuts.subscribe();
                    tokio::spawn(async move {
                        let Ok(server) = TcpStream::connect(target).await else {
                            return;
                        };
                        let (mut client, mut server) = (client, server);
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            // Both ends are dropped: the agent's request dies mid-way.
                            _ = cut.changed() => {}
                        }
                    });
                }
            }
        });
        Ok(Link {
            addr,
            up,
            cuts,
            refused,
            task,
        })
    }

    /// Cut: close open connections, and every new one at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Restore the link.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}
