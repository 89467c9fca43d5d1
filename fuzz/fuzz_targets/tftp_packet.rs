//! The TFTP packet parser, option negotiation and the transfer state machine on arbitrary
//! bytes. The first byte picks the transfer's window; the rest is split at 0xFF bytes into
//! datagrams fed to a transfer (and each to the parser).
#![no_main]

use std::time::Duration;

use anneal_server::tftp::packet::{self, Packet};
use anneal_server::tftp::transfer::{negotiate, Transfer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Packet::Rrq(r) | Packet::Wrq(r)) = packet::parse(data) {
        let _ = negotiate(
            &r.options,
            Some(data.len() as u64),
            1468,
            Duration::from_secs(1),
        );
    }
    let (first, rest) = data.split_first().unwrap_or((&1, &[]));
    let window = (*first % 20).max(1).to_string();
    let n = negotiate(
        &[
            ("windowsize".into(), window),
            ("blksize".into(), "8".into()),
        ],
        Some(100),
        1468,
        Duration::from_secs(1),
    );
    let mut t = Transfer::new(&n, 3);
    let mut fed = 0usize;
    for dgram in rest.split(|&b| b == 0xff) {
        let _ = packet::parse(dgram);
        while t.wants_block() && fed < 200 {
            let len = if fed + 8 > 100 { 100 - fed.min(100) } else { 8 };
            t.push_block(&[0u8; 8][..len.min(8)]);
            fed += len.max(1);
        }
        let _ = t.pending().count();
        t.mark_sent();
        if dgram.len() == 1 {
            let _ = t.on_timeout();
        } else {
            let _ = t.on_datagram(dgram);
        }
    }
});
