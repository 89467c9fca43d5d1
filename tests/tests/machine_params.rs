//! A machine's own params and profiles, over loopback: checked before they are stored, masked
//! when shown, layered over `global` and the defaults when a job is rendered, and read at render
//! time (a value changed between two tasks reaches the second).

use anneal_agent::client::Session;
use anneal_agent::clock::Clock;
use anneal_shared::api::MachineParams;
use anneal_shared::protocol::{IdentityHints, Job, JobWork, NextAction, Nic};
use anneal_tests::pxe::{machine_script, put_discovery, token_of};
use anneal_tests::workflow::assign;
use anneal_tests::{hints, TestServer};
use serde_json::{json, Value};

const MAC: &str = "52:54:00:aa:00:51";

const CONTENT: &str = r#"
kind: param
name: greeting
default: hello
---
kind: param
name: passes
type: integer
---
kind: param
name: root-password
secret: true
---
kind: profile
name: rack-a
params:
  greeting: rack-a says hi
  passes: 3
---
kind: task
name: greet
params: [greeting, passes, root-password]
script: echo '{{ params.greeting }} {{ params.passes }} {{ params["root-password"] }}'
---
kind: stage
name: greet
boot_env: discovery
tasks: [greet, greet-again]
---
kind: task
name: greet-again
params: [greeting]
script: echo '{{ params.greeting }}'
---
kind: workflow
name: greet
stages: [greet, local-boot]
"#;

fn machine_hints() -> IdentityHints {
    let mut h = hints(51);
    h.macs.push(Nic {
        mac: MAC.into(),
        bus: Some("pci".into()),
    });
    h
}

async fn patch(server: &TestServer, id: uuid::Uuid, body: Value) -> (u16, Value) {
    let res = server
        .http()
        .patch(format!("{}/api/v1/machines/{id}/params", server.api_url))
        .bearer_auth(&server.admin_token)
        .json(&body)
        .send()
        .await
        .expect("patch params");
    (res.status().as_u16(), res.json().await.expect("json body"))
}

fn detail(problem: &Value) -> &str {
    problem["detail"].as_str().unwrap_or_default()
}

fn script_of(action: NextAction) -> (Job, String) {
    let NextAction::Job(job) = action else {
        panic!("expected a job, got {action:?}")
    };
    let JobWork::Script { script } = &job.work else {
        panic!("a script job: {job:?}")
    };
    let script = script.clone();
    (job, script)
}

async fn finish(session: &Session, job: &Job) {
    session.start_attempt(job.attempt).await.expect("start");
    let result = anneal_shared::protocol::AttemptResult {
        protocol: anneal_shared::PROTOCOL_VERSION,
        ok: true,
        exit_code: Some(0),
        reason: String::new(),
        result: None,
        log_length: 0,
    };
    session
        .report_result(job.attempt, &result)
        .await
        .expect("result");
}

#[tokio::test]
async fn machine_params_are_checked_masked_layered_and_read_at_render_time() {
    let server = TestServer::start().await;
    put_discovery(&server, b"kernel");
    let applied = server
        .http()
        .post(format!("{}/api/v1/content", server.api_url))
        .bearer_auth(&server.admin_token)
        .json(&json!({ "files": [{ "path": "content/greet.yaml", "text": CONTENT }] }))
        .send()
        .await
        .expect("apply");
    assert_eq!(applied.status(), 200, "{}", applied.text().await.unwrap());
    let first = server.enroll(machine_hints(), "boot-0").await;
    let id = first.machine_id;

    // Nothing set yet: the default only (`passes` has none, so it is not listed).
    let view: MachineParams = serde_json::from_value(
        server
            .api_get(&format!("/api/v1/machines/{id}/params"))
            .await,
    )
    .unwrap();
    assert_eq!((view.version, view.profiles.len()), (0, 0));
    assert_eq!(view.resolved["greeting"].value, json!("hello"));
    assert_eq!(view.resolved["greeting"].source, "default");
    assert!(!view.resolved.contains_key("passes"));

    // Every problem is refused before anything is stored, each named.
    let (status, p) = patch(&server, id, json!({ "set": { "passes": "three" } })).await;
    assert_eq!(status, 422, "{p}");
    assert!(detail(&p).contains("\"passes\": expected integer"), "{p}");
    let (status, p) = patch(
        &server,
        id,
        json!({ "profiles": ["nope"], "set": { "undefined-param": 1 } }),
    )
    .await;
    assert_eq!(status, 422, "{p}");
    assert!(
        detail(&p).contains("profile \"nope\" is not defined"),
        "{p}"
    );
    assert!(
        detail(&p).contains("\"undefined-param\" is not defined"),
        "{p}"
    );
    let (status, p) = patch(&server, id, json!({ "sett": { "passes": 1 } })).await;
    assert_eq!(
        status, 422,
        "a misspelt field is an error, not a no-op: {p}"
    );
    let stored: MachineParams = serde_json::from_value(
        server
            .api_get(&format!("/api/v1/machines/{id}/params"))
            .await,
    )
    .unwrap();
    assert_eq!(stored.version, 0, "nothing was stored");

    // A profile and a secret of the machine's own.
    let (status, v) = patch(
        &server,
        id,
        json!({ "profiles": ["rack-a"], "set": { "root-password": "s3cret-pw" }, "version": 0 }),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert!(!v.to_string().contains("s3cret-pw"), "secret shown: {v}");
    let view: MachineParams = serde_json::from_value(v).unwrap();
    assert_eq!(view.version, 1);
    assert_eq!(view.params["root-password"], json!("********"));
    assert_eq!(view.resolved["greeting"].source, "profile rack-a");
    assert_eq!(view.resolved["passes"].value, json!(3));
    assert!(view.resolved["root-password"].secret);
    // An edit made from a stale read is refused, not merged over the newer one.
    let (status, p) = patch(
        &server,
        id,
        json!({ "unset": ["root-password"], "version": 0 }),
    )
    .await;
    assert_eq!(status, 409, "{p}");

    // The job is rendered with the layers: profile values and the machine's secret, which
    // travels to the agent for redaction.
    assign(&server, id, "greet").await;
    assert_eq!(first.next().await.unwrap(), NextAction::Reboot);
    let script = machine_script(&server, MAC, "", "pcbios").await;
    let s = server
        .enroller(Clock::system())
        .enroll(&token_of(&script), machine_hints(), "boot-1", "host")
        .await
        .expect("enrollment from the discovery script");
    let (job, script) = script_of(s.next().await.unwrap());
    assert_eq!(script, "echo 'rack-a says hi 3 s3cret-pw'");
    assert_eq!(job.redact, ["s3cret-pw"]);
    finish(&s, &job).await;

    // The machine's own value, set between two tasks, reaches the second.
    let (status, v) = patch(&server, id, json!({ "set": { "greeting": "mine" } })).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["resolved"]["greeting"]["source"], "machine");
    let (job, script) = script_of(s.next().await.unwrap());
    assert_eq!(script, "echo 'mine'");
    finish(&s, &job).await;
    server.stop().await;
}
