//! Fleet operations over loopback: the real server and the agent's real client. Tags and
//! location edited, machines of different inventories selected, a workflow assigned by
//! selector (dry run first), rules giving new machines a workflow once, and destructive
//! workflows reaching only claimed or new machines.

use anneal_agent::client::Session;
use anneal_agent::clock::Clock;
use anneal_shared::inventory::{Cpu, Disk, Inventory, Memory, System};
use anneal_shared::protocol::IdentityHints;
use anneal_tests::{hints, TestServer};
use serde_json::{json, Value};
use uuid::Uuid;

/// A workflow `burn` (one harmless task) and a destructive `wipe`, as operator YAML.
const CONTENT: &str = r#"
kind: task
name: burn-cpu
script: "echo burning"
---
kind: task
name: wipe-disks
script: "echo wiping"
destructive: true
---
kind: stage
name: burn
boot_env: discovery
tasks: [burn-cpu]
---
kind: stage
name: wipe
boot_env: discovery
tasks: [wipe-disks]
---
kind: workflow
name: burn
stages: [burn, local-boot]
---
kind: workflow
name: wipe
stages: [wipe, local-boot]
"#;

/// An operator API call: status and JSON body (a problem document on errors).
async fn call(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = server
        .http()
        .request(method, format!("{}{path}", server.api_url))
        .bearer_auth(&server.admin_token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.expect("API request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `PATCH` a machine's tags and location.
async fn patch(server: &TestServer, id: Uuid, edit: Value) -> (u16, Value) {
    call(
        server,
        "PATCH",
        &format!("/api/v1/machines/{id}"),
        Some(edit),
    )
    .await
}

/// `POST` claims the machine, `DELETE` gives the claim up.
async fn claim(server: &TestServer, method: &str, id: Uuid) -> (u16, Value) {
    call(
        server,
        method,
        &format!("/api/v1/machines/{id}/claim"),
        None,
    )
    .await
}

/// Assign `workflow` by selector.
async fn bulk(server: &TestServer, workflow: &str, body: Value) -> (u16, Value) {
    let path = format!("/api/v1/workflows/{workflow}/assign");
    call(server, "POST", &path, Some(body)).await
}

async fn apply(server: &TestServer, yaml: &str) -> (u16, Value) {
    let files = json!({"files": [{"path": "content/fleet.yaml", "text": yaml}]});
    call(server, "POST", "/api/v1/content", Some(files)).await
}

/// A bootstrap token; `new` marks the machines it enrolls first as new.
async fn token(server: &TestServer, new: bool) -> String {
    let body = json!({"uses": 1, "ttl_secs": 600, "new": new});
    let (status, v) = call(server, "POST", "/api/v1/tokens", Some(body)).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["new"], new);
    v["token"].as_str().expect("token").to_string()
}

fn inventory(product: &str, cpus: u32, memory_gib: u64, disks: usize) -> Inventory {
    Inventory {
        system: Some(System {
            manufacturer: Some("Dell Inc.".into()),
            product: Some(product.into()),
            ..System::default()
        }),
        cpu: Some(Cpu {
            logical_cpus: cpus,
            ..Cpu::default()
        }),
        memory: Some(Memory {
            installed_bytes: memory_gib << 30,
            ..Memory::default()
        }),
        disks: (0..disks)
            .map(|i| Disk {
                name: format!("sd{}", (b'a' + i as u8) as char),
                ..Disk::default()
            })
            .collect(),
        ..Inventory::default()
    }
}

/// A machine enrolled (through a token marked new or not) and its first inventory stored.
async fn machine(server: &TestServer, n: u32, new: bool, inv: &Inventory) -> (Uuid, Session) {
    let session = enroll(server, hints(n), new).await;
    session.send_inventory(inv).await.expect("inventory");
    (session.machine_id, session)
}

async fn enroll(server: &TestServer, h: IdentityHints, new: bool) -> Session {
    let token = token(server, new).await;
    server
        .enroller(Clock::system())
        .enroll(&token, h, &format!("boot-{}", Uuid::new_v4()), "host")
        .await
        .expect("enrollment")
}

async fn selected(server: &TestServer, selector: &str) -> Vec<Uuid> {
    let path = format!(
        "/api/v1/machines?selector={}",
        selector
            .bytes()
            .map(|b| format!("%{b:02X}"))
            .collect::<String>()
    );
    let (status, v) = call(server, "GET", &path, None).await;
    assert_eq!(status, 200, "{selector}: {v}");
    let list = v.as_array().expect("list").iter();
    list.map(|m| m["id"].as_str().unwrap().parse().unwrap())
        .collect()
}

async fn machine_json(server: &TestServer, id: Uuid) -> Value {
    server.api_get(&format!("/api/v1/machines/{id}")).await
}

async fn run_json(server: &TestServer, id: Uuid) -> (u16, Value) {
    call(
        server,
        "GET",
        &format!("/api/v1/machines/{id}/workflow"),
        None,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_location_and_selectors_over_different_inventories() {
    let server = TestServer::start().await;
    let (a, _sa) = machine(&server, 1, false, &inventory("PowerEdge R650", 32, 128, 4)).await;
    let (b, _sb) = machine(&server, 2, false, &inventory("PowerEdge R450", 8, 32, 1)).await;
    let (c, _sc) = machine(&server, 3, false, &inventory("ProLiant DL360", 16, 64, 2)).await;

    // Tags and location, compare-and-set on the version read.
    let before = machine_json(&server, a).await;
    let edit = json!({"version": before["version"], "add_tags": ["web", "db"],
        "location": {"rack": "r12", "slot": "7"}});
    let (status, m) = patch(&server, a, edit).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["tags"], json!(["db", "web"]));
    assert_eq!(m["location"], json!({"rack": "r12", "slot": "7"}));
    let stale = json!({"version": before["version"], "add_tags": ["x"]});
    let (status, p) = patch(&server, a, stale).await;
    assert_eq!(status, 409, "a stale version is refused: {p}");
    assert!(p["detail"]
        .as_str()
        .unwrap()
        .contains("changed since it was read"));
    let edit = json!({"remove_tags": ["db"], "location": {"slot": "", "site": "fra1"}});
    let (status, m) = patch(&server, a, edit).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["tags"], json!(["web"]));
    assert_eq!(m["location"], json!({"site": "fra1", "rack": "r12"}));
    let edit = json!({"add_tags": ["Web Server", "ok"], "location": {"rack": "r1,r2"}});
    let (status, p) = patch(&server, b, edit).await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(p["type"], "urn:anneal:problem:invalid-labels");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("tag \"Web Server\"") && detail.contains("location.rack"),
        "{detail}"
    );
    assert!(
        machine_json(&server, b).await["tags"] == json!([]),
        "nothing was written"
    );
    let edit = json!({"add_tags": ["web"], "location": {"rack": "r13"}});
    let (status, _) = patch(&server, b, edit).await;
    assert_eq!(status, 200);

    // Selectors over tags, location, state and inventory.
    let cases: &[(&str, &[Uuid])] = &[
        ("state=discovered", &[a, b, c]),
        ("tag=web", &[a, b]),
        ("tag=web,rack=r12", &[a]),
        ("product~PowerEdge", &[a, b]),
        ("product~poweredge,disks>=2", &[a]),
        ("disks<=2", &[b, c]),
        ("memory>=64G,cpus>8", &[a, c]),
        ("manufacturer=Dell Inc., tag!=web", &[c]),
        ("rack!~r1", &[c]),
        ("nics=1,site=fra1", &[a]),
        ("claim=operator", &[]),
    ];
    for (selector, want) in cases {
        assert_eq!(&selected(&server, selector).await, want, "{selector}");
    }
    let (status, p) = call(
        &server,
        "GET",
        "/api/v1/machines?selector=tag%3Dweb%2Cdisks%3E%3Dtwo",
        None,
    )
    .await;
    assert_eq!(status, 400, "{p}");
    assert_eq!(p["type"], "urn:anneal:problem:invalid-selector");
    assert_eq!(
        p["detail"],
        "selector: term 2 `disks>=two`: `two` is not a whole number"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_assign_and_the_destructive_guard() {
    let server = TestServer::start().await;
    let (status, v) = apply(&server, CONTENT).await;
    assert_eq!(status, 200, "{v}");
    let inv = inventory("PowerEdge R650", 8, 16, 2);
    let (claimed, _s1) = machine(&server, 11, false, &inv).await;
    let (new, _s2) = machine(&server, 12, true, &inv).await;
    let (plain, _s3) = machine(&server, 13, false, &inv).await;
    let (status, m) = claim(&server, "POST", claimed).await;
    assert_eq!(
        (status, &m["claim"]["kind"]),
        (200, &json!("operator")),
        "{m}"
    );
    assert_eq!(machine_json(&server, new).await["claim"]["kind"], "new");
    assert!(machine_json(&server, plain).await.get("claim").is_none());

    // A dry run reports and changes nothing.
    let wipe_dells = |dry_run: bool| json!({"selector": "product~PowerEdge", "dry_run": dry_run});
    let (status, r) = bulk(&server, "wipe", wipe_dells(true)).await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["destructive_tasks"], json!(["wipe-disks"]));
    let results: Vec<(&str, &str)> = r["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["machine_id"].as_str().unwrap(),
                m["result"].as_str().unwrap(),
            )
        })
        .collect();
    let (sc, sn, sp) = (claimed.to_string(), new.to_string(), plain.to_string());
    assert_eq!(
        results,
        [
            (sc.as_str(), "would_assign"),
            (sn.as_str(), "would_assign"),
            (sp.as_str(), "refused")
        ]
    );
    let reason = r["machines"][2]["reason"].as_str().unwrap();
    assert!(
        reason.contains("wipe-disks") && reason.contains("anneal machines claim"),
        "{reason}"
    );
    for m in [claimed, new, plain] {
        assert_eq!(
            run_json(&server, m).await.0,
            404,
            "a dry run assigns nothing"
        );
    }
    assert_eq!(
        machine_json(&server, claimed).await["claim"]["kind"],
        "operator"
    );

    // For real: the claimed and the new machine get it, and their claims are used up.
    let (status, r) = bulk(&server, "wipe", wipe_dells(false)).await;
    assert_eq!(status, 200, "{r}");
    let results: Vec<&str> = r["machines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["assigned", "assigned", "refused"]);
    for m in [claimed, new] {
        let (status, run) = run_json(&server, m).await;
        assert_eq!((status, &run["workflow"]), (200, &json!("wipe")));
        assert!(
            machine_json(&server, m).await.get("claim").is_none(),
            "claim consumed"
        );
    }
    assert_eq!(run_json(&server, plain).await.0, 404);
    let (_, again) = bulk(&server, "wipe", wipe_dells(false)).await;
    let refused = again["machines"].as_array().unwrap().iter();
    assert!(refused.clone().all(|m| m["result"] == "refused"), "{again}");

    // One machine at a time: refused with a 409 that says how to claim, then allowed.
    let path = format!("/api/v1/machines/{plain}/workflow");
    let (status, p) = call(&server, "PUT", &path, Some(json!({"workflow": "wipe"}))).await;
    assert_eq!(status, 409, "{p}");
    assert_eq!(p["type"], "urn:anneal:problem:unclaimed-machine");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("wipe-disks") && detail.contains(&format!("anneal machines claim {plain}")),
        "{detail}"
    );
    claim(&server, "POST", plain).await;
    let (status, m) = claim(&server, "DELETE", plain).await;
    assert!(status == 200 && m.get("claim").is_none(), "{m}");
    let (status, _) = call(&server, "PUT", &path, Some(json!({"workflow": "wipe"}))).await;
    assert_eq!(status, 409, "unclaimed again");
    claim(&server, "POST", plain).await;
    let (status, run) = call(&server, "PUT", &path, Some(json!({"workflow": "wipe"}))).await;
    assert_eq!((status, &run["workflow"]), (200, &json!("wipe")), "{run}");

    // A harmless workflow needs no claim; a selector error is a 400 naming the term.
    let body = json!({"selector": "product~PowerEdge"});
    let (status, r) = bulk(&server, "burn", body).await;
    assert_eq!(status, 200, "{r}");
    assert!(
        r["machines"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["result"] == "assigned"),
        "{r}"
    );
    assert_eq!(r["destructive_tasks"], json!([]));
    let body = json!({"selector": "product~PowerEdge,,"});
    let (status, p) = bulk(&server, "burn", body).await;
    assert_eq!(status, 400, "{p}");
    assert!(p["detail"].as_str().unwrap().contains("term 2"), "{p}");
    let body = json!({"selector": "state=discovered"});
    let (status, p) = bulk(&server, "nope", body).await;
    assert_eq!(status, 422, "{p}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_give_new_machines_a_workflow_once() {
    let server = TestServer::start().await;
    assert_eq!(apply(&server, CONTENT).await.0, 200);
    let dell = inventory("PowerEdge R650", 8, 16, 2);
    // Known before any rule existed: the rules found nothing for it.
    let proliant = inventory("ProLiant DL360", 4, 8, 1);
    let (old, old_session) = machine(&server, 21, false, &proliant).await;
    assert_eq!(
        machine_json(&server, old).await["rule"]["result"],
        "no_match"
    );

    // Rules are validated: the selector parses, the workflow exists.
    let bad = "kind: rule\nname: broken\nselector: \"disks>=lots\"\nworkflow: gone\n";
    let (status, p) = apply(&server, bad).await;
    assert_eq!(status, 422, "{p}");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("rule \"broken\"") && detail.contains("selector: term 1 `disks>=lots`"),
        "{detail}"
    );
    assert!(
        detail.contains("workflow: workflow \"gone\" is not defined"),
        "{detail}"
    );
    let rules = r#"
kind: rule
name: wipe-dells
selector: product~PowerEdge
workflow: wipe
order: 10
---
kind: rule
name: burn-the-rest
selector: state=discovered
workflow: burn
order: 20
"#;
    let (status, v) = apply(&server, rules).await;
    assert_eq!(status, 200, "{v}");

    // New through a `new` token: the destructive rule reaches it, its mark used up.
    let (fresh, _s1) = machine(&server, 22, true, &dell).await;
    let (status, run) = run_json(&server, fresh).await;
    assert_eq!((status, &run["workflow"]), (200, &json!("wipe")), "{run}");
    let m = machine_json(&server, fresh).await;
    assert_eq!(m["rule"]["rule"], "wipe-dells");
    assert_eq!(m["rule"]["result"], "assigned");
    assert!(m.get("claim").is_none(), "the new mark is used up");

    // Discovered but not new: the destructive rule matches and is refused; nothing assigned.
    let (unclaimed, _s2) = machine(&server, 23, false, &dell).await;
    assert_eq!(run_json(&server, unclaimed).await.0, 404);
    let m = machine_json(&server, unclaimed).await;
    assert_eq!(m["rule"]["result"], "refused", "{m}");
    assert!(m["rule"]["reason"]
        .as_str()
        .unwrap()
        .contains("neither claimed nor new"));

    // Another product falls through to the next rule.
    let (other, other_session) = machine(&server, 24, false, &inventory("ProLiant", 4, 8, 1)).await;
    let (status, run) = run_json(&server, other).await;
    assert_eq!((status, &run["workflow"]), (200, &json!("burn")), "{run}");
    assert_eq!(
        machine_json(&server, other).await["rule"]["rule"],
        "burn-the-rest"
    );

    // Never again: not for the old machine reporting again, nor after a finished run.
    old_session.send_inventory(&proliant).await.unwrap();
    assert_eq!(
        run_json(&server, old).await.0,
        404,
        "rules never fire for an old machine"
    );
    let path = format!("/api/v1/machines/{other}/workflow/cancel");
    assert_eq!(call(&server, "POST", &path, None).await.0, 200);
    other_session.send_inventory(&dell).await.unwrap();
    let (_, run) = run_json(&server, other).await;
    assert_eq!(
        run["phase"], "cancelled",
        "the rule did not fire a second time: {run}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_approval_rules_wait_for_it_and_a_claim_before_approval_counts() {
    let server = TestServer::start_with(|a| a.require_approval = Some(true)).await;
    assert_eq!(apply(&server, CONTENT).await.0, 200);
    let rule = "kind: rule\nname: wipe-all\nselector: state=discovered\nworkflow: wipe\n";
    assert_eq!(apply(&server, rule).await.0, 200);
    let (id, _s) = machine(&server, 31, false, &inventory("PowerEdge", 2, 4, 1)).await;
    let m = machine_json(&server, id).await;
    assert_eq!(m["state"], "pending");
    assert!(m.get("rule").is_none(), "no rule before approval");
    // Selected by bulk assign, but refused until approved.
    let body = json!({"selector": "state=pending", "dry_run": true});
    let (_, r) = bulk(&server, "burn", body).await;
    assert_eq!(r["machines"][0]["result"], "refused", "{r}");
    assert!(r["machines"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("approve it first"));
    // The operator vouches for it, then approves: the destructive rule may reach it.
    claim(&server, "POST", id).await;
    let (status, _) = call(
        &server,
        "POST",
        &format!("/api/v1/machines/{id}/approve"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let (status, run) = run_json(&server, id).await;
    assert_eq!((status, &run["workflow"]), (200, &json!("wipe")), "{run}");
    assert_eq!(machine_json(&server, id).await["rule"]["rule"], "wipe-all");
    server.stop().await;
}

/// Every fleet change is in the audit log (who, before and after; secrets masked) and on the
/// event stream: tags and location, claims, params, a bulk assignment, a rule's assignment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_changes_are_audited_and_emitted() {
    use anneal_shared::events::{AuditEntry, EventKind};
    let server = TestServer::start().await;
    let params =
        "kind: param\nname: bmc-password\nsecret: true\n---\nkind: param\nname: rack-name\n";
    assert_eq!(
        apply(&server, &format!("{CONTENT}---\n{params}")).await.0,
        200
    );
    let mut events = anneal_tests::events::EventStream::open(&server, "", None).await;
    let (id, _s) = machine(&server, 41, false, &inventory("PowerEdge", 2, 4, 1)).await;
    let audit = |query: String| {
        let server = &server;
        async move {
            let v = server.api_get(&format!("/api/v1/audit?{query}")).await;
            serde_json::from_value::<Vec<AuditEntry>>(v).expect("audit entries")
        }
    };

    let edit = json!({"add_tags": ["web"], "location": {"rack": "r1"}});
    assert_eq!(patch(&server, id, edit).await.0, 200);
    assert_eq!(claim(&server, "POST", id).await.0, 200);
    assert_eq!(claim(&server, "DELETE", id).await.0, 200);
    let set = json!({"set": {"bmc-password": "hunter2", "rack-name": "r1"}});
    let path = format!("/api/v1/machines/{id}/params");
    let (status, v) = call(&server, "PATCH", &path, Some(set)).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = bulk(&server, "burn", json!({"selector": "tag=web"})).await;
    assert_eq!(status, 200, "{v}");

    let entries = audit(format!("machine={id}")).await;
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "workflow.assign",
            "machine.params",
            "machine.unclaim",
            "machine.claim",
            "machine.labels"
        ],
        "newest first"
    );
    assert_eq!(entries[0].after.as_ref().unwrap()["selector"], "tag=web");
    assert_eq!(entries[4].before.as_ref().unwrap()["tags"], json!([]));
    assert_eq!(entries[4].after.as_ref().unwrap()["tags"], json!(["web"]));
    assert_eq!(entries[4].after.as_ref().unwrap()["location"]["rack"], "r1");
    assert_eq!(entries[3].after.as_ref().unwrap()["kind"], "operator");
    assert_eq!(entries[2].after, None, "unclaimed: no claim after");
    let params_after = entries[1].after.as_ref().unwrap();
    assert_eq!(params_after["params"]["rack-name"], "r1");
    let text = serde_json::to_string(&entries).unwrap();
    assert!(
        !text.contains("hunter2"),
        "a secret reached the audit log: {text}"
    );

    // A rule's assignment is recorded with the rule as the actor.
    let rule = "kind: rule\nname: burn-all\nselector: state=discovered\nworkflow: burn\n";
    assert_eq!(apply(&server, rule).await.0, 200);
    let (fresh, _s2) = machine(&server, 42, false, &inventory("ProLiant", 2, 4, 1)).await;
    let entries = audit(format!("machine={fresh}")).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    assert_eq!(entries[0].action, "workflow.assign");
    assert_eq!(entries[0].actor.token_id, "rule:burn-all");
    assert_eq!(entries[0].after.as_ref().unwrap()["workflow"], "burn");

    // The same changes, as events, in order.
    let seen = events
        .until(200, |e| {
            e.kind == EventKind::RuleFired && e.machine_id == Some(fresh)
        })
        .await;
    let kinds: Vec<(EventKind, Option<&str>)> = (seen.iter())
        .filter(|e| {
            matches!(
                e.kind,
                EventKind::MachineUpdated
                    | EventKind::MachineClaimed
                    | EventKind::RunAssigned
                    | EventKind::RuleFired
            )
        })
        .map(|e| (e.kind, e.state.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventKind::RuleFired, Some("no_match")),
            (EventKind::MachineUpdated, None),
            (EventKind::MachineClaimed, Some("claimed")),
            (EventKind::MachineClaimed, Some("unclaimed")),
            (EventKind::MachineUpdated, None),
            (EventKind::RunAssigned, None),
            (EventKind::RunAssigned, None),
            (EventKind::RuleFired, Some("assigned")),
        ],
        "{seen:#?}"
    );
    let params_event = seen
        .iter()
        .filter(|e| e.kind == EventKind::MachineUpdated)
        .nth(1);
    let reason = params_event.and_then(|e| e.reason.as_deref()).unwrap_or("");
    assert!(
        reason.contains("bmc-password") && !reason.contains("hunter2"),
        "{reason}"
    );
    server.stop().await;
}
