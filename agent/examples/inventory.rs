//! Prints this machine's inventory (or a fixture's, given a sysroot) as JSON.
//!
//! `cargo run -p anneal-agent --example inventory -- [SYSROOT] [--tools] [--lldp SECS]`

use std::path::PathBuf;
use std::time::Duration;

use anneal_agent::inventory::{collect, identity_hints, CollectOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut opts = CollectOptions {
        run_tools: false,
        ..CollectOptions::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tools" => opts.run_tools = true,
            "--lldp" => {
                let secs: u64 = args.next().unwrap_or_default().parse()?;
                opts.lldp_listen = Duration::from_secs(secs);
            }
            path => opts.sysroot = PathBuf::from(path),
        }
    }
    let inv = collect(&opts).await;
    println!("{}", serde_json::to_string_pretty(&inv)?);
    eprintln!("{}", serde_json::to_string_pretty(&identity_hints(&inv))?);
    Ok(())
}
