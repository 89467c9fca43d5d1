//! `--state-dir`: the agent's key, certificate and enrollment kept across restarts of the
//! process within one boot. In the discovery image the bootstrap token on the kernel command
//! line is single-use and init restarts the agent when it dies; a restarted agent finds its
//! certificate here and carries on as the same machine in the same boot, without enrolling
//! again (which would need a new token and raise the server's same-boot re-enrollment alert).
//!
//! An agent on an installed OS (`--installed`) keeps them across boots too
//! ([`StateDir::load_kept`]): the certificate is its identity for as long as it is valid and
//! renewed, and `boot_id` then records the last boot it was used in (reported to the server),
//! so a restart within that boot is told apart from a new boot.
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

/// A certificate with less than this left (server's clock) is not worth resuming with — or a
/// tenth of its lifetime, if that is less (servers issuing short-lived certificates).
pub const MIN_REMAINING_SECS: i64 = 60;

/// How long a certificate issued at `issued_at_ms` and expiring at `not_after_secs` (both by
/// the server's clock) must still be valid to be resumed: [`MIN_REMAINING_SECS`], or a tenth of
/// its lifetime when that is shorter, at least a second.
pub fn min_remaining_secs(issued_at_ms: i64, not_after_secs: i64) -> i64 {
    let lifetime = not_after_secs.saturating_sub(issued_at_ms / 1000);
    (lifetime / 10).clamp(1, MIN_REMAINING_SECS)
}

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
    /// Checked and usable, kept from another boot ([`StateDir::load_kept`] only): the
    /// credentials carry this boot's id; the server must be told of the new boot.
    Kept {
        /// The credentials, for this boot.
        credentials: Credentials,
        /// The boot they were last used in.
        saved_boot_id: String,
    },
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

    /// Whether an enrollment is saved here at all (usable or not is for `load` to say).
    pub fn holds_enrollment(&self) -> bool {
        self.dir.join(ENROLLMENT).exists()
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
        self.load_with(boot_id, pin, now, false)
    }

    /// [`StateDir::load`] for an installed OS: credentials saved in another boot are reused
    /// too ([`Loaded::Kept`]), after the same checks.
    pub fn load_kept(&self, boot_id: &str, pin: &[u8; 32], now: UnixTime) -> Loaded {
        self.load_with(boot_id, pin, now, true)
    }

    fn load_with(
        &self,
        boot_id: &str,
        pin: &[u8; 32],
        now: UnixTime,
        across_boots: bool,
    ) -> Loaded {
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
        let same_boot = record.boot_id == boot_id;
        if !same_boot && !across_boots {
            return Loaded::OtherBoot {
                saved_boot_id: record.boot_id,
            };
        }
        match self.check(&record, pin, now) {
            Ok(c) if same_boot => Loaded::Reusable(c),
            Ok(c) => Loaded::Kept {
                credentials: Credentials {
                    boot_id: boot_id.to_string(),
                    ..c
                },
                saved_boot_id: record.boot_id,
            },
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
        if left < min_remaining_secs(record.issued_at_ms, not_after) {
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

/// The server URL and CA fingerprint recorded with the enrollment saved in `dir`, if any: an
/// installed agent whose state directory was copied from provisioning needs no flags. (The
/// pin is then only as trustworthy as the directory, which holds the private key anyway.)
pub fn recorded_server(dir: &Path) -> Option<(String, String)> {
    let bytes = std::fs::read(dir.join(ENROLLMENT)).ok()?;
    let record: Enrollment = serde_json::from_slice(&bytes).ok()?;
    Some((record.server_url, record.ca_fingerprint))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_minute_or_a_tenth_of_a_short_lifetime() {
        let issued = 1_000_000_000_000; // ms
        let day = issued / 1000 + 86_400;
        assert_eq!(min_remaining_secs(issued, day), MIN_REMAINING_SECS);
        assert_eq!(min_remaining_secs(issued, issued / 1000 + 120), 12);
        assert_eq!(
            min_remaining_secs(issued, issued / 1000 + 5),
            1,
            "at least 1 s"
        );
        // Nonsense times (not after before issued) still ask for a second.
        assert_eq!(min_remaining_secs(issued, 0), 1);
        assert_eq!(min_remaining_secs(0, day), MIN_REMAINING_SECS);
    }

    #[test]
    fn the_recorded_server_is_read_only_from_a_whole_record() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(recorded_server(tmp.path()), None, "nothing saved");
        std::fs::write(tmp.path().join(ENROLLMENT), "{\"format\": 1").unwrap();
        assert_eq!(recorded_server(tmp.path()), None, "torn");
    }
}
