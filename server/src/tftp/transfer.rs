//! One read transfer's state machine, free of I/O so it can be tested and fuzzed directly.
//!
//! The driver (in `mod.rs`) feeds it blocks read from the file, sends what it says to send,
//! and hands it every datagram from the client and every timeout. Windowed transfers follow
//! RFC 7440: up to `windowsize` blocks go out before an ACK is awaited; an ACK for block `n`
//! acknowledges everything up to `n`, and the next window starts at `n + 1` (so an ACK in the
//! middle of a window makes the rest go out again). Lock-step RFC 1350 is windowsize 1.
//! Old or duplicate ACKs are ignored (no Sorcerer's Apprentice retransmission); a timeout
//! resends the whole outstanding window, at most `max_retries` times in a row.

use std::collections::VecDeque;
use std::time::Duration;

use super::packet::{self, Packet, DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE};

/// The largest window we agree to. Bounds the memory one client can pin
/// (`MAX_WINDOW * blksize`, and never more than [`MAX_WINDOW_BYTES`]).
pub const MAX_WINDOW: u16 = 64;
/// Upper bound for the bytes of one window held for retransmission.
pub const MAX_WINDOW_BYTES: usize = 1 << 20;

/// What was agreed for one transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Block size.
    pub blksize: u16,
    /// Blocks per window.
    pub windowsize: u16,
    /// Retransmission interval.
    pub timeout: Duration,
    /// The OACK to send, if the client asked for any option we honour.
    pub oack: Option<Vec<(String, String)>>,
}

/// Answer a request's options (RFC 2347/2348/2349/7440). Unknown options and values out of
/// range are left out of the OACK, which RFC 2347 allows; `blksize` and `windowsize` are
/// clamped to our maxima.
pub fn negotiate(
    options: &[(String, String)],
    file_size: Option<u64>,
    max_blksize: u16,
    default_timeout: Duration,
) -> Negotiated {
    let max_blksize = max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE.min(max_blksize),
        windowsize: 1,
        timeout: default_timeout,
        oack: None,
    };
    let mut acked = Vec::new();
    for (name, value) in options {
        let value = value.trim();
        match name.as_str() {
            "blksize" => {
                if let Ok(b) = value.parse::<u32>() {
                    if b >= u32::from(MIN_BLKSIZE) {
                        let b = b.min(u32::from(max_blksize)) as u16;
                        n.blksize = b;
                        acked.push((name.clone(), b.to_string()));
                    }
                }
            }
            "tsize" => {
                if let (Ok(_), Some(size)) = (value.parse::<u64>(), file_size) {
                    acked.push((name.clone(), size.to_string()));
                }
            }
            "timeout" => {
                if let Ok(t) = value.parse::<u8>() {
                    if t >= 1 {
                        n.timeout = Duration::from_secs(u64::from(t));
                        acked.push((name.clone(), t.to_string()));
                    }
                }
            }
            "windowsize" => {
                if let Ok(w) = value.parse::<u32>() {
                    if (1..=65_535).contains(&w) {
                        acked.push((name.clone(), w.min(u32::from(MAX_WINDOW)).to_string()));
                        n.windowsize = w.min(u32::from(MAX_WINDOW)) as u16;
                    }
                }
            }
            _ => {}
        }
    }
    // Keep one window's bytes bounded whatever the block size.
    let cap = (MAX_WINDOW_BYTES / usize::from(n.blksize.max(1))).clamp(1, usize::from(MAX_WINDOW));
    if usize::from(n.windowsize) > cap {
        n.windowsize = cap as u16;
        for (name, v) in acked.iter_mut() {
            if name == "windowsize" {
                *v = cap.to_string();
            }
        }
    }
    if !acked.is_empty() {
        n.oack = Some(acked);
    }
    n
}

/// What a datagram from the client meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Go on: fill the window and send what is pending.
    Continue,
    /// The last block was acknowledged.
    Complete,
    /// The client sent an ERROR and the transfer is over.
    ClientError {
        /// Its error code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// A well-formed packet that makes no sense here (RRQ, DATA, …): answer ERROR 4 and stop.
    Illegal(&'static str),
    /// Not a TFTP packet: dropped.
    Malformed(packet::ParseError),
}

/// Retries ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaveUp;

/// The sender side of one read transfer.
#[derive(Debug)]
pub struct Transfer {
    blksize: usize,
    windowsize: usize,
    max_retries: u32,
    retries: u32,
    /// Packets sent (or to be sent) and not yet acknowledged, oldest first. The first one's
    /// block number is `base`; block 0 is the OACK.
    unacked: VecDeque<Vec<u8>>,
    base: u16,
    /// How many of `unacked` have gone out since the last (re)send began.
    sent: usize,
    /// The source has delivered its short (last) block.
    eof: bool,
    complete: bool,
    /// The OACK is the outstanding packet 0; nothing else may go out before its ACK.
    oack_outstanding: bool,
    /// Recycled packet buffers.
    spare: Vec<Vec<u8>>,
    /// Blocks acknowledged so far (for logs and metrics).
    pub blocks_acked: u64,
    /// Packets sent again after a timeout or a partial-window ACK.
    pub retransmitted: u64,
}

impl Transfer {
    /// A transfer that starts with `oack` (waiting for ACK 0) or, without one, with DATA 1.
    pub fn new(n: &Negotiated, max_retries: u32) -> Transfer {
        let mut t = Transfer {
            blksize: usize::from(n.blksize.max(1)),
            windowsize: usize::from(n.windowsize.max(1)),
            max_retries,
            retries: 0,
            unacked: VecDeque::new(),
            base: 1,
            sent: 0,
            eof: false,
            complete: false,
            oack_outstanding: false,
            spare: Vec::new(),
            blocks_acked: 0,
            retransmitted: 0,
        };
        if let Some(opts) = &n.oack {
            t.unacked.push_back(packet::oack(opts));
            t.base = 0;
            t.oack_outstanding = true;
        }
        t
    }

    /// Block size in bytes.
    pub fn blksize(&self) -> usize {
        self.blksize
    }

    /// Whether the driver should read another block and [`push_block`](Self::push_block) it.
    pub fn wants_block(&self) -> bool {
        !self.eof
            && !self.complete
            && !self.oack_outstanding
            && self.unacked.len() < self.windowsize
    }

    /// Queue the next block (at most `blksize` bytes; shorter means it is the last).
    pub fn push_block(&mut self, data: &[u8]) {
        if self.eof || self.complete {
            return;
        }
        let data = data.get(..self.blksize).unwrap_or(data);
        let block = self.base.wrapping_add(self.unacked.len() as u16);
        let mut buf = self.spare.pop().unwrap_or_default();
        packet::data_into(&mut buf, block, data);
        self.unacked.push_back(buf);
        if data.len() < self.blksize {
            self.eof = true;
        }
    }

    /// Packets to send now, in order; call [`mark_sent`](Self::mark_sent) once they are out.
    pub fn pending(&self) -> impl Iterator<Item = &[u8]> {
        self.unacked.iter().skip(self.sent).map(|p| p.as_slice())
    }

    /// Everything pending has been handed to the socket.
    pub fn mark_sent(&mut self) {
        self.sent = self.unacked.len();
    }

    /// The transfer finished successfully.
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// Handle one datagram from the client.
    pub fn on_datagram(&mut self, buf: &[u8]) -> Event {
        if self.complete {
            return Event::Complete;
        }
        match packet::parse(buf) {
            Err(e) => Event::Malformed(e),
            Ok(Packet::Ack(n)) => self.on_ack(n),
            Ok(Packet::Error { code, message }) => Event::ClientError { code, message },
            Ok(Packet::Rrq(_)) | Ok(Packet::Wrq(_)) => Event::Illegal("request on a transfer port"),
            Ok(Packet::Data { .. }) => Event::Illegal("DATA sent to a read transfer"),
            Ok(Packet::Oack(_)) => Event::Illegal("OACK sent by a client"),
        }
    }

    fn on_ack(&mut self, n: u16) -> Event {
        // How far into the outstanding packets this ACK reaches (1 = the first one).
        let reach = usize::from(n.wrapping_sub(self.base)) + 1;
        if reach > self.sent || self.unacked.is_empty() {
            // Old, duplicate, or for a packet not sent yet: ignore.
            return Event::Continue;
        }
        for _ in 0..reach {
            if let Some(mut p) = self.unacked.pop_front() {
                if std::mem::take(&mut self.oack_outstanding) {
                    // The OACK's buffer is not a DATA buffer: drop it.
                    self.base = self.base.wrapping_add(1);
                    continue;
                }
                self.blocks_acked += 1;
                p.clear();
                if self.spare.len() < self.windowsize {
                    self.spare.push(p);
                }
            }
            self.base = self.base.wrapping_add(1);
        }
        self.retries = 0;
        // An ACK inside the window means the rest was lost: resend from n + 1.
        let resend = self.unacked.len().min(self.sent - reach);
        self.retransmitted += resend as u64;
        self.sent = 0;
        if self.eof && self.unacked.is_empty() {
            self.complete = true;
            return Event::Complete;
        }
        Event::Continue
    }

    /// No datagram within the timeout: resend the outstanding window, or give up.
    pub fn on_timeout(&mut self) -> Result<(), GaveUp> {
        if self.complete {
            return Ok(());
        }
        self.retries += 1;
        if self.retries > self.max_retries {
            return Err(GaveUp);
        }
        self.retransmitted += self.sent as u64;
        self.sent = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tftp::packet::{ack, parse};

    fn opts(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    /// Drive `t` over `file`, the client losing DATA packets for which `drop(block, attempt)` is true.
    fn run(t: &mut Transfer, file: &[u8], mut lose: impl FnMut(u16) -> bool) -> Vec<u8> {
        let mut got = Vec::new();
        let mut offset = 0usize;
        let mut expect: u16 = 1;
        for _ in 0..100_000 {
            while t.wants_block() {
                let end = (offset + t.blksize()).min(file.len());
                t.push_block(&file[offset..end]);
                offset = end;
            }
            let pending: Vec<Vec<u8>> = t.pending().map(|p| p.to_vec()).collect();
            t.mark_sent();
            let mut last_ok = None;
            let mut oack = false;
            for p in &pending {
                match parse(p).unwrap() {
                    Packet::Oack(_) => oack = true,
                    Packet::Data { block, data } => {
                        if lose(block) {
                            break; // the rest of the window is out of order: ignored by the client
                        }
                        if block == expect {
                            got.extend_from_slice(data);
                            expect = expect.wrapping_add(1);
                            last_ok = Some(block);
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            let reply = if oack {
                Some(0)
            } else {
                last_ok.or(Some(expect.wrapping_sub(1)))
            };
            if pending.is_empty() || (last_ok.is_none() && !oack) {
                if t.on_timeout().is_err() {
                    panic!("gave up");
                }
                continue;
            }
            if let Some(n) = reply {
                if t.on_datagram(&ack(n)) == Event::Complete {
                    return got;
                }
            }
        }
        panic!("did not finish");
    }

    #[test]
    fn negotiation_clamps_and_echoes() {
        let n = negotiate(
            &opts(&[
                ("blksize", "65464"),
                ("tsize", "0"),
                ("windowsize", "1000"),
                ("timeout", "3"),
                ("foo", "1"),
            ]),
            Some(1234),
            1468,
            Duration::from_secs(1),
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, MAX_WINDOW);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack.unwrap(),
            opts(&[
                ("blksize", "1468"),
                ("tsize", "1234"),
                ("windowsize", "64"),
                ("timeout", "3")
            ])
        );
        let n = negotiate(
            &opts(&[("blksize", "7"), ("timeout", "0"), ("windowsize", "0")]),
            None,
            1468,
            Duration::from_secs(1),
        );
        assert_eq!((n.blksize, n.windowsize, n.oack), (512, 1, None));
        let n = negotiate(&[], None, 1468, Duration::from_secs(1));
        assert_eq!((n.blksize, n.windowsize, n.oack), (512, 1, None));
        // A huge block size shrinks the window so one window stays bounded.
        let n = negotiate(
            &opts(&[("blksize", "65464"), ("windowsize", "64")]),
            None,
            65464,
            Duration::from_secs(1),
        );
        assert_eq!(n.windowsize, 16);
    }

    #[test]
    fn lock_step_with_and_without_oack() {
        let file: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let n = negotiate(&[], None, 1468, Duration::from_secs(1));
        assert_eq!(run(&mut Transfer::new(&n, 3), &file, |_| false), file);
        let n = negotiate(
            &opts(&[("blksize", "1000"), ("tsize", "0")]),
            Some(5000),
            1468,
            Duration::from_secs(1),
        );
        // 5000 is a multiple of 1000: a final empty block ends the transfer.
        assert_eq!(run(&mut Transfer::new(&n, 3), &file, |_| false), file);
    }

    #[test]
    fn windowed_with_losses_and_rollover() {
        let file: Vec<u8> = (0..70_000u32 * 8 + 3).map(|i| (i * 7) as u8).collect();
        let n = negotiate(
            &opts(&[("blksize", "8"), ("windowsize", "16")]),
            None,
            1468,
            Duration::from_secs(1),
        );
        let mut lost = std::collections::HashSet::new();
        let mut t = Transfer::new(&n, 3);
        let got = run(&mut t, &file, |b| b % 97 == 5 && lost.insert(b));
        assert!(
            got == file,
            "windowed transfer with losses and block-number rollover"
        );
        assert!(t.retransmitted > 0);
    }

    #[test]
    fn gives_up_after_retries_and_ignores_stale_acks() {
        let n = negotiate(&[], None, 1468, Duration::from_secs(1));
        let mut t = Transfer::new(&n, 2);
        t.push_block(&[1; 512]);
        t.mark_sent();
        assert_eq!(t.on_datagram(&ack(0)), Event::Continue, "stale ACK");
        assert_eq!(t.pending().count(), 0, "stale ACK causes no retransmission");
        assert_eq!(t.on_datagram(&ack(9)), Event::Continue, "future ACK");
        assert!(t.on_timeout().is_ok());
        assert_eq!(t.pending().count(), 1);
        t.mark_sent();
        assert!(t.on_timeout().is_ok());
        assert_eq!(t.on_timeout(), Err(GaveUp));
        assert!(matches!(
            t.on_datagram(b"\x00\x03\x00\x01"),
            Event::Illegal(_)
        ));
        assert!(matches!(t.on_datagram(b"\x00"), Event::Malformed(_)));
        assert!(matches!(
            t.on_datagram(&packet::error(packet::ErrorCode::OptionRefused, "no")),
            Event::ClientError { code: 8, .. }
        ));
    }
}
