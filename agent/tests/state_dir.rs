//! The agent's runner against a real `anneal serve` (loopback, temporary data directory) with
//! the discovery image's options: `--state-dir` (resume within a boot, enroll afresh after a
//! reboot or when the saved files are unusable), `--status-file` and `--set-clock` (with a
//! recording setter: the host's clock is never touched).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anneal_agent::clock::{Clock, ClockSetter};
use anneal_agent::runner::{run_with, RunConfig, RunOptions};
use anneal_agent::state::{Loaded, StateDir};
use anneal_server::config::{Config, ServeArgs};
use anneal_server::serve::{self, Running};
use serde_json::Value;

struct Server {
    running: Running,
    _dir: tempfile::TempDir,
    admin: String,
    api_url: String,
}

impl Server {
    async fn start() -> Server {
        anneal_agent::install_crypto_provider();
        let dir = tempfile::tempdir().expect("temp dir");
        let args = ServeArgs {
            data_dir: Some(dir.path().to_path_buf()),
            api_listen: Some("127.0.0.1:0".parse().unwrap()),
            agent_listen: Some("127.0.0.1:0".parse().unwrap()),
            http_listen: Some("127.0.0.1:0".parse().unwrap()),
            advertise: Some(vec!["127.0.0.1".into()]),
            heartbeat_secs: Some(1),
            ..Default::default()
        };
        let running = serve::start(Config::resolve(&args).expect("config"))
            .await
            .expect("server starts");
        let admin = running.first_admin_token.clone().expect("admin token");
        let api_url = format!("https://127.0.0.1:{}", running.api_addr.port());
        Server {
            running,
            _dir: dir,
            admin,
            api_url,
        }
    }

    fn fingerprint(&self) -> String {
        self.running.app.ca.fingerprint()
    }

    fn http(&self) -> reqwest::Client {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.running.app.ca.cert_der()).unwrap();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .unwrap()
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self
            .http()
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(&self.admin);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("API request");
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.expect("JSON")
    }

    async fn token(&self, uses: u32) -> String {
        let v = self
            .api(
                reqwest::Method::POST,
                "/api/v1/tokens",
                Some(serde_json::json!({"uses": uses, "ttl_secs": 600})),
            )
            .await;
        v["token"].as_str().unwrap().to_string()
    }

    /// Live tokens' uses left.
    async fn uses_left(&self) -> Vec<u64> {
        let v = self.api(reqwest::Method::GET, "/api/v1/tokens", None).await;
        v.as_array()
            .unwrap()
            .iter()
            .map(|t| t["uses_left"].as_u64().unwrap())
            .collect()
    }

    async fn machines(&self) -> Vec<Value> {
        let v = self
            .api(reqwest::Method::GET, "/api/v1/machines", None)
            .await;
        v.as_array().unwrap().clone()
    }

    async fn machine(&self, id: &str) -> Value {
        self.api(
            reqwest::Method::GET,
            &format!("/api/v1/machines/{id}"),
            None,
        )
        .await
    }

    async fn only_machine(&self) -> Value {
        let list = self.machines().await;
        assert_eq!(list.len(), 1, "one machine: {list:?}");
        self.machine(list[0]["id"].as_str().unwrap()).await
    }

    async fn stop(self) {
        self.running.stop().await;
    }
}

fn sysroot() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/uefi-virtio/root")
}

fn config(server: &Server, token: &str, boot: &str, once: bool) -> RunConfig {
    RunConfig {
        url: server.api_url.clone(),
        ca_fingerprint: server.fingerprint(),
        token: token.to_string(),
        sysroot: sysroot(),
        run_tools: false,
        lldp_listen: Duration::ZERO,
        boot_id: Some(boot.to_string()),
        once,
    }
}

fn options(state: &Path, status: Option<&Path>) -> RunOptions {
    RunOptions {
        state_dir: Some(state.to_path_buf()),
        set_clock: None,
        status_file: status.map(Path::to_path_buf),
        jobs: None,
        installed: None,
    }
}

/// One round (`once`) with a state directory and the real clock.
async fn once(server: &Server, token: &str, boot: &str, state: &Path) -> anyhow::Result<()> {
    run_with(
        config(server, token, boot, true),
        options(state, None),
        Clock::system(),
    )
    .await
}

/// The agent running for good, as init would start it.
fn spawn_agent(
    server: &Server,
    token: &str,
    boot: &str,
    state: &Path,
    status: &Path,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(run_with(
        config(server, token, boot, false),
        options(state, Some(status)),
        Clock::system(),
    ))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Poll until `f` holds (or panic after `secs`, showing `what`).
async fn wait_for<F: FnMut() -> bool>(secs: u64, what: impl Fn() -> String, mut f: F) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out: {}", what());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn alerts(m: &Value) -> Vec<String> {
    m["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["kind"].as_str().unwrap().to_string())
        .collect()
}

/// (a) A restarted agent in the same boot resumes with its saved certificate: the single-use
/// token is spent and not needed, the server sees one enrollment of one machine and no
/// same-boot alert, and heartbeats go on.
#[tokio::test]
async fn a_restart_in_the_same_boot_resumes_without_enrolling() {
    let server = Server::start().await;
    let token = server.token(1).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let status = state.join("status");

    let first = spawn_agent(&server, &token, "boot-1", &state, &status);
    wait_for(
        30,
        || read(&status),
        || read(&status).contains("heartbeating"),
    )
    .await;
    first.abort();
    let _ = first.await;

    // What was kept, and how.
    assert_eq!(mode(&state), 0o700);
    for f in ["key.pem", "cert.pem", "ca.pem", "enrollment.json"] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
    let saved: Value = serde_json::from_str(&read(&state.join("enrollment.json"))).unwrap();
    assert_eq!(saved["boot_id"], "boot-1");
    let m = server.only_machine().await;
    assert_eq!(saved["machine_id"], m["id"]);
    assert_eq!(m["enrollments"], 1);
    assert!(
        server.uses_left().await.is_empty(),
        "the single-use token is spent"
    );
    let first_line = read(&status);
    assert!(
        first_line.starts_with(&format!(
            "anneal-agent: machine {}… · server {} · enrolled, inventory sent, heartbeating (last ",
            &m["id"].as_str().unwrap()[..8],
            server.api_url
        )),
        "{first_line}"
    );
    let seen_before = m["last_seen"].as_str().unwrap().to_string();

    // The supervisor starts it again: same boot, same (spent) token.
    std::fs::remove_file(&status).unwrap();
    let second = spawn_agent(&server, &token, "boot-1", &state, &status);
    wait_for(
        30,
        || read(&status),
        || read(&status).contains("enrolled earlier this boot, inventory sent, heartbeating"),
    )
    .await;
    // Heartbeats keep arriving at the server.
    let mut last_seen = String::new();
    for _ in 0..100 {
        last_seen = server.only_machine().await["last_seen"]
            .as_str()
            .unwrap()
            .to_string();
        if last_seen > seen_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last_seen > seen_before, "{last_seen} after {seen_before}");
    assert!(!second.is_finished(), "the agent keeps running");
    second.abort();
    let _ = second.await;

    let m = server.only_machine().await;
    assert_eq!(m["enrollments"], 1, "no second enrollment: {m}");
    assert_eq!(m["boot_id"], "boot-1");
    assert!(
        alerts(&m).is_empty(),
        "no same-boot alert: {:?}",
        m["alerts"]
    );
    assert!(m["inventory"].is_object());
    server.stop().await;
}

/// (b) The same state directory after a reboot (another boot id): a fresh enrollment, which
/// the server files under the same machine; no same-boot alert.
#[tokio::test]
async fn another_boot_id_enrolls_afresh_as_the_same_machine() {
    let server = Server::start().await;
    let token = server.token(2).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");

    once(&server, &token, "boot-1", &state)
        .await
        .expect("first boot");
    let id = server.only_machine().await["id"].clone();
    assert_eq!(server.uses_left().await, vec![1]);

    once(&server, &token, "boot-2", &state)
        .await
        .expect("second boot");
    let m = server.only_machine().await;
    assert_eq!(m["id"], id, "same machine record");
    assert_eq!(m["enrollments"], 2);
    assert_eq!(m["boot_id"], "boot-2");
    assert!(alerts(&m).is_empty(), "{:?}", m["alerts"]);
    assert!(server.uses_left().await.is_empty(), "second use taken");
    let saved: Value = serde_json::from_str(&read(&state.join("enrollment.json"))).unwrap();
    assert_eq!(saved["boot_id"], "boot-2", "the new enrollment is saved");

    // A third boot with the token used up: enrollment is refused, so `once` fails, and the
    // saved boot-2 enrollment is not mistaken for this boot's.
    let err = once(&server, &token, "boot-3", &state)
        .await
        .expect_err("no token uses left");
    assert!(format!("{err:#}").contains("token"), "{err:#}");
    assert_eq!(server.only_machine().await["enrollments"], 2);
    server.stop().await;
}

/// (c) Garbage in the state directory: reported as unusable, and the agent enrolls (and then
/// saves good files over the garbage).
#[tokio::test]
async fn a_corrupt_state_dir_falls_back_to_enrolling() {
    let server = Server::start().await;
    let token = server.token(1).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("key.pem"), "not a key").unwrap();
    std::fs::write(
        state.join("cert.pem"),
        "-----BEGIN CERTIFICATE-----\nAAAA\n",
    )
    .unwrap();
    std::fs::write(state.join("ca.pem"), [0xff, 0x00, 0x13]).unwrap();
    std::fs::write(state.join("enrollment.json"), "{\"format\": 1, \"machine").unwrap();
    let pin = anneal_agent::tls::parse_fingerprint(&server.fingerprint()).unwrap();
    let now = Clock::system().now_unix();
    let dir = StateDir::open(&state).unwrap();
    assert!(
        matches!(dir.load("boot-1", &pin, now), Loaded::Unusable(ref why) if why.contains("does not parse")),
        "{:?}",
        dir.load("boot-1", &pin, now)
    );
    // A well-formed record with garbage beside it.
    std::fs::write(
        state.join("enrollment.json"),
        serde_json::json!({
            "format": 1, "machine_id": "3f2a1b4c-0000-4000-8000-000000000001",
            "boot_id": "boot-1", "agent_url": "https://127.0.0.1:1",
            "not_after": "2099-01-01T00:00:00Z", "issued_at_ms": 0,
            "ca_fingerprint": server.fingerprint(), "server_url": server.api_url,
        })
        .to_string(),
    )
    .unwrap();
    let loaded = dir.load("boot-1", &pin, now);
    assert!(matches!(loaded, Loaded::Unusable(_)), "{loaded:?}");

    once(&server, &token, "boot-1", &state)
        .await
        .expect("enrolls despite the garbage");
    let m = server.only_machine().await;
    assert_eq!(m["enrollments"], 1);
    assert!(
        matches!(dir.load("boot-1", &pin, Clock::system().now_unix()), Loaded::Reusable(ref c) if c.machine_id.to_string() == m["id"].as_str().unwrap()),
        "good files replace the garbage"
    );
    server.stop().await;
}

/// (c) A state directory from another server (another CA), whole or mixed with this server's
/// CA file: not reused, a fresh enrollment instead.
#[tokio::test]
async fn a_certificate_from_another_ca_is_not_reused() {
    let server = Server::start().await;
    let other = Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let other_token = other.token(1).await;
    once(&other, &other_token, "boot-1", &state)
        .await
        .expect("enrolled with the other server");

    let pin = anneal_agent::tls::parse_fingerprint(&server.fingerprint()).unwrap();
    let dir = StateDir::open(&state).unwrap();
    let now = Clock::system().now_unix();
    match dir.load("boot-1", &pin, now) {
        Loaded::Unusable(why) => assert!(why.contains("not the pinned CA"), "{why}"),
        other => panic!("{other:?}"),
    }
    // This server's CA file beside the other CA's certificate: the chain check refuses it.
    std::fs::write(state.join("ca.pem"), server.running.app.ca.cert_pem()).unwrap();
    match dir.load("boot-1", &pin, now) {
        Loaded::Unusable(why) => assert!(why.contains("does not verify"), "{why}"),
        other => panic!("{other:?}"),
    }

    let token = server.token(1).await;
    once(&server, &token, "boot-1", &state)
        .await
        .expect("enrolls with this server instead");
    assert_eq!(server.only_machine().await["enrollments"], 1);
    assert!(matches!(
        dir.load("boot-1", &pin, Clock::system().now_unix()),
        Loaded::Reusable(_)
    ));
    server.stop().await;
    other.stop().await;
}

/// A saved certificate the server has since revoked: the 401 makes the agent discard it and
/// enroll again with the token (uses left), even with `once`.
#[tokio::test]
async fn a_revoked_saved_certificate_is_replaced_by_a_new_enrollment() {
    let server = Server::start().await;
    let token = server.token(2).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    once(&server, &token, "boot-1", &state)
        .await
        .expect("first run");
    let id = server.only_machine().await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let old_cert = read(&state.join("cert.pem"));
    server
        .api(
            reqwest::Method::POST,
            &format!("/api/v1/machines/{id}/revoke"),
            None,
        )
        .await;
    once(&server, &token, "boot-1", &state)
        .await
        .expect("re-enrolls");
    let m = server.only_machine().await;
    assert_eq!(m["id"], id.as_str());
    assert_eq!(m["enrollments"], 2);
    // This one is a real second enrollment within one boot, and the server says so.
    assert_eq!(alerts(&m), vec!["reenroll_same_boot".to_string()]);
    assert_ne!(
        read(&state.join("cert.pem")),
        old_cert,
        "new certificate saved"
    );
    server.stop().await;
}

/// (e) The status file while the server does not answer, and when the agent gives up on a
/// configuration error.
#[tokio::test]
async fn the_status_file_says_what_the_agent_waits_for() {
    anneal_agent::install_crypto_provider();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://127.0.0.1:{port}");
    let tmp = tempfile::tempdir().unwrap();
    let status = tmp.path().join("status");
    let cfg = RunConfig {
        url: url.clone(),
        ca_fingerprint: format!("sha256:{}", "ab".repeat(32)),
        token: "t".into(),
        sysroot: sysroot(),
        run_tools: false,
        lldp_listen: Duration::ZERO,
        boot_id: Some("b".into()),
        once: false,
    };
    let task = tokio::spawn(run_with(
        cfg.clone(),
        RunOptions {
            status_file: Some(status.clone()),
            ..Default::default()
        },
        Clock::system(),
    ));
    wait_for(10, || read(&status), || read(&status).contains("attempt 1")).await;
    let line = read(&status);
    let prefix =
        format!("anneal-agent: server {url} · waiting for server (attempt 1, next in 1 s): ");
    assert!(line.starts_with(&prefix), "{line}");
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    assert!(
        line.ends_with('\n') && line.lines().count() == 1,
        "{line:?}"
    );
    assert!(!task.is_finished(), "keeps retrying");
    task.abort();
    let _ = task.await;

    // A malformed fingerprint is a configuration error: the process ends and says why.
    let err = run_with(
        RunConfig {
            ca_fingerprint: "sha256:nothex".into(),
            ..cfg.clone()
        },
        RunOptions {
            status_file: Some(status.clone()),
            ..Default::default()
        },
        Clock::system(),
    )
    .await
    .expect_err("bad fingerprint");
    assert!(err.to_string().contains("sha256:nothex"), "{err}");
    assert_eq!(
        read(&status),
        format!(
            "anneal-agent: server {url} · stopped: CA fingerprint \"sha256:nothex\" is not `sha256:` followed by 64 hex digits\n"
        )
    );
}

/// With a state directory but no token and nothing to resume, the agent stops with a clear
/// reason (a configuration error) instead of retrying forever.
#[tokio::test]
async fn no_token_and_nothing_to_resume_stops() {
    let server = Server::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let status = tmp.path().join("status");
    let err = run_with(
        config(&server, "", "boot-1", false),
        options(&state, Some(&status)),
        Clock::system(),
    )
    .await
    .expect_err("cannot enroll without a token");
    assert!(err.to_string().contains("no bootstrap token"), "{err}");
    assert!(
        read(&status).contains("stopped: no bootstrap token"),
        "{}",
        read(&status)
    );
    server.stop().await;
}

struct Recorder(Mutex<Vec<i64>>);

impl ClockSetter for Recorder {
    fn set_realtime(&self, unix_ms: i64) -> Result<(), String> {
        self.0.lock().unwrap().push(unix_ms);
        Ok(())
    }
}

/// (d) `--set-clock` through the runner: an agent whose clock reads 2001 asks the setter for
/// the server's time once, and still enrolls (the corrected clock judges certificates).
#[tokio::test]
async fn set_clock_asks_for_the_servers_time_once() {
    let server = Server::start().await;
    let token = server.token(1).await;
    let tmp = tempfile::tempdir().unwrap();
    let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
    let clock = Clock::fake(978_307_200_000); // 2001-01-01
    run_with(
        config(&server, &token, "boot-1", true),
        RunOptions {
            state_dir: Some(tmp.path().join("state")),
            set_clock: Some(recorder.clone()),
            status_file: None,
            jobs: None,
            installed: None,
        },
        clock.clone(),
    )
    .await
    .expect("enrolls");
    let calls = recorder.0.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    assert!((calls[0] - now).abs() < 10_000, "{} vs {now}", calls[0]);
    assert!(
        (clock.local_ms() - now).abs() < 10_000,
        "fake clock was set"
    );
    assert!(clock.offset_ms().abs() < 10_000);
    server.stop().await;
}

/// `--installed`'s rule: an enrollment saved in another boot is reused (as this boot's, with
/// the boot it was saved in), after the same checks; the discovery image's rule refuses it.
/// The server and pin recorded with it are readable for an agent started without flags.
#[tokio::test]
async fn kept_certificates_cross_boots_only_in_installed_mode() {
    let server = Server::start().await;
    let token = server.token(1).await;
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    once(&server, &token, "boot-1", &state)
        .await
        .expect("enrolled");
    let id = server.only_machine().await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let pin = anneal_agent::tls::parse_fingerprint(&server.fingerprint()).unwrap();
    let dir = StateDir::open(&state).unwrap();
    let now = Clock::system().now_unix();

    assert!(matches!(
        dir.load("boot-2", &pin, now),
        Loaded::OtherBoot { ref saved_boot_id } if saved_boot_id == "boot-1"
    ));
    match dir.load_kept("boot-2", &pin, now) {
        Loaded::Kept {
            credentials,
            saved_boot_id,
        } => {
            assert_eq!(saved_boot_id, "boot-1");
            assert_eq!(credentials.boot_id, "boot-2", "used in this boot");
            assert_eq!(credentials.machine_id.to_string(), id);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(dir.load_kept("boot-1", &pin, now), Loaded::Reusable(_)),
        "the same boot is a plain resume"
    );
    assert_eq!(
        anneal_agent::state::recorded_server(&state),
        Some((server.api_url.clone(), server.fingerprint()))
    );

    // The checks still apply across boots: another pin, another machine id, too little left.
    let mut other_pin = pin;
    other_pin[0] ^= 1;
    match dir.load_kept("boot-2", &other_pin, now) {
        Loaded::Unusable(why) => assert!(why.contains("not the pinned CA"), "{why}"),
        other => panic!("{other:?}"),
    }
    let saved: Value = serde_json::from_str(&read(&state.join("enrollment.json"))).unwrap();
    let not_after = time::OffsetDateTime::parse(
        saved["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap()
    .unix_timestamp() as u64;
    let late = rustls_pki_types::UnixTime::since_unix_epoch(Duration::from_secs(not_after - 30));
    match dir.load_kept("boot-2", &pin, late) {
        Loaded::Unusable(why) => assert!(why.contains("expires in"), "{why}"),
        other => panic!("{other:?}"),
    }
    let mut forged = saved.clone();
    forged["machine_id"] = "3f2a1b4c-0000-4000-8000-000000000001".into();
    std::fs::write(state.join("enrollment.json"), forged.to_string()).unwrap();
    match dir.load_kept("boot-2", &pin, now) {
        Loaded::Unusable(why) => assert!(why.contains("the certificate names"), "{why}"),
        other => panic!("{other:?}"),
    }
    server.stop().await;
}
