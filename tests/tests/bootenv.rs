//! Operator boot environments over loopback, with the worked example: the Debian installer
//! content in `examples/content/debian-installer/` applied through the API as an operator
//! would, stand-in files for the installer's `linux` and `initrd.gz`, and the machine's PXE
//! boot played by fetching its script, its kernel, its initrd and its preseed over HTTP.
//!
//! Everything the server logs in this process is captured, to check that the secret root
//! password hash reaches the preseed and nothing else.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use anneal_agent::clock::Clock;
use anneal_shared::protocol::{IdentityHints, NextAction, Nic};
use anneal_tests::pxe::{get, kernel_line, machine_script, plain_http, token_of};
use anneal_tests::workflow::{assign, jobs_of, run_of};
use anneal_tests::{hints, TestServer};
use serde_json::json;

const MAC: &str = "52:54:00:de:b1:01";
const HOSTNAME: &str = "node-deb1";
/// The secret param's value: must show up in the preseed and nowhere else.
const ROOT_HASH: &str = "$6$annealtest$Zm9yIHRoZSBwcmVzZWVkIG9ubHk";

/// Everything logged in this test process.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let sink = Sink(buf.clone());
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .init();
        buf
    })
    .clone()
}

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn machine_hints() -> IdentityHints {
    let mut h = hints(51);
    h.macs.push(Nic {
        mac: MAC.into(),
        bus: Some("pci".into()),
    });
    h
}

/// POST the files as one `anneal apply`; the answer's JSON.
async fn apply(server: &TestServer, files: serde_json::Value) -> serde_json::Value {
    let res = server
        .http()
        .post(format!("{}/api/v1/content", server.api_url))
        .bearer_auth(&server.admin_token)
        .json(&json!({ "files": files }))
        .send()
        .await
        .expect("apply");
    let status = res.status();
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(status, 200, "{body:#}");
    body
}

/// The example's YAML files, as `anneal apply -f examples/content/debian-installer` sends them.
fn example_files() -> serde_json::Value {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/content/debian-installer");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("example directory") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).expect("read");
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            files.push(json!({ "path": name, "text": text }));
        }
    }
    assert_eq!(files.len(), 3, "params, boot env, workflow");
    json!(files)
}

/// The operator sets the secret in the global profile.
async fn set_root_hash(server: &TestServer) {
    let profile = format!(
        "kind: profile\nname: global\nparams:\n  debian.root_password_hash: \"{ROOT_HASH}\"\n"
    );
    apply(server, json!([{ "path": "profile.yaml", "text": profile }])).await;
}

/// Stand-ins for Debian's `linux` and `initrd.gz`, in the environment's artifact directory.
fn put_installer(server: &TestServer) -> (Vec<u8>, Vec<u8>) {
    let dir = server.dir.path().join("bootenvs").join("debian-installer");
    std::fs::create_dir_all(&dir).unwrap();
    let kernel: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let initrd: Vec<u8> = (0..300_000u32).map(|i| (i * 13 % 241) as u8).collect();
    std::fs::write(dir.join("linux"), &kernel).unwrap();
    std::fs::write(dir.join("initrd.gz"), &initrd).unwrap();
    (kernel, initrd)
}

async fn download(url: &str) -> (u16, Vec<u8>) {
    let res = plain_http().get(url).send().await.expect("download");
    let status = res.status().as_u16();
    (status, res.bytes().await.expect("bytes").to_vec())
}

/// An operator API request as the admin, without a body: status and body text.
async fn api(server: &TestServer, method: reqwest::Method, path: &str) -> (u16, String) {
    let url = format!("{}{path}", server.api_url);
    let req = server
        .http()
        .request(method, url)
        .bearer_auth(&server.admin_token);
    let res = req.send().await.expect("API request");
    (res.status().as_u16(), res.text().await.expect("body"))
}

/// Retry the machine's failed run; its JSON.
async fn retry(server: &TestServer, id: uuid::Uuid) -> serde_json::Value {
    let path = format!("/api/v1/machines/{id}/workflow/retry");
    let (status, body) = api(server, reqwest::Method::POST, &path).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("run JSON")
}

/// The value of `key=` on a kernel line.
fn arg<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in {line}"))
}

#[tokio::test]
async fn the_debian_installer_boots_with_its_artifacts_and_a_preseed_for_the_machine() {
    let logs = captured_logs();
    let server = TestServer::start().await;
    let (kernel, initrd) = put_installer(&server);
    let applied = apply(&server, example_files()).await;
    assert!(
        applied["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["action"] == "created"),
        "{applied:#}"
    );

    // A machine running the discovery image's agent, given the installer workflow.
    let agent = server
        .enroller(Clock::system())
        .enroll(
            &server.bootstrap_token(1).await,
            machine_hints(),
            "boot-0",
            HOSTNAME,
        )
        .await
        .expect("enrollment");
    let id = agent.machine_id;
    let run = assign(&server, id, "install-debian").await;
    assert_eq!(run.booting.as_deref(), Some("debian-installer"));
    assert_eq!(agent.next().await.unwrap(), NextAction::Reboot);

    // The root password hash has no value yet: a script that says so and retries, and the
    // run stops with the reason.
    let script = machine_script(&server, MAC, "", "efi").await;
    assert!(
        script.contains(
            r#"echo Anneal: boot environment debian-installer: param "debian.root_password_hash" has no value and no default"#
        ),
        "{script}"
    );
    assert!(script.contains("chain --replace"), "{script}");
    assert!(
        !script.lines().any(|l| l.starts_with("kernel ")),
        "{script}"
    );
    let run = run_of(&server, id).await;
    assert_eq!(run.phase, "failed");
    let reason = run.reason.unwrap_or_default();
    assert!(
        reason.contains(
            "stage `install-debian`: boot environment `debian-installer` cannot be rendered"
        ) && reason.contains("debian.root_password_hash"),
        "{reason}"
    );

    // The operator sets it (in the global profile) and retries.
    set_root_hash(&server).await;
    // Fixed, but the run is stopped: the installer is held back until the operator retries
    // (the machine asks every 30 seconds; it must not start installing behind the run's back).
    let script = machine_script(&server, MAC, "", "efi").await;
    assert!(
        script.contains("not booting debian-installer: the machine's workflow run failed"),
        "{script}"
    );
    assert!(
        !script.lines().any(|l| l.starts_with("kernel ")),
        "{script}"
    );
    // And this machine's own disk, over the example's default.
    let res = server
        .http()
        .patch(format!("{}/api/v1/machines/{id}/params", server.api_url))
        .bearer_auth(&server.admin_token)
        .json(&json!({ "set": { "debian.disk": "/dev/nvme0n1" } }))
        .send()
        .await
        .expect("patch params");
    assert_eq!(res.status(), 200);
    let run = retry(&server, id).await;
    assert_eq!(run["phase"], "booting", "{run:#}");

    // Now the installer's script: its kernel and initrd, the per-boot preseed URL, the machine.
    let script = machine_script(&server, MAC, "", "efi").await;
    assert!(
        !script.contains(ROOT_HASH),
        "no secret in a script:\n{script}"
    );
    let line = kernel_line(&script);
    let words: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(words[2], "initrd=initrd.gz", "{line}");
    for want in [
        "auto=true",
        "priority=critical",
        &format!("hostname={HOSTNAME}"),
        "domain=",
        "interface=auto",
        "console=ttyS0,115200n8",
    ] {
        assert!(words.contains(&want), "{want} missing in {line}");
    }
    let (status, body) = download(words[1]).await;
    assert_eq!((status, body == kernel), (200, true), "{}", words[1]);
    let initrd_url = script
        .lines()
        .find_map(|l| l.strip_prefix("initrd "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no initrd line in\n{script}"));
    assert!(initrd_url.ends_with("/initrd.gz"), "{initrd_url}");
    let (status, body) = download(initrd_url).await;
    assert_eq!((status, body == initrd), (200, true), "{initrd_url}");

    // The installer is under way: the run waits for the installed system's boot.
    let run = run_of(&server, id).await;
    assert_eq!(
        (run.phase.as_str(), run.booting.as_deref()),
        ("booting", Some("local"))
    );

    // The preseed, rendered for this machine, secret included.
    let url = arg(line, "url");
    let (status, preseed) = download(url).await;
    let preseed = String::from_utf8(preseed).unwrap();
    assert_eq!(status, 200, "{preseed}");
    for want in [
        format!("d-i netcfg/get_hostname string {HOSTNAME}\n"),
        format!("d-i passwd/root-password-crypted password {ROOT_HASH}\n"),
        "d-i mirror/http/hostname string deb.debian.org\n".into(),
        "d-i mirror/suite string bookworm\n".into(),
        "d-i partman-auto/disk string /dev/nvme0n1\n".into(),
        "d-i grub-installer/bootdev string /dev/nvme0n1\n".into(),
        "d-i pkgsel/include string openssh-server\n".into(),
        format!("({id})"),
    ] {
        assert!(preseed.contains(&want), "{want:?} missing in\n{preseed}");
    }
    // Its URL is the machine's alone: altered, it is nothing.
    let (prefix, token_and_name) = url.split_once("/boot/files/").unwrap();
    let (token, _) = token_and_name.split_once('/').unwrap();
    let mut altered = token.to_string().into_bytes();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    for bad in [
        format!("{prefix}/boot/files/{altered}/preseed.cfg"),
        format!("{prefix}/boot/files/{token}/other.cfg"),
        format!("{prefix}/boot/files/not-a-token/preseed.cfg"),
    ] {
        let (status, body) = download(&bad).await;
        assert_eq!(status, 404, "{bad}");
        assert!(!String::from_utf8_lossy(&body).contains(ROOT_HASH));
    }

    // The installer reboots at its end: the local disk, and the workflow is done.
    let script = machine_script(&server, MAC, "", "efi").await;
    assert!(script.contains("exit 1"), "local boot:\n{script}");
    let run = run_of(&server, id).await;
    assert_eq!(run.phase, "done", "{run:?}");
    // Cancelled while the installer is assigned, a machine that boots is held, never
    // installed again.
    assign(&server, id, "install-debian").await;
    let cancel = format!("/api/v1/machines/{id}/workflow/cancel");
    api(&server, reqwest::Method::POST, &cancel).await;
    let script = machine_script(&server, MAC, "", "efi").await;
    assert!(
        script.contains("the machine's workflow run is cancelled, not booting into it"),
        "{script}"
    );
    // The preseed URL belonged to the earlier run.
    assert_eq!(download(url).await.0, 404);

    // The secret is in no API view and no log line.
    let views = [
        server
            .api_get(&format!("/api/v1/machines/{id}/workflow"))
            .await,
        server.api_get(&format!("/api/v1/machines/{id}")).await,
        server
            .api_get(&format!("/api/v1/machines/{id}/params"))
            .await,
        server.api_get("/api/v1/machines").await,
        server.api_get("/api/v1/workflows").await,
        serde_json::to_value(jobs_of(&server, id).await).unwrap(),
    ];
    for v in &views {
        assert!(!v.to_string().contains(ROOT_HASH), "{v:#}");
    }
    let (_, metrics) = api(&server, reqwest::Method::GET, "/metrics").await;
    assert!(
        metrics.contains(r#"anneal_boot_env_failures_total{kind="params"}"#),
        "the failure is counted:\n{metrics}"
    );
    assert!(
        metrics.contains(r#"anneal_boot_files_total{result="served"}"#)
            && metrics.contains(r#"anneal_boot_files_total{result="refused"}"#),
        "{metrics}"
    );
    server.stop().await;
    let logs = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    assert!(
        logs.contains("boot environment file served"),
        "the capture works: {} bytes",
        logs.len()
    );
    assert!(!logs.contains(ROOT_HASH), "the secret was logged");
    assert!(!logs.contains(token), "a file token was logged");
}

#[tokio::test]
async fn a_missing_installer_file_is_named_on_the_machine_and_its_run() {
    let server = TestServer::start().await;
    apply(&server, example_files()).await;
    set_root_hash(&server).await;
    let agent = server.enroll(machine_hints(), "boot-0").await;
    let id = agent.machine_id;
    assign(&server, id, "install-debian").await;
    // Only the kernel is there.
    let dir = server.dir.path().join("bootenvs").join("debian-installer");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("linux"), b"kernel").unwrap();
    let script = machine_script(&server, MAC, "", "pcbios").await;
    assert!(
        script.contains(r#"artifact "initrd.gz" is missing"#),
        "{script}"
    );
    assert!(script.contains(&dir.display().to_string()), "{script}");
    let run = run_of(&server, id).await;
    assert_eq!(run.phase, "failed");
    assert!(
        run.reason
            .as_deref()
            .is_some_and(|r| r.contains(r#"artifact "initrd.gz" is missing"#)),
        "{run:?}"
    );
    // Put it there and retry: the installer boots.
    std::fs::write(dir.join("initrd.gz"), b"initrd").unwrap();
    retry(&server, id).await;
    let script = machine_script(&server, MAC, "", "pcbios").await;
    assert!(kernel_line(&script).contains("auto=true"), "{script}");
    let (status, _) = get(&server, "/boot/files/x/preseed.cfg").await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// An operator environment the agent runs in: its script carries a bootstrap token minted for
/// it, and enrolling with that token from a new boot crosses into the stage.
const RESCUE: &str = r#"
kind: boot_env
name: rescue
kernel: vmlinuz
initrds: [initrd.img]
kernel_args: console=ttyS0 rescue.site={{ params["rescue.site"] }}
agent: true
---
kind: param
name: rescue.site
default: dc1
---
kind: task
name: hello
script: echo hello
---
kind: stage
name: rescue-work
boot_env: rescue
tasks: [hello]
---
kind: workflow
name: rescue
stages: [rescue-work, local-boot]
"#;

#[tokio::test]
async fn an_environment_with_the_agent_enrolls_through_its_own_script() {
    let server = TestServer::start().await;
    apply(&server, json!([{ "path": "rescue.yaml", "text": RESCUE }])).await;
    let dir = server.dir.path().join("bootenvs").join("rescue");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("vmlinuz"), b"rescue kernel").unwrap();
    std::fs::write(dir.join("initrd.img"), b"rescue initrd").unwrap();
    let first = server.enroll(machine_hints(), "boot-0").await;
    let id = first.machine_id;
    assign(&server, id, "rescue").await;
    assert_eq!(first.next().await.unwrap(), NextAction::Reboot);

    let script = machine_script(&server, MAC, "", "pcbios").await;
    let line = kernel_line(&script);
    assert_eq!(arg(line, "rescue.site"), "dc1", "{line}");
    assert_eq!(arg(line, "BOOTIF"), "01-52-54-00-de-b1-01", "{line}");
    assert_eq!(arg(line, "anneal.url"), server.api_url, "{line}");
    assert_eq!(arg(line, "anneal.ca"), server.fingerprint(), "{line}");
    let session = server
        .enroller(Clock::system())
        .enroll(&token_of(&script), machine_hints(), "boot-1", "host")
        .await
        .expect("enrollment with the rescue script's token");
    assert_eq!(session.machine_id, id, "the same machine");
    match session.next().await.unwrap() {
        NextAction::Job(job) => assert_eq!(
            (job.stage.as_str(), job.task.as_str()),
            ("rescue-work", "hello")
        ),
        other => panic!("expected the stage's job, got {other:?}"),
    }
    server.stop().await;
}
