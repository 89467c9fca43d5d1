//! A UDP relay that delays every datagram by a fixed time in each direction, so a loopback
//! benchmark sees a LAN's round trip (this machine has no `sch_netem` for `tc ... delay`).
//!
//! `udp-delay LISTEN SERVER DELAY_US`: clients send to LISTEN; the relay forwards to SERVER from
//! one upstream socket per client. TFTP answers from a new port per transfer, so each server
//! port the relay hears from gets its own client-facing socket, and whatever the client sends
//! there goes back to that server port. Datagrams leave in arrival order, each `DELAY_US` after
//! it arrived (a timer thread, not tokio's 1 ms timer wheel); none is dropped or reordered.
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::Context;

/// One datagram waiting for its time.
struct Due {
    at: Instant,
    via: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// Shared relay state.
struct Relay {
    server: SocketAddr,
    delay: Duration,
    out: Sender<Due>,
    /// Client address → its upstream socket.
    upstream: Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>,
}

impl Relay {
    fn later(&self, via: &Arc<UdpSocket>, to: SocketAddr, bytes: &[u8]) {
        let due = Due {
            at: Instant::now() + self.delay,
            via: via.clone(),
            to,
            bytes: bytes.to_vec(),
        };
        // The sender thread lives as long as the process.
        let _ = self.out.send(due);
    }

    /// The upstream socket for `client`, created (with its reader thread) on first use.
    fn upstream_for(self: &Arc<Self>, client: SocketAddr) -> anyhow::Result<Arc<UdpSocket>> {
        let mut map = self.upstream.lock().expect("relay lock");
        if let Some(s) = map.get(&client) {
            return Ok(s.clone());
        }
        let sock = Arc::new(UdpSocket::bind((self.server.ip(), 0)).context("upstream socket")?);
        map.insert(client, sock.clone());
        let (relay, up) = (self.clone(), sock.clone());
        thread::spawn(move || relay.from_server(client, up));
        Ok(sock)
    }

    /// Server → client: each server port gets its own client-facing socket.
    fn from_server(self: Arc<Self>, client: SocketAddr, up: Arc<UdpSocket>) {
        let mut facing: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = up.recv_from(&mut buf) {
            let down = match facing.get(&from) {
                Some(s) => s.clone(),
                None => {
                    let Ok(s) = UdpSocket::bind((client.ip(), 0)) else {
                        continue;
                    };
                    let s = Arc::new(s);
                    facing.insert(from, s.clone());
                    let (relay, d, u) = (self.clone(), s.clone(), up.clone());
                    thread::spawn(move || relay.from_client(d, u, from));
                    s
                }
            };
            self.later(&down, client, &buf[..n]);
        }
    }

    /// Client → one server port, through the client-facing socket made for it.
    fn from_client(self: Arc<Self>, down: Arc<UdpSocket>, up: Arc<UdpSocket>, to: SocketAddr) {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, _)) = down.recv_from(&mut buf) {
            self.later(&up, to, &buf[..n]);
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: udp-delay LISTEN SERVER DELAY_US";
    let listen: SocketAddr = args.next().context(usage)?.parse().context("LISTEN")?;
    let server: SocketAddr = args.next().context(usage)?.parse().context("SERVER")?;
    let delay = Duration::from_micros(args.next().context(usage)?.parse().context("DELAY_US")?);
    let (out, due) = channel::<Due>();
    thread::spawn(move || {
        for d in due {
            // Sleep most of the way, then spin: thread::sleep alone overshoots by ~60 µs.
            loop {
                let now = Instant::now();
                if now >= d.at {
                    break;
                }
                let left = d.at - now;
                if left > Duration::from_micros(120) {
                    thread::sleep(left - Duration::from_micros(100));
                } else {
                    std::hint::spin_loop();
                }
            }
            let _ = d.via.send_to(&d.bytes, d.to);
        }
    });
    let relay = Arc::new(Relay {
        server,
        delay,
        out,
        upstream: Mutex::new(HashMap::new()),
    });
    let front = Arc::new(UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?);
    eprintln!(
        "udp-delay: {listen} -> {server}, {} µs each way",
        delay.as_micros()
    );
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, client) = front.recv_from(&mut buf)?;
        let up = relay.upstream_for(client)?;
        relay.later(&up, server, &buf[..n]);
    }
}
