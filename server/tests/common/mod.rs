//! Helpers shared by the namespace tests in `server/tests/` (`dhcp.rs`, `dhcp_proxy.rs`,
//! `dhcp_perfdhcp.rs`): running commands, and guards that remove what a test created however
//! it ends.

use std::process::{Child, Command, Stdio};

/// Run a command quietly; whether it succeeded.
pub fn run(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Run a command that must succeed (else the test fails with its stderr).
pub fn must(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the two namespaces (and with them the veth pair) however the test ends.
pub struct Netns {
    /// The server's namespace.
    pub server: String,
    /// The client's namespace.
    pub client: String,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.server]);
        let _ = run(&["ip", "netns", "del", &self.client]);
    }
}

/// Kills a child we started (by its PID) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
