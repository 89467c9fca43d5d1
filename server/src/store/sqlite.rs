//! The embedded default engine: SQLite in WAL mode.
//!
//! One writer connection serialises write transactions inside this process (SQLite has one
//! writer anyway; queueing in the pool avoids SQLITE_BUSY retries), and a small pool of
//! read-only connections serves reads concurrently, which WAL allows.

use std::collections::{BTreeSet, HashSet};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anneal_shared::api::{MachineState, Role};
use anneal_shared::inventory::Inventory;
use anneal_shared::protocol::IdentityHints;
use anneal_shared::MachineId;
use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::*;
use crate::identity::{self, Candidate, Decision, Evidence, IdKind, Identifier};

/// SQLite-backed [`Store`].
pub struct SqliteStore {
    pub(super) writer: SqlitePool,
    pub(super) reader: SqlitePool,
    /// The lease batches' own connection (see `sqlite_leases`).
    pub(super) leases: std::sync::Arc<super::sqlite_leases::LeaseConn>,
}

pub(super) fn db(e: sqlx::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

pub(super) fn corrupt(what: &'static str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        what,
        detail: e.to_string(),
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database file and bring its schema up to date.
    pub async fn open(path: &Path) -> StoreResult<SqliteStore> {
        let base = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(db)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL in WAL mode is durable across process crashes; a power cut may lose the
            // last transactions but never corrupts the file.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(base.clone())
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Db(format!("schema migration: {e}")))?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(base.read_only(true))
            .await
            .map_err(db)?;
        let leases = super::sqlite_leases::LeaseConn::open(path)?;
        Ok(SqliteStore {
            writer,
            reader,
            leases,
        })
    }

    pub(super) fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    pub(super) fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    /// `UPDATE machines SET <set>` with `values` bound in order, if the version is still
    /// `expected_version`.
    pub(super) async fn update_cas(
        &self,
        id: MachineId,
        expected_version: i64,
        set: &str,
        values: &[Option<String>],
    ) -> StoreResult<Cas> {
        let sql = format!(
            "UPDATE machines SET {set}, version = version + 1 WHERE id = ? AND version = ?"
        );
        let mut q = sqlx::query(&sql);
        for v in values {
            q = q.bind(v);
        }
        let done = q
            .bind(id.to_string())
            .bind(expected_version)
            .execute(self.writer())
            .await
            .map_err(db)?;
        Ok(if done.rows_affected() == 1 {
            Cas::Done(expected_version + 1)
        } else {
            Cas::Conflict
        })
    }
}

fn state_from_str(s: &str) -> MachineState {
    match s {
        "pending" => MachineState::Pending,
        "discovered" => MachineState::Discovered,
        _ => MachineState::Unknown,
    }
}

pub(super) fn role_to_str(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Operator => "operator",
        Role::Viewer => "viewer",
        Role::Unknown => "unknown",
    }
}

pub(super) fn role_from_str(s: &str) -> Role {
    match s {
        "admin" => Role::Admin,
        "operator" => Role::Operator,
        "viewer" => Role::Viewer,
        _ => Role::Unknown,
    }
}

pub(super) fn parse_id(s: &str) -> StoreResult<MachineId> {
    Uuid::parse_str(s).map_err(|e| corrupt("machine id", e))
}

fn opt_ms(v: Option<i64>) -> StoreResult<Option<OffsetDateTime>> {
    v.map(from_ms).transpose()
}

/// How long after a token's last enrollment a retry from the same boot is answered again.
const REPLAY_WINDOW_MS: i64 = 10 * 60 * 1000;

/// The machine and certificate serial of `token_hash`'s last enrollment, if it was made from
/// `boot_id` within [`REPLAY_WINDOW_MS`] of `now`.
async fn last_use(
    tx: &mut sqlx::SqliteConnection,
    token_hash: &str,
    boot_id: &str,
    now: i64,
) -> StoreResult<Option<(String, Option<String>)>> {
    let row = sqlx::query(
        "SELECT last_machine_id, last_cert_serial FROM bootstrap_tokens \
         WHERE hash = ? AND last_boot_id = ? AND last_used_at > ? AND last_machine_id IS NOT NULL",
    )
    .bind(token_hash)
    .bind(boot_id)
    .bind(now - REPLAY_WINDOW_MS)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    row.map(|r| {
        Ok((
            r.try_get("last_machine_id").map_err(db)?,
            r.try_get("last_cert_serial").map_err(db)?,
        ))
    })
    .transpose()
}

fn bootstrap_from_row(r: &SqliteRow) -> StoreResult<BootstrapTokenRecord> {
    Ok(BootstrapTokenRecord {
        id: r.try_get("id").map_err(db)?,
        hash: r.try_get("hash").map_err(db)?,
        uses_left: r.try_get::<i64, _>("uses_left").map_err(db)? as u32,
        expires_at: from_ms(r.try_get("expires_at").map_err(db)?)?,
        mac: r.try_get("mac").map_err(db)?,
        description: r.try_get("description").map_err(db)?,
        created_at: from_ms(r.try_get("created_at").map_err(db)?)?,
    })
}

fn machine_from_row(r: &SqliteRow, alerts: Vec<AlertRecord>) -> StoreResult<MachineRecord> {
    let identity: String = r.try_get("identity").map_err(db)?;
    let inventory: Option<String> = r.try_get("inventory").map_err(db)?;
    Ok(MachineRecord {
        id: parse_id(&r.try_get::<String, _>("id").map_err(db)?)?,
        state: state_from_str(&r.try_get::<String, _>("state").map_err(db)?),
        hostname: r.try_get("hostname").map_err(db)?,
        identity: serde_json::from_str(&identity).map_err(|e| corrupt("identity", e))?,
        inventory: inventory
            .map(|s| serde_json::from_str(&s))
            .transpose()
            .map_err(|e| corrupt("inventory", e))?,
        inventory_at: opt_ms(r.try_get("inventory_at").map_err(db)?)?,
        boot_id: r.try_get("boot_id").map_err(db)?,
        enrollments: r.try_get::<i64, _>("enrollments").map_err(db)? as u32,
        created_at: from_ms(r.try_get("created_at").map_err(db)?)?,
        last_seen: opt_ms(r.try_get("last_seen").map_err(db)?)?,
        status: r.try_get("status").map_err(db)?,
        version: r.try_get("version").map_err(db)?,
        alerts,
        fleet: super::sqlite_fleet::fleet_from_row(r)?,
    })
}

fn alert_from_row(r: &SqliteRow) -> StoreResult<(String, AlertRecord)> {
    Ok((
        r.try_get("machine_id").map_err(db)?,
        AlertRecord {
            kind: r.try_get("kind").map_err(db)?,
            message: r.try_get("message").map_err(db)?,
            at: from_ms(r.try_get("at").map_err(db)?)?,
        },
    ))
}

const MACHINE_COLS: &str = "id, state, hostname, identity, inventory, inventory_at, boot_id, \
     enrollments, created_at, last_seen, status, version, tags, location, claim, rule";

/// Identifiers recorded for a machine, as evidence.
async fn machine_evidence(tx: &mut Transaction<'_, Sqlite>, id: &str) -> StoreResult<Evidence> {
    let rows = sqlx::query("SELECT kind, value FROM identifiers WHERE machine_id = ?")
        .bind(id)
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?;
    let mut ids = BTreeSet::new();
    for r in rows {
        let kind: String = r.try_get("kind").map_err(db)?;
        if let Some(kind) = IdKind::parse(&kind) {
            ids.insert(Identifier {
                kind,
                value: r.try_get("value").map_err(db)?,
            });
        }
    }
    Ok(Evidence {
        identifiers: ids.into_iter().collect(),
    })
}

#[async_trait]
impl Store for SqliteStore {
    fn engine(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn get_setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM settings WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?;
        row.map(|r| r.try_get("value").map_err(db)).transpose()
    }

    async fn put_setting_if_absent(&self, key: &str, value: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT(key) DO NOTHING",
        )
        .bind(key)
        .bind(value)
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn insert_api_token(&self, t: &ApiTokenRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO api_tokens (id, hash, role, name, created_at) VALUES (?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.hash)
        .bind(role_to_str(t.role))
        .bind(&t.name)
        .bind(to_ms(t.created_at))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn find_api_token(&self, hash: &str) -> StoreResult<Option<ApiTokenRecord>> {
        let row =
            sqlx::query("SELECT id, hash, role, name, created_at FROM api_tokens WHERE hash = ?")
                .bind(hash)
                .fetch_optional(&self.reader)
                .await
                .map_err(db)?;
        row.map(|r| {
            Ok(ApiTokenRecord {
                id: r.try_get("id").map_err(db)?,
                hash: r.try_get("hash").map_err(db)?,
                role: role_from_str(&r.try_get::<String, _>("role").map_err(db)?),
                name: r.try_get("name").map_err(db)?,
                created_at: from_ms(r.try_get("created_at").map_err(db)?)?,
            })
        })
        .transpose()
    }

    async fn insert_bootstrap_token(&self, t: &BootstrapTokenRecord) -> StoreResult<()> {
        // One INSERT for tokens: the boot store's, with no machine binding.
        self.insert_boot_token(t, None, None).await
    }

    async fn list_bootstrap_tokens(
        &self,
        now: OffsetDateTime,
    ) -> StoreResult<Vec<BootstrapTokenRecord>> {
        let rows = sqlx::query(
            "SELECT id, hash, uses_left, expires_at, mac, description, created_at \
             FROM bootstrap_tokens WHERE uses_left > 0 AND expires_at > ? ORDER BY created_at",
        )
        .bind(to_ms(now))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter().map(bootstrap_from_row).collect()
    }

    async fn enroll(
        &self,
        input: &EnrollInput,
        sign: &(dyn Fn(MachineId) -> Result<SignedCert, String> + Send + Sync),
    ) -> StoreResult<EnrollOutcome> {
        let now = to_ms(input.now);
        let mut tx = self.writer.begin().await.map_err(db)?;

        // 1. The token: refused tokens change nothing.
        let token = sqlx::query(
            "SELECT id, hash, uses_left, expires_at, mac, description, created_at \
             FROM bootstrap_tokens WHERE hash = ?",
        )
        .bind(&input.token_hash)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let Some(token) = token else {
            return Ok(EnrollOutcome::TokenRefused(TokenRefusal::Unknown));
        };
        let token = bootstrap_from_row(&token)?;
        if to_ms(token.expires_at) <= now {
            return Ok(EnrollOutcome::TokenRefused(TokenRefusal::Expired));
        }
        // A used-up token still answers a retry of its last enrollment (same boot, same
        // machine, soon after): the agent never got the first answer.
        let replay_of = if token.uses_left == 0 {
            match last_use(&mut tx, &input.token_hash, &input.boot_id, now).await? {
                Some(last) => Some(last),
                None => return Ok(EnrollOutcome::TokenRefused(TokenRefusal::UsedUp)),
            }
        } else {
            None
        };
        if let Some(mac) = &token.mac {
            if !input.macs.iter().any(|m| m == mac) {
                return Ok(EnrollOutcome::TokenRefused(TokenRefusal::WrongMac));
            }
        }

        // 2. Which values are already known to be shared, and which machines hold the rest.
        let mut shared = HashSet::new();
        let mut lookups: Vec<Identifier> = Vec::new();
        for ident in input.evidence.identifiers() {
            lookups.push(ident.clone());
            if ident.kind == IdKind::Uuid {
                if let Some(swapped) = identity::uuid_byte_swapped(&ident.value) {
                    lookups.push(Identifier {
                        kind: IdKind::Uuid,
                        value: swapped,
                    });
                }
            }
        }
        let mut candidate_ids = BTreeSet::new();
        for ident in &lookups {
            let is_shared =
                sqlx::query("SELECT 1 FROM shared_identifiers WHERE kind = ? AND value = ?")
                    .bind(ident.kind.as_str())
                    .bind(&ident.value)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?
                    .is_some();
            if is_shared {
                shared.insert(ident.clone());
                continue;
            }
            let holder =
                sqlx::query("SELECT machine_id FROM identifiers WHERE kind = ? AND value = ?")
                    .bind(ident.kind.as_str())
                    .bind(&ident.value)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
            if let Some(h) = holder {
                candidate_ids.insert(h.try_get::<String, _>("machine_id").map_err(db)?);
            }
        }
        let mut candidates = Vec::new();
        for id in &candidate_ids {
            candidates.push(Candidate {
                machine_id: parse_id(id)?,
                evidence: machine_evidence(&mut tx, id).await?,
            });
        }

        // 3. Decide, and remember values found to be shared so they never identify again.
        let outcome = identity::decide(&input.evidence, &candidates, &shared);
        if let Some((machine, _)) = &replay_of {
            if !matches!(&outcome.decision, Decision::Match(id) if id.to_string() == *machine) {
                return Ok(EnrollOutcome::TokenRefused(TokenRefusal::UsedUp));
            }
        }
        let replayed = replay_of.is_some();
        // Boot (store/sqlite_boot.rs): a token minted for a known machine enrolls only that
        // machine. Returning here drops the transaction, so nothing is written.
        if let Some(bound) = super::sqlite_boot::token_machine(&mut tx, &input.token_hash).await? {
            if !matches!(&outcome.decision, Decision::Match(id) if id.to_string() == bound) {
                return Ok(EnrollOutcome::TokenRefused(TokenRefusal::WrongMachine));
            }
        }
        for ident in &outcome.newly_shared {
            sqlx::query(
                "INSERT INTO shared_identifiers (kind, value) VALUES (?, ?) \
                 ON CONFLICT(kind, value) DO NOTHING",
            )
            .bind(ident.kind.as_str())
            .bind(&ident.value)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            sqlx::query("DELETE FROM identifiers WHERE kind = ? AND value = ?")
                .bind(ident.kind.as_str())
                .bind(&ident.value)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            shared.insert(ident.clone());
        }

        let hints_json = serde_json::to_string(&input.hints).map_err(|e| corrupt("identity", e))?;
        let (machine_id, created, state, same_boot) = match outcome.decision {
            Decision::Quarantine { candidates, reason } => {
                // The same machine retrying within one boot updates its entry.
                let existing =
                    sqlx::query("SELECT id FROM quarantine WHERE boot_id = ? AND identity = ?")
                        .bind(&input.boot_id)
                        .bind(&hints_json)
                        .fetch_optional(&mut *tx)
                        .await
                        .map_err(db)?;
                if let Some(row) = existing {
                    let id: String = row.try_get("id").map_err(db)?;
                    sqlx::query(
                        "UPDATE quarantine SET at = ?, reason = ?, attempts = attempts + 1 \
                         WHERE id = ?",
                    )
                    .bind(now)
                    .bind(&reason)
                    .bind(&id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    return Ok(EnrollOutcome::Quarantined { id, reason });
                }
                let id = Uuid::new_v4().to_string();
                let cands: Vec<String> = candidates.iter().map(|c| c.to_string()).collect();
                sqlx::query(
                    "INSERT INTO quarantine (id, identity, candidates, reason, boot_id, at) \
                     VALUES (?, ?, ?, ?, ?, ?)",
                )
                .bind(&id)
                .bind(&hints_json)
                .bind(serde_json::to_string(&cands).map_err(|e| corrupt("candidates", e))?)
                .bind(&reason)
                .bind(&input.boot_id)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                return Ok(EnrollOutcome::Quarantined { id, reason });
            }
            Decision::New => {
                let id = Uuid::new_v4();
                let state = if input.require_approval {
                    MachineState::Pending
                } else {
                    MachineState::Discovered
                };
                sqlx::query(
                    "INSERT INTO machines (id, state, hostname, identity, boot_id, enrollments, \
                     created_at, last_seen, version) VALUES (?, ?, ?, ?, ?, 1, ?, ?, 1)",
                )
                .bind(id.to_string())
                .bind(state.as_str())
                .bind(&input.hostname)
                .bind(&hints_json)
                .bind(&input.boot_id)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                (id, true, state, false)
            }
            Decision::Match(id) => {
                let row = sqlx::query("SELECT state, boot_id FROM machines WHERE id = ?")
                    .bind(id.to_string())
                    .fetch_one(&mut *tx)
                    .await
                    .map_err(db)?;
                let state = state_from_str(&row.try_get::<String, _>("state").map_err(db)?);
                let old_boot: Option<String> = row.try_get("boot_id").map_err(db)?;
                let same_boot = !replayed && old_boot.as_deref() == Some(input.boot_id.as_str());
                sqlx::query(
                    "UPDATE machines SET hostname = COALESCE(?, hostname), identity = ?, \
                     boot_id = ?, enrollments = enrollments + 1, last_seen = ?, \
                     version = version + 1 WHERE id = ?",
                )
                .bind(&input.hostname)
                .bind(&hints_json)
                .bind(&input.boot_id)
                .bind(now)
                .bind(id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                if same_boot {
                    sqlx::query(
                        "INSERT INTO alerts (machine_id, kind, message, at) VALUES (?, ?, ?, ?)",
                    )
                    .bind(id.to_string())
                    .bind("reenroll_same_boot")
                    .bind(format!(
                        "enrolled again within kernel boot {} (agent restarted, or a copied token?)",
                        input.boot_id
                    ))
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                }
                (id, false, state, same_boot)
            }
        };

        // 4. Record its identifiers (values already held elsewhere stay with their holder).
        for ident in input.evidence.identifiers() {
            if shared.contains(ident) {
                continue;
            }
            sqlx::query(
                "INSERT INTO identifiers (kind, value, machine_id) VALUES (?, ?, ?) \
                 ON CONFLICT(kind, value) DO NOTHING",
            )
            .bind(ident.kind.as_str())
            .bind(&ident.value)
            .bind(machine_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }

        // Boot (store/sqlite_boot.rs): boot-MAC index, pending boot request cleared.
        super::sqlite_boot::after_enroll(&mut tx, machine_id, &input.macs).await?;

        // 5. Consume one use of the token: a conditional update, so concurrent enrollments
        //    can never use a token more often than it allows. A replay consumes nothing; the
        //    certificate its lost answer carried is revoked instead.
        if let Some((_, lost_serial)) = &replay_of {
            if let Some(serial) = lost_serial {
                sqlx::query(
                    "UPDATE certs SET revoked_at = ? WHERE serial = ? AND revoked_at IS NULL",
                )
                .bind(now)
                .bind(serial)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
        } else {
            let used = sqlx::query(
                "UPDATE bootstrap_tokens SET uses_left = uses_left - 1 \
                 WHERE hash = ? AND uses_left > 0 AND expires_at > ?",
            )
            .bind(&input.token_hash)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            if used.rows_affected() != 1 {
                tx.rollback().await.map_err(db)?;
                return Ok(EnrollOutcome::TokenRefused(TokenRefusal::UsedUp));
            }
        }

        // 6. The certificate, recorded for revocation checks, and remembered as this token's
        //    last enrollment.
        let cert = sign(machine_id).map_err(StoreError::Signing)?;
        sqlx::query(
            "UPDATE bootstrap_tokens SET last_boot_id = ?, last_machine_id = ?, \
             last_cert_serial = ?, last_used_at = ? WHERE hash = ?",
        )
        .bind(&input.boot_id)
        .bind(machine_id.to_string())
        .bind(&cert.serial)
        .bind(now)
        .bind(&input.token_hash)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        sqlx::query("INSERT INTO certs (serial, machine_id, not_after) VALUES (?, ?, ?)")
            .bind(&cert.serial)
            .bind(machine_id.to_string())
            .bind(to_ms(cert.not_after))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        let via_env = super::sqlite_workflow::token_boot_env(&mut tx, &input.token_hash).await?;
        super::sqlite_workflow::record_boot(
            &mut tx,
            machine_id,
            &input.boot_id,
            via_env.as_deref(),
            input.now,
        )
        .await?;
        // Fleet (store/sqlite_fleet.rs): a machine created through a `new` token is marked new.
        if created {
            super::sqlite_fleet::mark_if_new(&mut tx, machine_id, &input.token_hash, input.now)
                .await?;
        }
        tx.commit().await.map_err(db)?;
        Ok(EnrollOutcome::Enrolled {
            machine_id,
            created,
            state,
            cert,
            same_boot,
            replayed,
            via_env,
        })
    }

    async fn insert_cert(&self, c: &CertRecord) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO certs (serial, machine_id, not_after, revoked_at) VALUES (?, ?, ?, ?)",
        )
        .bind(&c.serial)
        .bind(c.machine_id.to_string())
        .bind(to_ms(c.not_after))
        .bind(c.revoked_at.map(to_ms))
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn get_cert(&self, serial: &str) -> StoreResult<Option<CertRecord>> {
        let row = sqlx::query(
            "SELECT serial, machine_id, not_after, revoked_at FROM certs WHERE serial = ?",
        )
        .bind(serial)
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.map(|r| {
            Ok(CertRecord {
                serial: r.try_get("serial").map_err(db)?,
                machine_id: parse_id(&r.try_get::<String, _>("machine_id").map_err(db)?)?,
                not_after: from_ms(r.try_get("not_after").map_err(db)?)?,
                revoked_at: opt_ms(r.try_get("revoked_at").map_err(db)?)?,
            })
        })
        .transpose()
    }

    async fn revoke_machine_certs(&self, id: MachineId, now: OffsetDateTime) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE certs SET revoked_at = ? WHERE machine_id = ? AND revoked_at IS NULL",
        )
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn list_machines(&self) -> StoreResult<Vec<MachineRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {MACHINE_COLS} FROM machines ORDER BY created_at, id"
        ))
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        let alert_rows =
            sqlx::query("SELECT machine_id, kind, message, at FROM alerts ORDER BY id")
                .fetch_all(&self.reader)
                .await
                .map_err(db)?;
        let mut alerts: std::collections::HashMap<String, Vec<AlertRecord>> = Default::default();
        for r in &alert_rows {
            let (mid, a) = alert_from_row(r)?;
            alerts.entry(mid).or_default().push(a);
        }
        rows.iter()
            .map(|r| {
                let id: String = r.try_get("id").map_err(db)?;
                machine_from_row(r, alerts.remove(&id).unwrap_or_default())
            })
            .collect()
    }

    async fn get_machine(&self, id: MachineId) -> StoreResult<Option<MachineRecord>> {
        let row = sqlx::query(&format!("SELECT {MACHINE_COLS} FROM machines WHERE id = ?"))
            .bind(id.to_string())
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let alert_rows = sqlx::query(
            "SELECT machine_id, kind, message, at FROM alerts WHERE machine_id = ? ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        let alerts = alert_rows
            .iter()
            .map(|r| alert_from_row(r).map(|(_, a)| a))
            .collect::<StoreResult<Vec<_>>>()?;
        machine_from_row(&row, alerts).map(Some)
    }

    async fn machine_brief(&self, id: MachineId) -> StoreResult<Option<MachineBrief>> {
        let row = sqlx::query(
            "SELECT state, inventory_at IS NOT NULL AS has_inventory, \
             EXISTS (SELECT 1 FROM runs WHERE runs.machine_id = machines.id AND current = 1 \
                     AND phase IN ('booting', 'ready', 'running')) AS has_work \
             FROM machines WHERE id = ?",
        )
        .bind(id.to_string())
        .fetch_optional(&self.reader)
        .await
        .map_err(db)?;
        row.map(|r| {
            Ok(MachineBrief {
                state: state_from_str(&r.try_get::<String, _>("state").map_err(db)?),
                has_inventory: r.try_get::<bool, _>("has_inventory").map_err(db)?,
                has_work: r.try_get::<bool, _>("has_work").map_err(db)?,
            })
        })
        .transpose()
    }

    async fn set_machine_state(
        &self,
        id: MachineId,
        expected_version: i64,
        state: MachineState,
    ) -> StoreResult<Cas> {
        let state = Some(state.as_str().to_string());
        self.update_cas(id, expected_version, "state = ?", &[state])
            .await
    }

    async fn put_inventory(
        &self,
        id: MachineId,
        inventory: &Inventory,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        let json = serde_json::to_string(inventory).map_err(|e| corrupt("inventory", e))?;
        sqlx::query(
            "UPDATE machines SET inventory = ?, inventory_at = ?, last_seen = ?, \
             version = version + 1 WHERE id = ?",
        )
        .bind(json)
        .bind(to_ms(now))
        .bind(to_ms(now))
        .bind(id.to_string())
        .execute(&self.writer)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn record_heartbeats(&self, batch: &[Heartbeat]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await.map_err(db)?;
        for hb in batch {
            // last_seen and status are not part of the CAS version: they change every few
            // seconds and nothing decides on them.
            // A late, older heartbeat neither moves last_seen back nor overwrites a newer status.
            sqlx::query(
                "UPDATE machines SET \
                 status = CASE WHEN ?1 >= COALESCE(last_seen, 0) THEN ?2 ELSE status END, \
                 last_seen = MAX(COALESCE(last_seen, 0), ?1) WHERE id = ?3",
            )
            .bind(to_ms(hb.at))
            .bind(&hb.status)
            .bind(hb.machine_id.to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    async fn list_quarantine(&self) -> StoreResult<Vec<QuarantineRecord>> {
        let rows = sqlx::query(
            "SELECT id, identity, candidates, reason, boot_id, at, attempts FROM quarantine \
             ORDER BY at DESC",
        )
        .fetch_all(&self.reader)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                let identity: String = r.try_get("identity").map_err(db)?;
                let cands: String = r.try_get("candidates").map_err(db)?;
                let cands: Vec<String> =
                    serde_json::from_str(&cands).map_err(|e| corrupt("candidates", e))?;
                Ok(QuarantineRecord {
                    id: r.try_get("id").map_err(db)?,
                    identity: serde_json::from_str::<IdentityHints>(&identity)
                        .map_err(|e| corrupt("identity", e))?,
                    candidates: cands
                        .iter()
                        .map(|c| parse_id(c))
                        .collect::<StoreResult<Vec<_>>>()?,
                    reason: r.try_get("reason").map_err(db)?,
                    boot_id: r.try_get("boot_id").map_err(db)?,
                    at: from_ms(r.try_get("at").map_err(db)?)?,
                    attempts: r.try_get::<i64, _>("attempts").map_err(db)? as u32,
                })
            })
            .collect()
    }
}
