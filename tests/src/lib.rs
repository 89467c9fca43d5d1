//! Helpers for end-to-end tests: a real `anneal serve` on loopback in a temporary data
//! directory, and real agents (the agent crate's own client) talking to it over real TLS.

pub mod events;
pub mod link;
pub mod process;
pub mod pxe;
pub mod rack;
pub mod workflow;

use std::sync::Arc;

use anneal_agent::client::{Enroller, Session};
use anneal_agent::clock::Clock;
use anneal_server::config::{Config, ServeArgs};
use anneal_server::serve::{self, Running};
use anneal_shared::protocol::{IdentityHints, Nic};
use tempfile::TempDir;

/// A server started for one test, stopped (and its directory removed) when dropped via `stop`.
pub struct TestServer {
    /// The running server.
    pub running: Running,
    /// Its data directory.
    pub dir: TempDir,
    /// Admin API token.
    pub admin_token: String,
    /// `https://127.0.0.1:PORT` of the operator API and enrollment.
    pub api_url: String,
    /// `http://127.0.0.1:PORT` of the plain-HTTP boot listener (iPXE scripts, artifacts).
    pub http_url: String,
}

impl TestServer {
    /// Start with defaults.
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    /// Start, adjusting the serve flags first.
    pub async fn start_with(adjust: impl FnOnce(&mut ServeArgs)) -> TestServer {
        Self::start_configured(adjust, |_| {}).await
    }

    /// Start, adjusting the serve flags and then the resolved configuration (for values the
    /// flags do not allow, such as client certificates living seconds).
    pub async fn start_configured(
        adjust: impl FnOnce(&mut ServeArgs),
        tweak: impl FnOnce(&mut Config),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args = ServeArgs {
            data_dir: Some(dir.path().to_path_buf()),
            api_listen: Some("127.0.0.1:0".parse().expect("addr")),
            agent_listen: Some("127.0.0.1:0".parse().expect("addr")),
            http_listen: Some("127.0.0.1:0".parse().expect("addr")),
            advertise: Some(vec!["127.0.0.1".into(), "localhost".into()]),
            ..Default::default()
        };
        adjust(&mut args);
        let mut config = Config::resolve(&args).expect("config");
        tweak(&mut config);
        let running = serve::start(config).await.expect("server starts");
        let admin_token = running
            .first_admin_token
            .clone()
            .expect("first start makes an admin token");
        let api_url = format!("https://127.0.0.1:{}", running.api_addr.port());
        let http_url = format!("http://127.0.0.1:{}", running.http_addr.port());
        TestServer {
            running,
            dir,
            admin_token,
            api_url,
            http_url,
        }
    }

    /// The CA fingerprint agents pin.
    pub fn fingerprint(&self) -> String {
        self.running.app.ca.fingerprint()
    }

    /// An HTTP client that trusts this server's CA (no client certificate).
    pub fn http(&self) -> reqwest::Client {
        anneal_server::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.running.app.ca.cert_der())
            .expect("CA into root store");
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .expect("client")
    }

    /// A GET of an operator API path as the admin, to send.
    pub fn api_request(&self, path: &str) -> reqwest::RequestBuilder {
        self.http()
            .get(format!("{}{path}", self.api_url))
            .bearer_auth(&self.admin_token)
    }

    /// GET an operator API path as the admin; the JSON answer (panics on a non-2xx status).
    pub async fn api_get(&self, path: &str) -> serde_json::Value {
        let res = self.api_request(path).send().await.expect("API request");
        assert!(res.status().is_success(), "GET {path}: {}", res.status());
        res.json().await.expect("JSON answer")
    }

    /// A bootstrap token with `uses` uses, made through the API.
    pub async fn bootstrap_token(&self, uses: u32) -> String {
        let res = self
            .http()
            .post(format!("{}/api/v1/tokens", self.api_url))
            .bearer_auth(&self.admin_token)
            .json(&serde_json::json!({"uses": uses, "ttl_secs": 600}))
            .send()
            .await
            .expect("token request");
        assert_eq!(res.status(), 201, "token creation");
        let v: serde_json::Value = res.json().await.expect("json");
        v["token"].as_str().expect("token field").to_string()
    }

    /// An enroller pinned to this server's CA, with the given clock.
    pub fn enroller(&self, clock: Arc<Clock>) -> Enroller {
        Enroller::new(&self.api_url, &self.fingerprint(), clock).expect("enroller")
    }

    /// Enroll a machine with a fresh single-use token and the real clock.
    pub async fn enroll(&self, hints: IdentityHints, boot_id: &str) -> Session {
        let token = self.bootstrap_token(1).await;
        self.enroller(Clock::system())
            .enroll(&token, hints, boot_id, "test-host")
            .await
            .expect("enrollment")
    }

    /// Stop and start again on the same data directory (and, for agents' sake, the same ports).
    pub async fn restart(self) -> TestServer {
        let api = self.running.api_addr;
        let agent = self.running.agent_addr;
        let http = self.running.http_addr;
        let token = self.admin_token.clone();
        self.running.stop().await;
        let args = ServeArgs {
            data_dir: Some(self.dir.path().to_path_buf()),
            api_listen: Some(api),
            agent_listen: Some(agent),
            http_listen: Some(http),
            advertise: Some(vec!["127.0.0.1".into(), "localhost".into()]),
            ..Default::default()
        };
        let running = serve::start(Config::resolve(&args).expect("config"))
            .await
            .expect("server restarts");
        assert!(
            running.first_admin_token.is_none(),
            "a restart must not make a new admin token"
        );
        TestServer {
            running,
            dir: self.dir,
            admin_token: token,
            api_url: self.api_url,
            http_url: self.http_url,
        }
    }

    /// Stop the server and remove its directory.
    pub async fn stop(self) {
        self.running.stop().await;
        drop(self.dir);
    }
}

/// Distinct, plausible identity evidence for test machine `n`.
pub fn hints(n: u32) -> IdentityHints {
    IdentityHints {
        system_uuid: Some(format!("4c4c4544-0042-4210-8000-{n:012x}")),
        system_serial: Some(format!("TEST-SRV-{n:04}")),
        chassis_serial: Some(format!("TEST-CHS-{n:04}")),
        baseboard_serial: None,
        manufacturer: Some("Anneal Test".into()),
        product: Some("Virtual Rack Server".into()),
        os_machine_id: None,
        macs: vec![Nic {
            mac: format!("00:1b:21:12:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
            bus: Some("pci".into()),
        }],
    }
}
