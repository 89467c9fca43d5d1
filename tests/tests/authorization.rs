//! The agent API's authorization matrix: who may call which endpoint with which certificate.

use std::sync::Arc;

use anneal_agent::client::ClientError;
use anneal_server::pki::Ca;
use anneal_shared::protocol;
use anneal_tests::{hints, TestServer};
use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::{Duration, OffsetDateTime};

/// A raw mutual-TLS client trusting the server's CA and presenting `cert_pem` (if any).
fn client(server: &TestServer, identity: Option<(String, KeyPair)>) -> reqwest::Client {
    anneal_server::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.running.app.ca.cert_der()).expect("root");
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let tls = match identity {
        Some((pem, key)) => {
            let chain: Vec<CertificateDer<'static>> = rustls_pemfile_certs(&pem);
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
            builder
                .with_client_auth_cert(chain, key)
                .expect("client cert")
        }
        None => builder.with_no_client_auth(),
    };
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .expect("client")
}

fn rustls_pemfile_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<_, _>>()
        .expect("certificate PEM")
}

fn key_and_csr() -> (KeyPair, String) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("key");
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    (key, csr)
}

fn agent_url(server: &TestServer, path: &str) -> String {
    format!(
        "https://127.0.0.1:{}{path}",
        server.running.agent_addr.port()
    )
}

#[tokio::test]
async fn a_machine_reaches_only_its_own_record() {
    let server = TestServer::start().await;
    let a = server.enroll(hints(1), "b").await;
    let b = server.enroll(hints(2), "b").await;
    a.own_record().await.expect("own record");
    for path in [
        protocol::path_machine(b.machine_id),
        protocol::path_heartbeat(b.machine_id),
        protocol::path_inventory(b.machine_id),
        protocol::path_renew(b.machine_id),
        protocol::path_boot(b.machine_id),
    ] {
        let err = a.get_raw(&path).await.expect_err("refused");
        assert!(
            matches!(&err, ClientError::Problem { status: 403, .. }),
            "{path}: {err}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn no_certificate_is_refused_at_the_tls_layer() {
    let server = TestServer::start().await;
    let a = server.enroll(hints(1), "b").await;
    let res = client(&server, None)
        .get(agent_url(&server, &protocol::path_machine(a.machine_id)))
        .send()
        .await;
    assert!(
        res.is_err(),
        "no client certificate must not get an HTTP answer: {res:?}"
    );
    // The operator listener, by contrast, never asks a browser for a certificate.
    let health = server
        .http()
        .get(format!("{}/healthz", server.api_url))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let server = TestServer::start().await;
    let a = server.enroll(hints(1), "b").await;
    let other = Ca::generate("Impostor CA", OffsetDateTime::now_utc()).expect("ca");
    let (key, csr) = key_and_csr();
    let cert = other
        .sign_client_csr(
            &csr,
            a.machine_id,
            OffsetDateTime::now_utc(),
            Duration::hours(1),
        )
        .expect("sign");
    let res = client(&server, Some((cert.cert_pem, key)))
        .get(agent_url(&server, &protocol::path_machine(a.machine_id)))
        .send()
        .await;
    assert!(res.is_err(), "foreign CA must fail the handshake: {res:?}");
    server.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let server = TestServer::start().await;
    let a = server.enroll(hints(1), "b").await;
    let (key, csr) = key_and_csr();
    let long_ago = OffsetDateTime::now_utc() - Duration::days(3);
    let cert = server
        .running
        .app
        .ca
        .sign_client_csr(&csr, a.machine_id, long_ago, Duration::hours(2))
        .expect("sign");
    assert!(cert.not_after < OffsetDateTime::now_utc());
    let res = client(&server, Some((cert.cert_pem, key)))
        .get(agent_url(&server, &protocol::path_machine(a.machine_id)))
        .send()
        .await;
    assert!(
        res.is_err(),
        "expired certificate must fail the handshake: {res:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_valid_certificate_that_is_not_on_record_is_refused() {
    let server = TestServer::start().await;
    let a = server.enroll(hints(1), "b").await;
    let (key, csr) = key_and_csr();
    let cert = server
        .running
        .app
        .ca
        .sign_client_csr(
            &csr,
            a.machine_id,
            OffsetDateTime::now_utc(),
            Duration::hours(1),
        )
        .expect("sign");
    let res = client(&server, Some((cert.cert_pem, key)))
        .get(agent_url(&server, &protocol::path_machine(a.machine_id)))
        .send()
        .await
        .expect("handshake succeeds; the record check refuses");
    assert_eq!(res.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn revocation_takes_effect_on_a_kept_alive_connection() {
    let server = TestServer::start().await;
    let a = Arc::new(server.enroll(hints(1), "b").await);
    let b = server.enroll(hints(2), "b").await;
    a.heartbeat("before")
        .await
        .expect("works before revocation");
    let res = server
        .http()
        .post(format!(
            "{}/api/v1/machines/{}/revoke",
            server.api_url, a.machine_id
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("revoke");
    assert_eq!(res.status(), 200);
    // Same client, same pooled connection: the next request is refused.
    let err = a
        .heartbeat("after")
        .await
        .expect_err("refused after revoke");
    assert!(
        matches!(&err, ClientError::Unauthorized(d) if d.contains("revoked")),
        "{err}"
    );
    b.heartbeat("unaffected")
        .await
        .expect("other machines keep working");
    server.stop().await;
}
