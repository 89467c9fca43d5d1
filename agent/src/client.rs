//! The agent's side of the protocol: learn the server's clock and enroll over the CA-pinned
//! connection, then talk to the agent API with a client certificate.

use std::sync::Arc;
use std::time::Duration;

use anneal_shared::api::{Machine, Problem};
use anneal_shared::inventory::Inventory;
use anneal_shared::protocol::{
    self, AttemptResult, BootReport, EnrollRequest, EnrollResponse, HeartbeatRequest,
    HeartbeatResponse, IdentityHints, InventoryReport, LogAck, NextAction, NextRequest,
    NextResponse, RenewRequest, RenewResponse, TimeResponse,
};
use anneal_shared::{MachineId, PROTOCOL_VERSION};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::clock::Clock;
use crate::tls::{parse_fingerprint, PinnedCa};

/// What can go wrong talking to the server; each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configured fingerprint is not a SHA-256 fingerprint.
    #[error("CA fingerprint {0:?} is not `sha256:` followed by 64 hex digits")]
    BadFingerprint(String),
    /// The server did not present the pinned CA: wrong server, or a man in the middle.
    #[error("the server at {url} did not present the pinned CA {expected}; it presented {presented:?}. Refusing to continue")]
    FingerprintMismatch {
        /// Where we connected.
        url: String,
        /// The pin.
        expected: String,
        /// What the server sent.
        presented: Vec<String>,
    },
    /// Network or TLS failure.
    #[error("talking to {url}: {source}")]
    Transport {
        /// Where we connected.
        url: String,
        /// The cause, with its chain.
        #[source]
        source: reqwest::Error,
    },
    /// The server refused the bootstrap token.
    #[error("bootstrap token refused: {0}")]
    TokenRefused(String),
    /// The identity evidence conflicts with existing records; an operator must decide.
    #[error("enrollment quarantined: {0}")]
    Quarantined(String),
    /// Our certificate is not (or no longer) accepted: revoked, or unknown.
    #[error("the server refused this machine's certificate: {0}")]
    Unauthorized(String),
    /// Any other problem document from the server.
    #[error("server answered {status}: {detail}")]
    Problem {
        /// HTTP status.
        status: u16,
        /// The problem's detail.
        detail: String,
    },
    /// Key, CSR or certificate handling failed locally.
    #[error("local crypto: {0}")]
    Crypto(String),
    /// The server's answer did not parse.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

impl ClientError {
    /// Worth retrying later without any change (network trouble, server errors, quarantine).
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Transport { .. } | ClientError::Quarantined(_) => true,
            ClientError::Problem { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The agent API refused our certificate (401: revoked, unknown, not on record) or the
    /// machine it names (403): only a new enrollment helps.
    pub fn identity_refused(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized(_) | ClientError::Problem { status: 403, .. }
        )
    }

    /// One short line for the status file: the message, and for network failures the
    /// innermost cause (e.g. "Connection refused (os error 111)") rather than reqwest's
    /// "error sending request".
    pub fn short(&self) -> String {
        let text = match self {
            ClientError::Transport { source, .. } => {
                let mut cause: &dyn std::error::Error = source;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                let inner = cause.to_string();
                if source.is_timeout() {
                    format!("timed out ({inner})")
                } else {
                    inner
                }
            }
            ClientError::FingerprintMismatch { .. } => {
                "the server did not present the pinned CA".to_string()
            }
            other => other.to_string(),
        };
        let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
        match line.char_indices().nth(160) {
            Some((i, _)) => format!("{}…", &line[..i]),
            None => line,
        }
    }
}

fn http_client(tls: rustls::ClientConfig) -> Result<reqwest::Client, ClientError> {
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .pool_idle_timeout(Duration::from_secs(120))
        .build()
        .map_err(|e| ClientError::Crypto(format!("building the HTTP client: {e}")))
}

/// Send a request and decode JSON, mapping problems to [`ClientError`]s.
async fn exchange<T: DeserializeOwned>(
    pin: &PinnedCa,
    url: &str,
    req: reqwest::RequestBuilder,
) -> Result<T, ClientError> {
    let res = req
        .send()
        .await
        .map_err(|source| match pin.last_mismatch() {
            Some(presented) => ClientError::FingerprintMismatch {
                url: url.to_string(),
                expected: String::new(),
                presented,
            },
            None => ClientError::Transport {
                url: url.to_string(),
                source,
            },
        })?;
    let status = res.status();
    let bytes = res.bytes().await.map_err(|source| ClientError::Transport {
        url: url.to_string(),
        source,
    })?;
    if status.is_success() {
        return serde_json::from_slice(if bytes.is_empty() { b"null" } else { &bytes })
            .map_err(|e| ClientError::Decode(e.to_string()));
    }
    let problem: Option<Problem> = serde_json::from_slice(&bytes).ok();
    let detail = problem
        .as_ref()
        .and_then(|p| p.detail.clone())
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
    let kind = problem.map(|p| p.kind).unwrap_or_default();
    Err(match (status.as_u16(), kind.as_str()) {
        (401, "urn:anneal:problem:token-refused") => ClientError::TokenRefused(detail),
        (409, "urn:anneal:problem:quarantined") => ClientError::Quarantined(detail),
        (401, _) => ClientError::Unauthorized(detail),
        (s, _) => ClientError::Problem { status: s, detail },
    })
}

/// Before enrollment: a connection that trusts only the pinned CA.
pub struct Enroller {
    base: String,
    fingerprint: String,
    clock: Arc<Clock>,
    pin: Arc<PinnedCa>,
    http: reqwest::Client,
    environment: Option<String>,
}

impl Enroller {
    /// Pin the CA by `fingerprint` (`sha256:HEX`) for the server at `url` (`https://host:port`).
    pub fn new(url: &str, fingerprint: &str, clock: Arc<Clock>) -> Result<Enroller, ClientError> {
        let fp = parse_fingerprint(fingerprint)
            .ok_or_else(|| ClientError::BadFingerprint(fingerprint.to_string()))?;
        let pin = PinnedCa::new(fp, clock.clone());
        let http = http_client(
            pin.client_config(None)
                .map_err(|e| ClientError::Crypto(e.to_string()))?,
        )?;
        Ok(Enroller {
            base: url.trim_end_matches('/').to_string(),
            fingerprint: fingerprint.to_string(),
            clock,
            pin,
            http,
            environment: None,
        })
    }

    /// Name boot environment `env` in every enrollment: an installed agent's, so that an
    /// enrollment with an operator's token counts as a boot of that environment.
    pub fn with_environment(mut self, env: &str) -> Enroller {
        self.environment = Some(env.to_string());
        self
    }

    fn fix_mismatch(&self, e: ClientError) -> ClientError {
        match e {
            ClientError::FingerprintMismatch { url, presented, .. } => {
                ClientError::FingerprintMismatch {
                    url,
                    expected: self.fingerprint.clone(),
                    presented,
                }
            }
            other => other,
        }
    }

    /// Learn the server's clock; returns the offset (server minus local) in ms.
    pub async fn sync_clock(&self) -> Result<i64, ClientError> {
        let url = format!("{}{}", self.base, protocol::PATH_TIME);
        let sent = self.clock.local_ms();
        let t: TimeResponse = exchange(&self.pin, &url, self.http.get(&url))
            .await
            .map_err(|e| self.fix_mismatch(e))?;
        let received = self.clock.local_ms();
        Ok(self.clock.learn(sent, t.unix_ms, received))
    }

    /// Enroll: a fresh key in memory, a CSR, the token and the identity evidence.
    pub async fn enroll(
        &self,
        token: &str,
        identity: IdentityHints,
        boot_id: &str,
        hostname: &str,
    ) -> Result<Session, ClientError> {
        if !self.clock.synced() {
            self.sync_clock().await?;
        }
        let (key, csr_pem) = new_key_and_csr()?;
        let req = EnrollRequest {
            protocol: PROTOCOL_VERSION,
            token: token.to_string(),
            csr_pem,
            identity,
            boot_id: boot_id.to_string(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            hostname: hostname.to_string(),
            environment: self.environment.clone(),
        };
        let url = format!("{}{}", self.base, protocol::PATH_ENROLL);
        let res: EnrollResponse = exchange(&self.pin, &url, self.http.post(&url).json(&req))
            .await
            .map_err(|e| self.fix_mismatch(e))?;
        Session::new(
            self.pin.clone(),
            self.clock.clone(),
            Credentials {
                machine_id: res.machine_id,
                agent_url: res.agent_url,
                boot_id: boot_id.to_string(),
                key_pem: key.serialize_pem(),
                cert_pem: res.cert_pem,
                ca_pem: res.ca_pem,
                not_after: res.not_after,
                issued_at_ms: self.clock.now_ms(),
            },
        )
    }

    /// A session from credentials saved earlier (`--state-dir`), without enrolling. The caller
    /// has checked them ([`crate::state`]); the server still judges the certificate on the
    /// first request.
    pub fn resume(&self, creds: Credentials) -> Result<Session, ClientError> {
        Session::new(self.pin.clone(), self.clock.clone(), creds)
    }
}

/// What a session is made of: enough to resume it in a later process of the same boot.
#[derive(Clone)]
pub struct Credentials {
    /// The machine the certificate names.
    pub machine_id: MachineId,
    /// Base URL of the agent API.
    pub agent_url: String,
    /// The kernel boot id enrolled with.
    pub boot_id: String,
    /// The private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The client certificate (and any chain), PEM.
    pub cert_pem: String,
    /// The CA that issued it, PEM.
    pub ca_pem: String,
    /// When the certificate expires.
    pub not_after: OffsetDateTime,
    /// When it was issued, by the server's clock (Unix ms; renewal is due at two thirds).
    pub issued_at_ms: i64,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("machine_id", &self.machine_id)
            .field("agent_url", &self.agent_url)
            .field("boot_id", &self.boot_id)
            .field("key_pem", &"<redacted>")
            .field("not_after", &self.not_after)
            .field("issued_at_ms", &self.issued_at_ms)
            .finish()
    }
}

/// A fresh ECDSA P-256 key and a CSR for it (the server overrides everything but the key).
fn new_key_and_csr() -> Result<(KeyPair, String), ClientError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| ClientError::Crypto(format!("generating a key: {e}")))?;
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| ClientError::Crypto(format!("making a CSR: {e}")))?;
    Ok((key, csr))
}

/// The answer to a log upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogUpload {
    /// Taken; the server's log is now this long.
    Taken(u64),
    /// Refused (a gap or a difference); the server has this many bytes: send from there.
    Resume(u64),
}

/// After enrollment: the agent API over mutual TLS.
pub struct Session {
    pin: Arc<PinnedCa>,
    clock: Arc<Clock>,
    /// Our machine id, as the certificate names it.
    pub machine_id: MachineId,
    /// Base URL of the agent API.
    pub agent_url: String,
    /// This kernel's boot id.
    pub boot_id: String,
    /// When the current certificate expires.
    pub not_after: OffsetDateTime,
    issued_at_ms: i64,
    key_pem: String,
    cert_pem: String,
    ca_pem: String,
    http: reqwest::Client,
}

impl Session {
    fn new(pin: Arc<PinnedCa>, clock: Arc<Clock>, c: Credentials) -> Result<Session, ClientError> {
        let key = KeyPair::from_pem(&c.key_pem)
            .map_err(|e| ClientError::Crypto(format!("private key: {e}")))?;
        let http = mtls_client(&pin, &key, &c.cert_pem)?;
        Ok(Session {
            issued_at_ms: c.issued_at_ms,
            pin,
            clock,
            machine_id: c.machine_id,
            agent_url: c.agent_url.trim_end_matches('/').to_string(),
            boot_id: c.boot_id,
            not_after: c.not_after,
            key_pem: c.key_pem,
            cert_pem: c.cert_pem,
            ca_pem: c.ca_pem,
            http,
        })
    }

    /// The current key and certificate, to save (`--state-dir`).
    pub fn credentials(&self) -> Credentials {
        Credentials {
            machine_id: self.machine_id,
            agent_url: self.agent_url.clone(),
            boot_id: self.boot_id.clone(),
            key_pem: self.key_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            ca_pem: self.ca_pem.clone(),
            not_after: self.not_after,
            issued_at_ms: self.issued_at_ms,
        }
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.agent_url);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(b);
        }
        exchange(&self.pin, &url, req).await
    }

    /// Report liveness; the answer says what to do next.
    pub async fn heartbeat(&self, status: &str) -> Result<HeartbeatResponse, ClientError> {
        let body = HeartbeatRequest {
            protocol: PROTOCOL_VERSION,
            boot_id: self.boot_id.clone(),
            status: status.to_string(),
        };
        self.call(
            reqwest::Method::POST,
            &protocol::path_heartbeat(self.machine_id),
            Some(&body),
        )
        .await
    }

    /// Tell the server this installed agent runs in a new kernel boot ([`Session::boot_id`])
    /// of boot environment `environment`.
    pub async fn report_boot(&self, environment: &str) -> Result<(), ClientError> {
        let body = BootReport {
            protocol: PROTOCOL_VERSION,
            boot_id: self.boot_id.clone(),
            environment: environment.to_string(),
        };
        let _: serde_json::Value = self
            .call(
                reqwest::Method::POST,
                &protocol::path_boot(self.machine_id),
                Some(&body),
            )
            .await?;
        Ok(())
    }

    /// Send the inventory.
    pub async fn send_inventory(&self, inventory: &Inventory) -> Result<(), ClientError> {
        let body = InventoryReport {
            protocol: PROTOCOL_VERSION,
            boot_id: self.boot_id.clone(),
            inventory: inventory.clone(),
        };
        let _: serde_json::Value = self
            .call(
                reqwest::Method::PUT,
                &protocol::path_inventory(self.machine_id),
                Some(&body),
            )
            .await?;
        Ok(())
    }

    /// Our own record as the server holds it.
    pub async fn own_record(&self) -> Result<Machine, ClientError> {
        self.call::<(), _>(
            reqwest::Method::GET,
            &protocol::path_machine(self.machine_id),
            None,
        )
        .await
    }

    /// Ask what to do next in the machine's workflow.
    pub async fn next(&self) -> Result<NextAction, ClientError> {
        let body = NextRequest {
            protocol: PROTOCOL_VERSION,
            boot_id: self.boot_id.clone(),
        };
        let res: NextResponse = self
            .call(
                reqwest::Method::POST,
                &protocol::path_next(self.machine_id),
                Some(&body),
            )
            .await?;
        Ok(res.action)
    }

    /// Acknowledge an attempt's start; only after this succeeds may it run. A 409 means the
    /// attempt is no longer current: do not run it.
    pub async fn start_attempt(&self, attempt: Uuid) -> Result<(), ClientError> {
        let path = protocol::path_attempt_start(self.machine_id, attempt);
        let _: serde_json::Value = self
            .call::<(), _>(reqwest::Method::POST, &path, None)
            .await?;
        Ok(())
    }

    /// Upload log bytes starting at `offset`. Returns the server's log length: on success the
    /// new end, on a 409 where it stands (resume from there).
    pub async fn upload_log(
        &self,
        attempt: Uuid,
        offset: u64,
        data: &[u8],
    ) -> Result<LogUpload, ClientError> {
        let url = format!(
            "{}{}?offset={offset}",
            self.agent_url,
            protocol::path_attempt_log(self.machine_id, attempt)
        );
        let req = self
            .http
            .put(&url)
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .body(data.to_vec());
        let res = req.send().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        let status = res.status().as_u16();
        let bytes = res.bytes().await.map_err(|source| ClientError::Transport {
            url: url.clone(),
            source,
        })?;
        match status {
            200 | 409 => {
                let ack: LogAck = serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::Decode(e.to_string()))?;
                Ok(if status == 200 {
                    LogUpload::Taken(ack.length)
                } else {
                    LogUpload::Resume(ack.length)
                })
            }
            s => Err(ClientError::Problem {
                status: s,
                detail: String::from_utf8_lossy(&bytes).into_owned(),
            }),
        }
    }

    /// Report an attempt's end (after its whole log was taken).
    pub async fn report_result(
        &self,
        attempt: Uuid,
        result: &AttemptResult,
    ) -> Result<(), ClientError> {
        let path = protocol::path_attempt_result(self.machine_id, attempt);
        let _: serde_json::Value = self
            .call(reqwest::Method::POST, &path, Some(result))
            .await?;
        Ok(())
    }

    /// GET any agent-API path (tests use it to probe authorization).
    pub async fn get_raw(&self, path: &str) -> Result<serde_json::Value, ClientError> {
        self.call::<(), _>(reqwest::Method::GET, path, None).await
    }

    /// Two thirds of the certificate's lifetime have passed (by the server's clock).
    pub fn needs_renewal(&self) -> bool {
        let end = (self.not_after.unix_timestamp_nanos() / 1_000_000) as i64;
        let renew_at = self.issued_at_ms + (end - self.issued_at_ms) * 2 / 3;
        self.clock.now_ms() >= renew_at
    }

    /// A new key and certificate; later requests use them.
    pub async fn renew(&mut self) -> Result<(), ClientError> {
        let (key, csr_pem) = new_key_and_csr()?;
        let body = RenewRequest {
            protocol: PROTOCOL_VERSION,
            csr_pem,
        };
        let res: RenewResponse = self
            .call(
                reqwest::Method::POST,
                &protocol::path_renew(self.machine_id),
                Some(&body),
            )
            .await?;
        self.http = mtls_client(&self.pin, &key, &res.cert_pem)?;
        self.not_after = res.not_after;
        self.issued_at_ms = self.clock.now_ms();
        self.key_pem = key.serialize_pem();
        self.cert_pem = res.cert_pem;
        Ok(())
    }
}

fn mtls_client(
    pin: &Arc<PinnedCa>,
    key: &KeyPair,
    cert_pem: &str,
) -> Result<reqwest::Client, ClientError> {
    let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| ClientError::Crypto(format!("certificate PEM: {e}")))?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let tls = pin
        .client_config(Some((chain, key)))
        .map_err(|e| ClientError::Crypto(e.to_string()))?;
    http_client(tls)
}
