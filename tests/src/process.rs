//! The real `anneal serve` as a child process on loopback, at fixed ports, so a test can
//! `kill -9` it and start it again on the same data directory and addresses (agents keep the
//! URLs they were given). Killed when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::rack::{binaries, wait};

/// A running `anneal serve` child.
pub struct ServerProcess {
    child: Option<Child>,
    dir: tempfile::TempDir,
    ports: [u16; 3],
    extra: Vec<String>,
    /// Starts so far (1 after `start`).
    pub starts: u32,
    /// `https://127.0.0.1:PORT` (operator API and enrollment).
    pub api_url: String,
    /// `http://127.0.0.1:PORT` (iPXE scripts).
    pub http_url: String,
    /// The CA's fingerprint.
    pub ca_fingerprint: String,
    /// The first admin token.
    pub admin_token: String,
}

fn free_port() -> Result<u16> {
    // Bound and released: the server binds it again at once (a small race, on loopback only).
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ServerProcess {
    /// Start a server on a fresh data directory and free loopback ports, with stand-in
    /// discovery files and `extra` arguments.
    pub fn start(extra: &[&str]) -> Result<ServerProcess> {
        let dir = tempfile::tempdir().context("temp dir for anneal")?;
        let discovery = dir.path().join("data/images/discovery");
        std::fs::create_dir_all(&discovery)?;
        std::fs::write(discovery.join(anneal_server::boot::KERNEL_NAME), b"kernel")?;
        std::fs::write(discovery.join(anneal_server::boot::INITRD_NAME), b"initrd")?;
        let mut s = ServerProcess {
            child: None,
            dir,
            ports: [free_port()?, free_port()?, free_port()?],
            extra: extra.iter().map(|a| a.to_string()).collect(),
            starts: 0,
            api_url: String::new(),
            http_url: String::new(),
            ca_fingerprint: String::new(),
            admin_token: String::new(),
        };
        s.spawn()?;
        Ok(s)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// This start's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("anneal-{}.log", self.starts))
    }

    fn spawn(&mut self) -> Result<()> {
        self.starts += 1;
        let bin = binaries::anneal()?;
        let addr = |p: u16| SocketAddr::from(([127, 0, 0, 1], p)).to_string();
        let log = self.log_path();
        let child = Command::new(&bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--api-listen", &addr(self.ports[0])])
            .args(["--agent-listen", &addr(self.ports[1])])
            .args(["--http-listen", &addr(self.ports[2])])
            .args(&self.extra)
            .env("ANNEAL_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("spawning {} serve", bin.display()))?;
        self.child = Some(child);
        let text = wait::until("anneal to start", Duration::from_secs(60), || {
            let text = wait::read_lossy(&log);
            if text.contains("anneal is serving") {
                return Some(Ok(text));
            }
            match self.child.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => Some(Err(anyhow!("anneal exited ({status}): {text}"))),
                _ => None,
            }
        })
        .and_then(|r| r)?;
        if self.ca_fingerprint.is_empty() {
            self.ca_fingerprint = (text.lines())
                .find_map(|l| l.trim().strip_prefix("CA fingerprint:"))
                .map(|f| f.trim().to_string())
                .context("no CA fingerprint in the banner")?;
            self.admin_token = std::fs::read_to_string(
                self.data_dir().join(anneal_server::app::ADMIN_TOKEN_FILE),
            )?
            .trim()
            .to_string();
        }
        self.api_url = format!("https://127.0.0.1:{}", self.ports[0]);
        self.http_url = format!("http://127.0.0.1:{}", self.ports[2]);
        Ok(())
    }

    /// SIGKILL the server (no shutdown of any kind) and reap it.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().context("SIGKILL")?;
            c.wait()?;
        }
        Ok(())
    }

    /// Start it again on the same data directory and ports.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// Every start's log, concatenated (for failure messages).
    pub fn logs(&self) -> String {
        (1..=self.starts)
            .map(|n| wait::read_lossy(&self.dir.path().join(format!("anneal-{n}.log"))))
            .collect::<Vec<_>>()
            .join("\n--- restart ---\n")
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// An operator API client trusting this server's CA.
    pub fn http(&self) -> reqwest::Client {
        anneal_server::install_crypto_provider();
        let ca = std::fs::read(self.data_dir().join(anneal_server::app::CA_FILE)).expect("ca.pem");
        reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).expect("CA PEM"))
            .build()
            .expect("client")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.kill9();
    }
}
