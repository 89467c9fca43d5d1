//! The audit log: every change made through the operator API records who (the API token, its
//! name and role), from where (the client's address), when, what, and the object before and
//! after. One call, [`record`], made by each handler right after its change committed.
//!
//! Secrets never enter it: handlers pass the API's own views (which carry no secrets), and
//! every object key that names a secret (`token`, `secret`, `password`, `hash`, `private…`, or
//! one the caller lists with [`Change::redacting`]) is replaced by `"[redacted]"` as well.

use anneal_shared::events::{AuditActor, AuditEntry};
use anneal_shared::MachineId;
use serde::Serialize;
use serde_json::Value;
use time::OffsetDateTime;

use crate::api::Caller;
use crate::app::App;

/// What replaces a secret value.
pub const REDACTED: &str = "[redacted]";

/// One change to record.
#[derive(Debug, Clone, Default)]
pub struct Change {
    action: String,
    target_kind: String,
    target: String,
    machine: Option<MachineId>,
    before: Option<Value>,
    after: Option<Value>,
    secret_keys: Vec<String>,
}

impl Change {
    /// `action` (e.g. `token.create`) on the `target_kind` object named `target`.
    pub fn new(action: &str, target_kind: &str, target: impl Into<String>) -> Change {
        Change {
            action: action.into(),
            target_kind: target_kind.into(),
            target: target.into(),
            ..Change::default()
        }
    }

    /// `action` (e.g. `machine.approve`) on a machine.
    pub fn machine(action: &str, id: MachineId) -> Change {
        Change {
            machine: Some(id),
            ..Change::new(action, "machine", id.to_string())
        }
    }

    /// The object before the change (`None` or null: there was none).
    pub fn before(mut self, v: &impl Serialize) -> Change {
        self.before = serde_json::to_value(v).ok().filter(|v| !v.is_null());
        self
    }

    /// The object after the change (`None` or null: there is none).
    pub fn after(mut self, v: &impl Serialize) -> Change {
        self.after = serde_json::to_value(v).ok().filter(|v| !v.is_null());
        self
    }

    /// Also mask these keys wherever they appear (e.g. the names of secret params).
    pub fn redacting(mut self, keys: &[&str]) -> Change {
        self.secret_keys.extend(keys.iter().map(|k| k.to_string()));
        self
    }
}

fn names_a_secret(key: &str, extra: &[String]) -> bool {
    let k = key.to_ascii_lowercase();
    k == "token"
        || k == "hash"
        || k.ends_with("_token")
        || k.contains("secret")
        || k.contains("password")
        || k.starts_with("private")
        || extra.iter().any(|e| e == key)
}

/// `v` with every value under a key that names a secret replaced by [`REDACTED`].
pub fn redact(v: Value, extra: &[String]) -> Value {
    match v {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if names_a_secret(&k, extra) && !v.is_null() {
                        (k, Value::String(REDACTED.into()))
                    } else {
                        (k, redact(v, extra))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(|v| redact(v, extra)).collect()),
        other => other,
    }
}

/// Record `change` made by `caller`. The change has already committed, so a failure to record
/// it is logged and counted (`anneal_audit_failures_total`) rather than reported as the
/// request's failure.
pub async fn record(app: &App, caller: &Caller, change: Change) {
    let actor = AuditActor {
        token_id: caller.token_id.clone(),
        name: caller.name.clone(),
        role: caller.role,
        address: caller.address.map(|a| a.to_string()),
    };
    write(app, actor, change).await
}

/// Record `change` made by a rule on the operator's behalf (a workflow given to a new
/// machine): the actor is `rule:<name>`, acting with an operator's powers.
pub async fn record_by_rule(app: &App, rule: &str, change: Change) {
    let actor = AuditActor {
        token_id: format!("rule:{rule}"),
        name: format!("rule {rule}"),
        role: anneal_shared::api::Role::Operator,
        address: None,
    };
    write(app, actor, change).await
}

async fn write(app: &App, actor: AuditActor, change: Change) {
    let keys = &change.secret_keys;
    let entry = AuditEntry {
        id: uuid::Uuid::new_v4(),
        at: OffsetDateTime::now_utc(),
        actor,
        action: change.action.clone(),
        target_kind: change.target_kind.clone(),
        target: change.target.clone(),
        machine_id: change.machine,
        before: change.before.clone().map(|v| redact(v, keys)),
        after: change.after.clone().map(|v| redact(v, keys)),
    };
    match app.store.record_audit(&entry).await {
        Ok(()) => {
            metrics::counter!("anneal_audit_entries_total", "action" => entry.action).increment(1);
        }
        Err(e) => {
            metrics::counter!("anneal_audit_failures_total").increment(1);
            tracing::error!(action = %entry.action, target = %entry.target, by = %entry.actor.token_id, error = %e, "recording an audit entry failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_masked_at_any_depth() {
        let v = serde_json::json!({
            "id": "t1", "token": "anb_xyz", "uses_left": 2,
            "params": [{"name": "root_pw", "value": "hunter2", "db_password": "p"}],
            "nested": {"client_secret": "s", "hash": "ab", "private_key": "k", "keep": null,
                       "install_token": "t"}
        });
        let out = redact(v, &["value".to_string()]);
        let text = out.to_string();
        for secret in [
            "anb_xyz", "hunter2", "\"p\"", "\"s\"", "\"ab\"", "\"k\"", "\"t\"",
        ] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
        assert_eq!(out["id"], "t1");
        assert_eq!(out["uses_left"], 2);
        assert_eq!(out["params"][0]["name"], "root_pw");
        assert_eq!(out["nested"]["keep"], Value::Null);
        assert_eq!(out["token"], REDACTED);
    }
}
