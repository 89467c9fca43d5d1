//! [`WorkflowStore`] for SQLite.

use anneal_shared::content::{ContentObject, Kind};
use anneal_shared::MachineId;
use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::sqlite::{corrupt, db, parse_id, SqliteStore};
use super::workflow::*;
use super::{from_ms, to_ms, StoreError, StoreResult};
use crate::workflow::plan::Plan;
use crate::workflow::run::{AttemptEnd, AttemptId, Effect, Outcome};

fn json<T: serde::Serialize>(v: &T) -> StoreResult<String> {
    serde_json::to_string(v).map_err(|e| corrupt("json", e))
}

fn run_from_row(r: &SqliteRow) -> StoreResult<RunRecord> {
    let plan: String = r.try_get("plan").map_err(db)?;
    let state: String = r.try_get("state").map_err(db)?;
    Ok(RunRecord {
        id: Uuid::parse_str(&r.try_get::<String, _>("id").map_err(db)?)
            .map_err(|e| corrupt("run id", e))?,
        machine_id: parse_id(&r.try_get::<String, _>("machine_id").map_err(db)?)?,
        plan: serde_json::from_str(&plan).map_err(|e| corrupt("run plan", e))?,
        run: serde_json::from_str(&state).map_err(|e| corrupt("run state", e))?,
        current: r.try_get::<i64, _>("current").map_err(db)? == 1,
        version: r.try_get("version").map_err(db)?,
        created_at: from_ms(r.try_get("created_at").map_err(db)?)?,
        updated_at: from_ms(r.try_get("updated_at").map_err(db)?)?,
    })
}

fn attempt_from_row(r: &SqliteRow) -> StoreResult<AttemptRecord> {
    let state: String = r.try_get("state").map_err(db)?;
    let result: Option<String> = r.try_get("result").map_err(db)?;
    let ms = |c: &str| -> StoreResult<Option<OffsetDateTime>> {
        r.try_get::<Option<i64>, _>(c)
            .map_err(db)?
            .map(from_ms)
            .transpose()
    };
    Ok(AttemptRecord {
        id: Uuid::parse_str(&r.try_get::<String, _>("id").map_err(db)?)
            .map_err(|e| corrupt("attempt id", e))?,
        run_id: Uuid::parse_str(&r.try_get::<String, _>("run_id").map_err(db)?)
            .map_err(|e| corrupt("run id", e))?,
        machine_id: parse_id(&r.try_get::<String, _>("machine_id").map_err(db)?)?,
        stage: r.try_get::<i64, _>("stage").map_err(db)? as usize,
        stage_name: r.try_get("stage_name").map_err(db)?,
        task: r.try_get::<i64, _>("task").map_err(db)? as usize,
        task_name: r.try_get("task_name").map_err(db)?,
        state: AttemptState::parse(&state).ok_or_else(|| corrupt("attempt state", &state))?,
        reason: r.try_get("reason").map_err(db)?,
        exit_code: r
            .try_get::<Option<i64>, _>("exit_code")
            .map_err(db)?
            .map(|c| c as i32),
        result: result
            .map(|s| serde_json::from_str(&s).map_err(|e| corrupt("attempt result", e)))
            .transpose()?,
        created_at: from_ms(r.try_get("created_at").map_err(db)?)?,
        started_at: ms("started_at")?,
        finished_at: ms("finished_at")?,
        log_len: r.try_get::<i64, _>("log_len").map_err(db)? as u64,
        log_pruned_at: ms("log_pruned_at")?,
    })
}

async fn current_run_tx(
    tx: &mut Transaction<'_, Sqlite>,
    machine: MachineId,
) -> StoreResult<Option<RunRecord>> {
    sqlx::query("SELECT * FROM runs WHERE machine_id = ? AND current = 1")
        .bind(machine.to_string())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .as_ref()
        .map(run_from_row)
        .transpose()
}

/// Write a stepped run and its effects (inside the caller's transaction).
async fn write_step(
    tx: &mut Transaction<'_, Sqlite>,
    record: &mut RunRecord,
    outcome: &Outcome,
    report: Option<&AttemptReport>,
    now: OffsetDateTime,
) -> StoreResult<()> {
    let now_ms = to_ms(now);
    record.version += 1;
    record.updated_at = now;
    let done = sqlx::query(
        "UPDATE runs SET state = ?, phase = ?, version = ?, updated_at = ? \
         WHERE id = ? AND version = ?",
    )
    .bind(json(&record.run)?)
    .bind(record.run.phase.name())
    .bind(record.version)
    .bind(now_ms)
    .bind(record.id.to_string())
    .bind(record.version - 1)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    if done.rows_affected() != 1 {
        // Cannot happen inside one write transaction; refuse rather than write over a change.
        return Err(StoreError::Db(
            "run changed under a write transaction".into(),
        ));
    }
    let machine = record.machine_id.to_string();
    for effect in &outcome.effects {
        match effect {
            Effect::SetBootEnv(env) => {
                sqlx::query(
                    "INSERT INTO machine_boot_env (machine_id, boot_env, set_at) VALUES (?, ?, ?) \
                     ON CONFLICT(machine_id) DO UPDATE SET boot_env = excluded.boot_env, \
                     set_at = excluded.set_at",
                )
                .bind(&machine)
                .bind(env)
                .bind(now_ms)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            }
            Effect::AttemptCreated {
                attempt,
                stage,
                task,
            } => {
                let st = record.plan.stages.get(*stage);
                let stage_name = st.map(|s| s.name.as_str()).unwrap_or("?");
                let task_name = st
                    .and_then(|s| s.tasks.get(*task))
                    .map(|t| t.name.as_str())
                    .unwrap_or("?");
                sqlx::query(
                    "INSERT INTO attempts (id, run_id, machine_id, stage, stage_name, task, \
                     task_name, state, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, 'created', ?)",
                )
                .bind(attempt.to_string())
                .bind(record.id.to_string())
                .bind(&machine)
                .bind(*stage as i64)
                .bind(stage_name)
                .bind(*task as i64)
                .bind(task_name)
                .bind(now_ms)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            }
            Effect::AttemptStarted(attempt) => {
                sqlx::query(
                    "UPDATE attempts SET state = 'running', started_at = ? \
                     WHERE id = ? AND state = 'created'",
                )
                .bind(now_ms)
                .bind(attempt.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            }
            Effect::AttemptEnded(attempt, end) => {
                let (state, reason) = match end {
                    AttemptEnd::Succeeded => (AttemptState::Succeeded, None),
                    AttemptEnd::Failed(r) => (AttemptState::Failed, Some(r.as_str())),
                    AttemptEnd::TimedOut => (AttemptState::TimedOut, None),
                    AttemptEnd::Interrupted => (AttemptState::Interrupted, None),
                    AttemptEnd::Cancelled => (AttemptState::Cancelled, None),
                };
                let report = report.filter(|r| r.attempt == *attempt);
                sqlx::query(
                    "UPDATE attempts SET state = ?, reason = ?, finished_at = ?, \
                     exit_code = COALESCE(?, exit_code), result = COALESCE(?, result) \
                     WHERE id = ?",
                )
                .bind(state.as_str())
                .bind(reason)
                .bind(now_ms)
                .bind(report.and_then(|r| r.exit_code).map(i64::from))
                .bind(
                    report
                        .and_then(|r| r.result.as_ref())
                        .map(json)
                        .transpose()?,
                )
                .bind(attempt.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
            }
            Effect::StageEntered(_) | Effect::PhaseChanged => {}
        }
    }
    Ok(())
}

/// The bytes of an attempt's log in `[from, to)` (inside the caller's transaction or not).
async fn log_range<'e, E>(executor: E, attempt: &str, from: u64, to: u64) -> StoreResult<Vec<u8>>
where
    E: sqlx::Executor<'e, Database = Sqlite>,
{
    let rows = sqlx::query(
        "SELECT offset, data FROM attempt_logs WHERE attempt_id = ? \
         AND offset < ? AND offset + length(data) > ? ORDER BY offset",
    )
    .bind(attempt)
    .bind(to as i64)
    .bind(from as i64)
    .fetch_all(executor)
    .await
    .map_err(db)?;
    let mut out = Vec::with_capacity((to - from) as usize);
    for r in rows {
        let off = r.try_get::<i64, _>("offset").map_err(db)? as u64;
        let data: Vec<u8> = r.try_get("data").map_err(db)?;
        let start = from.saturating_sub(off) as usize;
        let end = ((to - off) as usize).min(data.len());
        if start < end {
            out.extend_from_slice(&data[start..end]);
        }
    }
    Ok(out)
}

#[async_trait]
impl WorkflowStore for SqliteStore {
    async fn content_version(&self) -> StoreResult<i64> {
        sqlx::query("SELECT version FROM content_head WHERE id = 1")
            .fetch_one(self.reader())
            .await
            .map_err(db)?
            .try_get("version")
            .map_err(db)
    }

    async fn content_at(&self, version: Option<i64>) -> StoreResult<(i64, Vec<ContentObject>)> {
        let version = match version {
            Some(v) => v,
            None => self.content_version().await?,
        };
        // The newest row per (kind, name) at or below the version; deletions have no body.
        let rows = sqlx::query(
            "SELECT c.body FROM content_objects c \
             JOIN (SELECT kind, name, MAX(version) AS v FROM content_objects \
                   WHERE version <= ? GROUP BY kind, name) n \
             ON c.kind = n.kind AND c.name = n.name AND c.version = n.v \
             WHERE c.body IS NOT NULL ORDER BY c.kind, c.name",
        )
        .bind(version)
        .fetch_all(self.reader())
        .await
        .map_err(db)?;
        let objects = rows
            .iter()
            .map(|r| {
                let body: String = r.try_get("body").map_err(db)?;
                serde_json::from_str(&body).map_err(|e| corrupt("content object", e))
            })
            .collect::<StoreResult<Vec<ContentObject>>>()?;
        Ok((version, objects))
    }

    async fn apply_content(
        &self,
        objects: &[ContentObject],
        deletions: &[(Kind, String)],
    ) -> StoreResult<ApplyOutcome> {
        let mut tx = self.writer().begin().await.map_err(db)?;
        let head: i64 = sqlx::query("SELECT version FROM content_head WHERE id = 1")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?
            .try_get("version")
            .map_err(db)?;
        let next = head + 1;
        let mut report = Vec::new();
        let mut changed = false;
        let newest = |kind: Kind, name: String| {
            sqlx::query(
                "SELECT body FROM content_objects WHERE kind = ? AND name = ? \
                 ORDER BY version DESC LIMIT 1",
            )
            .bind(kind.as_str())
            .bind(name)
        };
        for o in objects {
            let body = json(o)?;
            let old: Option<Option<String>> = newest(o.kind(), o.name().to_string())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .map(|r| r.try_get("body").map_err(db))
                .transpose()?;
            let action = match old.flatten() {
                None => ApplyAction::Created,
                Some(b) if b == body => ApplyAction::Unchanged,
                Some(_) => ApplyAction::Updated,
            };
            if action != ApplyAction::Unchanged {
                sqlx::query(
                    "INSERT INTO content_objects (kind, name, version, body) VALUES (?, ?, ?, ?) \
                     ON CONFLICT(kind, name, version) DO UPDATE SET body = excluded.body",
                )
                .bind(o.kind().as_str())
                .bind(o.name())
                .bind(next)
                .bind(&body)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                changed = true;
            }
            report.push((o.kind(), o.name().to_string(), action));
        }
        for (kind, name) in deletions {
            let exists = newest(*kind, name.clone())
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?
                .map(|r| r.try_get::<Option<String>, _>("body").map_err(db))
                .transpose()?
                .flatten()
                .is_some();
            if exists {
                sqlx::query(
                    "INSERT INTO content_objects (kind, name, version, body) VALUES (?, ?, ?, NULL) \
                     ON CONFLICT(kind, name, version) DO UPDATE SET body = NULL",
                )
                .bind(kind.as_str())
                .bind(name)
                .bind(next)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
                changed = true;
                report.push((*kind, name.clone(), ApplyAction::Deleted));
            } else {
                report.push((*kind, name.clone(), ApplyAction::Unchanged));
            }
        }
        let version = if changed {
            sqlx::query("UPDATE content_head SET version = ? WHERE id = 1")
                .bind(next)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            next
        } else {
            head
        };
        tx.commit().await.map_err(db)?;
        Ok(ApplyOutcome {
            version,
            objects: report,
        })
    }

    async fn start_run(
        &self,
        machine: MachineId,
        plan: &Plan,
        make: &StartFn,
        on_replace: &StepFn,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Stepped>> {
        let mut tx = self.writer().begin().await.map_err(db)?;
        let exists = sqlx::query("SELECT 1 FROM machines WHERE id = ?")
            .bind(machine.to_string())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
            .is_some();
        if !exists {
            return Ok(None);
        }
        if let Some(mut old) = current_run_tx(&mut tx, machine).await? {
            let mut state = old.run.clone();
            if let Ok(outcome) = on_replace(&mut state, &old.plan) {
                old.run = state;
                write_step(&mut tx, &mut old, &outcome, None, now).await?;
            }
            sqlx::query("UPDATE runs SET current = 0 WHERE id = ?")
                .bind(old.id.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
        }
        let (run, outcome) = make(plan);
        let mut record = RunRecord {
            id: Uuid::new_v4(),
            machine_id: machine,
            plan: plan.clone(),
            run,
            current: true,
            version: 0,
            created_at: now,
            updated_at: now,
        };
        sqlx::query(
            "INSERT INTO runs (id, machine_id, workflow, content_version, plan, state, phase, \
             current, version, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, 1, 0, ?, ?)",
        )
        .bind(record.id.to_string())
        .bind(machine.to_string())
        .bind(&plan.workflow)
        .bind(plan.content_version)
        .bind(json(plan)?)
        .bind(json(&record.run)?)
        .bind(record.run.phase.name())
        .bind(to_ms(now))
        .bind(to_ms(now))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        write_step(&mut tx, &mut record, &outcome, None, now).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(Stepped { record, outcome }))
    }

    async fn step_run(
        &self,
        machine: MachineId,
        step: &StepFn,
        report: Option<&AttemptReport>,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Result<Stepped, crate::workflow::run::StepError>>> {
        let mut tx = self.writer().begin().await.map_err(db)?;
        let Some(mut record) = current_run_tx(&mut tx, machine).await? else {
            return Ok(None);
        };
        let mut state = record.run.clone();
        let outcome = match step(&mut state, &record.plan) {
            Ok(o) => o,
            Err(e) => return Ok(Some(Err(e))), // nothing changed; the transaction rolls back
        };
        if state == record.run && outcome.effects.is_empty() {
            // A pure read (an answer without a change): no write.
            return Ok(Some(Ok(Stepped { record, outcome })));
        }
        record.run = state;
        write_step(&mut tx, &mut record, &outcome, report, now).await?;
        tx.commit().await.map_err(db)?;
        Ok(Some(Ok(Stepped { record, outcome })))
    }

    async fn current_boot(
        &self,
        machine: MachineId,
    ) -> StoreResult<Option<(String, Option<String>)>> {
        sqlx::query("SELECT boot_id, via_env FROM machine_boots WHERE machine_id = ?")
            .bind(machine.to_string())
            .fetch_optional(self.reader())
            .await
            .map_err(db)?
            .map(|r| {
                Ok((
                    r.try_get("boot_id").map_err(db)?,
                    r.try_get("via_env").map_err(db)?,
                ))
            })
            .transpose()
    }

    async fn report_boot(
        &self,
        machine: MachineId,
        boot_id: &str,
        env: &str,
        now: OffsetDateTime,
    ) -> StoreResult<()> {
        let mut tx = self.writer().begin().await.map_err(db)?;
        record_boot(&mut tx, machine, boot_id, Some(env), now).await?;
        sqlx::query(
            "UPDATE machines SET boot_id = ?, last_seen = ?, version = version + 1 WHERE id = ?",
        )
        .bind(boot_id)
        .bind(to_ms(now))
        .bind(machine.to_string())
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn forget_boot(&self, machine: MachineId) -> StoreResult<()> {
        sqlx::query("DELETE FROM machine_boots WHERE machine_id = ?")
            .bind(machine.to_string())
            .execute(self.writer())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn current_run(&self, machine: MachineId) -> StoreResult<Option<RunRecord>> {
        sqlx::query("SELECT * FROM runs WHERE machine_id = ? AND current = 1")
            .bind(machine.to_string())
            .fetch_optional(self.reader())
            .await
            .map_err(db)?
            .as_ref()
            .map(run_from_row)
            .transpose()
    }

    async fn machines_with_active_runs(&self) -> StoreResult<Vec<MachineId>> {
        let rows = sqlx::query(
            "SELECT machine_id FROM runs WHERE current = 1 \
             AND phase NOT IN ('done', 'failed', 'cancelled') ORDER BY machine_id",
        )
        .fetch_all(self.reader())
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| parse_id(&r.try_get::<String, _>("machine_id").map_err(db)?))
            .collect()
    }

    async fn get_attempt(&self, id: AttemptId) -> StoreResult<Option<AttemptRecord>> {
        sqlx::query("SELECT * FROM attempts WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(self.reader())
            .await
            .map_err(db)?
            .as_ref()
            .map(attempt_from_row)
            .transpose()
    }

    async fn list_attempts(
        &self,
        machine: Option<MachineId>,
        limit: u32,
    ) -> StoreResult<Vec<AttemptRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM attempts WHERE (? IS NULL OR machine_id = ?) \
             ORDER BY created_at DESC, rowid DESC LIMIT ?",
        )
        .bind(machine.map(|m| m.to_string()))
        .bind(machine.map(|m| m.to_string()))
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await
        .map_err(db)?;
        rows.iter().map(attempt_from_row).collect()
    }

    async fn append_log(
        &self,
        attempt: AttemptId,
        offset: u64,
        data: &[u8],
    ) -> StoreResult<Option<LogAppend>> {
        let id = attempt.to_string();
        let mut tx = self.writer().begin().await.map_err(db)?;
        let Some(row) = sqlx::query("SELECT log_len FROM attempts WHERE id = ?")
            .bind(&id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let len = row.try_get::<i64, _>("log_len").map_err(db)? as u64;
        if offset > len {
            return Ok(Some(LogAppend::Conflict(len)));
        }
        let end = offset + data.len() as u64;
        // The part that overlaps bytes already stored must be identical.
        let overlap_end = end.min(len);
        if offset < overlap_end {
            let stored = log_range(&mut *tx, &id, offset, overlap_end).await?;
            if stored != data[..(overlap_end - offset) as usize] {
                return Ok(Some(LogAppend::Conflict(len)));
            }
        }
        if end <= len {
            return Ok(Some(LogAppend::Duplicate(len)));
        }
        let fresh = &data[(len - offset) as usize..];
        sqlx::query("INSERT INTO attempt_logs (attempt_id, offset, data) VALUES (?, ?, ?)")
            .bind(&id)
            .bind(len as i64)
            .bind(fresh)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::query("UPDATE attempts SET log_len = ? WHERE id = ?")
            .bind(end as i64)
            .bind(&id)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Some(LogAppend::Appended(end)))
    }

    async fn prune_logs(
        &self,
        ended_before: OffsetDateTime,
        now: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<PrunedLogs> {
        let mut tx = self.writer().begin().await.map_err(db)?;
        let rows = sqlx::query(
            "SELECT id, log_len FROM attempts WHERE log_pruned_at IS NULL AND log_len > 0 \
             AND finished_at IS NOT NULL AND finished_at < ? ORDER BY finished_at LIMIT ?",
        )
        .bind(to_ms(ended_before))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await
        .map_err(db)?;
        let mut pruned = PrunedLogs::default();
        for r in &rows {
            let id: String = r.try_get("id").map_err(db)?;
            sqlx::query("DELETE FROM attempt_logs WHERE attempt_id = ?")
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            sqlx::query("UPDATE attempts SET log_pruned_at = ? WHERE id = ?")
                .bind(to_ms(now))
                .bind(&id)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            pruned.attempts += 1;
            pruned.bytes += r.try_get::<i64, _>("log_len").map_err(db)? as u64;
        }
        tx.commit().await.map_err(db)?;
        Ok(pruned)
    }

    async fn read_log(
        &self,
        attempt: AttemptId,
        offset: u64,
        max: usize,
    ) -> StoreResult<Option<(Vec<u8>, u64)>> {
        let id = attempt.to_string();
        let Some(row) = sqlx::query("SELECT log_len FROM attempts WHERE id = ?")
            .bind(&id)
            .fetch_optional(self.reader())
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let len = row.try_get::<i64, _>("log_len").map_err(db)? as u64;
        let from = offset.min(len);
        let to = from.saturating_add(max as u64).min(len);
        let bytes = log_range(self.reader(), &id, from, to).await?;
        Ok(Some((bytes, len)))
    }

    async fn machine_params(&self, machine: MachineId) -> StoreResult<Option<MachineParams>> {
        let id = machine.to_string();
        let row = sqlx::query(
            "SELECT p.profiles, p.params, p.version FROM machines m \
             LEFT JOIN machine_params p ON p.machine_id = m.id WHERE m.id = ?",
        )
        .bind(&id)
        .fetch_optional(self.reader())
        .await
        .map_err(db)?;
        let Some(row) = row else { return Ok(None) };
        let Some(version) = row.try_get::<Option<i64>, _>("version").map_err(db)? else {
            return Ok(Some(MachineParams::default()));
        };
        let profiles: String = row.try_get("profiles").map_err(db)?;
        let params: String = row.try_get("params").map_err(db)?;
        Ok(Some(MachineParams {
            profiles: serde_json::from_str(&profiles)
                .map_err(|e| corrupt("machine profiles", e))?,
            params: serde_json::from_str(&params).map_err(|e| corrupt("machine params", e))?,
            version,
        }))
    }

    async fn set_machine_params(
        &self,
        machine: MachineId,
        params: &MachineParams,
        expected: i64,
        now: OffsetDateTime,
    ) -> StoreResult<super::Cas> {
        let id = machine.to_string();
        let (profiles, values) = (json(&params.profiles)?, json(&params.params)?);
        // Version 0 means "never set": insert, which fails on a race (the row exists) and on a
        // missing machine (the foreign key) alike; later versions update only what was read.
        let done = if expected == 0 {
            sqlx::query(
                "INSERT INTO machine_params (machine_id, profiles, params, version, updated_at) \
                 SELECT id, ?, ?, 1, ? FROM machines WHERE id = ? \
                 ON CONFLICT (machine_id) DO NOTHING",
            )
            .bind(&profiles)
            .bind(&values)
            .bind(to_ms(now))
            .bind(&id)
        } else {
            sqlx::query(
                "UPDATE machine_params SET profiles = ?, params = ?, version = version + 1, \
                 updated_at = ? WHERE machine_id = ? AND version = ?",
            )
            .bind(&profiles)
            .bind(&values)
            .bind(to_ms(now))
            .bind(&id)
            .bind(expected)
        }
        .execute(self.writer())
        .await
        .map_err(db)?
        .rows_affected()
            == 1;
        Ok(if done {
            super::Cas::Done(expected + 1)
        } else {
            super::Cas::Conflict
        })
    }
}

/// The boot environment whose script minted a bootstrap token (inside the enrollment
/// transaction).
pub(super) async fn token_boot_env(
    tx: &mut Transaction<'_, Sqlite>,
    token_hash: &str,
) -> StoreResult<Option<String>> {
    Ok(
        sqlx::query("SELECT boot_env FROM bootstrap_tokens WHERE hash = ?")
            .bind(token_hash)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db)?
            .map(|r| r.try_get::<Option<String>, _>("boot_env").map_err(db))
            .transpose()?
            .flatten(),
    )
}

/// The boot environment a workflow assigned a machine, if any.
pub(super) async fn assigned_boot_env(
    store: &SqliteStore,
    machine: &str,
) -> StoreResult<Option<String>> {
    sqlx::query("SELECT boot_env FROM machine_boot_env WHERE machine_id = ?")
        .bind(machine)
        .fetch_optional(store.reader())
        .await
        .map_err(db)?
        .map(|r| r.try_get::<String, _>("boot_env").map_err(db))
        .transpose()
}

/// Remember a machine's latest boot (inside the enrollment transaction).
pub(super) async fn record_boot(
    tx: &mut Transaction<'_, Sqlite>,
    machine: MachineId,
    boot_id: &str,
    via_env: Option<&str>,
    now: OffsetDateTime,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO machine_boots (machine_id, boot_id, via_env, at) VALUES (?, ?, ?, ?) \
         ON CONFLICT(machine_id) DO UPDATE SET boot_id = excluded.boot_id, \
         via_env = excluded.via_env, at = excluded.at",
    )
    .bind(machine.to_string())
    .bind(boot_id)
    .bind(via_env)
    .bind(to_ms(now))
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(())
}
