//! [`FleetStore`] for SQLite, and the fleet step of the enrollment transaction.

use anneal_shared::api::{Claim, ClaimKind, Location, RuleOutcome};
use anneal_shared::MachineId;
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::fleet::{FleetRecord, FleetStore};
use super::sqlite::{corrupt, db, SqliteStore};
use super::{Cas, StoreResult};

fn to_json<T: serde::Serialize>(what: &'static str, v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| corrupt(what, e))
}

fn from_json<T: DeserializeOwned>(what: &'static str, s: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| corrupt(what, e))
}

/// The fleet columns of a `machines` row (see `MACHINE_COLS`).
pub(super) fn fleet_from_row(r: &SqliteRow) -> StoreResult<FleetRecord> {
    let claim: Option<String> = r.try_get("claim").map_err(db)?;
    let rule: Option<String> = r.try_get("rule").map_err(db)?;
    Ok(FleetRecord {
        tags: from_json("tags", &r.try_get::<String, _>("tags").map_err(db)?)?,
        location: from_json("location", &r.try_get::<String, _>("location").map_err(db)?)?,
        claim: claim.map(|c| from_json("claim", &c)).transpose()?,
        rule: rule.map(|c| from_json("rule outcome", &c)).transpose()?,
    })
}

/// Inside the enrollment transaction, for a machine it just created: when the token marks new
/// machines, the machine is claimed as new, by that token.
pub(super) async fn mark_if_new(
    tx: &mut Transaction<'_, Sqlite>,
    machine: MachineId,
    token_hash: &str,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let row = sqlx::query("SELECT id FROM bootstrap_tokens WHERE hash = ? AND marks_new = 1")
        .bind(token_hash)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    let Some(row) = row else { return Ok(()) };
    let claim = Claim {
        kind: ClaimKind::New,
        by: row.try_get("id").map_err(db)?,
        at: now,
    };
    sqlx::query("UPDATE machines SET claim = ? WHERE id = ?")
        .bind(to_json("claim", &claim)?)
        .bind(machine.to_string())
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

#[async_trait]
impl FleetStore for SqliteStore {
    async fn set_labels(
        &self,
        id: MachineId,
        expected_version: i64,
        tags: &[String],
        location: &Location,
    ) -> StoreResult<Cas> {
        let values = [
            Some(to_json("tags", &tags)?),
            Some(to_json("location", location)?),
        ];
        self.update_cas(id, expected_version, "tags = ?, location = ?", &values)
            .await
    }

    async fn set_claim(
        &self,
        id: MachineId,
        expected_version: i64,
        claim: Option<&Claim>,
    ) -> StoreResult<Cas> {
        let json = claim.map(|c| to_json("claim", c)).transpose()?;
        self.update_cas(id, expected_version, "claim = ?", &[json])
            .await
    }

    async fn take_claim(&self, id: MachineId) -> StoreResult<Option<Claim>> {
        let mut tx = self.writer().begin().await.map_err(db)?;
        let row = sqlx::query("SELECT claim FROM machines WHERE id = ? AND claim IS NOT NULL")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let json: String = row.try_get("claim").map_err(db)?;
        // Conditional on the value read, so an engine with concurrent writers lets one win.
        let done = sqlx::query(
            "UPDATE machines SET claim = NULL, version = version + 1 WHERE id = ? AND claim = ?",
        )
        .bind(id.to_string())
        .bind(&json)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        from_json("claim", &json).map(Some)
    }

    async fn restore_claim(&self, id: MachineId, claim: &Claim) -> StoreResult<()> {
        sqlx::query(
            "UPDATE machines SET claim = ?, version = version + 1 \
             WHERE id = ? AND claim IS NULL",
        )
        .bind(to_json("claim", claim)?)
        .bind(id.to_string())
        .execute(self.writer())
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn record_rule_once(&self, id: MachineId, outcome: &RuleOutcome) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE machines SET rule = ?, version = version + 1 WHERE id = ? AND rule IS NULL",
        )
        .bind(to_json("rule outcome", outcome)?)
        .bind(id.to_string())
        .execute(self.writer())
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn update_rule(&self, id: MachineId, outcome: &RuleOutcome) -> StoreResult<()> {
        sqlx::query("UPDATE machines SET rule = ?, version = version + 1 WHERE id = ?")
            .bind(to_json("rule outcome", outcome)?)
            .bind(id.to_string())
            .execute(self.writer())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn mark_token_new(&self, token_id: &str) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE bootstrap_tokens SET marks_new = 1 WHERE id = ?")
            .bind(token_id)
            .execute(self.writer())
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn tokens_marking_new(&self) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT id FROM bootstrap_tokens WHERE marks_new = 1 ORDER BY id")
            .fetch_all(self.reader())
            .await
            .map_err(db)?;
        rows.iter().map(|r| r.try_get("id").map_err(db)).collect()
    }
}
