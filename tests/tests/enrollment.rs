//! Enrollment end to end: the agent's real client against a real server over real TLS.

use std::time::Duration;

use anneal_agent::client::ClientError;
use anneal_agent::clock::Clock;
use anneal_shared::inventory::{Inventory, System};
use anneal_shared::protocol::Directive;
use anneal_tests::{hints, TestServer};

const Y2001_MS: i64 = 978_307_200_000; // 2001-01-01T00:00:00Z
const Y2040_MS: i64 = 2_208_988_800_000; // 2040-01-01T00:00:00Z

async fn machines(server: &TestServer) -> Vec<serde_json::Value> {
    server
        .http()
        .get(format!("{}/api/v1/machines", server.api_url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("json")
}

#[tokio::test]
async fn enroll_report_inventory_and_heartbeat() {
    let server = TestServer::start().await;
    let session = server.enroll(hints(1), "boot-1").await;
    assert!(session
        .agent_url
        .ends_with(&format!(":{}", server.running.agent_addr.port())));

    let hb = session.heartbeat("starting").await.expect("heartbeat");
    assert_eq!(hb.directive, Directive::SendInventory, "no inventory yet");
    let inv = Inventory {
        system: Some(System {
            serial: Some("TEST-SRV-0001".into()),
            product: Some("Virtual Rack Server".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    session.send_inventory(&inv).await.expect("inventory");
    let hb = session.heartbeat("idle").await.expect("heartbeat");
    assert_eq!(hb.directive, Directive::Wait);

    let own = session.own_record().await.expect("own record");
    assert_eq!(own.id, session.machine_id);
    assert_eq!(own.inventory.as_ref(), Some(&inv));

    // Heartbeats are group-committed; last_seen and status land within a flush interval.
    let mut seen = false;
    for _ in 0..50 {
        let list = machines(&server).await;
        assert_eq!(list.len(), 1);
        if list[0]["status"] == "idle" && !list[0]["last_seen"].is_null() {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(seen, "heartbeat status and last_seen were persisted");
    server.stop().await;
}

#[tokio::test]
async fn a_reboot_is_the_same_record_and_a_same_boot_reenrollment_raises_an_alert() {
    let server = TestServer::start().await;
    let first = server.enroll(hints(2), "boot-a").await;
    let second = server.enroll(hints(2), "boot-b").await;
    assert_eq!(
        first.machine_id, second.machine_id,
        "same machine after reboot"
    );
    let own = second.own_record().await.expect("record");
    assert_eq!(own.enrollments, 2);
    assert!(own.alerts.is_empty(), "a new boot id is a normal reboot");

    let third = server.enroll(hints(2), "boot-b").await;
    assert_eq!(third.machine_id, first.machine_id);
    let own = third.own_record().await.expect("record");
    assert_eq!(
        own.alerts.len(),
        1,
        "second enrollment within one boot is flagged"
    );
    assert_eq!(own.alerts[0].kind, "reenroll_same_boot");
    assert_eq!(machines(&server).await.len(), 1);
    server.stop().await;
}

async fn enroll_with_rtc(rtc_ms: i64) {
    let server = TestServer::start().await;
    let clock = Clock::fake(rtc_ms);
    let enroller = server.enroller(clock.clone());
    let token = server.bootstrap_token(1).await;
    let session = enroller
        .enroll(&token, hints(3), "boot", "wrong-clock")
        .await
        .expect("enrolls despite the wrong RTC");
    let real_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    assert!(
        (clock.now_ms() - real_ms).abs() < 60_000,
        "corrected clock {} is near the server's {}",
        clock.now_ms(),
        real_ms
    );
    assert!(
        (clock.local_ms() - rtc_ms).abs() < 60_000,
        "local clock stays wrong"
    );
    session
        .heartbeat("ok")
        .await
        .expect("mutual TLS works with the corrected clock");
    server.stop().await;
}

#[tokio::test]
async fn enrolls_with_rtc_in_2001() {
    enroll_with_rtc(Y2001_MS).await;
}

#[tokio::test]
async fn enrolls_with_rtc_in_2040() {
    enroll_with_rtc(Y2040_MS).await;
}

#[tokio::test]
async fn trusting_a_wrong_rtc_fails_certificate_checks() {
    // The control for the two tests above: with the offset forced to zero the agent judges
    // certificates by its 2040 clock, and the server's certificate is expired by then.
    let server = TestServer::start().await;
    let clock = Clock::fake(Y2040_MS);
    let now = clock.local_ms();
    clock.learn(now, now, now);
    let token = server.bootstrap_token(1).await;
    let err = server
        .enroller(clock)
        .enroll(&token, hints(4), "boot", "h")
        .await
        .err()
        .expect("enrollment must fail");
    assert!(matches!(err, ClientError::Transport { .. }), "{err}");
    server.stop().await;
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused_with_a_clear_error() {
    let server = TestServer::start().await;
    let wrong = format!("sha256:{}", "00".repeat(32));
    let enroller = anneal_agent::client::Enroller::new(&server.api_url, &wrong, Clock::system())
        .expect("enroller");
    let err = enroller.sync_clock().await.expect_err("must refuse");
    let text = err.to_string();
    assert!(
        matches!(err, ClientError::FingerprintMismatch { .. }),
        "{text}"
    );
    assert!(text.contains("did not present the pinned CA"), "{text}");
    assert!(
        text.contains(&server.fingerprint()),
        "names what was presented: {text}"
    );

    let bad = anneal_agent::client::Enroller::new(&server.api_url, "sha256:xyz", Clock::system());
    assert!(matches!(bad, Err(ClientError::BadFingerprint(_))));
    server.stop().await;
}

#[tokio::test]
async fn tokens_are_single_use_and_unknown_tokens_are_refused() {
    let server = TestServer::start().await;
    let token = server.bootstrap_token(1).await;
    let enroller = server.enroller(Clock::system());
    enroller
        .enroll(&token, hints(5), "b", "h")
        .await
        .expect("first use");
    let again = enroller
        .enroll(&token, hints(6), "b", "h")
        .await
        .err()
        .expect("used up");
    assert!(
        matches!(&again, ClientError::TokenRefused(d) if d.contains("no uses left")),
        "{again}"
    );
    let unknown = enroller
        .enroll("anl_boot_nope", hints(6), "b", "h")
        .await
        .err()
        .expect("unknown");
    assert!(
        matches!(&unknown, ClientError::TokenRefused(d) if d.contains("not recognised")),
        "{unknown}"
    );
    assert_eq!(machines(&server).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn approval_holds_new_machines_until_an_operator_approves() {
    let server = TestServer::start_with(|a| a.require_approval = Some(true)).await;
    let session = server.enroll(hints(7), "b").await;
    let hb = session.heartbeat("waiting").await.expect("heartbeat");
    assert_eq!(hb.directive, Directive::AwaitApproval);
    assert_eq!(machines(&server).await[0]["state"], "pending");

    let res = server
        .http()
        .post(format!(
            "{}/api/v1/machines/{}/approve",
            server.api_url, session.machine_id
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("approve");
    assert_eq!(res.status(), 200);
    let hb = session.heartbeat("ready").await.expect("heartbeat");
    assert_ne!(hb.directive, Directive::AwaitApproval);
    assert_eq!(machines(&server).await[0]["state"], "discovered");

    let res = server
        .http()
        .post(format!(
            "{}/api/v1/machines/{}/approve",
            server.api_url, session.machine_id
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("approve again");
    assert_eq!(res.status(), 409, "approving twice is a conflict");
    server.stop().await;
}

#[tokio::test]
async fn renewal_gives_a_new_certificate_that_works() {
    let server = TestServer::start().await;
    let mut session = server.enroll(hints(8), "b").await;
    let before = session.not_after;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    session.renew().await.expect("renew");
    assert!(session.not_after > before);
    session
        .heartbeat("renewed")
        .await
        .expect("new certificate accepted");
    server.stop().await;
}

#[tokio::test]
async fn contradicting_evidence_is_quarantined_not_merged() {
    let server = TestServer::start().await;
    server.enroll(hints(10), "b").await;
    server.enroll(hints(11), "b").await;
    let mut mixed = hints(10);
    mixed.system_serial = None;
    mixed.chassis_serial = None;
    mixed.macs = hints(11).macs;
    let token = server.bootstrap_token(1).await;
    let err = server
        .enroller(Clock::system())
        .enroll(&token, mixed, "b", "h")
        .await
        .err()
        .expect("quarantined");
    assert!(matches!(err, ClientError::Quarantined(_)), "{err}");
    let q: Vec<serde_json::Value> = server
        .http()
        .get(format!("{}/api/v1/quarantine", server.api_url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("quarantine list")
        .json()
        .await
        .expect("json");
    assert_eq!(q.len(), 1);
    assert_eq!(q[0]["candidates"].as_array().map(|a| a.len()), Some(2));
    assert_eq!(machines(&server).await.len(), 2, "nothing merged");
    server.stop().await;
}

#[tokio::test]
async fn a_server_restart_loses_nothing() {
    let server = TestServer::start().await;
    let fingerprint = server.fingerprint();
    let session = server.enroll(hints(12), "b").await;
    session
        .send_inventory(&Inventory::default())
        .await
        .expect("inventory");
    let spare = server.bootstrap_token(2).await;

    let server = server.restart().await;
    assert_eq!(server.fingerprint(), fingerprint, "same CA after restart");
    // The agent's existing certificate and kept-alive client keep working (it reconnects).
    session
        .heartbeat("after restart")
        .await
        .expect("agent survives a server restart");
    let list = machines(&server).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["id"], session.machine_id.to_string());
    // Tokens and their remaining uses survive too.
    server
        .enroller(Clock::system())
        .enroll(&spare, hints(13), "b", "h")
        .await
        .expect("token made before the restart still works");
    server.stop().await;
}

/// The real runner, reading a machine captured from QEMU, enrolls and reports; a second run
/// with a new boot id (a reboot) lands on the same record with a fresh enrollment.
#[tokio::test]
async fn the_runner_enrolls_a_captured_machine_and_a_reboot_keeps_its_record() {
    use anneal_agent::runner::{run, RunConfig};
    let server = TestServer::start().await;
    let token = server.bootstrap_token(2).await;
    let sysroot = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../agent/tests/fixtures/uefi-virtio/root");
    let config = |boot: &str| RunConfig {
        url: server.api_url.clone(),
        ca_fingerprint: server.fingerprint(),
        token: token.clone(),
        sysroot: sysroot.clone(),
        run_tools: false,
        lldp_listen: Duration::ZERO,
        boot_id: Some(boot.to_string()),
        once: true,
    };
    run(config("boot-1"), Clock::system())
        .await
        .expect("first boot");
    run(config("boot-2"), Clock::system())
        .await
        .expect("after reboot");

    let list = machines(&server).await;
    assert_eq!(list.len(), 1, "a reboot is not a new machine: {list:?}");
    let id = list[0]["id"].as_str().expect("id");
    let m: serde_json::Value = server
        .http()
        .get(format!("{}/api/v1/machines/{id}", server.api_url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("show")
        .json()
        .await
        .expect("json");
    assert_eq!(m["enrollments"], 2);
    assert_eq!(m["boot_id"], "boot-2");
    let inv = &m["inventory"];
    assert_eq!(inv["system"]["serial"], "SRV-B-0002");
    assert_eq!(
        inv["system"]["uuid"],
        "7c1f0a3e-58b2-4d6a-8e11-0b2c3d4e5f02"
    );
    assert_eq!(inv["chassis"]["serial"], "CHS-B-0002");
    let disks: Vec<(&str, u64)> = inv["disks"]
        .as_array()
        .expect("disks")
        .iter()
        .map(|d| {
            (
                d["serial"].as_str().unwrap_or(""),
                d["size_bytes"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert!(disks.contains(&("NVME-B-0001", 2 << 30)), "{disks:?}");
    assert!(disks.contains(&("SATA-B-0001", 3 << 30)), "{disks:?}");
    assert_eq!(list[0]["product"], "Blade Server B");
    server.stop().await;
}

/// An enrollment whose answer never reached the agent: the agent retries from the same boot
/// with the same single-use token and is answered again — the same machine, a new
/// certificate, no same-boot alert — while the certificate of the lost answer stops working.
/// The used-up token enrolls nothing else: not another boot, not another machine.
#[tokio::test]
async fn a_retry_after_a_lost_answer_is_answered_and_the_lost_certificate_revoked() {
    let server = TestServer::start().await;
    let token = server.bootstrap_token(1).await;
    let enroller = server.enroller(Clock::system());
    let lost = (enroller.enroll(&token, hints(8), "boot-x", "h").await).expect("first answer");
    let retry = (enroller.enroll(&token, hints(8), "boot-x", "h").await).expect("the retry");
    assert_eq!(retry.machine_id, lost.machine_id);
    retry
        .heartbeat("up")
        .await
        .expect("the new certificate works");
    let err = lost
        .heartbeat("up")
        .await
        .expect_err("the lost one is revoked");
    assert!(
        matches!(&err, ClientError::Unauthorized(d) if d.contains("revoked")),
        "{err}"
    );
    let own = retry.own_record().await.expect("record");
    assert!(
        own.alerts.is_empty(),
        "a replay raises no alert: {:?}",
        own.alerts
    );
    for (n, boot) in [(8, "boot-y"), (9, "boot-x")] {
        let refused = enroller.enroll(&token, hints(n), boot, "h").await;
        assert!(
            matches!(&refused, Err(ClientError::TokenRefused(d)) if d.contains("no uses left")),
            "machine {n} from {boot}: {:?}",
            refused.err()
        );
    }
    assert_eq!(machines(&server).await.len(), 1);
    server.stop().await;
}
