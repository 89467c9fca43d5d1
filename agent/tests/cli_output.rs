//! The agent's command-line output survives a reader that goes away early.

use std::process::{Command, Stdio};

/// `anneal-agent inventory | grep -q …` closes the pipe after the first match; the agent
/// must end cleanly rather than abort on the broken pipe (CI saw exit 134 from it).
#[test]
fn inventory_into_a_closed_pipe_exits_cleanly() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/bios-e1000/root"
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_anneal-agent"))
        .args(["inventory", "--sysroot", fixture])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start anneal-agent");
    // Close the read end before the agent writes anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for anneal-agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "status {:?}, stderr: {stderr}",
        out.status
    );
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
}
