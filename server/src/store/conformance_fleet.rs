//! Conformance checks of [`FleetStore`]: labels by compare-and-set, claims taken once under
//! concurrency, rules recorded once, tokens that mark new machines. Called from
//! `conformance::run_all`.

use std::sync::Arc;

use anneal_shared::api::{Claim, ClaimKind, Location, RuleOutcome, RuleResult};
use time::{Duration, OffsetDateTime};

use super::conformance::{add_token, enroll, enrolled_machine, hints, input};
use super::{Cas, EnrollOutcome, Store};

fn claim(kind: ClaimKind, by: &str) -> Claim {
    Claim {
        kind,
        by: by.into(),
        // Stored as RFC 3339 with whole seconds in mind: compare what was read back.
        at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
    }
}

/// Tags and location are written only over the version read, and read back as written.
pub async fn labels_change_by_compare_and_set(store: Arc<dyn Store>) {
    let id = enrolled_machine(&store, 71).await;
    let m = store.get_machine(id).await.unwrap().unwrap();
    assert!(m.fleet.tags.is_empty() && m.fleet.claim.is_none() && m.fleet.rule.is_none());
    let loc = Location {
        rack: Some("r12".into()),
        slot: Some("7".into()),
        ..Location::default()
    };
    let tags = vec!["db".to_string(), "web".to_string()];
    let done = store.set_labels(id, m.version, &tags, &loc).await.unwrap();
    assert_eq!(done, Cas::Done(m.version + 1));
    let none = Location::default();
    let stale = store.set_labels(id, m.version, &[], &none).await.unwrap();
    assert_eq!(stale, Cas::Conflict, "a stale version loses");
    let after = store.get_machine(id).await.unwrap().unwrap();
    assert_eq!((after.fleet.tags, after.fleet.location), (tags, loc));
    assert_eq!(after.version, m.version + 1);
    let listed = store.list_machines().await.unwrap();
    assert_eq!(listed[0].fleet.location.rack.as_deref(), Some("r12"));
}

/// Twelve concurrent takers of one claim: exactly one gets it; a restore does not overwrite a
/// newer claim.
pub async fn a_claim_is_taken_once(store: Arc<dyn Store>) {
    let id = enrolled_machine(&store, 72).await;
    assert_eq!(store.take_claim(id).await.unwrap(), None, "nothing to take");
    let v = store.get_machine(id).await.unwrap().unwrap().version;
    let c = claim(ClaimKind::Operator, "tok-1");
    assert_eq!(
        store.set_claim(id, v, Some(&c)).await.unwrap(),
        Cas::Done(v + 1)
    );
    assert_eq!(
        store.set_claim(id, v, None).await.unwrap(),
        Cas::Conflict,
        "a stale version loses"
    );
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move { s.take_claim(id).await }));
    }
    let mut taken = Vec::new();
    for t in tasks {
        taken.extend(t.await.unwrap().unwrap());
    }
    assert_eq!(taken, vec![c.clone()], "exactly one taker gets the claim");
    assert_eq!(
        store.get_machine(id).await.unwrap().unwrap().fleet.claim,
        None
    );
    store.restore_claim(id, &c).await.unwrap();
    assert_eq!(
        store.get_machine(id).await.unwrap().unwrap().fleet.claim,
        Some(c)
    );
    let newer = claim(ClaimKind::Operator, "tok-2");
    let v = store.get_machine(id).await.unwrap().unwrap().version;
    store.set_claim(id, v, Some(&newer)).await.unwrap();
    store
        .restore_claim(id, &claim(ClaimKind::New, "old"))
        .await
        .unwrap();
    assert_eq!(
        store.get_machine(id).await.unwrap().unwrap().fleet.claim,
        Some(newer)
    );
}

/// Of twelve concurrent firings of the rules for one machine, one records its outcome.
pub async fn rules_are_recorded_once(store: Arc<dyn Store>) {
    let id = enrolled_machine(&store, 73).await;
    let outcome = |result| RuleOutcome {
        at: OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap(),
        rule: Some("r".into()),
        workflow: Some("w".into()),
        result,
        reason: None,
    };
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let s = store.clone();
        let o = outcome(RuleResult::Assigned);
        tasks.push(tokio::spawn(
            async move { s.record_rule_once(id, &o).await },
        ));
    }
    let mut won = 0;
    for t in tasks {
        won += t.await.unwrap().unwrap() as u32;
    }
    assert_eq!(won, 1, "exactly one firing is recorded");
    store
        .update_rule(id, &outcome(RuleResult::Refused))
        .await
        .unwrap();
    let m = store.get_machine(id).await.unwrap().unwrap();
    assert_eq!(m.fleet.rule, Some(outcome(RuleResult::Refused)));
    assert!(!store
        .record_rule_once(id, &outcome(RuleResult::NoMatch))
        .await
        .unwrap());
}

/// A token marked new claims the machines its enrollments create, as new; a machine it merely
/// re-enrolls, and machines of ordinary tokens, stay unclaimed.
pub async fn new_tokens_mark_only_machines_they_create(store: Arc<dyn Store>) {
    add_token(&store, "fleet-new", 2, Duration::hours(1), None).await;
    assert!(store.mark_token_new("id-fleet-new").await.unwrap());
    assert!(!store.mark_token_new("no-such-token").await.unwrap());
    assert_eq!(
        store.tokens_marking_new().await.unwrap(),
        vec!["id-fleet-new".to_string()]
    );
    let EnrollOutcome::Enrolled { machine_id, .. } =
        enroll(&store, &input("fleet-new", hints(74), "b1")).await
    else {
        panic!("enrollment")
    };
    let m = store.get_machine(machine_id).await.unwrap().unwrap();
    let c = m.fleet.claim.expect("marked new");
    assert_eq!((c.kind, c.by.as_str()), (ClaimKind::New, "id-fleet-new"));

    let old = enrolled_machine(&store, 75).await;
    assert_eq!(
        store.get_machine(old).await.unwrap().unwrap().fleet.claim,
        None
    );
    let again = enroll(&store, &input("fleet-new", hints(75), "b2")).await;
    assert!(matches!(
        again,
        EnrollOutcome::Enrolled { created: false, .. }
    ));
    assert_eq!(
        store.get_machine(old).await.unwrap().unwrap().fleet.claim,
        None,
        "a re-enrollment through a new token does not make a known machine new"
    );
}
