//! Conformance checks of [`AuditStore`](super::AuditStore): entries come back as written,
//! newest first, and every filter filters.

use std::sync::Arc;

use anneal_shared::api::Role;
use anneal_shared::events::{AuditActor, AuditEntry};
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use super::{AuditQuery, Store};

fn entry(n: u32, token: &str, machine: Option<Uuid>, at: OffsetDateTime) -> AuditEntry {
    AuditEntry {
        id: Uuid::new_v4(),
        // Whole milliseconds: what every engine keeps.
        at: at.replace_nanosecond(0).expect("whole seconds"),
        actor: AuditActor {
            token_id: token.into(),
            name: format!("{token} name"),
            role: Role::Operator,
            address: n.is_multiple_of(2).then(|| format!("192.0.2.{n}:5000")),
        },
        action: format!("action.{n}"),
        target_kind: "machine".into(),
        target: machine
            .map(|m| m.to_string())
            .unwrap_or_else(|| format!("t{n}")),
        machine_id: machine,
        before: (n > 0).then(|| serde_json::json!({ "n": n - 1 })),
        after: Some(serde_json::json!({ "n": n, "list": [1, "two"] })),
    }
}

/// Entries are kept exactly, listed newest first, and filtered by machine, target, actor
/// (token id or name), time and limit.
pub async fn audit_entries_are_kept_listed_and_filtered(store: Arc<dyn Store>) {
    let (m1, m2) = (Uuid::new_v4(), Uuid::new_v4());
    let t0 = OffsetDateTime::now_utc() - Duration::hours(1);
    let written = vec![
        entry(0, "tok-a", Some(m1), t0),
        entry(1, "tok-b", Some(m2), t0 + Duration::minutes(10)),
        entry(2, "tok-a", None, t0 + Duration::minutes(20)),
        entry(3, "tok-a", Some(m1), t0 + Duration::minutes(30)),
    ];
    for e in &written {
        store.record_audit(e).await.expect("record audit");
    }
    let list = |q: AuditQuery| {
        let store = store.clone();
        async move {
            let q = AuditQuery {
                limit: if q.limit == 0 { 100 } else { q.limit },
                ..q
            };
            store.list_audit(&q).await.expect("list audit")
        }
    };
    let all = list(AuditQuery::default()).await;
    let newest_first: Vec<AuditEntry> = written.iter().rev().cloned().collect();
    assert_eq!(all, newest_first, "kept exactly, newest first");

    let actions = |v: Vec<AuditEntry>| v.into_iter().map(|e| e.action).collect::<Vec<_>>();
    let by_machine = list(AuditQuery {
        machine: Some(m1),
        ..Default::default()
    });
    assert_eq!(actions(by_machine.await), ["action.3", "action.0"]);
    let by_target = list(AuditQuery {
        target: Some("t2".into()),
        ..Default::default()
    });
    assert_eq!(actions(by_target.await), ["action.2"]);
    for actor in ["tok-b", "tok-b name"] {
        let by_actor = list(AuditQuery {
            actor: Some(actor.into()),
            ..Default::default()
        });
        assert_eq!(actions(by_actor.await), ["action.1"], "{actor}");
    }
    let since = list(AuditQuery {
        since: Some(written[2].at),
        ..Default::default()
    });
    assert_eq!(actions(since.await), ["action.3", "action.2"]);
    let limited = list(AuditQuery {
        actor: Some("tok-a".into()),
        limit: 2,
        ..Default::default()
    });
    assert_eq!(actions(limited.await), ["action.3", "action.2"]);
}
