//! The server's own certificate authority: one ECDSA P-256 CA, made on first start, that issues
//! the server's TLS certificate and signs agents' client certificates from their CSRs.
//!
//! Everything an agent asks for in its CSR except the public key is ignored: the certificate's
//! identity (subject, SAN), usages and validity are always ours.

mod seal;

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
    PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime, UtcOffset};
use uuid::Uuid;
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

pub use seal::MasterKey;

/// How far certificates are backdated, so machines whose clocks lag a little still accept them.
pub const BACKDATE: Duration = Duration::hours(1);

/// Lifetime of a newly generated CA: 20 years (counting leap days).
pub const CA_LIFETIME: Duration = Duration::days(20 * 365 + 5);

/// Errors from certificate operations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The agent's CSR is unparsable, wrongly signed, or uses a key type we do not accept.
    #[error("bad certificate signing request: {0}")]
    BadCsr(String),
    /// Making or signing a certificate or key failed (or the request was invalid).
    #[error("cannot generate certificate: {0}")]
    Generate(String),
    /// A certificate or key (PEM/DER) could not be parsed or is not what it claims to be.
    #[error("cannot parse certificate or key: {0}")]
    Parse(String),
    /// A certificate names no (or no unambiguous) machine.
    #[error("certificate carries no machine identity: {0}")]
    NoIdentity(String),
    /// Sealing or opening a secret failed: wrong master key, wrong purpose, tampering, bad format.
    #[error("cannot seal or open secret: {0}")]
    Seal(String),
    /// The master key material itself is malformed.
    #[error("bad master key: {0}")]
    MasterKey(String),
    /// The master key file is readable or writable by group or others.
    #[error(
        "refusing master key file {path}: mode {mode:o} grants group/other access (chmod 600 it)"
    )]
    InsecureKeyFile {
        /// The offending file.
        path: std::path::PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Reading or writing a key file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// The file involved.
        path: std::path::PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// The CA: certificate plus private key, loaded in memory.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    key: KeyPair,
    /// rcgen's view of the CA (subject DN, key identifier) that it needs as issuer; its own DER is
    /// a throwaway re-signature and never leaves this struct.
    issuer: rcgen::Certificate,
    not_after: OffsetDateTime,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Ca")
            .field("fingerprint", &self.fingerprint())
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Ca {
    /// New self-signed CA, ECDSA P-256, valid from now-1h for 20 years, CN = common_name, basicConstraints CA:true pathlen 0, keyUsage keyCertSign+cRLSign.
    pub fn generate(common_name: &str, now: OffsetDateTime) -> Result<Ca, PkiError> {
        if common_name.trim().is_empty() {
            return Err(PkiError::Generate("CA common name is empty".into()));
        }
        let now = whole_seconds_utc(now);
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err("CA key"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now - BACKDATE + CA_LIFETIME;
        let cert = params
            .self_signed(&key)
            .map_err(gen_err("self-signing CA"))?;
        // Go through the loader so a fresh CA and a reloaded one are the same thing.
        Ca::from_pem(&pem_encode("CERTIFICATE", cert.der()), &key.serialize_pem())
    }

    /// Load from PEM (as produced by cert_pem()/key_pem()).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let mut certs = rustls_pemfile::certs(&mut cert_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PkiError::Parse(format!("CA certificate PEM: {e}")))?;
        if certs.len() != 1 {
            return Err(PkiError::Parse(format!(
                "expected exactly one CA certificate in PEM, found {}",
                certs.len()
            )));
        }
        let cert_der = certs.remove(0);
        let x509 = parse_cert(&cert_der)?;
        let is_ca = x509
            .basic_constraints()
            .map_err(|e| PkiError::Parse(format!("CA basicConstraints: {e}")))?
            .is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(PkiError::Parse("certificate is not a CA".into()));
        }
        require_p256(x509.public_key()).map_err(PkiError::Parse)?;
        x509.verify_signature(None).map_err(|e| {
            PkiError::Parse(format!("CA certificate is not validly self-signed: {e}"))
        })?;

        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| PkiError::Parse(format!("CA private key: {e}")))?;
        if key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(PkiError::Parse("CA private key is not ECDSA P-256".into()));
        }
        if key.public_key_der() != x509.public_key().raw {
            return Err(PkiError::Parse(
                "CA private key does not belong to the CA certificate".into(),
            ));
        }

        let issuer = CertificateParams::from_ca_cert_der(&cert_der)
            .and_then(|params| params.self_signed(&key))
            .map_err(|e| PkiError::Parse(format!("CA certificate as issuer: {e}")))?;
        let not_after = x509.validity().not_after.to_datetime();
        Ok(Ca {
            cert_pem: pem_encode("CERTIFICATE", &cert_der),
            cert_der,
            key,
            issuer,
            not_after,
        })
    }

    /// The CA certificate in PEM (normalised: exactly one CERTIFICATE block).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA private key in PKCS#8 PEM, for sealing into the store; never log it.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate in DER, e.g. for a rustls `RootCertStore`.
    pub fn cert_der(&self) -> CertificateDer<'static> {
        self.cert_der.clone()
    }

    /// "sha256:<64 lower-case hex>" of the CA certificate's DER.
    pub fn fingerprint(&self) -> String {
        fingerprint_der(&self.cert_der)
    }

    /// When the CA certificate itself expires; nothing it issues may outlive it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// Server certificate for the given names; each name that parses as an IP address becomes an IP SAN, else a DNS SAN. serverAuth EKU, not a CA, valid now-1h .. now+`lifetime`. Fresh key.
    pub fn issue_server_cert(
        &self,
        names: &[String],
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let first = names.first().ok_or_else(|| {
            PkiError::Generate("server certificate needs at least one name".into())
        })?;
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    // Same syntax check clients apply, so we never issue an unmatchable name.
                    rustls_pki_types::DnsName::try_from(name.as_str()).map_err(|e| {
                        PkiError::Generate(format!("server name {name:?} is not a DNS name: {e}"))
                    })?;
                    SanType::DnsName(name.as_str().try_into().map_err(|e| {
                        PkiError::Generate(format!("server name {name:?} is not a DNS name: {e}"))
                    })?)
                }
            };
            sans.push(san);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(gen_err("server key"))?;
        let mut params = self.leaf_params(now, lifetime)?;
        params.distinguished_name = common_name_dn(first);
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(gen_err("signing server certificate"))?;
        issued(cert.der(), Some(key.serialize_pem()))
    }

    /// Sign an agent's PKCS#10 CSR (PEM). Verify the CSR's self-signature. Keep ONLY its public key: overwrite everything the CSR requested — subject CN = machine id, a URI SAN exactly `anneal_shared::protocol::machine_uri(machine_id)` (i.e. "urn:anneal:machine:<uuid>"), no other SANs, not a CA, keyUsage digitalSignature, EKU clientAuth only, no custom extensions, our own serial (random, 16 bytes, positive/high bit clear), validity not_before = now - 1 hour (backdated for clock skew), not_after = now + lifetime.
    ///
    /// The CSR's key must be ECDSA P-256, like every key in Anneal.
    pub fn sign_client_csr(
        &self,
        csr_pem: &str,
        machine_id: Uuid,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<IssuedCert, PkiError> {
        let public_key = csr_public_key(csr_pem)?;
        let uri = anneal_shared::protocol::machine_uri(machine_id);
        let mut params = self.leaf_params(now, lifetime)?;
        params.distinguished_name = common_name_dn(&machine_id.to_string());
        params.subject_alt_names =
            vec![SanType::URI(uri.as_str().try_into().map_err(|e| {
                PkiError::Generate(format!("machine URI {uri:?} is not IA5: {e}"))
            })?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&public_key, &self.issuer, &self.key)
            .map_err(gen_err("signing client certificate"))?;
        issued(cert.der(), None)
    }

    /// Parameters shared by every end-entity certificate: validity, serial, not a CA,
    /// digitalSignature only (ECDSA keys never encipher), authority key id pointing at us.
    fn leaf_params(
        &self,
        now: OffsetDateTime,
        lifetime: Duration,
    ) -> Result<CertificateParams, PkiError> {
        if lifetime <= Duration::ZERO {
            return Err(PkiError::Generate(format!(
                "certificate lifetime must be positive, got {lifetime}"
            )));
        }
        let now = whole_seconds_utc(now);
        let not_after = now + lifetime;
        if not_after > self.not_after {
            // Such a certificate would stop verifying when the CA expires anyway; say so now.
            return Err(PkiError::Generate(format!(
                "certificate would expire ({not_after}) after the CA does ({})",
                self.not_after
            )));
        }
        let mut params = CertificateParams::default();
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(random_serial());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        Ok(params)
    }
}

/// A certificate the CA issued.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate in PEM.
    pub cert_pem: String,
    /// Some for server certs (we made the key), None for CSR-signed.
    pub key_pem: Option<String>,
    /// Serial in canonical form, see [`canonical_serial_hex`].
    pub serial_hex: String,
    /// Start of validity as written in the certificate (whole seconds, UTC).
    pub not_before: OffsetDateTime,
    /// End of validity as written in the certificate (whole seconds, UTC).
    pub not_after: OffsetDateTime,
}

impl std::fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key stays out of logs.
        f.debug_struct("IssuedCert")
            .field("serial_hex", &self.serial_hex)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("has_key", &self.key_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// What a client certificate says about the machine holding it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// From the certificate's `urn:anneal:machine:` URI SAN.
    pub machine_id: Uuid,
    /// Serial in canonical form, see [`canonical_serial_hex`].
    pub serial_hex: String,
    /// End of the certificate's validity.
    pub not_after: OffsetDateTime,
}

/// "sha256:<hex>" of any DER blob.
pub fn fingerprint_der(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Canonical text form of a certificate serial: lower-case hex of the DER INTEGER's content bytes
/// with leading zero bytes removed ("00" for zero). Our own serials always come out as exactly
/// 32 hex digits, because their first byte is in 0x40..=0x7f.
pub fn canonical_serial_hex(raw_serial: &[u8]) -> String {
    let start = raw_serial
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(raw_serial.len());
    let trimmed = &raw_serial[start..];
    if trimmed.is_empty() {
        "00".to_string()
    } else {
        hex::encode(trimmed)
    }
}

/// What a client certificate (DER) says: the machine id from its `urn:anneal:machine:` URI SAN, and its serial in the same canonical hex form as IssuedCert::serial_hex. Error when there is no such SAN.
///
/// This reads, it does not verify: call it only on a certificate the TLS layer already checked.
pub fn client_identity(der: &[u8]) -> Result<ClientIdentity, PkiError> {
    let x509 = parse_cert(der)?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| PkiError::Parse(format!("subjectAltName: {e}")))?;
    let mut ids = Vec::new();
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        if let GeneralName::URI(uri) = name {
            if uri.starts_with("urn:anneal:machine:") {
                let id = anneal_shared::protocol::machine_from_uri(uri).ok_or_else(|| {
                    PkiError::NoIdentity(format!("malformed machine URI {uri:?}"))
                })?;
                ids.push(id);
            }
        }
    }
    let machine_id = match ids.as_slice() {
        [id] => *id,
        [] => {
            return Err(PkiError::NoIdentity(
                "no urn:anneal:machine: URI SAN".into(),
            ))
        }
        _ => {
            // We never issue these; one certificate must not speak for two machines.
            return Err(PkiError::NoIdentity(format!(
                "{} machine URI SANs, expected one",
                ids.len()
            )));
        }
    };
    Ok(ClientIdentity {
        machine_id,
        serial_hex: canonical_serial_hex(x509.raw_serial()),
        not_after: x509.validity().not_after.to_datetime(),
    })
}

/// A CSR's verified public key, in the form rcgen wants for signing.
struct CsrKey {
    /// Uncompressed P-256 point (the SPKI's BIT STRING contents).
    point: Vec<u8>,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// Parse a PEM CSR, check its self-signature (proof the agent holds the key) and return only the
/// public key; nothing else in the CSR is trusted or used.
fn csr_public_key(csr_pem: &str) -> Result<CsrKey, PkiError> {
    let mut csrs = Vec::new();
    for item in rustls_pemfile::read_all(&mut csr_pem.as_bytes()) {
        match item.map_err(|e| PkiError::BadCsr(format!("PEM: {e}")))? {
            rustls_pemfile::Item::Csr(csr) => csrs.push(csr),
            _ => {
                return Err(PkiError::BadCsr(
                    "PEM holds something other than a CSR".into(),
                ))
            }
        }
    }
    let der: CertificateSigningRequestDer<'static> = match csrs.len() {
        1 => csrs.remove(0),
        n => {
            return Err(PkiError::BadCsr(format!(
                "expected exactly one CERTIFICATE REQUEST block, found {n}"
            )))
        }
    };
    let (rest, csr) = X509CertificationRequest::from_der(&der)
        .map_err(|e| PkiError::BadCsr(format!("DER: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::BadCsr("trailing data after CSR".into()));
    }
    let spki = &csr.certification_request_info.subject_pki;
    require_p256(spki).map_err(PkiError::BadCsr)?;
    csr.verify_signature()
        .map_err(|e| PkiError::BadCsr(format!("self-signature does not verify: {e}")))?;
    Ok(CsrKey {
        point: spki.subject_public_key.data.to_vec(),
    })
}

/// Accept only ECDSA P-256 public keys (uncompressed points), the one key type Anneal uses.
fn require_p256(spki: &SubjectPublicKeyInfo<'_>) -> Result<(), String> {
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(format!(
            "public key algorithm {} is not EC (want ECDSA P-256)",
            spki.algorithm.algorithm
        ));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve.as_ref() != Some(&OID_EC_P256) {
        return Err("EC public key is not on curve P-256".into());
    }
    let point = &spki.subject_public_key.data;
    if point.len() != 65 || point[0] != 0x04 {
        return Err("P-256 public key is not an uncompressed point".into());
    }
    Ok(())
}

/// Parse a whole DER certificate (no trailing bytes).
fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, PkiError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Parse(format!("certificate DER: {e}")))?;
    if !rest.is_empty() {
        return Err(PkiError::Parse("trailing data after certificate".into()));
    }
    Ok(cert)
}

/// Describe a freshly signed certificate from its own DER, so serial and times are exactly what
/// verifiers (and [`client_identity`]) will see.
fn issued(der: &[u8], key_pem: Option<String>) -> Result<IssuedCert, PkiError> {
    let x509 = parse_cert(der)?;
    let validity = x509.validity();
    Ok(IssuedCert {
        cert_pem: pem_encode("CERTIFICATE", der),
        key_pem,
        serial_hex: canonical_serial_hex(x509.raw_serial()),
        not_before: validity.not_before.to_datetime(),
        not_after: validity.not_after.to_datetime(),
    })
}

/// 16 random bytes, first byte in 0x40..=0x7f: positive (high bit clear) and never shortened by
/// DER's minimal encoding, so every serial of ours is exactly 16 bytes / 32 hex digits.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

fn common_name_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// Certificates hold whole seconds in UTC; normalising first makes the returned times equal
/// the inputs' arithmetic (now - 1h, now + lifetime) exactly.
fn whole_seconds_utc(t: OffsetDateTime) -> OffsetDateTime {
    let t = t.to_offset(UtcOffset::UTC);
    t - Duration::nanoseconds(i64::from(t.nanosecond()))
}

fn gen_err(what: &'static str) -> impl Fn(rcgen::Error) -> PkiError {
    move |e| PkiError::Generate(format!("{what}: {e}"))
}

/// PEM-encode DER with 64-character lines (RFC 7468).
fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    // base64 output is ASCII, so splitting bytes never splits a character.
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests;
