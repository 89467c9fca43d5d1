//! The real `anneal serve` inside a rack's namespace, with any TOML configuration: its log,
//! admin token, CA fingerprint, store, and calls to its operator and enrollment APIs (made from
//! a thread inside the namespace, since nothing routes there from the host). It can be killed
//! with SIGKILL and started again on the same config, data and ports (crash tests).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anneal_agent::clock::Clock;
use anneal_server::store::{LeaseRecord, LeaseStore, SqliteStore};
use anneal_shared::protocol::IdentityHints;
use anyhow::{anyhow, bail, ensure, Context, Result};
use tempfile::TempDir;

use super::{binaries, wait, Rack};

/// Log filter given to the server: DHCP and TFTP at debug, so tests can follow every packet.
pub const LOG_FILTER: &str = "info,anneal_server::dhcp=debug,anneal_server::tftp=debug";

/// The config file in the server's working directory.
const CONFIG_FILE: &str = "anneal.toml";

/// A running `anneal serve`, stopped (SIGTERM, then SIGKILL) when dropped. Borrows its rack,
/// so it always goes before the namespace does.
pub struct Anneal<'r> {
    rack: &'r Rack,
    child: Option<Child>,
    /// Holds the config, the data directory and the log.
    dir: TempDir,
    /// The server's stderr (tracing log plus the start-up banner).
    pub log: PathBuf,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `https://HOST:PORT` of the operator API and enrollment, as reached inside the namespace.
    pub api_url: String,
    /// `http://HOST:PORT` of the plain-HTTP boot listener.
    pub http_url: String,
    /// The CA fingerprint agents pin (`sha256:…`).
    pub ca_fingerprint: String,
    /// The admin API token made on first start.
    pub admin_token: String,
}

/// One `boot script served` log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptServed {
    /// Machine id, or `unknown`.
    pub machine: String,
    /// The MAC iPXE named.
    pub mac: String,
    /// `pcbios`, `efi` or `unknown`.
    pub platform: String,
    /// The boot environment: `discovery`, `local` or `error`.
    pub env: String,
    /// The whole line.
    pub line: String,
}

/// The value of `key=` in a tracing log line, without quotes.
pub fn log_field(line: &str, key: &str) -> Option<String> {
    let needle = format!(" {key}=");
    let rest = &line[line.find(&needle)? + needle.len()..];
    let value = if let Some(quoted) = rest.strip_prefix('"') {
        &quoted[..quoted.find('"').unwrap_or(quoted.len())]
    } else {
        rest.split_whitespace().next().unwrap_or("")
    };
    Some(value.to_string())
}

impl<'r> Anneal<'r> {
    /// Start `anneal serve` on the rack's bridge address (see [`Anneal::start_at`]).
    pub fn start(rack: &'r Rack, config: &str) -> Result<Anneal<'r>> {
        Self::start_at(rack, config, rack.server_ip())
    }

    /// Start `anneal serve --config FILE` inside the namespace, `config` being the TOML text
    /// with `{data_dir}` replaced by a fresh data directory. `host` is the address the test
    /// reaches it on (wildcard listen addresses in the log are replaced by it). Returns once
    /// the server says it is serving; fails with the log if it exits first.
    pub fn start_at(rack: &'r Rack, config: &str, host: Ipv4Addr) -> Result<Anneal<'r>> {
        let dir = tempfile::tempdir().context("temp dir for anneal")?;
        let data_dir = dir.path().join("data");
        let log = dir.path().join("anneal.log");
        let config = config.replace("{data_dir}", &data_dir.display().to_string());
        std::fs::write(dir.path().join(CONFIG_FILE), &config).context("writing anneal.toml")?;
        let mut server = Anneal {
            rack,
            child: None,
            dir,
            log,
            data_dir,
            api_url: String::new(),
            http_url: String::new(),
            ca_fingerprint: String::new(),
            admin_token: String::new(),
        };
        let banner = server.spawn()?;
        let after = |prefix: &str| -> Result<String> {
            banner
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix).map(|r| r.trim().to_string()))
                .with_context(|| format!("no `{prefix}` in the start-up banner"))
        };
        server.ca_fingerprint = after("CA fingerprint:")?;
        server.api_url = reachable(&after("operator API + enrollment:")?, host);
        server.http_url = reachable(
            after("iPXE (plain HTTP):")?
                .trim_end_matches("/boot.ipxe")
                .trim(),
            host,
        );
        let token_file = server.data_dir.join(anneal_server::app::ADMIN_TOKEN_FILE);
        server.admin_token = std::fs::read_to_string(&token_file)
            .with_context(|| format!("reading {}", token_file.display()))?
            .trim()
            .to_string();
        Ok(server)
    }

    /// Run `anneal serve --config` inside the namespace, its stderr appended to the log (so a
    /// restart keeps the earlier starts' lines). Returns this start's part of the log once it
    /// says it is serving; fails with the log if the server exits first.
    fn spawn(&mut self) -> Result<String> {
        let bin = binaries::anneal()?;
        let from = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .context("opening the server log")?;
        let child = self
            .rack
            .netns
            .command(&bin)
            .arg("serve")
            .arg("--config")
            .arg(self.dir.path().join(CONFIG_FILE))
            .env("ANNEAL_LOG", LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("spawning {} serve", bin.display()))?;
        self.child = Some(child);
        wait::until("anneal to start", wait::START, || {
            let bytes = std::fs::read(&self.log).unwrap_or_default();
            let text = String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned();
            if text.contains("anneal is serving") && text.contains("CA fingerprint:") {
                return Some(Ok(text));
            }
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(Err(anyhow!("anneal exited ({status})"))),
                _ => None,
            }
        })
        .and_then(|r| r)
        .with_context(|| format!("server log:\n{}", self.log_tail(40)))
    }

    /// `kill -9`: SIGKILL the server by its PID (no shutdown of any kind) and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            bail!("anneal is not running");
        };
        if child.try_wait()?.is_none() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).context("SIGKILL")?;
        }
        child.wait().context("reaping anneal")?;
        // A mark for whoever reads the log: the next lines are another start's.
        let mut log = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        writeln!(log, "--- anneal killed (SIGKILL) by the test ---")?;
        Ok(())
    }

    /// Start it again after [`Anneal::kill9`]: the same binary, config file, data directory and
    /// ports, the log appended to. Returns once it says it is serving, under the same CA.
    pub fn restart(&mut self) -> Result<()> {
        ensure!(self.child.is_none(), "anneal is still running");
        let banner = self.spawn()?;
        let fingerprint = banner
            .lines()
            .find_map(|l| l.trim().strip_prefix("CA fingerprint:"))
            .map(str::trim);
        ensure!(
            fingerprint == Some(self.ca_fingerprint.as_str()),
            "restarted under another CA: {fingerprint:?}"
        );
        Ok(())
    }

    /// The server's PID (it runs as our child; `ip netns exec` became it).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The working directory holding config, data and log (for extra files a test needs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Put a discovery image (kernel and initrd) where the default `discovery_dir` is.
    pub fn put_discovery_image(&self, kernel: &[u8], initrd: &[u8]) -> Result<()> {
        let dir = self.data_dir.join("images").join("discovery");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join(anneal_server::boot::KERNEL_NAME), kernel)?;
        std::fs::write(dir.join(anneal_server::boot::INITRD_NAME), initrd)?;
        Ok(())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        wait::read_lossy(&self.log)
    }

    /// The log's last `n` lines.
    pub fn log_tail(&self, n: usize) -> String {
        wait::tail(&self.log_text(), n)
    }

    /// Wait for a log line matching `pred`; returns it. The error carries the log's tail.
    pub fn wait_log(
        &self,
        what: &str,
        pred: impl Fn(&str) -> bool,
        deadline: Duration,
    ) -> Result<String> {
        wait::until(what, deadline, || {
            self.log_text()
                .lines()
                .find(|l| pred(l))
                .map(str::to_string)
        })
        .with_context(|| format!("server log:\n{}", self.log_tail(40)))
    }

    /// Every `boot script served` line so far.
    pub fn scripts_served(&self) -> Vec<ScriptServed> {
        self.log_text()
            .lines()
            .filter(|l| l.contains("boot script served"))
            .map(|l| ScriptServed {
                machine: log_field(l, "machine").unwrap_or_default(),
                mac: log_field(l, "mac").unwrap_or_default(),
                platform: log_field(l, "platform").unwrap_or_default(),
                env: log_field(l, "env").unwrap_or_default(),
                line: l.to_string(),
            })
            .collect()
    }

    /// Wait until a machine script was served to `mac`; returns the first such.
    pub fn wait_script_for(&self, mac: &str, deadline: Duration) -> Result<ScriptServed> {
        let mac = mac.to_ascii_lowercase();
        wait::until(&format!("a boot script for {mac}"), deadline, || {
            self.scripts_served().into_iter().find(|s| s.mac == mac)
        })
        .with_context(|| format!("server log:\n{}", self.log_tail(40)))
    }

    /// Leases in the server's store (SQLite in the data directory), read beside the server.
    pub fn leases(&self) -> Result<Vec<LeaseRecord>> {
        let db = self.data_dir.join("anneal.db");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            let store = SqliteStore::open(&db)
                .await
                .with_context(|| format!("opening {}", db.display()))?;
            store.list_leases().await.context("listing leases")
        })
    }

    /// An HTTPS client that trusts only this server's CA (pinned by fingerprint).
    fn https(&self) -> Result<reqwest::Client> {
        anneal_server::install_crypto_provider();
        let fp = anneal_agent::tls::parse_fingerprint(&self.ca_fingerprint)
            .context("bad CA fingerprint")?;
        let tls = anneal_agent::tls::PinnedCa::new(fp, Clock::system())
            .client_config(None)
            .context("TLS config")?;
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(Duration::from_secs(30))
            .build()
            .context("HTTP client")
    }

    /// `GET` an operator API path with the admin token; the JSON body.
    pub fn api_get(&self, path: &str) -> Result<serde_json::Value> {
        self.api_call(reqwest::Method::GET, path, None)
    }

    /// `POST` a JSON body (or none) to an operator API path with the admin token; the JSON
    /// answer (`null` for an empty one).
    pub fn api_post(
        &self,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        self.api_call(reqwest::Method::POST, path, body)
    }

    /// `PUT` a JSON body to an operator API path with the admin token; the JSON answer.
    pub fn api_put(&self, path: &str, body: serde_json::Value) -> Result<serde_json::Value> {
        self.api_call(reqwest::Method::PUT, path, Some(body))
    }

    /// `GET` an operator API path with the admin token; the body as text (job logs).
    pub fn api_get_text(&self, path: &str) -> Result<String> {
        self.api_raw(reqwest::Method::GET, path, None)
    }

    fn api_call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let text = self.api_raw(method.clone(), path, body)?;
        if text.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path}: {text}"))
    }

    fn api_raw(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String> {
        let client = self.https()?;
        let url = format!("{}{path}", self.api_url);
        let token = self.admin_token.clone();
        self.rack.netns.block_on(|| async move {
            let mut req = client.request(method.clone(), &url).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let res = req
                .send()
                .await
                .with_context(|| format!("{method} {url}"))?;
            let status = res.status();
            let text = res.text().await?;
            if !status.is_success() {
                bail!("{method} {url}: {status}: {text}");
            }
            Ok(text)
        })?
    }

    /// Prometheus metrics text from `/metrics`.
    pub fn metrics(&self) -> Result<String> {
        let client = self.https()?;
        let url = format!("{}/metrics", self.api_url);
        self.rack.netns.block_on(|| async move {
            client
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?
                .text()
                .await
                .context("metrics body")
        })?
    }

    /// Enroll `hints` as a real agent would (bootstrap token through the operator API, then the
    /// agent crate's own enrollment client). The server then knows the machine, and records
    /// its locally administered MACs (QEMU's 52:54:00:…) as boot MACs. Returns the machine id.
    pub fn enroll(&self, hints: IdentityHints, boot_id: &str) -> Result<String> {
        let client = self.https()?;
        let api = self.api_url.clone();
        let token = self.admin_token.clone();
        let fp = self.ca_fingerprint.clone();
        let boot_id = boot_id.to_string();
        self.rack.netns.block_on(|| async move {
            let res = client
                .post(format!("{api}/api/v1/tokens"))
                .bearer_auth(token)
                .json(&serde_json::json!({"uses": 1, "ttl_secs": 600}))
                .send()
                .await
                .context("creating a bootstrap token")?;
            if res.status() != 201 {
                bail!("token creation: {}: {}", res.status(), res.text().await?);
            }
            let v: serde_json::Value = res.json().await?;
            let secret = v["token"]
                .as_str()
                .context("no token in the answer")?
                .to_string();
            let session = anneal_agent::client::Enroller::new(&api, &fp, Clock::system())?
                .enroll(&secret, hints, &boot_id, "rack-test")
                .await
                .context("enrollment")?;
            Ok(session.machine_id.to_string())
        })?
    }

    /// Stop with SIGTERM and wait (SIGKILL after 15 s).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Exited already (and so reaped): its PID may belong to someone else by now.
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Anneal<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- anneal log (last 40 lines) ---\n{}", self.log_tail(40));
        }
        self.shutdown();
    }
}

/// `https://0.0.0.0:8443` → `https://HOST:8443`; other addresses stay.
fn reachable(url: &str, host: Ipv4Addr) -> String {
    url.replace("0.0.0.0", &host.to_string())
        .replace("[::]", &host.to_string())
}
