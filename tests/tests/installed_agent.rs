//! Agents on an installed OS over loopback: the real server and the real agent runner
//! (`anneal-agent run --installed`) on the QEMU fixture machine, with fake boot ids. A
//! workflow crosses from the discovery image into the installed OS — with the key and
//! certificate provisioning copied onto the disk, or with a fresh enrollment through an
//! operator's token — restarts within a boot are not reboots, certificates are renewed and
//! kept, and the server refuses environments an installed agent may not name.

use std::path::Path;
use std::time::{Duration, Instant};

use anneal_agent::client::ClientError;
use anneal_agent::clock::Clock;
use anneal_shared::content::{ContentObject, StageEnd, Task, Workflow};
use anneal_shared::events::EventKind;
use anneal_tests::events::EventStream;
use anneal_tests::pxe::{machine_script, put_discovery};
use anneal_tests::workflow::{
    apply, assign, jobs_of, log_of, run_of, stage, wait_for_machine, FixtureAgent,
};
use anneal_tests::{hints, TestServer};
use serde_json::Value;

/// A task appending its name to `witness` (outside the server: what really ran, and how often).
fn witness_task(name: &str, witness: &Path) -> ContentObject {
    ContentObject::Task(Task {
        name: name.into(),
        script: Some(format!("echo {name}; echo {name} >> {}", witness.display())),
        timeout_secs: 60,
        ..Task::default()
    })
}

/// The workflow: a script task in the discovery image → reboot → a script task on the
/// installed OS → local boot.
async fn apply_to_disk(server: &TestServer, witness: &Path) {
    apply(
        server,
        &[
            witness_task("prepare", witness),
            witness_task("configure", witness),
            stage("prepare", "discovery", &["prepare"], StageEnd::Reboot),
            stage("configure", "installed", &["configure"], StageEnd::Continue),
            ContentObject::Workflow(Workflow {
                name: "to-disk".into(),
                stages: vec!["prepare".into(), "configure".into(), "local-boot".into()],
                ..Workflow::default()
            }),
        ],
    )
    .await;
}

async fn machine(server: &TestServer, id: uuid::Uuid) -> Value {
    server.api_get(&format!("/api/v1/machines/{id}")).await
}

/// Live tokens' uses left.
async fn uses_left(server: &TestServer) -> Vec<u64> {
    let v = server.api_get("/api/v1/tokens").await;
    v.as_array()
        .unwrap()
        .iter()
        .map(|t| t["uses_left"].as_u64().unwrap())
        .collect()
}

/// Poll until `f` holds (or panic after `secs`, showing `what`).
async fn wait_until<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_phase(server: &TestServer, id: uuid::Uuid, phase: &str, secs: u64) {
    wait_until(secs, &format!("phase {phase}"), || async {
        run_of(server, id).await.phase == phase
    })
    .await;
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Copy the files of `from` into `to` (provisioning putting the discovery agent's state
/// directory onto the installed disk).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// How the installed OS's agent gets its identity.
enum Handover {
    /// Provisioning copied the discovery agent's state directory onto the disk.
    CopiedStateDir,
    /// An operator's bootstrap token (`anneal tokens create`).
    OperatorToken,
}

/// Discovery stage → reboot → installed stage → local boot, with every log retrievable.
async fn a_workflow_crosses_into_the_installed_os(handover: Handover) {
    let server = TestServer::start_with(|a| a.heartbeat_secs = Some(1)).await;
    put_discovery(&server, b"kernel");
    let work = tempfile::tempdir().unwrap();
    let witness = work.path().join("witness");
    apply_to_disk(&server, &witness).await;
    let discovery_state = work.path().join("discovery-state");

    // The discovery image: its agent runs stage one and "reboots".
    let discovery = FixtureAgent::boot_keeping(&server, work.path(), Some(&discovery_state)).await;
    let id = wait_for_machine(&server).await;
    assert_eq!(assign(&server, id, "to-disk").await.phase, "ready");
    discovery.wait_for_reboot(30).await;
    assert!(
        discovery.rebooted.exists(),
        "{:?}",
        run_of(&server, id).await
    );
    discovery.stop().await;
    std::fs::remove_file(work.path().join("rebooted")).unwrap();
    let run = run_of(&server, id).await;
    assert_eq!(
        (run.phase.as_str(), run.booting.as_deref()),
        ("booting", Some("installed"))
    );

    // The machine network-boots: `installed` boots the local disk, exactly like `local`.
    let script = machine_script(&server, FixtureAgent::MAC, "", "efi").await;
    assert!(
        script.contains("booting from the local disk") && script.contains("exit 1"),
        "{script}"
    );
    assert_eq!(
        run_of(&server, id).await.phase,
        "booting",
        "not crossed yet"
    );

    // The installed OS's agent, in a new boot.
    let installed_state = work.path().join("installed-state");
    let token = match handover {
        Handover::CopiedStateDir => {
            copy_dir(&discovery_state, &installed_state);
            String::new()
        }
        Handover::OperatorToken => server.bootstrap_token(1).await,
    };
    let mut events = EventStream::open(&server, "kind=machine_booted,machine_enrolled", None).await;
    let installed =
        FixtureAgent::installed(&server, work.path(), &installed_state, "boot-2", &token);
    installed.wait_for_reboot(30).await;
    assert!(
        installed.rebooted.exists(),
        "the installed agent ran its stage and was told to reboot: {:?}",
        run_of(&server, id).await
    );
    installed.stop().await;
    let run = run_of(&server, id).await;
    assert_eq!(
        (run.phase.as_str(), run.booting.as_deref()),
        ("booting", Some("local"))
    );
    let script = machine_script(&server, FixtureAgent::MAC, "", "efi").await;
    assert!(script.contains("exit 1"), "{script}");
    assert_eq!(run_of(&server, id).await.phase, "done");

    // Each task ran once, in its own environment; every log is there.
    assert_eq!(read(&witness), "prepare\nconfigure\n");
    let jobs = jobs_of(&server, id).await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    for job in &jobs {
        assert_eq!(job.state, "succeeded", "{job:?}");
        assert_eq!(
            String::from_utf8(log_of(&server, job.id).await).unwrap(),
            format!("{}\n", job.task)
        );
    }

    // One machine record throughout; how the boot was proved depends on the handover.
    let m = machine(&server, id).await;
    assert_eq!(
        server
            .api_get("/api/v1/machines")
            .await
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(m["boot_id"], "boot-2");
    let event = events.next().await;
    match handover {
        Handover::CopiedStateDir => {
            assert_eq!(
                m["enrollments"], 1,
                "the kept certificate, no enrollment: {m}"
            );
            assert_eq!(event.kind, EventKind::MachineBooted, "{event:?}");
            assert_eq!(event.boot_env.as_deref(), Some("installed"));
            assert_eq!(event.machine_id, Some(id));
        }
        Handover::OperatorToken => {
            assert_eq!(m["enrollments"], 2, "{m}");
            assert_eq!(event.kind, EventKind::MachineEnrolled, "{event:?}");
            assert_eq!(event.state.as_deref(), Some("recognised"));
            assert!(uses_left(&server).await.is_empty(), "the token's use taken");
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn a_workflow_crosses_into_the_installed_os_with_the_state_dir_provisioning_copied() {
    a_workflow_crosses_into_the_installed_os(Handover::CopiedStateDir).await;
}

#[tokio::test]
async fn a_workflow_crosses_into_the_installed_os_with_an_operator_token() {
    a_workflow_crosses_into_the_installed_os(Handover::OperatorToken).await;
}

/// An installed agent restarted within one boot is not a reboot (the run still waits for the
/// machine to come back); restarted in a new boot it reports the boot with its kept
/// certificate, without enrolling (the token's uses stay as they were).
#[tokio::test]
async fn a_restart_is_a_reboot_only_with_a_new_boot_id_and_never_enrolls_again() {
    let server = TestServer::start_with(|a| a.heartbeat_secs = Some(1)).await;
    let work = tempfile::tempdir().unwrap();
    let witness = work.path().join("witness");
    let state = work.path().join("state");
    let rebooted = work.path().join("rebooted");
    apply(
        &server,
        &[
            witness_task("a", &witness),
            witness_task("b", &witness),
            stage("one", "installed", &["a"], StageEnd::Reboot),
            stage("two", "installed", &["b"], StageEnd::Continue),
            ContentObject::Workflow(Workflow {
                name: "on-disk".into(),
                stages: vec!["one".into(), "two".into()],
                ..Workflow::default()
            }),
        ],
    )
    .await;
    let token = server.bootstrap_token(3).await;

    // First start: no kept certificate, so it enrolls with the token, naming `installed`.
    let first = FixtureAgent::installed(&server, work.path(), &state, "boot-1", &token);
    let id = wait_for_machine(&server).await;
    assert_eq!(uses_left(&server).await, vec![2]);
    // Assigned while its agent runs in `installed`: the first stage starts in this boot.
    assert_eq!(assign(&server, id, "on-disk").await.phase, "ready");
    first.wait_for_reboot(30).await;
    assert!(rebooted.exists(), "{:?}", run_of(&server, id).await);
    first.stop().await;
    assert_eq!(read(&witness), "a\n");

    // The script is served, but the agent comes back in the same boot: not a reboot.
    machine_script(&server, FixtureAgent::MAC, "", "efi").await;
    std::fs::remove_file(&rebooted).unwrap();
    let again = FixtureAgent::installed(&server, work.path(), &state, "boot-1", "");
    again.wait_for_reboot(30).await;
    assert!(rebooted.exists(), "told to reboot again");
    again.stop().await;
    let run = run_of(&server, id).await;
    assert_eq!((run.phase.as_str(), run.stage), ("booting", 1), "{run:?}");

    // A new boot: the kept certificate, a boot report, the second stage; no enrollment.
    std::fs::remove_file(&rebooted).unwrap();
    let later = FixtureAgent::installed(&server, work.path(), &state, "boot-2", "");
    wait_for_phase(&server, id, "done", 30).await;
    later.stop().await;
    assert_eq!(read(&witness), "a\nb\n");
    let m = machine(&server, id).await;
    assert_eq!(m["enrollments"], 1, "{m}");
    assert_eq!(m["boot_id"], "boot-2");
    assert_eq!(uses_left(&server).await, vec![2], "no use taken");
    let saved: Value = serde_json::from_str(&read(&state.join("enrollment.json"))).unwrap();
    assert_eq!(
        saved["boot_id"], "boot-2",
        "the reported boot is remembered"
    );
    server.stop().await;
}

/// With short-lived certificates the installed agent renews while it runs and keeps the new
/// one: after the first certificate has expired, a new boot still starts with no token.
#[tokio::test]
async fn certificates_are_renewed_kept_and_used_after_the_first_expired() {
    // Below the flag's 300 s floor, set in the resolved configuration.
    let server =
        TestServer::start_configured(|a| a.heartbeat_secs = Some(1), |c| c.client_cert_secs = 12)
            .await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let token = server.bootstrap_token(1).await;
    let agent = FixtureAgent::installed(&server, work.path(), &state, "boot-1", &token);
    let id = wait_for_machine(&server).await;
    let cert = || read(&state.join("cert.pem"));
    wait_until(10, "the first certificate", || async { !cert().is_empty() }).await;
    let first = cert();
    let saved: Value = serde_json::from_str(&read(&state.join("enrollment.json"))).unwrap();
    let expires = time::OffsetDateTime::parse(
        saved["not_after"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();

    // Renewed once two thirds of 12 s have passed, and saved.
    wait_until(15, "a renewal", || async { cert() != first }).await;
    let renewed = cert();
    agent.stop().await;
    while time::OffsetDateTime::now_utc() < expires + time::Duration::seconds(1) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The first certificate is gone; the renewed one carries the next boot, and is renewed in
    // turn.
    let next = FixtureAgent::installed(&server, work.path(), &state, "boot-2", "");
    wait_until(10, "the boot report", || async {
        machine(&server, id).await["boot_id"] == "boot-2"
    })
    .await;
    wait_until(15, "another renewal", || async {
        let c = cert();
        c != renewed && c != first
    })
    .await;
    let m = machine(&server, id).await;
    assert_eq!(m["enrollments"], 1, "never enrolled again: {m}");
    next.stop().await;
    server.stop().await;
}

/// Only an environment flagged `installed` may be named: in a boot report (422, nothing
/// recorded) or in an enrollment (refused before the token is spent).
#[tokio::test]
async fn only_installed_environments_may_be_named() {
    let server = TestServer::start().await;
    let session = server.enroll(hints(7), "boot-1").await;
    for (env, why) in [
        ("discovery", "is not flagged installed"),
        ("local", "is not flagged installed"),
        ("nowhere", "is not defined"),
    ] {
        match session.report_boot(env).await {
            Err(ClientError::Problem {
                status: 422,
                detail,
            }) => {
                assert!(detail.contains(why), "{env}: {detail}")
            }
            other => panic!("{env}: {other:?}"),
        }
    }
    let m = machine(&server, session.machine_id).await;
    assert_eq!(m["boot_id"], "boot-1", "nothing recorded");

    let token = server.bootstrap_token(1).await;
    let refused = server
        .enroller(Clock::system())
        .with_environment("discovery")
        .enroll(&token, hints(8), "boot-1", "host")
        .await;
    match refused {
        Err(ClientError::Problem {
            status: 422,
            detail,
        }) => {
            assert!(detail.contains("not flagged installed"), "{detail}")
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("enrolled naming discovery"),
    }
    assert_eq!(uses_left(&server).await, vec![1], "the token is not spent");
    server
        .enroller(Clock::system())
        .with_environment("installed")
        .enroll(&token, hints(8), "boot-1", "host")
        .await
        .expect("naming installed is fine");
    session
        .report_boot("installed")
        .await
        .expect("so is reporting it");
    server.stop().await;
}

/// An installed agent with neither a usable certificate nor a token stops and says what to do.
#[tokio::test]
async fn without_certificate_or_token_the_installed_agent_says_what_to_do() {
    let server = TestServer::start().await;
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let agent = FixtureAgent::installed(&server, work.path(), &state, "boot-1", "");
    let err = agent.exited(30).await.expect_err("nothing to enroll with");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&format!("no usable certificate in {}", state.display()))
            && msg.contains("anneal tokens create")
            && msg.contains("--token-file")
            && msg.contains("copy the state directory"),
        "{msg}"
    );
    server.stop().await;
}
