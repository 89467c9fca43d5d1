//! Workflows over loopback: the real server, the agent's real client over mutual TLS, and PXE
//! boots played by fetching the machine's iPXE script and enrolling with the token it carries —
//! so stage boundaries are crossed exactly as in a rack.

use anneal_agent::client::{ClientError, LogUpload, Session};
use anneal_agent::clock::Clock;
use anneal_shared::content::{ContentObject, StageEnd, Task, Workflow};
use anneal_shared::protocol::{AttemptResult, IdentityHints, Job, JobWork, NextAction, Nic};
use anneal_shared::PROTOCOL_VERSION;
use anneal_tests::pxe::{machine_script, put_discovery, token_of};
use anneal_tests::workflow::{
    apply, apply_work_then_local, assign, jobs_of, log_of, run_of, script_task, stage,
    wait_for_machine, FixtureAgent,
};
use anneal_tests::{hints, TestServer};

const MAC: &str = "52:54:00:aa:00:01";

fn machine_hints() -> IdentityHints {
    let mut h = hints(41);
    h.macs.push(Nic {
        mac: MAC.into(),
        bus: Some("pci".into()),
    });
    h
}

/// The three-boot workflow: discovery stage with script tasks → reboot → a second
/// stage in the discovery image → reboot → local boot.
async fn apply_three_boot(server: &TestServer) {
    let objects = vec![
        script_task("one"),
        script_task("two"),
        script_task("three"),
        stage("first", "discovery", &["one", "two"], StageEnd::Reboot),
        stage("second", "discovery", &["three"], StageEnd::Continue),
        stage("last", "local", &[], StageEnd::Continue),
        ContentObject::Workflow(Workflow {
            name: "three-boot".into(),
            stages: vec!["first".into(), "second".into(), "last".into()],
            ..Workflow::default()
        }),
    ];
    assert_eq!(apply(server, &objects).await, 1);
}

/// The machine PXE-boots: fetches its script (the server records it), and the discovery
/// image's agent enrolls with the token on the kernel line, from a new boot.
async fn pxe_boot_into_discovery(server: &TestServer, boot_id: &str) -> Session {
    let script = machine_script(server, MAC, "", "pcbios").await;
    assert!(script.contains("discovery image"), "{script}");
    server
        .enroller(Clock::system())
        .enroll(&token_of(&script), machine_hints(), boot_id, "host")
        .await
        .expect("enrollment from the discovery script")
}

fn expect_job(action: NextAction) -> Job {
    match action {
        NextAction::Job(job) => job,
        other => panic!("expected a job, got {other:?}"),
    }
}

/// Run one job the way the agent does: acknowledge, upload its log, report.
async fn run_job(session: &Session, job: &Job) -> Vec<u8> {
    session.start_attempt(job.attempt).await.expect("start");
    let JobWork::Script { script } = &job.work else {
        panic!("a script job: {job:?}")
    };
    let log = format!("$ {script}\n{}\n", job.task).into_bytes();
    let taken = session
        .upload_log(job.attempt, 0, &log)
        .await
        .expect("upload");
    assert_eq!(taken, LogUpload::Taken(log.len() as u64));
    let result = AttemptResult {
        protocol: PROTOCOL_VERSION,
        ok: true,
        exit_code: Some(0),
        reason: String::new(),
        result: None,
        log_length: log.len() as u64,
    };
    session
        .report_result(job.attempt, &result)
        .await
        .expect("result");
    log
}

/// Walk the three-boot workflow from "assigned" to "done"; returns the logs by task.
async fn walk_three_boot(server: &TestServer, first: Session, boots: &mut u32) -> Vec<Vec<u8>> {
    let id = first.machine_id;
    // Assigned while running something else: the machine is switched, then told to reboot.
    assert_eq!(first.next().await.expect("next"), NextAction::Reboot);
    assert_eq!(
        run_of(server, id).await.booting.as_deref(),
        Some("discovery")
    );
    *boots += 1;
    let s = pxe_boot_into_discovery(server, &format!("boot-{boots}")).await;
    assert_eq!(s.machine_id, id, "the same record");
    let mut logs = Vec::new();
    for task in ["one", "two"] {
        let job = expect_job(s.next().await.expect("next"));
        assert_eq!((job.stage.as_str(), job.task.as_str()), ("first", task));
        logs.push(run_job(&s, &job).await);
    }
    // `then: reboot`, although the next stage uses the same environment.
    assert_eq!(s.next().await.expect("next"), NextAction::Reboot);
    *boots += 1;
    let s = pxe_boot_into_discovery(server, &format!("boot-{boots}")).await;
    let job = expect_job(s.next().await.expect("next"));
    assert_eq!((job.stage.as_str(), job.task.as_str()), ("second", "three"));
    logs.push(run_job(&s, &job).await);
    // Local boot next: a reboot, and the machine's script is now the local one.
    assert_eq!(s.next().await.expect("next"), NextAction::Reboot);
    let script = machine_script(server, MAC, "", "pcbios").await;
    assert!(script.contains("sanboot"), "local boot script:\n{script}");
    let run = run_of(server, id).await;
    assert_eq!(run.phase, "done", "{run:?}");
    logs
}

#[tokio::test]
async fn a_three_boot_workflow_completes_with_every_log_and_again_when_rerun() {
    let server = TestServer::start().await;
    put_discovery(&server, b"kernel");
    apply_three_boot(&server).await;
    // A machine discovered earlier, its agent running with an operator token.
    let first = server.enroll(machine_hints(), "boot-0").await;
    let id = first.machine_id;
    let run = assign(&server, id, "three-boot").await;
    assert_eq!(run.phase, "booting");
    assert_eq!(run.stages, ["first", "second", "last"]);
    let mut boots = 0;
    let logs = walk_three_boot(&server, first, &mut boots).await;

    let jobs = jobs_of(&server, id).await;
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j.state == "succeeded"), "{jobs:?}");
    // Newest first: three, two, one; each log exactly as uploaded.
    for (job, log) in jobs.iter().zip(logs.iter().rev()) {
        assert_eq!(&log_of(&server, job.id).await, log, "{}", job.task);
        assert_eq!(job.log_bytes, log.len() as u64);
    }

    // Running it again works: from the local boot, back through both stages.
    assign(&server, id, "three-boot").await;
    let again = server.enroll(machine_hints(), "boot-installed").await;
    walk_three_boot(&server, again, &mut boots).await;
    assert_eq!(jobs_of(&server, id).await.len(), 6);
    server.stop().await;
}

#[tokio::test]
async fn lost_answers_and_retried_uploads_neither_lose_nor_repeat_anything() {
    let server = TestServer::start().await;
    put_discovery(&server, b"kernel");
    apply_three_boot(&server).await;
    let first = server.enroll(machine_hints(), "boot-0").await;
    assign(&server, first.machine_id, "three-boot").await;
    assert_eq!(first.next().await.unwrap(), NextAction::Reboot);
    let s = pxe_boot_into_discovery(&server, "boot-1").await;

    // The answer to `next` is lost: asking again hands out the same attempt.
    let job = expect_job(s.next().await.unwrap());
    assert_eq!(expect_job(s.next().await.unwrap()).attempt, job.attempt);
    s.start_attempt(job.attempt).await.unwrap();
    s.start_attempt(job.attempt)
        .await
        .expect("a repeated start is fine");

    // Log chunks: in order, a retried chunk, an overlap, a gap and a contradiction.
    let a = job.attempt;
    assert_eq!(
        s.upload_log(a, 0, b"hello ").await.unwrap(),
        LogUpload::Taken(6)
    );
    assert_eq!(
        s.upload_log(a, 0, b"hello ").await.unwrap(),
        LogUpload::Taken(6),
        "duplicate"
    );
    assert_eq!(
        s.upload_log(a, 3, b"lo world").await.unwrap(),
        LogUpload::Taken(11),
        "overlap"
    );
    assert_eq!(
        s.upload_log(a, 20, b"x").await.unwrap(),
        LogUpload::Resume(11),
        "gap"
    );
    assert_eq!(
        s.upload_log(a, 6, b"WORLD").await.unwrap(),
        LogUpload::Resume(11),
        "differs"
    );

    // A result claiming more log than arrived is refused until the rest is in.
    let mut result = AttemptResult {
        protocol: PROTOCOL_VERSION,
        ok: true,
        exit_code: Some(0),
        reason: String::new(),
        result: None,
        log_length: 12,
    };
    let refused = s.report_result(a, &result).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Problem { status: 409, .. }),
        "{refused}"
    );
    assert_eq!(
        s.upload_log(a, 11, b"\n").await.unwrap(),
        LogUpload::Taken(12)
    );
    s.report_result(a, &result).await.expect("result");
    s.report_result(a, &result)
        .await
        .expect("a repeated report is fine");
    // A contradicting repeat is not.
    result.ok = false;
    let refused = s.report_result(a, &result).await.unwrap_err();
    assert!(
        matches!(refused, ClientError::Problem { status: 409, .. }),
        "{refused}"
    );

    let jobs = jobs_of(&server, s.machine_id).await;
    assert_eq!(jobs.len(), 1, "no attempt was made twice: {jobs:?}");
    assert_eq!(log_of(&server, a).await, b"hello world\n");
    // The next task is next.
    assert_eq!(expect_job(s.next().await.unwrap()).task, "two");
    server.stop().await;
}

#[tokio::test]
async fn runs_survive_a_server_restart_and_an_interrupted_task_stops_for_an_operator() {
    let server = TestServer::start().await;
    put_discovery(&server, b"kernel");
    apply_three_boot(&server).await;
    let first = server.enroll(machine_hints(), "boot-0").await;
    let id = first.machine_id;
    assign(&server, id, "three-boot").await;
    assert_eq!(first.next().await.unwrap(), NextAction::Reboot);
    let s = pxe_boot_into_discovery(&server, "boot-1").await;
    let job = expect_job(s.next().await.unwrap());
    s.start_attempt(job.attempt).await.unwrap();

    // Restart the server mid-task: the run and the attempt are where they were.
    let server = server.restart().await;
    let run = run_of(&server, id).await;
    assert_eq!((run.phase.as_str(), run.stage, run.task), ("running", 0, 0));

    // Power loss: the machine comes back through PXE while the (non-idempotent) task ran.
    let s = pxe_boot_into_discovery(&server, "boot-2").await;
    let run = run_of(&server, id).await;
    assert_eq!(run.phase, "failed");
    let reason = run.reason.unwrap_or_default();
    assert!(reason.contains("task `one` interrupted"), "{reason}");
    assert!(matches!(s.next().await.unwrap(), NextAction::Wait { .. }));
    let jobs = jobs_of(&server, id).await;
    assert_eq!(jobs[0].state, "interrupted");

    // The operator retries: a new attempt of the same task.
    let res = server
        .http()
        .post(format!(
            "{}/api/v1/machines/{id}/workflow/retry",
            server.api_url
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let again = expect_job(s.next().await.unwrap());
    assert_eq!(again.task, "one");
    assert_ne!(again.attempt, job.attempt);
    // And a stale report for the old attempt is refused.
    let stale = s.start_attempt(job.attempt).await.unwrap_err();
    assert!(
        matches!(stale, ClientError::Problem { status: 409, .. }),
        "{stale}"
    );
    server.stop().await;
}

/// The real agent loop (`anneal-agent run`'s runner) takes a workflow assigned while it runs
/// discovery: it runs the script (stdout and stderr in one log, in order), the built-in
/// inventory action, a witness task, and runs its reboot command when the stage ends.
#[tokio::test]
async fn the_agent_runs_its_jobs_streams_their_logs_and_reboots() {
    let server = TestServer::start_with(|a| a.heartbeat_secs = Some(1)).await;
    put_discovery(&server, b"kernel");
    let work = tempfile::tempdir().unwrap();
    let witness = work.path().join("witness");
    let tasks = vec![
        Task {
            name: "talk".into(),
            script: Some("echo one; echo two >&2; echo three; exit 0".into()),
            timeout_secs: 60,
            ..Task::default()
        },
        Task {
            name: "inventory".into(),
            action: Some("inventory".into()),
            timeout_secs: 60,
            idempotent: true,
            ..Task::default()
        },
        Task {
            name: "witness".into(),
            script: Some(format!("echo ran >> {}", witness.display())),
            timeout_secs: 60,
            ..Task::default()
        },
    ];
    apply_work_then_local(&server, "agent-run", tasks).await;

    let agent = FixtureAgent::boot(&server, work.path()).await;
    let rebooted = agent.rebooted.clone();
    let machine = wait_for_machine(&server).await;
    let run = assign(&server, machine, "agent-run").await;
    assert_eq!(run.phase, "ready", "already in discovery: no reboot first");

    for _ in 0..300 {
        if rebooted.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        rebooted.exists(),
        "the agent ran its reboot command: {:?}",
        run_of(&server, machine).await
    );
    drop(agent);
    let run = run_of(&server, machine).await;
    assert_eq!(
        (run.phase.as_str(), run.booting.as_deref()),
        ("booting", Some("local"))
    );
    let jobs = jobs_of(&server, machine).await;
    let by_task = |t: &str| {
        jobs.iter()
            .find(|j| j.task == t)
            .unwrap_or_else(|| panic!("{t}: {jobs:?}"))
    };
    assert!(jobs.iter().all(|j| j.state == "succeeded"), "{jobs:?}");
    assert_eq!(jobs.len(), 3);
    let talk = log_of(&server, by_task("talk").id).await;
    assert_eq!(String::from_utf8_lossy(&talk), "one\ntwo\nthree\n");
    assert_eq!(by_task("talk").exit_code, Some(0));
    let inv = by_task("inventory")
        .result
        .clone()
        .expect("a structured result");
    assert!(inv["disks"].as_u64().is_some(), "{inv}");
    assert_eq!(
        std::fs::read_to_string(&witness).unwrap(),
        "ran\n",
        "ran exactly once"
    );
    server.stop().await;
}

/// A failing job stops the run with its task named and the end of its log on the run (whole
/// lines, at most 4 KiB), so an operator sees why without fetching the log.
#[tokio::test]
async fn a_failed_job_leaves_the_end_of_its_log_on_the_run() {
    let server = TestServer::start_with(|a| a.heartbeat_secs = Some(1)).await;
    put_discovery(&server, b"kernel");
    let work = tempfile::tempdir().unwrap();
    let task = Task {
        name: "flaky".into(),
        script: Some("for i in $(seq 1 400); do echo \"line $i of the disk check\"; done; echo 'sdb: bad sector' >&2; exit 3".into()),
        timeout_secs: 60,
        ..Task::default()
    };
    apply_work_then_local(&server, "fails", vec![task]).await;
    let _agent = FixtureAgent::boot(&server, work.path()).await;
    let machine = wait_for_machine(&server).await;
    assign(&server, machine, "fails").await;
    let mut run = run_of(&server, machine).await;
    for _ in 0..300 {
        if run.phase == "failed" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        run = run_of(&server, machine).await;
    }
    assert_eq!(run.phase, "failed", "{run:?}");
    assert!(
        run.reason.as_deref().unwrap_or("").contains("flaky"),
        "{run:?}"
    );
    let jobs = jobs_of(&server, machine).await;
    assert_eq!(run.failed_attempt, Some(jobs[0].id));
    let tail = run.log_tail.expect("the log's end");
    assert!(tail.len() <= 4096 && tail.len() > 3000, "{}", tail.len());
    assert!(
        tail.starts_with("line "),
        "starts at a whole line: {tail:?}"
    );
    assert!(
        tail.ends_with("line 400 of the disk check\nsdb: bad sector\n"),
        "{tail:?}"
    );
    server.stop().await;
}
