//! [`BootStore`] for SQLite, and the boot-related steps of the enrollment transaction.

use anneal_shared::MachineId;
use async_trait::async_trait;
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;

use super::boot::{BootMachine, BootStore};
use super::sqlite::{db, parse_id, SqliteStore};
use super::{to_ms, BootstrapTokenRecord, StoreResult};
use crate::identity;

#[async_trait]
impl BootStore for SqliteStore {
    async fn boot_lookup(
        &self,
        uuid: Option<&str>,
        mac: Option<&str>,
    ) -> StoreResult<Option<BootMachine>> {
        let mut found: Option<(String, &'static str)> = None;
        let mut uuids: Vec<String> = Vec::new();
        if let Some(u) = uuid {
            uuids.push(u.to_string());
            uuids.extend(identity::uuid_byte_swapped(u));
        }
        for uuid in &uuids {
            let row =
                sqlx::query("SELECT machine_id FROM identifiers WHERE kind = 'uuid' AND value = ?")
                    .bind(uuid)
                    .fetch_optional(self.reader())
                    .await
                    .map_err(db)?;
            if let Some(r) = row {
                found = Some((r.try_get("machine_id").map_err(db)?, "uuid"));
                break;
            }
        }
        if found.is_none() {
            if let Some(mac) = mac {
                let row = sqlx::query("SELECT machine_id FROM boot_macs WHERE mac = ?")
                    .bind(mac)
                    .fetch_optional(self.reader())
                    .await
                    .map_err(db)?;
                if let Some(r) = row {
                    found = Some((r.try_get("machine_id").map_err(db)?, "mac"));
                }
            }
        }
        let Some((id, matched_by)) = found else {
            return Ok(None);
        };
        let requested_env = sqlx::query("SELECT boot_env FROM boot_requests WHERE machine_id = ?")
            .bind(&id)
            .fetch_optional(self.reader())
            .await
            .map_err(db)?
            .map(|r| r.try_get::<String, _>("boot_env").map_err(db))
            .transpose()?;
        let assigned_env = super::sqlite_workflow::assigned_boot_env(self, &id).await?;
        Ok(Some(BootMachine {
            id: parse_id(&id)?,
            matched_by,
            requested_env,
            assigned_env,
        }))
    }

    async fn insert_boot_token(
        &self,
        t: &BootstrapTokenRecord,
        machine_id: Option<MachineId>,
        boot_env: Option<&str>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO bootstrap_tokens (id, hash, uses_left, expires_at, mac, description, \
             created_at, machine_id, boot_env) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.hash)
        .bind(t.uses_left as i64)
        .bind(to_ms(t.expires_at))
        .bind(&t.mac)
        .bind(&t.description)
        .bind(to_ms(t.created_at))
        .bind(machine_id.map(|m| m.to_string()))
        .bind(boot_env)
        .execute(self.writer())
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn request_boot_env(
        &self,
        id: MachineId,
        env: &str,
        now: OffsetDateTime,
    ) -> StoreResult<bool> {
        // One statement: the request is written only if the machine exists.
        let done = sqlx::query(
            "INSERT INTO boot_requests (machine_id, boot_env, requested_at) \
             SELECT id, ?, ? FROM machines WHERE id = ? \
             ON CONFLICT(machine_id) DO UPDATE SET boot_env = excluded.boot_env, \
             requested_at = excluded.requested_at",
        )
        .bind(env)
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(self.writer())
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn boot_macs_of(&self, id: MachineId) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT mac FROM boot_macs WHERE machine_id = ? ORDER BY mac")
            .bind(id.to_string())
            .fetch_all(self.reader())
            .await
            .map_err(db)?;
        rows.iter().map(|r| r.try_get("mac").map_err(db)).collect()
    }
}

/// The machine a bootstrap token is bound to, if any (inside the enrollment transaction).
pub(super) async fn token_machine(
    tx: &mut Transaction<'_, Sqlite>,
    token_hash: &str,
) -> StoreResult<Option<String>> {
    let row = sqlx::query("SELECT machine_id FROM bootstrap_tokens WHERE hash = ?")
        .bind(token_hash)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    Ok(row
        .map(|r| r.try_get::<Option<String>, _>("machine_id").map_err(db))
        .transpose()?
        .flatten())
}

/// After an enrollment of `machine_id`: index every MAC it presented for boot routing (the
/// latest enrollment wins, so a NIC moved to another machine follows it) and clear a pending
/// boot request — the machine has booted and enrolled again.
pub(super) async fn after_enroll(
    tx: &mut Transaction<'_, Sqlite>,
    machine_id: MachineId,
    macs: &[String],
) -> StoreResult<()> {
    let id = machine_id.to_string();
    for mac in macs {
        sqlx::query(
            "INSERT INTO boot_macs (mac, machine_id) VALUES (?, ?) \
             ON CONFLICT(mac) DO UPDATE SET machine_id = excluded.machine_id",
        )
        .bind(mac)
        .bind(&id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    }
    sqlx::query("DELETE FROM boot_requests WHERE machine_id = ?")
        .bind(&id)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}
