//! The operator API: authentication, roles, and RFC 9457 problems for every kind of bad input.

use anneal_server::tokens::new_api_token;
use anneal_shared::api::Role;
use anneal_tests::{hints, TestServer};
use rand::{Rng, SeedableRng};

/// Assert a problem document with a status in the given class and return it.
async fn problem(res: reqwest::Response, status: u16) -> serde_json::Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let ct = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert_eq!(ct, "application/problem+json");
    let v: serde_json::Value = res.json().await.expect("problem json");
    assert_eq!(v["status"], status);
    assert!(v["type"]
        .as_str()
        .unwrap_or_default()
        .starts_with("urn:anneal:problem:"));
    assert!(
        !v["detail"].as_str().unwrap_or_default().is_empty(),
        "a detail says what was wrong"
    );
    v
}

#[tokio::test]
async fn bad_requests_get_problem_details_never_500() {
    let server = TestServer::start().await;
    let http = server.http();
    let url = |p: &str| format!("{}{p}", server.api_url);

    problem(http.get(url("/api/v1/machines")).send().await.unwrap(), 401).await;
    problem(
        http.get(url("/api/v1/machines"))
            .bearer_auth("anl_api_wrong")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    problem(
        http.get(url("/api/v1/machines"))
            .header("authorization", "Basic Zm9vOmJhcg==")
            .send()
            .await
            .unwrap(),
        401,
    )
    .await;
    let auth = |r: reqwest::RequestBuilder| r.bearer_auth(&server.admin_token);
    problem(
        auth(http.get(url("/api/v1/machines/not-a-uuid")))
            .send()
            .await
            .unwrap(),
        400,
    )
    .await;
    problem(
        auth(http.get(url(&format!("/api/v1/machines/{}", uuid::Uuid::new_v4()))))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    problem(
        auth(http.get(url("/api/v1/nothing-here")))
            .send()
            .await
            .unwrap(),
        404,
    )
    .await;
    let malformed = auth(http.post(url("/api/v1/tokens")))
        .header("content-type", "application/json")
        .body("{\"uses\": ")
        .send()
        .await
        .unwrap();
    let p = problem(malformed, 400).await;
    assert_eq!(p["type"], "urn:anneal:problem:invalid-body");
    let wrong_type = auth(http.post(url("/api/v1/tokens")))
        .json(&serde_json::json!({"uses": "three"}))
        .send()
        .await
        .unwrap();
    problem(wrong_type, 422).await;
    let no_ct = auth(http.post(url("/api/v1/tokens")))
        .body("{}")
        .send()
        .await
        .unwrap();
    problem(no_ct, 415).await;
    let zero_ttl = auth(http.post(url("/api/v1/tokens")))
        .json(&serde_json::json!({"ttl_secs": 0}))
        .send()
        .await
        .unwrap();
    problem(zero_ttl, 400).await;
    let bad_mac = auth(http.post(url("/api/v1/tokens")))
        .json(&serde_json::json!({"mac": "52:54:00"}))
        .send()
        .await
        .unwrap();
    let p = problem(bad_mac, 400).await;
    assert!(p["detail"].as_str().unwrap().contains("MAC"));
    server.stop().await;
}

#[tokio::test]
async fn viewers_read_but_do_not_change() {
    let server = TestServer::start().await;
    let m = server.enroll(hints(1), "b").await;
    let (secret, record) =
        new_api_token(Role::Viewer, "dashboard", time::OffsetDateTime::now_utc());
    server
        .running
        .app
        .store
        .insert_api_token(&record)
        .await
        .unwrap();
    let http = server.http();
    let list = http
        .get(format!("{}/api/v1/machines", server.api_url))
        .bearer_auth(&secret)
        .send()
        .await
        .unwrap();
    assert_eq!(list.status(), 200);
    for path in [
        format!("/api/v1/machines/{}/approve", m.machine_id),
        format!("/api/v1/machines/{}/revoke", m.machine_id),
    ] {
        let res = http
            .post(format!("{}{path}", server.api_url))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        problem(res, 403).await;
    }
    let res = http
        .post(format!("{}/api/v1/tokens", server.api_url))
        .bearer_auth(&secret)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    problem(res, 403).await;
    server.stop().await;
}

#[tokio::test]
async fn garbage_enrollments_are_4xx_and_the_server_stays_healthy() {
    let server = TestServer::start().await;
    let http = server.http();
    let url = format!("{}/enroll/v1/enroll", server.api_url);
    let valid = serde_json::json!({
        "protocol": 1, "token": "anl_boot_x", "csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
        "identity": {"macs": [{"mac": "52:54:00:00:00:01"}]}, "boot_id": "b"
    })
    .to_string();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0xA77EA1);
    let mut statuses = std::collections::BTreeMap::new();
    // Bounded: 300 mutations of a valid body (byte flips, truncations, random bytes).
    for i in 0..300 {
        let mut body = valid.clone().into_bytes();
        match i % 3 {
            0 => {
                for _ in 0..rng.gen_range(1..8) {
                    let at = rng.gen_range(0..body.len());
                    body[at] = rng.gen();
                }
            }
            1 => body.truncate(rng.gen_range(0..body.len())),
            _ => body = (0..rng.gen_range(0..512)).map(|_| rng.gen()).collect(),
        }
        let res = http
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("server answers");
        let s = res.status().as_u16();
        assert!((400..500).contains(&s), "mutation {i} got {s}");
        *statuses.entry(s).or_insert(0) += 1;
    }
    assert!(
        statuses.len() >= 2,
        "different mistakes, different answers: {statuses:?}"
    );
    // Old protocol versions are told so.
    let old = http
        .post(&url)
        .json(&serde_json::json!({"protocol": 0, "token": "t", "csr_pem": "x", "identity": {}, "boot_id": "b"}))
        .send()
        .await
        .unwrap();
    let p = problem(old, 400).await;
    assert!(p["detail"].as_str().unwrap().contains("too old"));
    let health = http
        .get(format!("{}/healthz", server.api_url))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    server.enroll(hints(9), "b").await;
    let metrics = http
        .get(format!("{}/metrics", server.api_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("anneal_http_problems_total"),
        "bad input is counted"
    );
    assert!(metrics.contains("anneal_enrollments_total"), "{metrics}");
    server.stop().await;
}

#[tokio::test]
async fn unknown_fields_from_a_newer_agent_are_tolerated() {
    let server = TestServer::start().await;
    let token = server.bootstrap_token(1).await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let csr = rcgen::CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let res = server
        .http()
        .post(format!("{}/enroll/v1/enroll", server.api_url))
        .json(&serde_json::json!({
            "protocol": 9, "token": token, "csr_pem": csr, "boot_id": "b",
            "identity": {"system_serial": "NEWER-1", "macs": [], "tpm_ek": "future evidence"},
            "attestation": {"kind": "from the future"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "{}",
        res.text().await.unwrap_or_default()
    );
    server.stop().await;
}
