//! A minimal TFTP read client: for tests, `examples/tftp-get.rs` (benchmarks) and fuzzing.
//! Not used by the server. Speaks RFC 1350 with `blksize`/`tsize`/`windowsize` and can
//! simulate losing one DATA packet, to exercise the server's retransmission.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::UdpSocket;

use super::packet::{self, Packet, OP_RRQ};

/// What a fetch returned.
#[derive(Debug)]
pub struct Fetched {
    /// The file.
    pub data: Vec<u8>,
    /// The server's OACK, if it sent one.
    pub oack: Option<Vec<(String, String)>>,
    /// The server's transfer address (its TID).
    pub server_tid: SocketAddr,
    /// DATA packets dropped on purpose.
    pub dropped: u32,
}

/// Why a fetch failed.
#[derive(Debug)]
pub enum FetchError {
    /// The server sent ERROR.
    Tftp(u16, String),
    /// No answer in time, or a protocol violation.
    Protocol(String),
    /// Socket trouble.
    Io(std::io::Error),
}

impl From<std::io::Error> for FetchError {
    fn from(e: std::io::Error) -> Self {
        FetchError::Io(e)
    }
}

/// Fetch `name`. `lose_block`: the first DATA packet with this block number is ignored as if
/// lost on the wire.
pub async fn get(
    server: SocketAddr,
    name: &str,
    options: &[(&str, &str)],
    lose_block: Option<u16>,
) -> Result<Fetched, FetchError> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    }
    .parse()
    .map_err(|_| FetchError::Protocol("address".into()))?;
    let sock = UdpSocket::bind(SocketAddr::new(
        if server.ip().is_loopback() {
            server.ip()
        } else {
            bind.ip()
        },
        0,
    ))
    .await?;
    let rrq = packet::request(OP_RRQ, name, "octet", options);
    let mut buf = vec![0u8; 65_536];
    let wait = Duration::from_secs(2);
    let mut blksize = 512usize;
    let mut window = 1usize;
    let mut oack = None;
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    let mut dropped = 0;
    let mut lose = lose_block;
    let mut in_window = 0usize;
    let mut nacked = false;
    let mut tid = None;
    // The request, retried a few times.
    for attempt in 0.. {
        sock.send_to(&rrq, server).await?;
        match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Ok(r) => {
                let (n, from) = r?;
                tid = Some(from);
                sock.connect(from).await?;
                match packet::parse(buf.get(..n).unwrap_or_default()) {
                    Ok(Packet::Oack(o)) => {
                        for (k, v) in &o {
                            match k.as_str() {
                                "blksize" => blksize = v.parse().unwrap_or(512),
                                "windowsize" => window = v.parse().unwrap_or(1),
                                _ => {}
                            }
                        }
                        oack = Some(o);
                        sock.send(&packet::ack(0)).await?;
                    }
                    Ok(Packet::Data { .. }) => {
                        // Handled below: put it back by processing it in the loop.
                        return finish_from_first(sock, &mut buf, n, from, lose_block).await;
                    }
                    Ok(Packet::Error { code, message }) => {
                        return Err(FetchError::Tftp(code, message))
                    }
                    other => {
                        return Err(FetchError::Protocol(format!(
                            "unexpected first reply {other:?}"
                        )))
                    }
                }
                break;
            }
            Err(_) if attempt < 3 => continue,
            Err(_) => return Err(FetchError::Protocol("no reply to the request".into())),
        }
    }
    let server_tid = tid.ok_or_else(|| FetchError::Protocol("no reply".into()))?;
    let mut silent = 0;
    loop {
        let n = match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => {
                silent += 1;
                if silent > 5 {
                    return Err(FetchError::Protocol(format!(
                        "server went silent at block {expect}"
                    )));
                }
                sock.send(&packet::ack(expect.wrapping_sub(1))).await?;
                continue;
            }
        };
        silent = 0;
        match packet::parse(buf.get(..n).unwrap_or_default()) {
            Ok(Packet::Data { block, data: d }) => {
                if lose == Some(block) {
                    lose = None;
                    dropped += 1;
                    continue;
                }
                if block != expect {
                    // Out of order (something before it was lost): ack what we have, once.
                    if !nacked {
                        nacked = true;
                        in_window = 0;
                        sock.send(&packet::ack(expect.wrapping_sub(1))).await?;
                    }
                    continue;
                }
                nacked = false;
                data.extend_from_slice(d);
                expect = expect.wrapping_add(1);
                in_window += 1;
                let last = d.len() < blksize;
                if last || in_window >= window {
                    in_window = 0;
                    sock.send(&packet::ack(block)).await?;
                }
                if last {
                    return Ok(Fetched {
                        data,
                        oack,
                        server_tid,
                        dropped,
                    });
                }
            }
            Ok(Packet::Error { code, message }) => return Err(FetchError::Tftp(code, message)),
            Ok(Packet::Oack(_)) => {
                // Our ACK 0 was lost; say it again.
                sock.send(&packet::ack(0)).await?;
            }
            other => return Err(FetchError::Protocol(format!("unexpected packet {other:?}"))),
        }
    }
}

/// A plain RFC 1350 transfer whose first DATA already arrived.
async fn finish_from_first(
    sock: UdpSocket,
    buf: &mut [u8],
    n: usize,
    server_tid: SocketAddr,
    mut lose: Option<u16>,
) -> Result<Fetched, FetchError> {
    let mut data = Vec::new();
    let mut expect: u16 = 1;
    let mut dropped = 0;
    let mut len = n;
    loop {
        if let Ok(Packet::Data { block, data: d }) =
            packet::parse(buf.get(..len).unwrap_or_default())
        {
            if lose == Some(block) {
                lose = None;
                dropped += 1;
            } else if block == expect {
                data.extend_from_slice(d);
                expect = expect.wrapping_add(1);
                sock.send(&packet::ack(block)).await?;
                if d.len() < 512 {
                    return Ok(Fetched {
                        data,
                        oack: None,
                        server_tid,
                        dropped,
                    });
                }
            }
        } else if let Ok(Packet::Error { code, message }) =
            packet::parse(buf.get(..len).unwrap_or_default())
        {
            return Err(FetchError::Tftp(code, message));
        }
        len = match tokio::time::timeout(Duration::from_secs(5), sock.recv(buf)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(FetchError::Protocol(format!(
                    "server went silent at block {expect}"
                )))
            }
        };
    }
}
