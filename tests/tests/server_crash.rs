//! `kill -9` of the server process in the middle of workflows, over loopback: simulated
//! machines (`anneal-agent simulate-workflow`'s code: PXE script, enrollment through the
//! script's token, the real agent's job code) run a three-stage workflow with reboots while
//! the real `anneal serve` is killed twice without warning and started again on the same data.
//! Every machine must finish; each task must have run exactly once — counted by a witness file
//! the machines write, outside the server — and every job's log must be whole.

use std::collections::BTreeMap;
use std::time::Duration;

use anneal_agent::simulate_workflow::{run, WorkflowSimConfig};
use anneal_shared::api::{JobAttempt, MachineSummary, WorkflowRun};
use anneal_tests::process::ServerProcess;
use serde_json::json;

const MACHINES: u32 = 12;

/// Three stages of `noop` jobs that take a little time each: two tasks, reboot, one task,
/// then the local disk.
const CONTENT: &str = r#"
kind: task
name: a
action: noop
args: { label: first-a, sleep_ms: 700 }
---
kind: task
name: b
action: noop
args: { label: first-b, sleep_ms: 700 }
---
kind: task
name: c
action: noop
args: { label: second-c, sleep_ms: 700 }
---
kind: stage
name: first
boot_env: discovery
tasks: [a, b]
then: reboot
---
kind: stage
name: second
boot_env: discovery
tasks: [c]
---
kind: workflow
name: crash-test
stages: [first, second, local-boot]
"#;

async fn api<T: serde::de::DeserializeOwned>(s: &ServerProcess, path: &str) -> Option<T> {
    let res = (s.http().get(format!("{}{path}", s.api_url)))
        .bearer_auth(&s.admin_token)
        .send()
        .await
        .ok()?;
    res.json().await.ok()
}

async fn succeeded_jobs(s: &ServerProcess) -> usize {
    let jobs: Vec<JobAttempt> = api(s, "/api/v1/jobs?limit=1000").await.unwrap_or_default();
    jobs.iter().filter(|j| j.state == "succeeded").count()
}

/// Poll until `f` is true (bounded), then kill -9 and restart the server. Asserts that jobs
/// were still to run at the kill.
async fn crash_when(s: &mut ServerProcess, what: &str, f: impl AsyncFn(&ServerProcess) -> bool) {
    for _ in 0..600 {
        if f(s).await {
            let done = succeeded_jobs(s).await;
            s.kill9().expect("kill -9");
            assert!(
                done < 3 * MACHINES as usize,
                "killed mid-way, not after the end"
            );
            // Down for a moment: the machines' requests fail and are retried.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            s.restart().expect("restart");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never reached: {what}\n{}", s.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_server_mid_workflow_loses_no_job_and_runs_none_twice() {
    let mut server = ServerProcess::start(&["--heartbeat-secs", "1"]).expect("anneal serve");
    let applied = (server
        .http()
        .post(format!("{}/api/v1/content", server.api_url)))
    .bearer_auth(&server.admin_token)
    .json(&json!({ "files": [{ "path": "crash.yaml", "text": CONTENT }] }))
    .send()
    .await
    .expect("apply");
    assert_eq!(applied.status(), 200, "{}", applied.text().await.unwrap());
    let witness = server.dir().join("witness");
    let sim = tokio::spawn(run(WorkflowSimConfig {
        url: server.api_url.clone(),
        ca_fingerprint: server.ca_fingerprint.clone(),
        boot_url: server.http_url.clone(),
        count: MACHINES,
        enroll_concurrency: 8,
        id_base: 7000,
        heartbeat_secs: 1,
        timeout_secs: 240,
        witness: Some(witness.clone()),
    }));

    // Every machine discovered, then the workflow assigned to each.
    let mut machines: Vec<MachineSummary> = Vec::new();
    for _ in 0..600 {
        machines = api(&server, "/api/v1/machines").await.unwrap_or_default();
        if machines.len() == MACHINES as usize {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(machines.len(), MACHINES as usize, "{}", server.logs());
    for m in &machines {
        let res = (server.http())
            .put(format!(
                "{}/api/v1/machines/{}/workflow",
                server.api_url, m.id
            ))
            .bearer_auth(&server.admin_token)
            .json(&json!({ "workflow": "crash-test" }))
            .send()
            .await
            .expect("assign");
        assert_eq!(res.status(), 200);
    }

    // Killed once as the first jobs finish, and again about half-way.
    crash_when(&mut server, "a first job done", async |s| {
        succeeded_jobs(s).await >= 1
    })
    .await;
    let half = (MACHINES * 3 / 2) as usize;
    crash_when(&mut server, "half the jobs done", async |s| {
        succeeded_jobs(s).await >= half
    })
    .await;

    let report = sim.await.expect("simulator").expect("simulation");
    assert_eq!(
        (report.finished, report.unfinished),
        (MACHINES, 0),
        "{}\n{:?}\n{}",
        report.summary(),
        report.error_examples,
        server.logs()
    );

    // Exactly once, in order, by the machines' own account.
    let text = std::fs::read_to_string(&witness).expect("witness");
    let mut by_machine: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in text.lines() {
        let (m, label) = line.split_once(' ').expect("MACHINE LABEL");
        by_machine.entry(m).or_default().push(label);
    }
    assert_eq!(by_machine.len(), MACHINES as usize, "{text}");
    for (m, labels) in &by_machine {
        assert_eq!(labels, &["first-a", "first-b", "second-c"], "machine {m}");
    }

    // The server agrees, and every log is there.
    for m in &machines {
        let run: WorkflowRun = api(&server, &format!("/api/v1/machines/{}/workflow", m.id))
            .await
            .expect("run");
        assert_eq!(run.phase, "done", "{run:?}");
        let jobs: Vec<JobAttempt> = api(&server, &format!("/api/v1/jobs?machine={}", m.id))
            .await
            .expect("jobs");
        let ok: Vec<&JobAttempt> = jobs.iter().filter(|j| j.state == "succeeded").collect();
        assert_eq!(ok.len(), 3, "{jobs:?}");
        for j in ok {
            let log = (server.http())
                .get(format!("{}/api/v1/jobs/{}/log", server.api_url, j.id))
                .bearer_auth(&server.admin_token)
                .send()
                .await
                .expect("log")
                .text()
                .await
                .expect("log text");
            assert!(
                log.starts_with("anneal-agent: action `noop` succeeded in") && log.ends_with('\n'),
                "{}: {log:?}",
                j.task
            );
            assert_eq!(j.log_bytes, log.len() as u64);
        }
    }
    assert_eq!(server.starts, 3);
}

/// `anneal watch` follows the server across a `kill -9`: it reconnects by itself with its
/// `Last-Event-ID`, which the new server process does not hold, so it shows a `reset` (never
/// silently skipped events) and then the new server's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reconnects_across_a_kill9_and_says_reset() {
    use std::io::BufRead;
    let mut server = ServerProcess::start(&[]).expect("anneal serve");
    let token = |s: &ServerProcess, description: &'static str| {
        let (http, url, admin) = (s.http(), s.api_url.clone(), s.admin_token.clone());
        async move {
            let res = (http.post(format!("{url}/api/v1/tokens")))
                .bearer_auth(admin)
                .json(&json!({ "description": description }))
                .send()
                .await
                .expect("create token");
            assert_eq!(res.status(), 201);
        }
    };
    let mut watch = std::process::Command::new(anneal_tests::rack::binaries::anneal().unwrap())
        .args(["watch", "-o", "json"])
        .env("ANNEAL_SERVER", &server.api_url)
        .env("ANNEAL_DATA_DIR", server.dir().join("data"))
        .env_remove("ANNEAL_TOKEN")
        .env_remove("ANNEAL_CA")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("anneal watch");
    let (tx, rx) = std::sync::mpsc::channel::<serde_json::Value>();
    let stdout = watch.stdout.take().unwrap();
    let mut stderr = watch.stderr.take().unwrap();
    let notices = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(serde_json::from_str(&line).expect("one JSON event per line"));
        }
    });
    let next = |what: &str| {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("anneal watch printed no {what}"))
    };

    // Once watch is connected (an event the server emits after our first token), kill -9.
    let mut first = None;
    for _ in 0..50 {
        token(&server, "before").await;
        if let Ok(e) = rx.recv_timeout(Duration::from_millis(200)) {
            first = Some(e);
            break;
        }
    }
    let first = first.expect("watch saw the first token");
    assert_eq!(first["kind"], "token_created");
    // Tokens made before watch connected may still be on their way.
    while let Ok(e) = rx.recv_timeout(Duration::from_millis(500)) {
        assert_eq!(e["kind"], "token_created", "{e}");
    }
    server.kill9().expect("kill -9");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().expect("restart");
    let reset = next("reset");
    assert_eq!(reset["kind"], "reset", "{reset}");
    let epoch = |e: &serde_json::Value| {
        e["id"]
            .as_str()
            .unwrap()
            .split('-')
            .next()
            .unwrap()
            .to_string()
    };
    assert_ne!(epoch(&reset), epoch(&first), "the new process's ids");
    token(&server, "after").await;
    let after = next("event after the restart");
    assert_eq!(after["kind"], "token_created", "{after}");
    assert_eq!(epoch(&after), epoch(&reset));

    assert!(
        watch.try_wait().unwrap().is_none(),
        "watch is still following"
    );
    watch.kill().expect("stop watch");
    watch.wait().expect("reap watch");
    let stderr = notices.join().expect("stderr");
    assert!(
        stderr.contains("reconnecting from"),
        "says it reconnects: {stderr}"
    );
    assert!(
        stderr.contains("events were missed"),
        "says events may be missing: {stderr}"
    );
}
