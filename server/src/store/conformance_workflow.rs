//! Conformance checks of [`WorkflowStore`]: content versions, runs stepped under concurrency,
//! and job logs by byte offset. Called from `conformance::run_all`.

use std::sync::Arc;

use anneal_shared::content::{BootEnv, ContentObject, Kind, StageEnd, Task};
use anneal_shared::MachineId;
use time::OffsetDateTime;
use uuid::Uuid;

use super::workflow::{ApplyAction, AttemptState, LogAppend, MachineParams};
use super::Cas;
use super::Store;
use crate::workflow::plan::{Plan, PlanStage};
use crate::workflow::run::{start_at, step_at, Answer, AttemptId, Event, Run};

fn env(name: &str, agent: bool) -> ContentObject {
    ContentObject::BootEnv(BootEnv {
        name: name.into(),
        agent,
        ..BootEnv::default()
    })
}

/// Applying makes a version only when something changed; older versions stay readable.
pub async fn content_versions_are_kept_and_unchanged_applies_make_none(store: Arc<dyn Store>) {
    assert_eq!(store.content_version().await.unwrap(), 0);
    let v1 = store
        .apply_content(&[env("a", true), env("b", false)], &[])
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    assert!(v1
        .objects
        .iter()
        .all(|(_, _, a)| *a == ApplyAction::Created));
    let same = store.apply_content(&[env("a", true)], &[]).await.unwrap();
    assert_eq!(same.version, 1, "nothing changed, no version");
    assert_eq!(same.objects[0].2, ApplyAction::Unchanged);
    let v2 = store
        .apply_content(&[env("a", false)], &[(Kind::BootEnv, "b".into())])
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(
        v2.objects.iter().map(|o| o.2).collect::<Vec<_>>(),
        [ApplyAction::Updated, ApplyAction::Deleted]
    );
    let (_, at1) = store.content_at(Some(1)).await.unwrap();
    assert_eq!(
        at1,
        vec![env("a", true), env("b", false)],
        "version 1 as it was"
    );
    let (v, now) = store.content_at(None).await.unwrap();
    assert_eq!((v, now), (2, vec![env("a", false)]));
}

fn one_task_plan() -> Plan {
    Plan {
        workflow: "w".into(),
        content_version: 1,
        stages: vec![PlanStage {
            name: "s".into(),
            boot_env: "discovery".into(),
            agent: true,
            destructive_env: false,
            tasks: vec![Task {
                name: "t".into(),
                script: Some("true".into()),
                timeout_secs: 60,
                ..Task::default()
            }],
            then: StageEnd::Continue,
            boot_timeout_secs: 60,
            deadline_secs: 600,
        }],
    }
}

/// Twelve agents' requests racing on one run in `ready`: exactly one attempt is handed out,
/// and every asker gets that same attempt.
pub async fn concurrent_asks_hand_out_one_attempt(store: Arc<dyn Store>) {
    let machine = super::conformance::enrolled_machine(&store, 61).await;
    let plan = one_task_plan();
    let now = OffsetDateTime::now_utc();
    let make = |p: &Plan| start_at(p, Some(("b", "discovery")), 0);
    let cancel = |r: &mut Run, p: &Plan| step_at(r, p, Event::Cancel, 0);
    store
        .start_run(machine, &plan, &make, &cancel, now)
        .await
        .unwrap()
        .expect("machine exists");
    let brief = |store: Arc<dyn Store>| async move {
        store
            .machine_brief(machine)
            .await
            .unwrap()
            .unwrap()
            .has_work
    };
    assert!(
        brief(store.clone()).await,
        "a ready run is work for the heartbeat"
    );
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let ask = |r: &mut Run, p: &Plan| step_at(r, p, Event::Ask { boot_id: "b" }, 1);
            let s = store
                .step_run(machine, &ask, None, OffsetDateTime::now_utc())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            match s.outcome.answer {
                Some(Answer::Job { attempt, .. }) => attempt,
                other => panic!("{other:?}"),
            }
        }));
    }
    let mut handed = Vec::new();
    for t in tasks {
        handed.push(t.await.unwrap());
    }
    handed.dedup();
    assert_eq!(handed.len(), 1, "one attempt for every asker: {handed:?}");
    let attempts = store.list_attempts(Some(machine), 100).await.unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].state, AttemptState::Created);
    assert_eq!(attempts[0].task_name, "t");
    let cancel = |r: &mut Run, p: &Plan| step_at(r, p, Event::Cancel, 2);
    store
        .step_run(machine, &cancel, None, OffsetDateTime::now_utc())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!brief(store.clone()).await, "a cancelled run is not");
}

/// A new machine (`n`) given the one-task plan, and the attempt its first ask was handed.
async fn handed_out_attempt(
    store: &Arc<dyn Store>,
    n: u32,
    now: OffsetDateTime,
) -> (MachineId, AttemptId) {
    let machine = super::conformance::enrolled_machine(store, n).await;
    let make = |p: &Plan| {
        let (mut run, _) = start_at(p, Some(("b", "discovery")), 0);
        let out = step_at(&mut run, p, Event::Ask { boot_id: "b" }, 0).unwrap();
        (run, out)
    };
    let cancel = |_: &mut Run, _: &Plan| Ok(Default::default());
    let started = (store
        .start_run(machine, &one_task_plan(), &make, &cancel, now)
        .await)
        .unwrap()
        .unwrap();
    let Some(Answer::Job { attempt, .. }) = started.outcome.answer else {
        panic!("{:?}", started.outcome)
    };
    (machine, attempt)
}

/// Log chunks are taken at the end or as identical overlaps, never with a gap or a change.
pub async fn log_chunks_never_lose_or_repeat_a_byte(store: Arc<dyn Store>) {
    let (_, a) = handed_out_attempt(&store, 62, OffsetDateTime::now_utc()).await;
    assert_eq!(
        store.append_log(a, 0, b"abc").await.unwrap(),
        Some(LogAppend::Appended(3))
    );
    assert_eq!(
        store.append_log(a, 0, b"abc").await.unwrap(),
        Some(LogAppend::Duplicate(3))
    );
    assert_eq!(
        store.append_log(a, 1, b"bcdef").await.unwrap(),
        Some(LogAppend::Appended(6))
    );
    assert_eq!(
        store.append_log(a, 7, b"x").await.unwrap(),
        Some(LogAppend::Conflict(6))
    );
    assert_eq!(
        store.append_log(a, 2, b"Xd").await.unwrap(),
        Some(LogAppend::Conflict(6))
    );
    assert_eq!(
        store.append_log(a, 6, b"").await.unwrap(),
        Some(LogAppend::Duplicate(6))
    );
    assert_eq!(
        store.append_log(Uuid::new_v4(), 0, b"x").await.unwrap(),
        None
    );
    assert_eq!(
        store.read_log(a, 0, 100).await.unwrap(),
        Some((b"abcdef".to_vec(), 6))
    );
    assert_eq!(
        store.read_log(a, 2, 3).await.unwrap(),
        Some((b"cde".to_vec(), 6)),
        "a window across chunks"
    );
    assert_eq!(store.read_log(a, 99, 3).await.unwrap(), Some((vec![], 6)));
    assert_eq!(store.get_attempt(a).await.unwrap().unwrap().log_len, 6);
}

/// Retention deletes the logs of attempts that ended before the cutoff, and only those: not a
/// running attempt's, not one that ended after it; the attempt keeps its length and says when.
pub async fn logs_past_retention_are_pruned(store: Arc<dyn Store>) {
    let now = OffsetDateTime::now_utc();
    let (machine, a) = handed_out_attempt(&store, 63, now).await;
    store.append_log(a, 0, b"hello").await.unwrap();
    let day = time::Duration::days(1);
    let none = super::workflow::PrunedLogs::default();
    assert_eq!(
        store.prune_logs(now + day, now, 10).await.unwrap(),
        none,
        "running"
    );
    let end = |r: &mut Run, p: &Plan| step_at(r, p, Event::Cancel, 1);
    (store.step_run(machine, &end, None, now).await)
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        store.prune_logs(now - day, now, 10).await.unwrap(),
        none,
        "too recent"
    );
    let pruned = store.prune_logs(now + day, now, 10).await.unwrap();
    assert_eq!((pruned.attempts, pruned.bytes), (1, 5));
    let after = store.get_attempt(a).await.unwrap().unwrap();
    assert_eq!(after.log_len, 5);
    assert!(after.log_pruned_at.is_some());
    assert_eq!(store.read_log(a, 0, 100).await.unwrap(), Some((vec![], 5)));
    assert_eq!(
        store.prune_logs(now + day, now, 10).await.unwrap(),
        none,
        "once"
    );
}

/// A machine's params start empty; each change compare-and-sets on the version, so of two
/// edits made from the same read exactly one lands; an unknown machine has none.
pub async fn machine_params_compare_and_set(store: Arc<dyn Store>) {
    let machine = super::conformance::enrolled_machine(&store, 71).await;
    let now = OffsetDateTime::now_utc();
    let empty = store
        .machine_params(machine)
        .await
        .unwrap()
        .expect("machine");
    assert_eq!(empty, MachineParams::default());
    assert_eq!(
        store.machine_params(uuid::Uuid::new_v4()).await.unwrap(),
        None
    );
    let first = MachineParams {
        profiles: vec!["rack-a".into()],
        params: [("disk.wipe_passes".to_string(), serde_json::json!(2))].into(),
        version: 0,
    };
    let other = MachineParams::default();
    let (a, b) = tokio::join!(
        store.set_machine_params(machine, &first, 0, now),
        store.set_machine_params(machine, &other, 0, now)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(
        matches!(
            (a, b),
            (Cas::Done(1), Cas::Conflict) | (Cas::Conflict, Cas::Done(1))
        ),
        "one first write wins: {a:?} {b:?}"
    );
    let won = store.machine_params(machine).await.unwrap().unwrap();
    assert_eq!(won.version, 1);
    let mut next = won.clone();
    next.params
        .insert("hostname.prefix".into(), serde_json::json!("web"));
    assert_eq!(
        store
            .set_machine_params(machine, &next, 1, now)
            .await
            .unwrap(),
        Cas::Done(2)
    );
    assert_eq!(
        store
            .set_machine_params(machine, &first, 1, now)
            .await
            .unwrap(),
        Cas::Conflict,
        "a stale version changes nothing"
    );
    let stored = store.machine_params(machine).await.unwrap().unwrap();
    assert_eq!((stored.version, stored.params), (2, next.params));
    assert_eq!(
        store
            .set_machine_params(uuid::Uuid::new_v4(), &first, 0, now)
            .await
            .unwrap(),
        Cas::Conflict,
        "no such machine"
    );
}
