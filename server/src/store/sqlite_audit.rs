//! [`AuditStore`] for SQLite.

use anneal_shared::events::{AuditActor, AuditEntry};
use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::audit::{AuditQuery, AuditStore};
use super::sqlite::{corrupt, db, role_from_str, role_to_str, SqliteStore};
use super::{from_ms, to_ms, StoreResult};

fn json_column(r: &SqliteRow, col: &str) -> StoreResult<Option<serde_json::Value>> {
    r.try_get::<Option<String>, _>(col)
        .map_err(db)?
        .map(|t| serde_json::from_str(&t).map_err(|e| corrupt("audit before/after", e)))
        .transpose()
}

fn entry_from_row(r: &SqliteRow) -> StoreResult<AuditEntry> {
    let id: String = r.try_get("id").map_err(db)?;
    let machine: Option<String> = r.try_get("machine_id").map_err(db)?;
    Ok(AuditEntry {
        id: id.parse().map_err(|e| corrupt("audit id", e))?,
        at: from_ms(r.try_get("at").map_err(db)?)?,
        actor: AuditActor {
            token_id: r.try_get("token_id").map_err(db)?,
            name: r.try_get("token_name").map_err(db)?,
            role: role_from_str(&r.try_get::<String, _>("token_role").map_err(db)?),
            address: r.try_get("address").map_err(db)?,
        },
        action: r.try_get("action").map_err(db)?,
        target_kind: r.try_get("target_kind").map_err(db)?,
        target: r.try_get("target").map_err(db)?,
        machine_id: machine
            .map(|m| m.parse().map_err(|e| corrupt("audit machine id", e)))
            .transpose()?,
        before: json_column(r, "before")?,
        after: json_column(r, "after")?,
    })
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn record_audit(&self, e: &AuditEntry) -> StoreResult<()> {
        let json = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
        sqlx::query(
            "INSERT INTO audit (id, at, token_id, token_name, token_role, address, action, \
             target_kind, target, machine_id, before, after) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(e.id.to_string())
        .bind(to_ms(e.at))
        .bind(&e.actor.token_id)
        .bind(&e.actor.name)
        .bind(role_to_str(e.actor.role))
        .bind(&e.actor.address)
        .bind(&e.action)
        .bind(&e.target_kind)
        .bind(&e.target)
        .bind(e.machine_id.map(|m| m.to_string()))
        .bind(json(&e.before))
        .bind(json(&e.after))
        .execute(self.writer())
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn list_audit(&self, q: &AuditQuery) -> StoreResult<Vec<AuditEntry>> {
        let mut sql = QueryBuilder::<Sqlite>::new("SELECT * FROM audit WHERE 1 = 1");
        if let Some(m) = q.machine {
            sql.push(" AND machine_id = ").push_bind(m.to_string());
        }
        if let Some(t) = &q.target {
            sql.push(" AND target = ").push_bind(t.clone());
        }
        if let Some(a) = &q.actor {
            sql.push(" AND (token_id = ")
                .push_bind(a.clone())
                .push(" OR token_name = ")
                .push_bind(a.clone())
                .push(")");
        }
        if let Some(since) = q.since {
            sql.push(" AND at >= ").push_bind(to_ms(since));
        }
        sql.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(q.limit));
        let rows = sql.build().fetch_all(self.reader()).await.map_err(db)?;
        rows.iter().map(entry_from_row).collect()
    }
}
