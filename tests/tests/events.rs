//! `GET /api/v1/events` over loopback: a machine's workflow events arrive in order with their
//! stages and phases, filters filter, `Last-Event-ID` resumes without loss or repetition, and
//! an id the server no longer holds gives a `reset`.

use anneal_shared::content::Task;
use anneal_shared::events::{Event, EventKind};
use anneal_tests::events::{request, seq, EventStream};
use anneal_tests::pxe::put_discovery;
use anneal_tests::workflow::{apply_work_then_local, assign, wait_for_machine, FixtureAgent};
use anneal_tests::TestServer;

fn echo(name: &str) -> Task {
    Task {
        name: name.into(),
        script: Some(format!("echo {name}")),
        timeout_secs: 60,
        ..Task::default()
    }
}

/// What one expected event must show: kind, stage, task, and its state or phase.
type Want = (EventKind, &'static str, Option<&'static str>, &'static str);

fn shows(e: &Event, (kind, stage, task, state_or_phase): &Want) -> bool {
    e.kind == *kind
        && e.stage.as_deref() == Some(*stage)
        && e.task.as_deref() == *task
        && (e.state.as_deref() == Some(*state_or_phase)
            || e.phase.as_deref() == Some(*state_or_phase))
}

#[tokio::test]
async fn a_workflows_events_arrive_in_order_with_stages_and_phases_and_filters_filter() {
    let server = TestServer::start_with(|a| a.heartbeat_secs = Some(1)).await;
    put_discovery(&server, b"kernel");
    apply_work_then_local(&server, "watched", vec![echo("a"), echo("b")]).await;
    let mut all = EventStream::open(&server, "", None).await;
    let mut ended = EventStream::open(&server, "kind=attempt_ended", None).await;
    let mut by_workflow = EventStream::open(&server, "workflow=watched", None).await;

    let work = tempfile::tempdir().unwrap();
    let _agent = FixtureAgent::boot(&server, work.path()).await;
    let machine = wait_for_machine(&server).await;
    assign(&server, machine, "watched").await;
    // The stage's end: the machine is sent to boot the built-in local stage.
    let is_end = |e: &Event| {
        e.machine_id == Some(machine)
            && e.kind == EventKind::RunPhase
            && e.stage.as_deref() == Some("local-boot")
            && e.phase.as_deref() == Some("booting")
    };
    let events = all.until(500, is_end).await;

    for pair in events.windows(2) {
        assert_eq!(seq(&pair[1]), seq(&pair[0]) + 1, "ids count up by one");
    }
    let mine: Vec<&Event> = events
        .iter()
        .filter(|e| e.machine_id == Some(machine))
        .collect();
    assert_eq!(mine[0].kind, EventKind::MachineEnrolled, "{mine:#?}");
    assert_eq!(mine[0].state.as_deref(), Some("created"));
    let want: [Want; 8] = [
        (EventKind::RunAssigned, "work", Some("a"), "ready"),
        (EventKind::AttemptCreated, "work", Some("a"), "running"),
        (EventKind::AttemptStarted, "work", Some("a"), "running"),
        (EventKind::AttemptEnded, "work", Some("a"), "succeeded"),
        (EventKind::AttemptCreated, "work", Some("b"), "running"),
        (EventKind::AttemptStarted, "work", Some("b"), "running"),
        (EventKind::AttemptEnded, "work", Some("b"), "succeeded"),
        (EventKind::RunPhase, "local-boot", None, "booting"),
    ];
    // In this order, and the attempts' events exactly these (none repeated).
    let mut at = 0;
    for w in &want {
        let found = mine[at..].iter().position(|e| shows(e, w));
        let i = found.unwrap_or_else(|| panic!("{w:?} missing after #{at}: {mine:#?}"));
        at += i + 1;
    }
    let attempts: Vec<&&Event> = mine
        .iter()
        .filter(|e| e.attempt.is_some() && e.run_id.is_some())
        .collect();
    assert_eq!(attempts.len(), 6, "{attempts:#?}");
    let run = mine[mine.len() - 1];
    for e in mine.iter().filter(|e| e.run_id.is_some()) {
        assert_eq!(e.run_id, run.run_id);
        assert_eq!(e.workflow.as_deref(), Some("watched"));
        assert_eq!(e.stage_count, Some(2), "{e:?}");
    }
    assert!(
        mine.iter()
            .any(|e| e.kind == EventKind::BootEnvSet && e.boot_env.as_deref() == Some("local")),
        "{mine:#?}"
    );

    // Filtered followers saw just their part, in the same order with the same ids.
    let ends = [ended.next().await, ended.next().await];
    let want_ends: Vec<&Event> = mine
        .iter()
        .copied()
        .filter(|e| e.kind == EventKind::AttemptEnded)
        .collect();
    assert_eq!(ends.iter().collect::<Vec<_>>(), want_ends);
    let workflow_events = by_workflow.until(500, is_end).await;
    let want_workflow: Vec<&Event> = events
        .iter()
        .filter(|e| e.workflow.as_deref() == Some("watched"))
        .collect();
    assert_eq!(workflow_events.iter().collect::<Vec<_>>(), want_workflow);
    // By machine id prefix, replayed from the start of this server's stream.
    let epoch = server.running.app.events.epoch();
    let prefix = &machine.to_string()[..6];
    let mut by_machine =
        EventStream::open(&server, &format!("machine={prefix}&since={epoch}-0"), None).await;
    let replayed = by_machine.until(500, is_end).await;
    assert_eq!(replayed.iter().collect::<Vec<_>>(), mine);
    server.stop().await;
}

#[tokio::test]
async fn last_event_id_resumes_without_loss_or_repetition_and_an_old_id_gives_a_reset() {
    let server = TestServer::start().await;
    for _ in 0..3 {
        server.bootstrap_token(1).await;
    }
    let epoch = server.running.app.events.epoch();
    let mut first = EventStream::open(&server, &format!("since={epoch}-0"), None).await;
    let seen = [first.next().await, first.next().await];
    drop(first);
    for _ in 0..3 {
        server.bootstrap_token(1).await;
    }
    let mut resumed = EventStream::open(&server, "", Some(&seen[1].id)).await;
    let mut got = seen.to_vec();
    for _ in 0..4 {
        got.push(resumed.next().await);
    }
    let ids: Vec<u64> = got.iter().map(seq).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    assert!(got.iter().all(|e| e.kind == EventKind::TokenCreated));
    // The same as a full replay: one event per token created, in creation order.
    let mut full = EventStream::open(&server, &format!("since={epoch}-0"), None).await;
    for e in &got {
        assert_eq!(&full.next().await, e);
    }

    // Bad ids and filters are refused with a problem, not a stream.
    for (query, header) in [
        ("", Some("garbage")),
        ("since=1-x", None),
        ("kind=run_phase,bogus", None),
        ("machine=not-a-machine!", None),
    ] {
        let res = request(&server, query, header).send().await.unwrap();
        assert_eq!(res.status(), 400, "{query} {header:?}");
        let problem: serde_json::Value = res.json().await.unwrap();
        assert!(problem["detail"].as_str().is_some(), "{problem}");
    }

    // After a restart the old ids are not held: a reset first, then live events.
    let old = got[5].id.clone();
    let server = server.restart().await;
    let mut after = EventStream::open(&server, "", Some(&old)).await;
    let reset = after.next().await;
    assert_eq!(reset.kind, EventKind::Reset, "{reset:?}");
    let new_epoch = server.running.app.events.epoch();
    assert_eq!(reset.id, format!("{new_epoch}-0"));
    server.bootstrap_token(1).await;
    let live = after.next().await;
    assert_eq!(
        (live.kind, live.id.as_str()),
        (EventKind::TokenCreated, format!("{new_epoch}-1").as_str())
    );
    server.stop().await;
}
