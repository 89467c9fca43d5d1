//! TLS trust for the agent: the server is trusted only through the CA whose SHA-256
//! fingerprint the agent was given (kernel command line or flag), and certificate validity is
//! judged by the server's clock as learned, not by the local RTC.

use std::sync::{Arc, Mutex, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

use crate::clock::Clock;

/// Parse `sha256:HEX` (or bare HEX, any case, colons allowed) into 32 bytes.
pub fn parse_fingerprint(s: &str) -> Option<[u8; 32]> {
    let hex_part = s.strip_prefix("sha256:").unwrap_or(s).replace(':', "");
    let bytes = hex::decode(hex_part.to_ascii_lowercase()).ok()?;
    bytes.try_into().ok()
}

/// `sha256:HEX` of a DER certificate.
pub fn fingerprint_of(der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(der)))
}

/// Verifies the server against the pinned CA found in its chain.
#[derive(Debug)]
pub struct PinnedCa {
    fingerprint: [u8; 32],
    clock: Arc<Clock>,
    provider: Arc<CryptoProvider>,
    inner: OnceLock<Arc<WebPkiServerVerifier>>,
    /// What the server presented instead, when the pin did not match (for a clear error).
    mismatch: Mutex<Option<Vec<String>>>,
}

impl PinnedCa {
    /// A verifier pinned to `fingerprint`, judging time by `clock`.
    pub fn new(fingerprint: [u8; 32], clock: Arc<Clock>) -> Arc<PinnedCa> {
        Arc::new(PinnedCa {
            fingerprint,
            clock,
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            inner: OnceLock::new(),
            mismatch: Mutex::new(None),
        })
    }

    /// Fingerprints of the certificates the server presented when the pin last failed.
    pub fn last_mismatch(&self) -> Option<Vec<String>> {
        self.mismatch.lock().ok().and_then(|m| m.clone())
    }

    fn verifier_for(
        &self,
        ca: &CertificateDer<'_>,
    ) -> Result<Arc<WebPkiServerVerifier>, rustls::Error> {
        if let Some(v) = self.inner.get() {
            return Ok(v.clone());
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let v = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
            .build()
            .map_err(|e| rustls::Error::General(format!("pinned CA unusable: {e}")))?;
        Ok(self.inner.get_or_init(|| v).clone())
    }

    /// A client TLS configuration that trusts only the pinned CA; with a client certificate
    /// when `identity` is given.
    pub fn client_config(
        self: &Arc<Self>,
        identity: Option<(
            Vec<CertificateDer<'static>>,
            rustls_pki_types::PrivateKeyDer<'static>,
        )>,
    ) -> Result<rustls::ClientConfig, rustls::Error> {
        let builder = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.clone());
        match identity {
            Some((chain, key)) => builder.with_client_auth_cert(chain, key),
            None => Ok(builder.with_no_client_auth()),
        }
    }
}

/// A moment inside the certificate's validity: used only for the very first exchange, before
/// the server's clock is known (the pin, the signatures and the name are still checked).
fn inside_validity(cert: &CertificateDer<'_>) -> Result<UnixTime, rustls::Error> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let nb = parsed.validity().not_before.timestamp().max(0) as u64;
    Ok(UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        nb + 60,
    )))
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let pinned = intermediates
            .iter()
            .chain(std::iter::once(end_entity))
            .find(|c| Sha256::digest(c.as_ref()).as_slice() == self.fingerprint);
        let Some(ca) = pinned else {
            let seen = intermediates
                .iter()
                .chain(std::iter::once(end_entity))
                .map(|c| fingerprint_of(c.as_ref()))
                .collect();
            if let Ok(mut m) = self.mismatch.lock() {
                *m = Some(seen);
            }
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            ));
        };
        let now = if self.clock.synced() {
            self.clock.now_unix()
        } else {
            inside_validity(end_entity)?
        };
        self.verifier_for(ca)?.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_forms() {
        let hex64 = "ab".repeat(32);
        assert_eq!(
            parse_fingerprint(&format!("sha256:{hex64}")),
            Some([0xab; 32])
        );
        assert_eq!(parse_fingerprint(&hex64.to_uppercase()), Some([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons), Some([0xab; 32]));
        assert_eq!(parse_fingerprint("sha256:abcd"), None);
        assert_eq!(parse_fingerprint("nonsense"), None);
    }
}
