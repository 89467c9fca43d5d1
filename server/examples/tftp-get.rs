//! Benchmark client: fetch one file over TFTP, `--n` times concurrently, and print the time.
//!
//! `cargo run --release -p anneal-server --example tftp-get -- 127.0.0.1:6969 ipxe.efi --n 50 --blksize 1468 --windowsize 16`

use std::net::SocketAddr;
use std::time::Instant;

use anneal_server::tftp::client;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let usage = "usage: tftp-get ADDR FILE [--n N] [--blksize B] [--windowsize W]";
    let mut args = std::env::args().skip(1);
    let server: SocketAddr = args.next().ok_or_else(|| anyhow::anyhow!(usage))?.parse()?;
    let file = args.next().ok_or_else(|| anyhow::anyhow!(usage))?;
    let (mut n, mut blksize, mut windowsize) = (1usize, None::<String>, None::<String>);
    while let Some(a) = args.next() {
        let v = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))?;
        match a.as_str() {
            "--n" => n = v.parse()?,
            "--blksize" => blksize = Some(v),
            "--windowsize" => windowsize = Some(v),
            _ => anyhow::bail!("unknown flag {a}; {usage}"),
        }
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..n {
        let (file, b, w) = (file.clone(), blksize.clone(), windowsize.clone());
        tasks.push(tokio::spawn(async move {
            let mut opts = Vec::new();
            if let Some(b) = &b {
                opts.push(("blksize", b.as_str()));
            }
            if let Some(w) = &w {
                opts.push(("windowsize", w.as_str()));
            }
            client::get(server, &file, &opts, None).await
        }));
    }
    let mut bytes = 0usize;
    for t in tasks {
        match t.await? {
            Ok(f) => bytes += f.data.len(),
            Err(e) => anyhow::bail!("transfer failed: {e:?}"),
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{n} x {file}: {bytes} bytes in {secs:.3} s = {:.1} MB/s",
        bytes as f64 / secs / 1e6
    );
    Ok(())
}
