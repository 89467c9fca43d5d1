//! The crate alternative to our TFTP server, for `scripts/bench-tftp`: async-tftp serving a
//! directory read-only. `async-tftp-dir ROOT ADDR`
use anyhow::Context;
use async_tftp::server::TftpServerBuilder;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(addr)) = (args.next(), args.next()) else {
        anyhow::bail!("usage: async-tftp-dir ROOT ADDR");
    };
    let server = TftpServerBuilder::with_dir_ro(&root)
        .with_context(|| format!("serving {root}"))?
        .bind(addr.parse().context("ADDR")?)
        .build()
        .await?;
    server.serve().await?;
    Ok(())
}
