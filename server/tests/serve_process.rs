//! `anneal serve` as a real process: first start prints the admin token once, SIGTERM drains
//! and exits 0, and a second start on the same data directory keeps the CA and the token.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Start `anneal serve` on free ports; return the child, the API port and its stderr lines so far.
fn start(dir: &std::path::Path) -> (Child, u16, Vec<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_anneal"))
        .args([
            "serve",
            "--api-listen",
            "127.0.0.1:0",
            "--agent-listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("ANNEAL_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn anneal serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut port = None;
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) else {
            continue;
        };
        if let Some(rest) = line
            .split("operator API + enrollment: https://127.0.0.1:")
            .nth(1)
        {
            port = rest.trim().parse().ok();
        }
        let done = line.contains("CA fingerprint");
        lines.push(line);
        if done && port.is_some() {
            // The token lines follow the fingerprint on a first start.
            while let Ok(l) = rx.recv_timeout(Duration::from_millis(300)) {
                lines.push(l);
            }
            break;
        }
    }
    let port = port.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("server did not report its port: {lines:?}")
    });
    (child, port, lines)
}

fn sigterm_and_wait(mut child: Child) -> std::process::ExitStatus {
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("anneal serve did not stop within 20 s of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_stops_cleanly_and_a_restart_keeps_ca_and_token() {
    let dir = tempfile::tempdir().unwrap();
    let (child, port, lines) = start(dir.path());
    let text = lines.join("\n");
    assert!(text.contains("First start: admin API token"), "{text}");
    let token_line = lines
        .iter()
        .find(|l| l.trim().starts_with("anl_api_"))
        .expect("token printed once");
    let token = token_line.trim().to_string();
    let on_disk = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    assert_eq!(on_disk.trim(), token);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "admin token file is private");
    let mode = std::fs::metadata(dir.path().join("master.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "master key file is private");
    let ca_before = std::fs::read_to_string(dir.path().join("ca.pem")).unwrap();
    assert!(port > 0);
    assert!(sigterm_and_wait(child).success(), "exit 0 after SIGTERM");

    let (child, _port, lines) = start(dir.path());
    let text = lines.join("\n");
    assert!(
        !text.contains("First start"),
        "the token is printed only once: {text}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("ca.pem")).unwrap(),
        ca_before,
        "same CA"
    );
    assert!(sigterm_and_wait(child).success());
}
