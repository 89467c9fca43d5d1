//! Where the real `anneal` binary is. Cargo hands `CARGO_BIN_EXE_anneal` only to the server
//! crate's own tests, so the rack finds it beside this test executable (same target dir and
//! profile) and first asks cargo to build it, so a test never runs a stale server.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, bail, Context, Result};

/// Environment variable naming an `anneal` binary to use as is (no build).
pub const ANNEAL_BIN_ENV: &str = "ANNEAL_BIN";

/// The `anneal` binary, built once per test process if cargo is at hand.
pub fn anneal() -> Result<PathBuf> {
    static FOUND: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    FOUND
        .get_or_init(|| find().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow!(e))
}

fn find() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(ANNEAL_BIN_ENV) {
        return Ok(PathBuf::from(p));
    }
    // target/<profile>/deps/<test>-<hash> → target/<profile>/anneal
    let exe = std::env::current_exe().context("locating the test executable")?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable is not inside a cargo target dir")?
        .to_path_buf();
    let bin = profile_dir.join("anneal");
    // `cargo test` sets CARGO for the tests it runs; without it, use what is there.
    if let (Some(cargo), Some(target_dir)) = (std::env::var_os("CARGO"), profile_dir.parent()) {
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", "anneal-server", "--bin", "anneal"])
            .env("CARGO_TARGET_DIR", target_dir);
        // Cargo gives a test its package's variables; passed on, they look like a changed
        // environment to build scripts that watch them (ring watches CARGO_MANIFEST_DIR), and
        // every switch between this build and a plain `cargo build` would rebuild half the tree.
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_EXE_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_BIN_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "CARGO_TARGET_TMPDIR",
                    "OUT_DIR",
                ]
                .contains(&k.as_ref())
            {
                cmd.env_remove(&key);
            }
        }
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let out = cmd.output().context("running cargo build for anneal")?;
        if !out.status.success() {
            bail!(
                "cargo build -p anneal-server --bin anneal failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    if !bin.exists() {
        bail!(
            "no anneal binary at {} (build it, or set {ANNEAL_BIN_ENV})",
            bin.display()
        );
    }
    Ok(bin)
}
