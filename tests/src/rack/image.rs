//! Where the discovery image is: built once per CI run by `scripts/build-image` and shared by
//! every end-to-end test (`ANNEAL_DISCOVERY_IMAGE` names its directory; without it, the
//! script's default output in the workspace).

use std::path::PathBuf;

/// Environment variable naming the directory with `vmlinuz`, `initrd.img`, `manifest.json`.
pub const IMAGE_ENV: &str = "ANNEAL_DISCOVERY_IMAGE";

/// The discovery image's directory (it may not exist: see [`is_built`]).
pub fn discovery_dir() -> PathBuf {
    match std::env::var_os(IMAGE_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join("anneal-data/images/discovery"),
    }
}

/// Whether the kernel and initrd are there.
pub fn is_built() -> bool {
    let dir = discovery_dir();
    [
        anneal_server::boot::KERNEL_NAME,
        anneal_server::boot::INITRD_NAME,
    ]
    .iter()
    .all(|f| dir.join(f).is_file())
}

/// `discovery_dir = "…"` for a server's TOML (top-level key: put it before any table).
pub fn config_line() -> String {
    format!(
        "discovery_dir = {:?}\n",
        discovery_dir().display().to_string()
    )
}
