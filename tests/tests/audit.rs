//! The audit log over loopback: an operator's change is recorded with the token that made it,
//! the client's address, the time, and the object before and after; secrets never appear.

use anneal_shared::events::AuditEntry;
use anneal_tests::workflow::{apply_work_then_local, assign};
use anneal_tests::{hints, TestServer};

async fn audit(server: &TestServer, query: &str) -> Vec<AuditEntry> {
    let v = server.api_get(&format!("/api/v1/audit?{query}")).await;
    serde_json::from_value(v).expect("audit entries")
}

async fn post(server: &TestServer, path: &str) -> serde_json::Value {
    let res = server
        .http()
        .post(format!("{}{path}", server.api_url))
        .bearer_auth(&server.admin_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("POST");
    assert!(res.status().is_success(), "POST {path}: {}", res.status());
    res.json().await.expect("JSON")
}

#[tokio::test]
async fn operator_changes_are_recorded_with_actor_address_and_before_after() {
    let server = TestServer::start_with(|a| a.require_approval = Some(true)).await;
    let admin_id =
        anneal_server::tokens::public_id(&anneal_server::tokens::hash_secret(&server.admin_token));
    let session = server.enroll(hints(7), "boot-1").await;
    let machine = session.machine_id;
    let started = time::OffsetDateTime::now_utc() - time::Duration::seconds(1);

    post(&server, &format!("/api/v1/machines/{machine}/approve")).await;
    let entries = audit(&server, &format!("machine={machine}")).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let e = &entries[0];
    assert_eq!(e.action, "machine.approve");
    assert_eq!(
        (e.target_kind.as_str(), e.machine_id),
        ("machine", Some(machine))
    );
    assert_eq!(e.actor.token_id, admin_id);
    assert_eq!(e.actor.name, "initial admin");
    assert_eq!(e.actor.role, anneal_shared::api::Role::Admin);
    let address = e.actor.address.as_deref().expect("the client's address");
    assert!(address.starts_with("127.0.0.1:"), "{address}");
    assert_eq!(e.before, Some(serde_json::json!({"state": "pending"})));
    assert_eq!(e.after, Some(serde_json::json!({"state": "discovered"})));
    assert!(e.at >= started && e.at <= time::OffsetDateTime::now_utc());

    // A bootstrap token: recorded, its secret nowhere in the log.
    let secret = server.bootstrap_token(2).await;
    let tokens = audit(&server, "").await;
    assert_eq!(tokens[0].action, "token.create");
    assert_eq!(tokens[0].after.as_ref().unwrap()["uses_left"], 2);
    let text = serde_json::to_string(&tokens).unwrap();
    assert!(!text.contains(&secret), "the secret leaked: {text}");

    // Workflow assignment and an operator action: the run before and after.
    let task = anneal_shared::content::Task {
        name: "noop".into(),
        script: Some("true".into()),
        timeout_secs: 60,
        ..Default::default()
    };
    apply_work_then_local(&server, "audited", vec![task]).await;
    assign(&server, machine, "audited").await;
    post(
        &server,
        &format!("/api/v1/machines/{machine}/workflow/cancel"),
    )
    .await;
    post(&server, &format!("/api/v1/machines/{machine}/revoke")).await;
    let entries = audit(&server, &format!("machine={machine}")).await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "machine.revoke",
            "workflow.cancel",
            "workflow.assign",
            "machine.approve"
        ]
    );
    let cancel = &entries[1];
    assert_eq!(cancel.before.as_ref().unwrap()["workflow"], "audited");
    assert_ne!(cancel.before.as_ref().unwrap()["phase"], "cancelled");
    assert_eq!(cancel.after.as_ref().unwrap()["phase"], "cancelled");
    assert_eq!(
        entries[2].before, None,
        "no run before the first assignment"
    );
    assert_eq!(entries[0].after, Some(serde_json::json!({"revoked": 1})));

    // Filters: by actor (id or name), by time, by limit; bad input is a problem.
    // Two bootstrap tokens (one made by `enroll`), approve, assign, cancel, revoke.
    assert_eq!(audit(&server, &format!("actor={admin_id}")).await.len(), 6);
    assert_eq!(
        audit(&server, "actor=initial%20admin&limit=2").await.len(),
        2
    );
    assert!(audit(&server, "actor=someone-else").await.is_empty());
    assert!(audit(&server, "since=2999-01-01T00:00:00Z")
        .await
        .is_empty());
    for bad in ["since=yesterday", "machine=nope", "limit=-1"] {
        let path = format!("/api/v1/audit?{bad}");
        let res = server.api_request(&path).send().await.unwrap();
        assert_eq!(res.status(), 400, "{bad}");
    }
    server.stop().await;
}
