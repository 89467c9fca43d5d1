//! Read-only TFTP server for the first boot stage (iPXE binaries).
//!
//! RFC 1350 with option negotiation: RFC 2347/2348 `blksize` (clamped to
//! [`TftpConfig::max_blksize`]), RFC 2349 `tsize` and `timeout`, RFC 7440 `windowsize`.
//! Write requests are refused (ERROR 4).
//!
//! One listener socket takes requests; every request gets its own task and its own ephemeral
//! UDP socket (a new transfer ID, as RFC 1350 prescribes), so a slow or dead client only ever
//! holds up itself. That socket is bound to the local address the request arrived on, learnt
//! per datagram with `IP_PKTINFO` / `IPV6_RECVPKTINFO`: with a wildcard listen address on a
//! multi-homed server, replies still come from the address the client asked, which PXE ROMs
//! insist on. (One listener per configured address would need the operator to list every
//! address and to restart when one changes; PKTINFO needs neither.) The socket is then
//! `connect`ed to the client, so the kernel drops datagrams from any other address/port.
//!
//! Modules: [`packet`] (pure wire format), [`transfer`] (one transfer's state machine, no
//! I/O), [`files`] (path resolution inside the root, built-ins).

pub mod client;
pub mod files;
pub mod packet;
pub mod transfer;

use std::io::{self, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use nix::sys::socket::{self, ControlMessageOwned, MsgFlags, SockaddrStorage};
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::net::UdpSocket;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use files::{FileError, Files};
use packet::{ErrorCode, Mode, Packet, Request};
use transfer::{Event, Transfer};

/// At most this many transfers run at once; more requests get ERROR 0 "busy".
pub const MAX_TRANSFERS: usize = 1024;

/// TFTP settings.
#[derive(Debug, Clone)]
pub struct TftpConfig {
    /// Where requests are received (port 69 in production).
    pub listen: SocketAddr,
    /// Served directory (created if missing).
    pub root: PathBuf,
    /// Where the Debian `ipxe` package's binaries are.
    pub ipxe_dir: PathBuf,
    /// Largest block size agreed to; derive from the path MTU (MTU − 20 IP − 8 UDP − 4 TFTP).
    pub max_blksize: u16,
    /// Retransmission interval unless the client negotiates `timeout`.
    pub timeout: Duration,
    /// Retransmissions in a row before a transfer is abandoned.
    pub retries: u32,
}

impl TftpConfig {
    /// Defaults for everything but the addresses and directories.
    pub fn new(listen: SocketAddr, root: PathBuf, ipxe_dir: PathBuf) -> TftpConfig {
        TftpConfig {
            listen,
            root,
            ipxe_dir,
            max_blksize: DEFAULT_MAX_BLKSIZE,
            timeout: Duration::from_secs(1),
            retries: 5,
        }
    }
}

/// `blksize` ceiling for an Ethernet MTU of 1500.
pub const DEFAULT_MAX_BLKSIZE: u16 = 1468;
/// Where Debian's `ipxe` package puts its binaries.
pub const DEFAULT_IPXE_DIR: &str = "/usr/lib/ipxe";

/// A bound TFTP server, not yet serving.
pub struct Server {
    socket: UdpSocket,
    shared: Arc<Shared>,
}

struct Shared {
    config: TftpConfig,
    files: Files,
    slots: Arc<Semaphore>,
}

/// Check the directories, bind the listener. Errors here are start-up errors.
pub async fn bind(config: TftpConfig) -> Result<Server> {
    if !config.ipxe_dir.is_dir() {
        bail!(
            "TFTP is enabled but the iPXE binary directory {} does not exist (install Debian's \
             iPXE binaries with `apt-get install ipxe`, or point --ipxe-dir at a directory holding {})",
            config.ipxe_dir.display(),
            files::BUILT_INS.join(", ")
        );
    }
    std::fs::create_dir_all(&config.root)
        .with_context(|| format!("creating the TFTP root {}", config.root.display()))?;
    let files = Files::new(&config.root, &config.ipxe_dir)
        .with_context(|| format!("TFTP root {}", config.root.display()))?;
    let socket = UdpSocket::bind(config.listen)
        .await
        .with_context(|| format!("binding the TFTP listener on {}", config.listen))?;
    let on = true;
    let pktinfo = match config.listen {
        SocketAddr::V4(_) => socket::setsockopt(&socket, socket::sockopt::Ipv4PacketInfo, &on),
        SocketAddr::V6(_) => socket::setsockopt(&socket, socket::sockopt::Ipv6RecvPacketInfo, &on),
    };
    pktinfo.context("enabling IP_PKTINFO on the TFTP listener")?;
    Ok(Server {
        socket,
        shared: Arc::new(Shared {
            config,
            files,
            slots: Arc::new(Semaphore::new(MAX_TRANSFERS)),
        }),
    })
}

/// Bind and serve until `shutdown` is cancelled.
pub async fn serve(config: TftpConfig, shutdown: CancellationToken) -> Result<()> {
    bind(config).await?.run(shutdown).await;
    Ok(())
}

impl Server {
    /// The bound address (the real port when 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receive requests until `shutdown`; running transfers are cancelled with it.
    pub async fn run(self, shutdown: CancellationToken) {
        let listen = self.shared.config.listen;
        tracing::info!(%listen, root = %self.shared.config.root.display(), "TFTP serving");
        let mut buf = vec![0u8; 2048];
        loop {
            let got = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = recv_with_local(&self.socket, &mut buf) => r,
            };
            let (n, peer, local, truncated) = match got {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "TFTP listener receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let local = local.unwrap_or(listen.ip());
            let datagram = buf.get(..n).unwrap_or_default();
            if truncated {
                malformed("listener", peer, "request larger than 2048 bytes");
                continue;
            }
            match packet::parse(datagram) {
                Ok(Packet::Rrq(req)) => self.spawn(peer, local, Ok(req), &shutdown),
                Ok(Packet::Wrq(req)) => self.spawn(peer, local, Err(req), &shutdown),
                Ok(other) => {
                    metrics::counter!("anneal_tftp_unexpected_packets_total").increment(1);
                    tracing::warn!(client = %peer, packet = ?kind(&other), "TFTP: not a request on the listener port; dropped");
                }
                Err(e) => malformed("listener", peer, &e.to_string()),
            }
        }
        tracing::info!(%listen, "TFTP stopped");
    }

    fn spawn(
        &self,
        peer: SocketAddr,
        local: IpAddr,
        req: Result<Request, Request>,
        shutdown: &CancellationToken,
    ) {
        let shared = self.shared.clone();
        let permit = shared.slots.clone().try_acquire_owned().ok();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            metrics::gauge!("anneal_tftp_active_transfers").increment(1.0);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = handle(shared, peer, local, req, permit.is_some()) => {}
            }
            metrics::gauge!("anneal_tftp_active_transfers").decrement(1.0);
            drop(permit);
        });
    }
}

fn kind(p: &Packet<'_>) -> &'static str {
    match p {
        Packet::Rrq(_) => "RRQ",
        Packet::Wrq(_) => "WRQ",
        Packet::Data { .. } => "DATA",
        Packet::Ack(_) => "ACK",
        Packet::Error { .. } => "ERROR",
        Packet::Oack(_) => "OACK",
    }
}

fn malformed(place: &'static str, peer: SocketAddr, why: &str) {
    metrics::counter!("anneal_tftp_malformed_packets_total", "where" => place).increment(1);
    tracing::warn!(client = %peer, reason = why, "TFTP: malformed packet dropped ({place})");
}

fn finished(outcome: &'static str) {
    metrics::counter!("anneal_tftp_transfers_total", "outcome" => outcome).increment(1);
}

/// Receive one datagram and the local address it was sent to (from PKTINFO).
async fn recv_with_local(
    sock: &UdpSocket,
    buf: &mut [u8],
) -> io::Result<(usize, SocketAddr, Option<IpAddr>, bool)> {
    sock.async_io(tokio::io::Interest::READABLE, || {
        let mut cmsg = [0u8; 128];
        let mut iov = [IoSliceMut::new(buf)];
        let msg = socket::recvmsg::<SockaddrStorage>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::empty(),
        )
        .map_err(io::Error::from)?;
        let peer = msg
            .address
            .as_ref()
            .and_then(storage_to_std)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "datagram without a source address",
                )
            })?;
        let mut local = None;
        if let Ok(cmsgs) = msg.cmsgs() {
            for c in cmsgs {
                match c {
                    ControlMessageOwned::Ipv4PacketInfo(info) => {
                        // spec_dst is the local address a reply should come from; addr is the
                        // header's destination (may be a broadcast address).
                        let spec = Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr));
                        let dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                        let pick = if spec.is_unspecified() { dst } else { spec };
                        if !pick.is_unspecified() && !pick.is_broadcast() && !pick.is_multicast() {
                            local = Some(IpAddr::V4(pick));
                        }
                    }
                    ControlMessageOwned::Ipv6PacketInfo(info) => {
                        let a = Ipv6Addr::from(info.ipi6_addr.s6_addr);
                        if !a.is_unspecified() && !a.is_multicast() {
                            local = Some(IpAddr::V6(a));
                        }
                    }
                    _ => {}
                }
            }
        }
        let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
        Ok((msg.bytes, peer, local, truncated))
    })
    .await
}

fn storage_to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// One request, from its own socket: an error reply, or a whole transfer.
async fn handle(
    shared: Arc<Shared>,
    peer: SocketAddr,
    local: IpAddr,
    req: Result<Request, Request>,
    have_slot: bool,
) {
    let sock = match UdpSocket::bind(SocketAddr::new(local, 0)).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(client = %peer, %local, error = %e, "TFTP: cannot bind a transfer socket");
            finished("io_error");
            return;
        }
    };
    if let Err(e) = sock.connect(peer).await {
        tracing::warn!(client = %peer, error = %e, "TFTP: cannot connect the transfer socket");
        finished("io_error");
        return;
    }
    let refuse = |code: ErrorCode, msg: &'static str, outcome: &'static str| {
        let sock = &sock;
        async move {
            finished(outcome);
            let _ = sock.send(&packet::error(code, msg)).await;
        }
    };
    if !have_slot {
        tracing::warn!(client = %peer, limit = MAX_TRANSFERS, "TFTP: too many transfers; request refused");
        refuse(ErrorCode::NotDefined, "server busy, try again", "busy").await;
        return;
    }
    let req = match req {
        Ok(r) => r,
        Err(w) => {
            tracing::warn!(client = %peer, file = %w.filename, "TFTP: write request refused (read-only server)");
            refuse(
                ErrorCode::IllegalOperation,
                "read-only server: write requests are refused",
                "refused_write",
            )
            .await;
            return;
        }
    };
    if req.mode == Mode::Mail {
        tracing::warn!(client = %peer, file = %req.filename, "TFTP: mail mode refused");
        refuse(
            ErrorCode::IllegalOperation,
            "mail mode is not supported",
            "refused_mode",
        )
        .await;
        return;
    }
    let name = req.filename.clone();
    let files = shared.files.clone();
    let opened = tokio::task::spawn_blocking(move || files.open(&name))
        .await
        .unwrap_or_else(|e| Err(FileError::Io(io::Error::other(e.to_string()))));
    let (file, size) = match opened {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(client = %peer, file = %req.filename, reason = %e, "TFTP: request refused");
            match e {
                FileError::NotFound => {
                    refuse(ErrorCode::FileNotFound, "file not found", "not_found").await
                }
                FileError::AccessViolation(_) => {
                    refuse(
                        ErrorCode::AccessViolation,
                        "access violation",
                        "access_violation",
                    )
                    .await
                }
                FileError::Io(_) => {
                    refuse(ErrorCode::NotDefined, "cannot read the file", "io_error").await
                }
            }
            return;
        }
    };
    let cfg = &shared.config;
    let n = transfer::negotiate(&req.options, Some(size), cfg.max_blksize, cfg.timeout);
    tracing::debug!(client = %peer, file = %req.filename, size, blksize = n.blksize, windowsize = n.windowsize, "TFTP: transfer starts");
    let started = std::time::Instant::now();
    let reader = BufReader::with_capacity(64 * 1024, tokio::fs::File::from_std(file));
    let outcome = drive(&sock, reader, &n, cfg.retries).await;
    let t = outcome.1;
    metrics::counter!("anneal_tftp_retransmits_total").increment(t.retransmitted);
    match outcome.0 {
        Ok(()) => {
            finished("complete");
            tracing::info!(client = %peer, file = %req.filename, size, blocks = t.blocks_acked, retransmitted = t.retransmitted,
                ms = started.elapsed().as_millis() as u64, "TFTP: transfer complete");
        }
        Err((outcome, why)) => {
            finished(outcome);
            tracing::warn!(client = %peer, file = %req.filename, blocks = t.blocks_acked, reason = %why, "TFTP: transfer failed");
        }
    }
}

/// Read up to `buf.len()` bytes, stopping early only at end of file.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(rest) = buf.get_mut(filled..) else {
            break;
        };
        let n = r.read(rest).await?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

type Failure = (&'static str, String);

/// Run one transfer over a connected socket.
async fn drive<R: AsyncRead + Unpin>(
    sock: &UdpSocket,
    mut reader: R,
    n: &transfer::Negotiated,
    retries: u32,
) -> (Result<(), Failure>, Transfer) {
    let mut t = Transfer::new(n, retries);
    let mut block = vec![0u8; t.blksize()];
    let mut rx = vec![0u8; 2048];
    let result = loop {
        let mut read_err = None;
        while t.wants_block() {
            match read_full(&mut reader, &mut block).await {
                Ok(len) => t.push_block(block.get(..len).unwrap_or_default()),
                Err(e) => {
                    read_err = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = read_err {
            let _ = sock
                .send(&packet::error(ErrorCode::NotDefined, "read error"))
                .await;
            break Err(("io_error", format!("reading the file: {e}")));
        }
        let mut send_err = None;
        for p in t.pending() {
            if let Err(e) = sock.send(p).await {
                send_err = Some(e);
                break;
            }
            metrics::counter!("anneal_tftp_bytes_sent_total").increment(p.len() as u64);
        }
        if let Some(e) = send_err {
            break Err(("io_error", format!("send failed: {e}")));
        }
        t.mark_sent();
        match tokio::time::timeout(n.timeout, sock.recv(&mut rx)).await {
            Err(_) => {
                if t.on_timeout().is_err() {
                    break Err(("timeout", format!("no ACK after {retries} retransmissions")));
                }
            }
            Ok(Err(e)) => break Err(("client_gone", format!("receive failed: {e}"))),
            Ok(Ok(len)) => match t.on_datagram(rx.get(..len).unwrap_or_default()) {
                Event::Continue => {}
                Event::Complete => break Ok(()),
                Event::ClientError { code, message } => {
                    break Err((
                        "client_error",
                        format!("client sent ERROR {code}: {message}"),
                    ))
                }
                Event::Illegal(why) => {
                    let _ = sock
                        .send(&packet::error(ErrorCode::IllegalOperation, why))
                        .await;
                    break Err(("illegal", why.to_string()));
                }
                Event::Malformed(e) => {
                    metrics::counter!("anneal_tftp_malformed_packets_total", "where" => "transfer")
                        .increment(1);
                    tracing::warn!(client = ?sock.peer_addr().ok(), reason = %e, "TFTP: malformed packet dropped (transfer)");
                }
            },
        }
    };
    (result, t)
}
