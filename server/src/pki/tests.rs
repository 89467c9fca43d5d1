use std::sync::Arc;

use rcgen::{CertificateParams, CustomExtension, KeyPair, PKCS_ED25519};
use rustls::client::danger::ServerCertVerifier;
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::{ServerName, UnixTime};
use time::macros::datetime;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{
    OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER, OID_X509_EXT_BASIC_CONSTRAINTS,
    OID_X509_EXT_EXTENDED_KEY_USAGE, OID_X509_EXT_KEY_USAGE, OID_X509_EXT_SUBJECT_ALT_NAME,
    OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
};

use super::*;

const NOW: OffsetDateTime = datetime!(2025-03-01 12:00:00 UTC);

fn ca() -> Ca {
    Ca::generate("Anneal test CA", NOW).unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn roots(ca: &Ca) -> Arc<RootCertStore> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.cert_der()).unwrap();
    Arc::new(roots)
}

fn unix(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(t.unix_timestamp()).unwrap(),
    ))
}

fn der_of(pem: &str) -> CertificateDer<'static> {
    let mut certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(certs.len(), 1);
    certs.remove(0)
}

/// A CSR that asks for everything it must not get: CA:true, serverAuth, a foreign DNS SAN and a
/// private extension.
fn greedy_csr(key: &KeyPair) -> String {
    let mut params = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "root-of-all-evil");
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    // rcgen refuses is_ca in a CSR, so request basicConstraints CA:true by hand.
    let mut bc =
        CustomExtension::from_oid_content(&[2, 5, 29, 19], vec![0x30, 0x03, 0x01, 0x01, 0xff]);
    bc.set_criticality(true);
    // DER UTF8String "gimme".
    let private = CustomExtension::from_oid_content(
        &[1, 3, 6, 1, 4, 1, 55555, 1],
        vec![0x0c, 0x05, b'g', b'i', b'm', b'm', b'e'],
    );
    params.custom_extensions = vec![bc, private];
    params.serialize_request(key).unwrap().pem().unwrap()
}

fn p256() -> KeyPair {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap()
}

#[test]
fn ca_types_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Ca>();
    assert_send_sync::<MasterKey>();
}

#[test]
fn ca_generate_from_pem_round_trip_keeps_fingerprint() {
    let ca = ca();
    let fp = ca.fingerprint();
    assert_eq!(fp.len(), "sha256:".len() + 64);
    let hex_part = fp.strip_prefix("sha256:").unwrap();
    assert!(hex_part
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
    assert_eq!(fp, fingerprint_der(&ca.cert_der()));

    let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    assert_eq!(again.fingerprint(), fp);
    assert_eq!(again.cert_pem(), ca.cert_pem());
    assert_eq!(again.key_pem(), ca.key_pem());
}

#[test]
fn ca_certificate_has_required_shape() {
    let ca = ca();
    let der = ca.cert_der();
    let x = parse_cert(&der).unwrap();
    let bc = x.basic_constraints().unwrap().unwrap();
    assert!(bc.critical);
    assert!(bc.value.ca);
    assert_eq!(bc.value.path_len_constraint, Some(0));
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.key_cert_sign() && ku.crl_sign());
    assert!(!ku.digital_signature());
    let cn: Vec<_> = x.subject().iter_common_name().collect();
    assert_eq!(cn.len(), 1);
    assert_eq!(cn[0].as_str().unwrap(), "Anneal test CA");
    assert_eq!(
        x.validity().not_before.to_datetime(),
        NOW - Duration::hours(1)
    );
    assert_eq!(
        x.validity().not_after.to_datetime(),
        NOW - Duration::hours(1) + CA_LIFETIME
    );
    assert_eq!(ca.not_after(), x.validity().not_after.to_datetime());
    assert!(x.public_key().raw.len() < 100, "P-256 SPKI is small");
    assert!(Ca::generate("  ", NOW).is_err());
}

#[test]
fn ca_from_pem_rejects_foreign_key_and_non_ca() {
    let a = ca();
    let b = ca();
    assert!(matches!(
        Ca::from_pem(a.cert_pem(), &b.key_pem()),
        Err(PkiError::Parse(_))
    ));
    let server = a
        .issue_server_cert(&["localhost".to_string()], NOW, Duration::days(1))
        .unwrap();
    let server_key = server.key_pem.unwrap();
    assert!(matches!(
        Ca::from_pem(&server.cert_pem, &server_key),
        Err(PkiError::Parse(_))
    ));
    assert!(Ca::from_pem("", &a.key_pem()).is_err());
    assert!(Ca::from_pem(&format!("{}{}", a.cert_pem(), b.cert_pem()), &a.key_pem()).is_err());
}

#[test]
fn sign_client_csr_overrides_everything_the_csr_asks_for() {
    let ca = ca();
    let agent_key = p256();
    let csr = greedy_csr(&agent_key);
    let id = Uuid::new_v4();
    let lifetime = Duration::days(7);
    let issued = ca.sign_client_csr(&csr, id, NOW, lifetime).unwrap();
    assert!(issued.key_pem.is_none());
    let der = der_of(&issued.cert_pem);
    let x = parse_cert(&der).unwrap();

    // Only the CSR's public key survives.
    assert_eq!(x.public_key().raw, agent_key.public_key_der().as_slice());

    let cn: Vec<_> = x.subject().iter_common_name().collect();
    assert_eq!(cn.len(), 1);
    assert_eq!(cn[0].as_str().unwrap(), id.to_string());
    assert_eq!(
        x.issuer().as_raw(),
        parse_cert(&ca.cert_der()).unwrap().subject().as_raw()
    );

    // Not a CA.
    assert!(!x.is_ca());
    if let Some(bc) = x.basic_constraints().unwrap() {
        assert!(!bc.value.ca);
    }

    // keyUsage digitalSignature only.
    let ku = x.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature());
    assert!(!ku.key_cert_sign() && !ku.crl_sign() && !ku.key_encipherment());

    // EKU clientAuth only.
    let eku = x.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth);
    assert!(!eku.server_auth && !eku.any && !eku.code_signing && !eku.email_protection);
    assert!(!eku.time_stamping && !eku.ocsp_signing && eku.other.is_empty());

    // Exactly one SAN: our URI.
    let san = x.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(san.general_names.len(), 1);
    assert_eq!(
        san.general_names[0],
        GeneralName::URI(&anneal_shared::protocol::machine_uri(id))
    );

    // No extension we did not choose (the custom one and basicConstraints CA:true are gone).
    let allowed = [
        OID_X509_EXT_SUBJECT_ALT_NAME,
        OID_X509_EXT_KEY_USAGE,
        OID_X509_EXT_EXTENDED_KEY_USAGE,
        OID_X509_EXT_BASIC_CONSTRAINTS,
        OID_X509_EXT_SUBJECT_KEY_IDENTIFIER,
        OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER,
    ];
    for ext in x.extensions() {
        assert!(
            allowed.contains(&ext.oid),
            "unexpected extension {}",
            ext.oid
        );
    }

    // Our validity, to the second.
    assert_eq!(
        x.validity().not_before.to_datetime(),
        NOW - Duration::hours(1)
    );
    assert_eq!(x.validity().not_after.to_datetime(), NOW + lifetime);
    assert_eq!(issued.not_before, NOW - Duration::hours(1));
    assert_eq!(issued.not_after, NOW + lifetime);

    // Our serial: 16 bytes, positive.
    assert_eq!(issued.serial_hex.len(), 32);
    assert_eq!(issued.serial_hex, canonical_serial_hex(x.raw_serial()));
    assert!(x.raw_serial()[0] < 0x80);
}

#[test]
fn sign_client_csr_serials_differ() {
    let ca = ca();
    let csr = greedy_csr(&p256());
    let id = Uuid::new_v4();
    let a = ca
        .sign_client_csr(&csr, id, NOW, Duration::days(7))
        .unwrap();
    let b = ca
        .sign_client_csr(&csr, id, NOW, Duration::days(7))
        .unwrap();
    assert_ne!(a.serial_hex, b.serial_hex);
}

#[test]
fn client_cert_verifies_as_client_not_as_server() {
    let ca = ca();
    let id = Uuid::new_v4();
    let lifetime = Duration::days(7);
    let issued = ca
        .sign_client_csr(&greedy_csr(&p256()), id, NOW, lifetime)
        .unwrap();
    let der = der_of(&issued.cert_pem);

    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .unwrap();
    verifier
        .verify_client_cert(&der, &[], unix(NOW + Duration::minutes(5)))
        .unwrap();
    // Backdating covers a client whose clock is a little behind...
    verifier
        .verify_client_cert(&der, &[], unix(NOW - Duration::minutes(30)))
        .unwrap();
    // ...but the certificate does expire.
    assert!(verifier
        .verify_client_cert(&der, &[], unix(NOW + lifetime + Duration::seconds(1)))
        .is_err());

    // Another CA does not vouch for it.
    let other = WebPkiClientVerifier::builder_with_provider(roots(&self::ca()), provider())
        .build()
        .unwrap();
    assert!(other.verify_client_cert(&der, &[], unix(NOW)).is_err());

    // The requested serverAuth / DNS name were not granted.
    let server_verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .unwrap();
    let name = ServerName::try_from("evil.example").unwrap();
    assert!(server_verifier
        .verify_server_cert(&der, &[], &name, &[], unix(NOW))
        .is_err());
}

#[test]
fn reloaded_ca_issues_verifiable_certs() {
    let original = ca();
    let reloaded = Ca::from_pem(original.cert_pem(), &original.key_pem()).unwrap();
    let issued = reloaded
        .sign_client_csr(&greedy_csr(&p256()), Uuid::new_v4(), NOW, Duration::days(1))
        .unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(&original), provider())
        .build()
        .unwrap();
    let leaf_der = der_of(&issued.cert_pem);
    verifier
        .verify_client_cert(&leaf_der, &[], unix(NOW))
        .unwrap();

    // The authority key id points at the CA's subject key id, so chain builders find the CA.
    let ca_der = original.cert_der();
    let ca_x = parse_cert(&ca_der).unwrap();
    let ski = ca_x
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        })
        .unwrap();
    let leaf_x = parse_cert(&leaf_der).unwrap();
    let aki = leaf_x
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
        .unwrap();
    assert_eq!(aki, ski);
}

#[test]
fn sign_client_csr_rejects_corrupted_signature() {
    let ca = ca();
    let csr_pem = greedy_csr(&p256());
    let rustls_pemfile::Item::Csr(der) = rustls_pemfile::read_one(&mut csr_pem.as_bytes())
        .unwrap()
        .unwrap()
    else {
        panic!("not a CSR");
    };
    let mut bytes = der.to_vec();
    // The signature is the last element; its final byte is inside the ECDSA `s` integer.
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    let bad = pem_encode("CERTIFICATE REQUEST", &bytes);
    let err = ca
        .sign_client_csr(&bad, Uuid::new_v4(), NOW, Duration::days(1))
        .unwrap_err();
    assert!(matches!(err, PkiError::BadCsr(_)), "{err}");
    // The untouched CSR is fine, so it really was the signature.
    ca.sign_client_csr(&csr_pem, Uuid::new_v4(), NOW, Duration::days(1))
        .unwrap();
}

#[test]
fn sign_client_csr_rejects_garbage_and_foreign_key_types() {
    let ca = ca();
    let id = Uuid::new_v4();
    let day = Duration::days(1);
    for bad in ["", "hello", ca.cert_pem()] {
        assert!(
            matches!(
                ca.sign_client_csr(bad, id, NOW, day),
                Err(PkiError::BadCsr(_))
            ),
            "{bad:?}"
        );
    }
    let ed = KeyPair::generate_for(&PKCS_ED25519).unwrap();
    let ed_csr = CertificateParams::default()
        .serialize_request(&ed)
        .unwrap()
        .pem()
        .unwrap();
    assert!(matches!(
        ca.sign_client_csr(&ed_csr, id, NOW, day),
        Err(PkiError::BadCsr(_))
    ));
    let two = format!("{0}{0}", greedy_csr(&p256()));
    assert!(matches!(
        ca.sign_client_csr(&two, id, NOW, day),
        Err(PkiError::BadCsr(_))
    ));
}

#[test]
fn issue_rejects_bad_lifetimes() {
    let ca = ca();
    let csr = greedy_csr(&p256());
    let id = Uuid::new_v4();
    for lifetime in [Duration::ZERO, Duration::seconds(-5), CA_LIFETIME] {
        assert!(
            matches!(
                ca.sign_client_csr(&csr, id, NOW, lifetime),
                Err(PkiError::Generate(_))
            ),
            "{lifetime}"
        );
    }
    assert!(ca.issue_server_cert(&[], NOW, Duration::days(1)).is_err());
    assert!(ca
        .issue_server_cert(&["bad name!".to_string()], NOW, Duration::days(1))
        .is_err());
}

#[test]
fn times_are_normalised_to_whole_utc_seconds() {
    let ca = ca();
    let now = datetime!(2025-03-01 14:00:00.987654321 +02:00);
    let issued = ca
        .sign_client_csr(&greedy_csr(&p256()), Uuid::new_v4(), now, Duration::days(1))
        .unwrap();
    assert_eq!(issued.not_before, NOW - Duration::hours(1));
    assert_eq!(issued.not_after, NOW + Duration::days(1));
}

#[test]
fn server_cert_verifies_for_each_name() {
    let ca = ca();
    let names: Vec<String> = ["localhost", "127.0.0.1", "::1", "anneal.example"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let lifetime = Duration::days(90);
    let issued = ca.issue_server_cert(&names, NOW, lifetime).unwrap();
    assert!(issued.key_pem.is_some());
    assert_eq!(issued.not_before, NOW - Duration::hours(1));
    assert_eq!(issued.not_after, NOW + lifetime);
    assert_eq!(issued.serial_hex.len(), 32);
    let der = der_of(&issued.cert_pem);

    // The returned key belongs to the certificate.
    let key = KeyPair::from_pem(issued.key_pem.as_deref().unwrap()).unwrap();
    assert_eq!(
        parse_cert(&der).unwrap().public_key().raw,
        key.public_key_der().as_slice()
    );
    assert!(!parse_cert(&der).unwrap().is_ca());

    let verifier = WebPkiServerVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .unwrap();
    for name in &names {
        let server_name = ServerName::try_from(name.as_str()).unwrap();
        verifier
            .verify_server_cert(&der, &[], &server_name, &[], unix(NOW))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for other in ["other.example", "127.0.0.2"] {
        let server_name = ServerName::try_from(other).unwrap();
        assert!(verifier
            .verify_server_cert(&der, &[], &server_name, &[], unix(NOW))
            .is_err());
    }
    // A server certificate is no client certificate.
    let client_verifier = WebPkiClientVerifier::builder_with_provider(roots(&ca), provider())
        .build()
        .unwrap();
    assert!(client_verifier
        .verify_client_cert(&der, &[], unix(NOW))
        .is_err());
}

#[test]
fn client_identity_reads_issued_cert() {
    let ca = ca();
    let id = Uuid::new_v4();
    let issued = ca
        .sign_client_csr(&greedy_csr(&p256()), id, NOW, Duration::days(7))
        .unwrap();
    let who = client_identity(&der_of(&issued.cert_pem)).unwrap();
    assert_eq!(
        who,
        ClientIdentity {
            machine_id: id,
            serial_hex: issued.serial_hex.clone(),
            not_after: issued.not_after,
        }
    );
}

#[test]
fn client_identity_rejects_server_cert_and_garbage() {
    let ca = ca();
    let server = ca
        .issue_server_cert(&["localhost".to_string()], NOW, Duration::days(1))
        .unwrap();
    assert!(matches!(
        client_identity(&der_of(&server.cert_pem)),
        Err(PkiError::NoIdentity(_))
    ));
    assert!(matches!(
        client_identity(&ca.cert_der()),
        Err(PkiError::NoIdentity(_))
    ));
    assert!(matches!(client_identity(b"junk"), Err(PkiError::Parse(_))));
}

#[test]
fn canonical_serial_hex_strips_leading_zero_bytes() {
    assert_eq!(canonical_serial_hex(&[0x00, 0x80, 0x01]), "8001");
    assert_eq!(canonical_serial_hex(&[0x7f, 0x00]), "7f00");
    assert_eq!(canonical_serial_hex(&[0x00, 0x00]), "00");
    assert_eq!(canonical_serial_hex(&[]), "00");
    assert_eq!(canonical_serial_hex(&[0x0a]), "0a");
}
