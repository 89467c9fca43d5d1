//! Workflows under faults over loopback: the agent's link dropped while a job runs; and job logs
//! deleted by retention, which must say so rather than look empty.
//! (Server restarts and power loss under a task are in `workflows.rs`.)

use anneal_shared::content::Task;
use anneal_tests::link::Link;
use anneal_tests::pxe::put_discovery;
use anneal_tests::workflow::{
    apply_work_then_local, assign, jobs_of, log_of, wait_for_machine, FixtureAgent,
};
use anneal_tests::TestServer;

/// The agent's link to the agent API is cut for three seconds while a job prints: the job
/// still runs exactly once, its output is buffered, and the log arrives whole and in order
/// once the link is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_link_delays_a_job_but_loses_no_byte_of_its_log() {
    // The agent API listens on 127.0.0.2; agents are sent to 127.0.0.1 at the same port,
    // where the cuttable link forwards to it.
    let server = TestServer::start_with(|a| {
        a.heartbeat_secs = Some(1);
        a.agent_listen = Some("127.0.0.2:0".parse().expect("addr"));
    })
    .await;
    let real = server.running.agent_addr;
    let front = format!("127.0.0.1:{}", real.port()).parse().expect("addr");
    let link = Link::start(front, real)
        .await
        .expect("the same port on 127.0.0.1 is free");
    put_discovery(&server, b"kernel");
    let work = tempfile::tempdir().unwrap();
    let witness = work.path().join("witness");
    let lines = 60;
    let count = Task {
        name: "count".into(),
        script: Some(format!(
            "echo ran >> {}\ni=1\nwhile [ $i -le {lines} ]; do echo line $i; i=$((i+1)); sleep 0.05; done",
            witness.display()
        )),
        timeout_secs: 120,
        ..Task::default()
    };
    apply_work_then_local(&server, "count", vec![count]).await;
    let agent = FixtureAgent::boot(&server, work.path()).await;
    let machine = wait_for_machine(&server).await;
    assign(&server, machine, "count").await;

    // Cut as soon as the job runs, for three seconds (the script takes three in all).
    let mut running = false;
    for _ in 0..300 {
        let jobs = jobs_of(&server, machine).await;
        if jobs.first().is_some_and(|j| j.state == "running") {
            running = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(running, "the job started");
    link.cut();
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    link.restore();

    agent.wait_for_reboot(60).await;
    assert!(
        agent.rebooted.exists(),
        "the workflow went on to its reboot"
    );
    assert!(
        link.refused.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the agent tried while the link was down"
    );
    let jobs = jobs_of(&server, machine).await;
    assert_eq!(jobs.len(), 1, "one attempt: {jobs:?}");
    assert_eq!(jobs[0].state, "succeeded");
    let expected: String = (1..=lines).map(|i| format!("line {i}\n")).collect();
    let log = log_of(&server, jobs[0].id).await;
    assert_eq!(String::from_utf8_lossy(&log), expected);
    assert_eq!(
        std::fs::read_to_string(&witness).unwrap(),
        "ran\n",
        "ran exactly once"
    );
    drop(agent);
    server.stop().await;
}

/// Log retention: once a finished job is older than the retention, its log is deleted and
/// reading it answers 410 saying so; the attempt keeps its record and log length. A job still
/// running keeps its log whatever its age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_past_retention_are_deleted_and_say_so() {
    let server = TestServer::start().await;
    put_discovery(&server, b"kernel");
    let task = |name: &str, script: &str| Task {
        name: name.into(),
        script: Some(script.into()),
        timeout_secs: 120,
        ..Task::default()
    };
    let tasks = vec![
        task("short", "echo kept-for-a-while"),
        task("long", "echo still-running; sleep 60"),
    ];
    apply_work_then_local(&server, "kept", tasks).await;
    let work = tempfile::tempdir().unwrap();
    let _agent = FixtureAgent::boot(&server, work.path()).await;
    let machine = wait_for_machine(&server).await;
    assign(&server, machine, "kept").await;
    let mut jobs = Vec::new();
    for _ in 0..600 {
        jobs = jobs_of(&server, machine).await;
        if jobs.iter().any(|j| j.task == "long" && j.log_bytes > 0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let short = jobs.iter().find(|j| j.task == "short").expect("short ran");
    let long = jobs.iter().find(|j| j.task == "long").expect("long runs");
    assert_eq!(short.state, "succeeded");
    assert_eq!(long.state, "running", "{jobs:?}");
    assert!(String::from_utf8_lossy(&log_of(&server, short.id).await).contains("kept-for-a-while"));

    // A pass of retention as if 91 days had gone by, with the default 90.
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(91);
    let app = &server.running.app;
    let pruned = anneal_server::workflow::retention::prune(app, 90, later).await;
    assert_eq!(pruned.expect("prune").attempts, 1, "only the finished job");
    let res = (server.http())
        .get(format!("{}/api/v1/jobs/{}/log", server.api_url, short.id))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("log");
    assert_eq!(res.status(), 410);
    let problem: serde_json::Value = res.json().await.expect("problem");
    assert_eq!(
        problem["type"], "urn:anneal:problem:log-pruned",
        "{problem}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("log retention (90 days)"),
        "{problem}"
    );
    let jobs = jobs_of(&server, machine).await;
    let short = jobs.iter().find(|j| j.id == short.id).unwrap();
    assert!(
        short.log_pruned_at.is_some() && short.log_bytes > 0,
        "{short:?}"
    );
    assert!(String::from_utf8_lossy(&log_of(&server, long.id).await).contains("still-running"));
    server.stop().await;
}
