//! The CLI's HTTP client: trusts the server's CA, sends the API token, turns problem
//! documents into readable errors.

use std::path::PathBuf;
use std::sync::Arc;

use anneal_shared::api::Problem;
use anyhow::{bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::ClientOpts;

/// An authenticated connection to one server's operator API.
pub struct ApiClient {
    http: reqwest::Client,
    /// For endless streams: no overall timeout, but silence longer than three keep-alives
    /// counts as a dropped connection.
    streams: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    /// Build from the command-line options, reading defaults from the data directory.
    pub fn new(opts: &ClientOpts) -> Result<ApiClient> {
        crate::install_crypto_provider();
        let ca_path: PathBuf = opts
            .ca
            .clone()
            .unwrap_or_else(|| opts.data_dir.join(crate::app::CA_FILE));
        let ca_pem = std::fs::read(&ca_path).with_context(|| {
            format!(
                "reading the server's CA certificate {} (give --ca or ANNEAL_CA)",
                ca_path.display()
            )
        })?;
        let token = match &opts.token {
            Some(t) => t.clone(),
            None => {
                let p = opts.data_dir.join(crate::app::ADMIN_TOKEN_FILE);
                std::fs::read_to_string(&p)
                    .with_context(|| {
                        format!("no API token: give --token or ANNEAL_TOKEN (or run next to a server's {})", p.display())
                    })?
                    .trim()
                    .to_string()
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
            roots.add(cert.context("CA certificate PEM")?)?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        let streams = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(crate::api::EVENTS_KEEP_ALIVE * 3)
            .build()?;
        Ok(ApiClient {
            http,
            streams,
            base: opts.server.trim_end_matches('/').to_string(),
            token,
        })
    }

    /// GET a JSON resource.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// POST a JSON body, read a JSON answer.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let req = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(req).await
    }

    /// PUT a JSON body, read a JSON answer.
    pub async fn put<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let req = self.http.put(format!("{}{path}", self.base)).json(body);
        self.send(req).await
    }

    /// PATCH with a JSON body, read a JSON answer.
    pub async fn patch<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let req = self.http.patch(format!("{}{path}", self.base)).json(body);
        self.send(req).await
    }

    /// DELETE, read a JSON answer.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let req = self.http.delete(format!("{}{path}", self.base));
        self.send(req).await
    }

    /// GET raw bytes and one response header's value.
    pub async fn get_bytes(&self, path: &str, header: &str) -> Result<(Vec<u8>, Option<String>)> {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = res.status();
        let value = res
            .headers()
            .get(header)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = res.bytes().await.context("reading the server's answer")?;
        if !status.is_success() {
            bail!(
                "server answered {status}: {}",
                String::from_utf8_lossy(&bytes)
            );
        }
        Ok((bytes.to_vec(), value))
    }

    /// Open an endless stream (`text/event-stream`), resuming after `last_event_id`. Err on a
    /// refusal (its problem's detail) or an unreachable server; [`StreamError::refused`] tells
    /// which.
    pub async fn open_stream(
        &self,
        path: &str,
        last_event_id: Option<&str>,
    ) -> Result<reqwest::Response, StreamError> {
        let mut req = self
            .streams
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let res = req.send().await.map_err(|e| StreamError {
            refused: false,
            message: format!("cannot reach the server at {}: {e}", self.base),
        })?;
        let status = res.status();
        if status.is_success() {
            return Ok(res);
        }
        let bytes = res.bytes().await.unwrap_or_default();
        let message = match serde_json::from_slice::<Problem>(&bytes) {
            Ok(p) => format!("{} ({})", p.detail.unwrap_or(p.title), status.as_u16()),
            Err(_) => format!("server answered {status}"),
        };
        Err(StreamError {
            // A client error will not go away by asking again; a server error may.
            refused: status.is_client_error(),
            message,
        })
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T> {
        let res = req
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("cannot reach the server at {}", self.base))?;
        let status = res.status();
        let bytes = res.bytes().await.context("reading the server's answer")?;
        if !status.is_success() {
            match serde_json::from_slice::<Problem>(&bytes) {
                Ok(p) => bail!("{} ({})", p.detail.unwrap_or(p.title), status.as_u16()),
                Err(_) => bail!(
                    "server answered {status}: {}",
                    String::from_utf8_lossy(&bytes)
                ),
            }
        }
        serde_json::from_slice(&bytes).context("the server's answer is not what this CLI expects")
    }
}

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StreamError {
    /// The server refused the request itself (4xx): retrying will not help.
    pub refused: bool,
    /// What went wrong.
    pub message: String,
}
