//! The conformance suite every [`Store`] engine must pass, races included.
//!
//! Engine-neutral on purpose: `server/tests/store_sqlite.rs` runs it against SQLite, and the
//! PostgreSQL engine will run the very same functions. Each check panics with a message on
//! failure (it is test support, called only from tests).

use std::sync::Arc;

use anneal_shared::api::MachineState;
use anneal_shared::inventory::{Inventory, System};
use anneal_shared::protocol::{IdentityHints, Nic};
use anneal_shared::MachineId;
use time::{Duration, OffsetDateTime};

use super::*;
use crate::identity::Evidence;

/// Runs every check against fresh stores made by `make`.
pub async fn run_all<F, Fut>(make: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn Store>>,
{
    settings_first_writer_wins(make().await).await;
    token_uses_are_never_exceeded_under_concurrency(make().await).await;
    concurrent_enrollments_of_one_machine_make_one_record(make().await).await;
    machine_state_cas_has_one_winner(make().await).await;
    refused_tokens_change_nothing(make().await).await;
    quarantine_keeps_the_token_and_both_records(make().await).await;
    reenrollment_in_the_same_boot_raises_an_alert(make().await).await;
    a_lost_answer_is_replayed_to_the_same_boot_only(make().await).await;
    revocation_and_certs(make().await).await;
    heartbeats_and_inventory(make().await).await;
    leases_offer_bind_release_decline(make().await).await;
    concurrent_offers_never_share_an_address(make().await).await;
    offers_take_the_lowest_never_used_address(make().await).await;
    boot_routing_by_uuid_and_mac(make().await).await;
    machine_bound_tokens_enroll_only_their_machine(make().await).await;
    boot_requests_last_until_the_next_enrollment(make().await).await;
    use super::conformance_workflow as wf;
    wf::content_versions_are_kept_and_unchanged_applies_make_none(make().await).await;
    wf::concurrent_asks_hand_out_one_attempt(make().await).await;
    wf::log_chunks_never_lose_or_repeat_a_byte(make().await).await;
    wf::machine_params_compare_and_set(make().await).await;
    wf::logs_past_retention_are_pruned(make().await).await;
    use super::conformance_fleet as fleet;
    fleet::labels_change_by_compare_and_set(make().await).await;
    fleet::a_claim_is_taken_once(make().await).await;
    fleet::rules_are_recorded_once(make().await).await;
    fleet::new_tokens_mark_only_machines_they_create(make().await).await;
    super::conformance_audit::audit_entries_are_kept_listed_and_filtered(make().await).await;
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(super) fn hints(n: u32) -> IdentityHints {
    IdentityHints {
        system_uuid: Some(format!("6f1c2a3b-0000-4000-8000-{n:012x}")),
        system_serial: Some(format!("SRV-{n:06}")),
        macs: vec![Nic {
            mac: format!("00:1b:21:00:{:02x}:{:02x}", (n >> 8) & 0xff, n & 0xff),
            bus: Some("pci".into()),
        }],
        ..Default::default()
    }
}

pub(super) fn input(token_hash: &str, hints: IdentityHints, boot_id: &str) -> EnrollInput {
    EnrollInput {
        token_hash: token_hash.into(),
        evidence: Evidence::from_hints(&hints),
        macs: hints.macs.iter().map(|n| n.mac.clone()).collect(),
        hints,
        boot_id: boot_id.into(),
        hostname: Some("host".into()),
        require_approval: false,
        now: now(),
    }
}

pub(super) async fn add_token(
    store: &Arc<dyn Store>,
    hash: &str,
    uses: u32,
    ttl: Duration,
    mac: Option<&str>,
) {
    store
        .insert_bootstrap_token(&BootstrapTokenRecord {
            id: format!("id-{hash}"),
            hash: hash.into(),
            uses_left: uses,
            expires_at: now() + ttl,
            mac: mac.map(str::to_string),
            description: None,
            created_at: now(),
        })
        .await
        .expect("insert bootstrap token");
}

/// A signer that makes a fake (but unique) serial, so the suite needs no CA.
fn signer() -> impl Fn(MachineId) -> Result<SignedCert, String> + Send + Sync {
    |id| {
        Ok(SignedCert {
            cert_pem: format!("cert for {id}"),
            serial: uuid::Uuid::new_v4().simple().to_string(),
            not_after: now() + Duration::days(1),
        })
    }
}

pub(super) async fn enroll(store: &Arc<dyn Store>, input: &EnrollInput) -> EnrollOutcome {
    store.enroll(input, &signer()).await.expect("enroll")
}

/// Several servers creating the CA at once: exactly one write wins.
pub async fn settings_first_writer_wins(store: Arc<dyn Store>) {
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.put_setting_if_absent("ca", &format!("ca-{i}")).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if t.await.expect("join").expect("put") {
            winners += 1;
        }
    }
    assert_eq!(
        winners, 1,
        "exactly one concurrent put_setting_if_absent wins"
    );
    let v = store.get_setting("ca").await.expect("get").expect("set");
    assert!(v.starts_with("ca-"));
}

/// A token good for 3 enrollments, claimed by 24 machines at once: exactly 3 get in.
pub async fn token_uses_are_never_exceeded_under_concurrency(store: Arc<dyn Store>) {
    add_token(&store, "three", 3, Duration::hours(1), None).await;
    let mut tasks = Vec::new();
    for n in 0..24 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.enroll(&input("three", hints(n), &format!("boot-{n}")), &signer())
                .await
        }));
    }
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("join").expect("enroll") {
            EnrollOutcome::Enrolled { .. } => ok += 1,
            EnrollOutcome::TokenRefused(TokenRefusal::UsedUp) => refused += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(
        (ok, refused),
        (3, 21),
        "a 3-use token admits exactly 3 of 24"
    );
    assert_eq!(store.list_machines().await.expect("list").len(), 3);
    assert!(
        store
            .list_bootstrap_tokens(now())
            .await
            .expect("list")
            .is_empty(),
        "a used-up token is no longer listed"
    );
}

/// The same new machine enrolling from 12 tasks at once ends up as one record.
pub async fn concurrent_enrollments_of_one_machine_make_one_record(store: Arc<dyn Store>) {
    add_token(&store, "many", 100, Duration::hours(1), None).await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.enroll(&input("many", hints(7), &format!("boot-{i}")), &signer())
                .await
        }));
    }
    let mut ids = std::collections::BTreeSet::new();
    let mut created = 0;
    for t in tasks {
        match t.await.expect("join").expect("enroll") {
            EnrollOutcome::Enrolled {
                machine_id,
                created: c,
                ..
            } => {
                ids.insert(machine_id);
                created += c as u32;
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(ids.len(), 1, "one machine, one record");
    assert_eq!(created, 1, "exactly one enrollment created it");
    let m = store.list_machines().await.expect("list");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].enrollments, 12);
}

/// Twenty tasks try to change a machine from the same version: one wins, the rest see Conflict.
pub async fn machine_state_cas_has_one_winner(store: Arc<dyn Store>) {
    add_token(&store, "t", 1, Duration::hours(1), None).await;
    let mut i = input("t", hints(1), "b");
    i.require_approval = true;
    let EnrollOutcome::Enrolled {
        machine_id, state, ..
    } = enroll(&store, &i).await
    else {
        panic!("enrollment failed")
    };
    assert_eq!(state, MachineState::Pending);
    let version = store
        .get_machine(machine_id)
        .await
        .expect("get")
        .expect("exists")
        .version;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.set_machine_state(machine_id, version, MachineState::Discovered)
                .await
        }));
    }
    let mut done = 0;
    for t in tasks {
        if let Cas::Done(v) = t.await.expect("join").expect("cas") {
            assert_eq!(v, version + 1);
            done += 1;
        }
    }
    assert_eq!(done, 1, "exactly one compare-and-set wins");
    let m = store
        .get_machine(machine_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(m.state, MachineState::Discovered);
    assert_eq!(
        store
            .set_machine_state(uuid::Uuid::new_v4(), 1, MachineState::Pending)
            .await
            .expect("cas"),
        Cas::Conflict,
        "an unknown machine is a conflict, not an error"
    );
}

/// Unknown, expired and wrong-MAC tokens are refused and consume nothing.
pub async fn refused_tokens_change_nothing(store: Arc<dyn Store>) {
    add_token(&store, "old", 5, Duration::seconds(-1), None).await;
    add_token(
        &store,
        "bound",
        1,
        Duration::hours(1),
        Some("00:1b:21:aa:bb:cc"),
    )
    .await;
    let cases = [
        ("nope", TokenRefusal::Unknown),
        ("old", TokenRefusal::Expired),
        ("bound", TokenRefusal::WrongMac),
    ];
    for (hash, want) in cases {
        match enroll(&store, &input(hash, hints(3), "b")).await {
            EnrollOutcome::TokenRefused(r) => assert_eq!(r, want, "token {hash}"),
            other => panic!("token {hash}: unexpected {other:?}"),
        }
    }
    assert!(store.list_machines().await.expect("list").is_empty());
    // The bound token still works for the machine that has the MAC.
    let mut h = hints(3);
    h.macs.push(Nic {
        mac: "00:1b:21:aa:bb:cc".into(),
        bus: Some("pci".into()),
    });
    assert!(matches!(
        enroll(&store, &input("bound", h, "b")).await,
        EnrollOutcome::Enrolled { .. }
    ));
}

/// UUID of one machine with the MAC of another: held back, no record merged, token kept.
pub async fn quarantine_keeps_the_token_and_both_records(store: Arc<dyn Store>) {
    add_token(&store, "q", 3, Duration::hours(1), None).await;
    assert!(matches!(
        enroll(&store, &input("q", hints(1), "b1")).await,
        EnrollOutcome::Enrolled { .. }
    ));
    assert!(matches!(
        enroll(&store, &input("q", hints(2), "b2")).await,
        EnrollOutcome::Enrolled { .. }
    ));
    let mut mixed = hints(1);
    mixed.system_serial = None;
    mixed.macs = hints(2).macs;
    match enroll(&store, &input("q", mixed, "b3")).await {
        EnrollOutcome::Quarantined { reason, .. } => assert!(!reason.is_empty()),
        other => panic!("expected quarantine, got {other:?}"),
    }
    // The same machine retrying within its boot updates the entry instead of adding one.
    let mut retry = hints(1);
    retry.system_serial = None;
    retry.macs = hints(2).macs;
    assert!(matches!(
        enroll(&store, &input("q", retry, "b3")).await,
        EnrollOutcome::Quarantined { .. }
    ));
    let q = store.list_quarantine().await.expect("list");
    assert_eq!(q.len(), 1, "one entry per machine and boot");
    assert_eq!(q[0].attempts, 2);
    assert_eq!(q[0].candidates.len(), 2, "both records are named");
    assert_eq!(store.list_machines().await.expect("list").len(), 2);
    let tokens = store.list_bootstrap_tokens(now()).await.expect("list");
    assert_eq!(tokens[0].uses_left, 1, "quarantine does not consume a use");
}

/// Enrolling twice with one kernel boot id records an alert; a new boot id does not.
pub async fn reenrollment_in_the_same_boot_raises_an_alert(store: Arc<dyn Store>) {
    add_token(&store, "r", 3, Duration::hours(1), None).await;
    let EnrollOutcome::Enrolled { machine_id, .. } =
        enroll(&store, &input("r", hints(4), "boot-a")).await
    else {
        panic!("enroll")
    };
    let EnrollOutcome::Enrolled { same_boot, .. } =
        enroll(&store, &input("r", hints(4), "boot-b")).await
    else {
        panic!("enroll")
    };
    assert!(!same_boot);
    let EnrollOutcome::Enrolled {
        same_boot,
        machine_id: again,
        ..
    } = enroll(&store, &input("r", hints(4), "boot-b")).await
    else {
        panic!("enroll")
    };
    assert!(same_boot);
    assert_eq!(again, machine_id);
    let m = store
        .get_machine(machine_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(m.alerts.len(), 1);
    assert_eq!(m.alerts[0].kind, "reenroll_same_boot");
    assert_eq!(m.boot_id.as_deref(), Some("boot-b"));
}

/// A retry of a single-use token's enrollment from the same boot (its answer was lost) is
/// answered again: same machine, a new certificate, the lost one revoked, no alert. Another
/// boot, another machine, or a token with uses left is treated as before.
pub async fn a_lost_answer_is_replayed_to_the_same_boot_only(store: Arc<dyn Store>) {
    add_token(&store, "once", 1, Duration::hours(1), None).await;
    let EnrollOutcome::Enrolled {
        machine_id,
        cert: lost,
        replayed: false,
        ..
    } = enroll(&store, &input("once", hints(31), "boot-a")).await
    else {
        panic!("enroll")
    };
    let EnrollOutcome::Enrolled {
        machine_id: again,
        cert,
        replayed,
        same_boot,
        created,
        ..
    } = enroll(&store, &input("once", hints(31), "boot-a")).await
    else {
        panic!("the retry is answered")
    };
    assert!(replayed && !same_boot && !created);
    assert_eq!(again, machine_id);
    assert_ne!(cert.serial, lost.serial);
    let lost = store.get_cert(&lost.serial).await.unwrap().expect("cert");
    assert!(
        lost.revoked_at.is_some(),
        "the lost answer's certificate is revoked"
    );
    let kept = store.get_cert(&cert.serial).await.unwrap().expect("cert");
    assert!(kept.revoked_at.is_none());
    // Replays chain: a second lost answer is answered too, revoking the one before.
    let EnrollOutcome::Enrolled { cert: third, .. } =
        enroll(&store, &input("once", hints(31), "boot-a")).await
    else {
        panic!("a second retry is answered")
    };
    let second = store.get_cert(&cert.serial).await.unwrap().expect("cert");
    assert!(second.revoked_at.is_some());
    assert_ne!(third.serial, cert.serial);
    let m = store
        .get_machine(machine_id)
        .await
        .unwrap()
        .expect("machine");
    assert!(
        m.alerts.is_empty(),
        "a replay is no same-boot re-enrollment"
    );
    assert_eq!(m.boot_id.as_deref(), Some("boot-a"));

    // Not for another boot of the machine, nor for another machine from that boot id.
    for (h, boot) in [(hints(31), "boot-b"), (hints(32), "boot-a")] {
        assert!(matches!(
            enroll(&store, &input("once", h, boot)).await,
            EnrollOutcome::TokenRefused(TokenRefusal::UsedUp)
        ));
    }
    // Nor long after: the window is ten minutes.
    let mut late = input("once", hints(31), "boot-a");
    late.now += Duration::minutes(11);
    assert!(matches!(
        enroll(&store, &late).await,
        EnrollOutcome::TokenRefused(TokenRefusal::UsedUp)
    ));
    assert_eq!(store.list_machines().await.unwrap().len(), 1);
}

/// Certificates are tracked per serial and revoked per machine.
pub async fn revocation_and_certs(store: Arc<dyn Store>) {
    add_token(&store, "c", 1, Duration::hours(1), None).await;
    let EnrollOutcome::Enrolled {
        machine_id, cert, ..
    } = enroll(&store, &input("c", hints(5), "b")).await
    else {
        panic!("enroll")
    };
    let rec = store
        .get_cert(&cert.serial)
        .await
        .expect("get")
        .expect("recorded");
    assert_eq!(rec.machine_id, machine_id);
    assert!(rec.revoked_at.is_none());
    store
        .insert_cert(&CertRecord {
            serial: "renewed".into(),
            machine_id,
            not_after: now() + Duration::days(1),
            revoked_at: None,
        })
        .await
        .expect("insert");
    assert_eq!(
        store
            .revoke_machine_certs(machine_id, now())
            .await
            .expect("revoke"),
        2
    );
    assert!(store
        .get_cert(&cert.serial)
        .await
        .expect("get")
        .expect("rec")
        .revoked_at
        .is_some());
    assert!(store
        .get_cert("renewed")
        .await
        .expect("get")
        .expect("rec")
        .revoked_at
        .is_some());
    assert_eq!(
        store
            .revoke_machine_certs(machine_id, now())
            .await
            .expect("revoke"),
        0
    );
    assert!(store.get_cert("unknown").await.expect("get").is_none());
}

/// Heartbeats update last-seen (never backwards) and status; inventory round-trips.
pub async fn heartbeats_and_inventory(store: Arc<dyn Store>) {
    add_token(&store, "h", 1, Duration::hours(1), None).await;
    let EnrollOutcome::Enrolled { machine_id, .. } =
        enroll(&store, &input("h", hints(6), "b")).await
    else {
        panic!("enroll")
    };
    let later = now() + Duration::minutes(5);
    store
        .record_heartbeats(&[
            Heartbeat {
                machine_id,
                status: "second".into(),
                at: later,
            },
            Heartbeat {
                machine_id,
                status: "first".into(),
                at: later - Duration::minutes(1),
            },
        ])
        .await
        .expect("heartbeats");
    let m = store
        .get_machine(machine_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(
        super::to_ms(m.last_seen.expect("seen")),
        super::to_ms(later),
        "last_seen never goes back"
    );
    assert_eq!(
        m.status.as_deref(),
        Some("second"),
        "an older heartbeat does not overwrite status"
    );
    let inv = Inventory {
        system: Some(System {
            serial: Some("SRV-000006".into()),
            ..Default::default()
        }),
        ..Default::default()
    };
    store
        .put_inventory(machine_id, &inv, now())
        .await
        .expect("inventory");
    let m = store
        .get_machine(machine_id)
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(m.inventory.as_ref(), Some(&inv));
    assert!(m.inventory_at.is_some());
}

fn lease_offer(mac: &str, lo: [u8; 4], hi: [u8; 4]) -> LeaseOp {
    LeaseOp::Offer {
        subnet: "10.9.0.0/24".into(),
        mac: mac.into(),
        range: (lo.into(), hi.into()),
        fixed: None,
        requested: None,
        exclude: vec![],
        hold_until: now() + Duration::seconds(60),
        hostname: None,
    }
}

async fn one_lease_op(store: &Arc<dyn Store>, op: LeaseOp) -> LeaseOutcome {
    let mut out = store.apply_lease_ops(&[op], now()).await.expect("lease op");
    assert_eq!(out.len(), 1, "one outcome per op");
    out.remove(0)
}

/// Offer → bind → renew keeps the address; another MAC cannot bind it; release frees it but the
/// client gets it back; decline keeps it away from everyone; reservations are exact.
pub async fn leases_offer_bind_release_decline(store: Arc<dyn Store>) {
    use std::net::Ipv4Addr;
    let (a, b) = ("00:00:5e:00:53:0a", "00:00:5e:00:53:0b");
    let LeaseOutcome::Leased(ip) =
        one_lease_op(&store, lease_offer(a, [10, 9, 0, 10], [10, 9, 0, 12])).await
    else {
        panic!("offer")
    };
    assert_eq!(ip, Ipv4Addr::new(10, 9, 0, 10), "lowest free address first");
    let bind = |mac: &str, ip: Ipv4Addr| LeaseOp::Bind {
        subnet: "10.9.0.0/24".into(),
        mac: mac.into(),
        ip,
        expires_at: now() + Duration::hours(1),
        hostname: Some("h".into()),
    };
    assert_eq!(
        one_lease_op(&store, bind(a, ip)).await,
        LeaseOutcome::Leased(ip)
    );
    assert_eq!(
        one_lease_op(&store, bind(a, ip)).await,
        LeaseOutcome::Leased(ip),
        "renew"
    );
    assert_eq!(
        one_lease_op(&store, bind(b, ip)).await,
        LeaseOutcome::Conflict
    );
    // A new DISCOVER from the holder offers the same address and keeps it bound.
    assert_eq!(
        one_lease_op(&store, lease_offer(a, [10, 9, 0, 10], [10, 9, 0, 12])).await,
        LeaseOutcome::Leased(ip)
    );
    let rec = store.get_lease(ip).await.expect("get").expect("row");
    assert_eq!(
        rec.state,
        LeaseState::Bound,
        "an offer never downgrades a bound lease"
    );
    assert_eq!(rec.mac, a);
    // b gets another address.
    let LeaseOutcome::Leased(ip_b) =
        one_lease_op(&store, lease_offer(b, [10, 9, 0, 10], [10, 9, 0, 12])).await
    else {
        panic!("offer b")
    };
    assert_ne!(ip_b, ip);
    // Release: only the holder can.
    assert_eq!(
        one_lease_op(&store, LeaseOp::Release { mac: b.into(), ip }).await,
        LeaseOutcome::Applied(false)
    );
    assert_eq!(
        one_lease_op(&store, LeaseOp::Release { mac: a.into(), ip }).await,
        LeaseOutcome::Applied(true)
    );
    assert_eq!(
        store.get_lease(ip).await.expect("get").expect("row").state,
        LeaseState::Released
    );
    assert_eq!(
        one_lease_op(&store, lease_offer(a, [10, 9, 0, 10], [10, 9, 0, 12])).await,
        LeaseOutcome::Leased(ip),
        "a released client gets its address back"
    );
    // Decline: nobody gets it until it runs out.
    assert_eq!(
        one_lease_op(
            &store,
            LeaseOp::Decline {
                mac: a.into(),
                ip,
                until: now() + Duration::hours(1)
            }
        )
        .await,
        LeaseOutcome::Applied(true)
    );
    assert_eq!(
        one_lease_op(&store, bind(a, ip)).await,
        LeaseOutcome::Conflict
    );
    let LeaseOutcome::Leased(ip_a2) =
        one_lease_op(&store, lease_offer(a, [10, 9, 0, 10], [10, 9, 0, 12])).await
    else {
        panic!("offer after decline")
    };
    assert!(ip_a2 != ip && ip_a2 != ip_b);
    // Range full (3 addresses: declined, b, a) → exhausted for a fourth client.
    assert_eq!(
        one_lease_op(
            &store,
            lease_offer("00:00:5e:00:53:0c", [10, 9, 0, 10], [10, 9, 0, 12])
        )
        .await,
        LeaseOutcome::Exhausted
    );
    // Reservation: exactly that address or nothing; excluded from others' dynamic picks.
    let reserved = Ipv4Addr::new(10, 9, 0, 50);
    let mut op = lease_offer("00:00:5e:00:53:0d", [10, 9, 0, 10], [10, 9, 0, 12]);
    if let LeaseOp::Offer { fixed, .. } = &mut op {
        *fixed = Some(reserved);
    }
    assert_eq!(
        one_lease_op(&store, op).await,
        LeaseOutcome::Leased(reserved)
    );
    let mut op = lease_offer("00:00:5e:00:53:0e", [10, 9, 0, 50], [10, 9, 0, 51]);
    if let LeaseOp::Offer { exclude, .. } = &mut op {
        *exclude = vec![reserved];
    }
    assert_eq!(
        one_lease_op(&store, op).await,
        LeaseOutcome::Leased(Ipv4Addr::new(10, 9, 0, 51))
    );
    // Several ops in one batch, each deciding on its own.
    let out = store
        .apply_lease_ops(&[bind(b, ip_b), bind(b, ip_a2)], now())
        .await
        .expect("batch");
    assert_eq!(
        out,
        vec![LeaseOutcome::Leased(ip_b), LeaseOutcome::Conflict]
    );
    assert_eq!(store.leases_of(b).await.expect("of").len(), 1);
    assert!(store.list_leases().await.expect("list").len() >= 5);
}

/// Many tasks offer and bind at once: every client gets an address, no address is handed to
/// two MACs, and every bound lease is stored.
pub async fn concurrent_offers_never_share_an_address(store: Arc<dyn Store>) {
    let clients = 64u32;
    let mut tasks = Vec::new();
    for n in 0..clients {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mac = format!("02:00:00:00:{:02x}:{:02x}", n >> 8, n & 0xff);
            let LeaseOutcome::Leased(ip) =
                one_lease_op(&store, lease_offer(&mac, [10, 9, 0, 1], [10, 9, 0, 254])).await
            else {
                panic!("offer for {mac}")
            };
            let out = one_lease_op(
                &store,
                LeaseOp::Bind {
                    subnet: "10.9.0.0/24".into(),
                    mac: mac.clone(),
                    ip,
                    expires_at: now() + Duration::hours(1),
                    hostname: None,
                },
            )
            .await;
            assert_eq!(out, LeaseOutcome::Leased(ip), "bind for {mac}");
            (mac, ip)
        }));
    }
    let mut seen = std::collections::HashMap::new();
    for t in tasks {
        let (mac, ip) = t.await.expect("task");
        if let Some(other) = seen.insert(ip, mac.clone()) {
            panic!("{ip} handed to {other} and {mac}");
        }
    }
    let stored = store.list_leases().await.expect("list");
    let bound: Vec<_> = stored
        .iter()
        .filter(|l| l.state == LeaseState::Bound)
        .collect();
    assert_eq!(bound.len(), clients as usize, "every lease stored");
    for l in bound {
        assert_eq!(seen.get(&l.ip), Some(&l.mac), "stored holder matches");
    }
}

/// Offers walk the range from the bottom, around addresses already taken (a requested one
/// further up) and excluded ones (others' reservations), until it is exhausted.
pub async fn offers_take_the_lowest_never_used_address(store: Arc<dyn Store>) {
    use std::net::Ipv4Addr;
    let ip = |n: u8| Ipv4Addr::new(10, 9, 1, n);
    let offer = |n: u32, requested: Option<Ipv4Addr>| LeaseOp::Offer {
        subnet: "10.9.1.0/24".into(),
        mac: format!("02:00:00:01:00:{n:02x}"),
        range: (ip(1), ip(12)),
        fixed: None,
        requested,
        exclude: vec![ip(5)],
        hold_until: now() + Duration::seconds(60),
        hostname: None,
    };
    assert_eq!(
        one_lease_op(&store, offer(0, Some(ip(3)))).await,
        LeaseOutcome::Leased(ip(3)),
        "the requested address"
    );
    let mut got = Vec::new();
    for n in 1..=10 {
        match one_lease_op(&store, offer(n, None)).await {
            LeaseOutcome::Leased(a) => got.push(a),
            other => panic!("client {n}: {other:?}"),
        }
    }
    let want: Vec<Ipv4Addr> = [1, 2, 4, 6, 7, 8, 9, 10, 11, 12]
        .into_iter()
        .map(ip)
        .collect();
    assert_eq!(got, want, "lowest first, skipping taken and excluded");
    assert_eq!(
        one_lease_op(&store, offer(11, None)).await,
        LeaseOutcome::Exhausted,
        "12 addresses, 1 excluded, 11 held"
    );
}

// ---- Boot routing (`BootStore`, store/boot.rs) ----

/// A machine enrolled with `hints(n)` through a fresh token.
pub(super) async fn enrolled_machine(store: &Arc<dyn Store>, n: u32) -> MachineId {
    let token = format!("machine-{n}");
    add_token(store, &token, 1, Duration::hours(1), None).await;
    enrolled_id(enroll(store, &input(&token, hints(n), "b")).await)
}

fn enrolled_id(outcome: EnrollOutcome) -> MachineId {
    match outcome {
        EnrollOutcome::Enrolled { machine_id, .. } => machine_id,
        other => panic!("expected an enrollment, got {other:?}"),
    }
}

/// `hints(n)` plus a locally administered MAC, which never identifies.
fn hints_la(n: u32, mac: &str) -> IdentityHints {
    let mut h = hints(n);
    h.macs.push(Nic {
        mac: mac.into(),
        bus: Some("pci".into()),
    });
    h
}

/// A machine is found at boot by its UUID (either byte order) or by any MAC it presented,
/// identifying or not.
pub async fn boot_routing_by_uuid_and_mac(store: Arc<dyn Store>) {
    add_token(&store, "t", 1, Duration::hours(1), None).await;
    let h = hints_la(40, "52:54:00:00:00:40");
    let id = enrolled_id(enroll(&store, &input("t", h.clone(), "b")).await);
    let uuid = h.system_uuid.clone().unwrap();
    let swapped = crate::identity::uuid_byte_swapped(&uuid).unwrap();
    let by_uuid = store
        .boot_lookup(Some(&swapped), None)
        .await
        .expect("lookup");
    assert_eq!(by_uuid.map(|m| (m.id, m.matched_by)), Some((id, "uuid")));
    let by_la_mac = store
        .boot_lookup(None, Some("52:54:00:00:00:40"))
        .await
        .expect("lookup");
    assert_eq!(by_la_mac.map(|m| (m.id, m.matched_by)), Some((id, "mac")));
    assert_eq!(
        store
            .boot_lookup(
                Some("6f1c2a3b-0000-4000-8000-0000000000ff"),
                Some("52:54:00:00:00:41")
            )
            .await
            .expect("lookup"),
        None
    );
    let macs = store.boot_macs_of(id).await.expect("macs");
    assert_eq!(
        macs,
        vec!["00:1b:21:00:00:28".to_string(), "52:54:00:00:00:40".into()]
    );
}

/// A token minted for a known machine enrolls that machine only; refusing changes nothing.
pub async fn machine_bound_tokens_enroll_only_their_machine(store: Arc<dyn Store>) {
    add_token(&store, "t", 1, Duration::hours(1), None).await;
    let m1 = enrolled_id(enroll(&store, &input("t", hints(41), "b1")).await);
    let bound = BootstrapTokenRecord {
        id: "bound".into(),
        hash: "bound".into(),
        uses_left: 1,
        expires_at: now() + Duration::hours(1),
        mac: None,
        description: None,
        created_at: now(),
    };
    store
        .insert_boot_token(&bound, Some(m1), None)
        .await
        .expect("insert");
    match enroll(&store, &input("bound", hints(42), "x")).await {
        EnrollOutcome::TokenRefused(TokenRefusal::WrongMachine) => {}
        other => panic!("a new machine with m1's token: {other:?}"),
    }
    assert_eq!(store.list_machines().await.expect("list").len(), 1);
    let again = enrolled_id(enroll(&store, &input("bound", hints(41), "b2")).await);
    assert_eq!(again, m1);
}

/// A requested boot environment is visible at boot until the machine enrolls again.
pub async fn boot_requests_last_until_the_next_enrollment(store: Arc<dyn Store>) {
    add_token(&store, "t", 2, Duration::hours(1), None).await;
    let m = enrolled_id(enroll(&store, &input("t", hints(43), "b1")).await);
    assert!(!store
        .request_boot_env(uuid::Uuid::new_v4(), "discovery", now())
        .await
        .expect("request"));
    assert!(store
        .request_boot_env(m, "discovery", now())
        .await
        .expect("request"));
    let mac = hints(43).macs[0].mac.clone();
    let found = store.boot_lookup(None, Some(&mac)).await.expect("lookup");
    assert_eq!(
        found.and_then(|f| f.requested_env).as_deref(),
        Some("discovery")
    );
    enrolled_id(enroll(&store, &input("t", hints(43), "b2")).await);
    let found = store.boot_lookup(None, Some(&mac)).await.expect("lookup");
    assert_eq!(found.map(|f| f.requested_env), Some(None));
}
