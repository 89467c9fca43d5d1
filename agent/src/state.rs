//! `--state-dir`: the agent's key, certificate and enrollment kept across restarts of the
//! process within one boot. In the discovery image the bootstrap token on the kernel command
//! line is single-use and init restarts the agent when it dies; a restarted agent finds its
//! certificate here and carries on as the same machine in the same boot, without enrolling
//! again (which would need a new token and raise the server's same-boot re-enrollment alert).
//!
//! Layout (directory 0700, files 0600, each written to a temporary file and renamed):
//!
//! | file | what |
//! |---|---|
//! | `key.pem` | the private key (PKCS#8) |
//! | `cert.pem` | the client certificate (and chain) |
//! | `ca.pem` | the CA that issued it (its fingerprint must be the pinned one) |
//! | `enrollment.json` | machine id, boot id, agent URL, issue and expiry times; written last |
//!
//! Nothing here is trusted blindly: [`StateDir::load`] reuses the files only when the boot id
//! is this boot's, the CA is the pinned CA, the key matches the certificate, the certificate
//! names the recorded machine and chains to that CA, and it is valid for a while yet by the
//! server-corrected clock. Anything else is reported and the agent enrolls afresh.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anneal_shared::MachineId;
use rcgen::KeyPair;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{CertificateDer, UnixTime};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::client::Credentials;
use crate::tls::fingerprint_of;

const KEY: &str = "key.pem";
const CERT: &str = "cert.pem";
const CA: &str = "ca.pem";
const ENROLLMENT: &str = "enrollment.json";
const FORMAT: u32 = 1;

/// A certificate with less than this left (server's clock) is not worth resuming with.
pub const MIN_REMAINING_SECS: i64 = 60;

/// `enrollment.json`.
#[derive(Debug, Serialize, Deserialize)]
struct Enrollment {
    format: u32,
    machine_id: MachineId,
    boot_id: String,
    agent_url: String,
    #[serde(with = "time::serde::rfc3339")]
    not_after: OffsetDateTime,
    issued_at_ms: i64,
    /// Informational: the pinned fingerprint and server URL at enrollment.
    ca_fingerprint: String,
    server_url: String,
}

/// What [`StateDir::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No saved enrollment (a fresh directory).
    Empty,
    /// Saved from another boot (a reboot): enroll afresh.
    OtherBoot {
        /// The boot id it was saved in.
        saved_boot_id: String,
    },
    /// Present but not usable, with the reason (corrupt, foreign CA, expired, …).
    Unusable(String),
    /// Checked and usable.
    Reusable(Credentials),
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// Create the directory if needed (0700; an existing one is tightened to 0700).
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Save a session's credentials. `enrollment.json` is written last, so a crash half-way
    /// leaves a key that does not match the certificate, which `load` rejects.
    pub fn save(
        &self,
        c: &Credentials,
        ca_fingerprint: &str,
        server_url: &str,
    ) -> std::io::Result<()> {
        let record = Enrollment {
            format: FORMAT,
            machine_id: c.machine_id,
            boot_id: c.boot_id.clone(),
            agent_url: c.agent_url.clone(),
            not_after: c.not_after,
            issued_at_ms: c.issued_at_ms,
            ca_fingerprint: ca_fingerprint.to_string(),
            server_url: server_url.to_string(),
        };
        let json = serde_json::to_vec_pretty(&record).map_err(std::io::Error::other)?;
        write_atomic(&self.dir.join(KEY), c.key_pem.as_bytes(), 0o600)?;
        write_atomic(&self.dir.join(CERT), c.cert_pem.as_bytes(), 0o600)?;
        write_atomic(&self.dir.join(CA), c.ca_pem.as_bytes(), 0o600)?;
        write_atomic(&self.dir.join(ENROLLMENT), &json, 0o600)
    }

    /// Forget the saved enrollment (its certificate was refused). Other files stay until the
    /// next save overwrites them; without `enrollment.json` they are never used.
    pub fn discard(&self) -> std::io::Result<()> {
        match std::fs::remove_file(self.dir.join(ENROLLMENT)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Look for credentials to resume with in boot `boot_id`, trusting only the CA whose
    /// SHA-256 is `pin`, judging validity at `now` (the server-corrected clock).
    pub fn load(&self, boot_id: &str, pin: &[u8; 32], now: UnixTime) -> Loaded {
        let enrollment = match std::fs::read(self.dir.join(ENROLLMENT)) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let leftovers: Vec<&str> = [KEY, CERT, CA]
                    .into_iter()
                    .filter(|f| self.dir.join(f).exists())
                    .collect();
                return if leftovers.is_empty() {
                    Loaded::Empty
                } else {
                    Loaded::Unusable(format!(
                        "{} without {ENROLLMENT} (an interrupted save or a discarded enrollment)",
                        leftovers.join(", ")
                    ))
                };
            }
            Err(e) => return Loaded::Unusable(format!("reading {ENROLLMENT}: {e}")),
        };
        let record: Enrollment = match serde_json::from_slice(&enrollment) {
            Ok(r) => r,
            Err(e) => return Loaded::Unusable(format!("{ENROLLMENT} does not parse: {e}")),
        };
        if record.format != FORMAT {
            return Loaded::Unusable(format!(
                "{ENROLLMENT} has format {} (this agent writes {FORMAT})",
                record.format
            ));
        }
        if record.boot_id != boot_id {
            return Loaded::OtherBoot {
                saved_boot_id: record.boot_id,
            };
        }
        match self.check(&record, pin, now) {
            Ok(c) => Loaded::Reusable(c),
            Err(why) => Loaded::Unusable(why),
        }
    }

    fn read_text(&self, name: &str) -> Result<String, String> {
        std::fs::read_to_string(self.dir.join(name)).map_err(|e| format!("reading {name}: {e}"))
    }

    fn check(
        &self,
        record: &Enrollment,
        pin: &[u8; 32],
        now: UnixTime,
    ) -> Result<Credentials, String> {
        let key_pem = self.read_text(KEY)?;
        let cert_pem = self.read_text(CERT)?;
        let ca_pem = self.read_text(CA)?;
        let ca = pem_certs(&ca_pem, CA)?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{CA} holds no certificate"))?;
        let ca_fp = fingerprint_of(ca.as_ref());
        if ca_fp != format!("sha256:{}", hex::encode(pin)) {
            return Err(format!(
                "saved under CA {ca_fp}, not the pinned CA sha256:{}",
                hex::encode(pin)
            ));
        }
        let chain = pem_certs(&cert_pem, CERT)?;
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| format!("{CERT} holds no certificate"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| format!("{KEY}: {e}"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("{CERT}: {e}"))?;
        if parsed.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(format!("{KEY} does not match the certificate in {CERT}"));
        }
        let named = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .into_iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => {
                    anneal_shared::protocol::machine_from_uri(u)
                }
                _ => None,
            });
        if named != Some(record.machine_id) {
            return Err(format!(
                "the certificate names {named:?}, {ENROLLMENT} says {}",
                record.machine_id
            ));
        }
        verify_chain(&ca, leaf, intermediates, now)?;
        let not_after = parsed.validity().not_after.timestamp();
        let left = not_after - now.as_secs() as i64;
        if left < MIN_REMAINING_SECS {
            return Err(format!("the certificate expires in {left} s"));
        }
        Ok(Credentials {
            machine_id: record.machine_id,
            agent_url: record.agent_url.clone(),
            boot_id: record.boot_id.clone(),
            key_pem,
            cert_pem,
            ca_pem,
            not_after: record.not_after,
            issued_at_ms: record.issued_at_ms,
        })
    }
}

fn pem_certs(pem: &str, name: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{name}: {e}"))
}

/// The certificate chains to `ca`, is valid at `now` and is fit for client authentication
/// (the same checks the server's TLS layer makes).
fn verify_chain(
    ca: &CertificateDer<'static>,
    leaf: &CertificateDer<'static>,
    intermediates: &[CertificateDer<'static>],
    now: UnixTime,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca.clone())
        .map_err(|e| format!("{CA} is not a usable CA: {e}"))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| format!("{CA} is not a usable CA: {e}"))?;
    verifier
        .verify_client_cert(leaf, intermediates, now)
        .map(|_| ())
        .map_err(|e| format!("the certificate does not verify against the pinned CA: {e}"))
}

/// Write `bytes` to `path` atomically: a temporary file beside it (created with `mode`),
/// flushed to disk, then renamed over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{} names no file", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp.{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // An existing temporary file keeps its mode through open(): set it.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
