//! [`LeaseStore`] on SQLite. Every write is a conditional upsert/update on the address's row;
//! the affected-row count says whether this operation won.
//!
//! Why batches run on their own rusqlite connection rather than through sqlx: sqlx runs each
//! SQLite statement on its worker thread and hands every result back across threads, so one
//! DORA exchange (about five statements) cost about ten thread wake-ups. On a busy 2-core
//! machine each wake-up waits for a core, and perfdhcp showed the server dropping DISCOVERs
//! while using a third of a core. Here a whole batch — BEGIN IMMEDIATE, every op, COMMIT — runs
//! on one blocking thread with cached prepared statements: one hop per batch. Reads still go
//! through the sqlx reader pool. The two writers (this connection and sqlx's) share SQLite's
//! write lock under the busy timeout.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{params, TransactionBehavior};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;
use time::OffsetDateTime;

use super::leases::*;
use super::sqlite::db;
use super::{from_ms, to_ms, SqliteStore, StoreError, StoreResult};

/// How many never-used addresses one offer tries before it looks at expired ones (each try only
/// fails when another server took that address a moment ago).
const FRESH_TRIES: usize = 32;
/// How many expired or released addresses one offer tries.
const REUSE_TRIES: i64 = 32;

/// Per range `(lo, hi)`: no never-used address lies below this one. A hint kept in memory so an
/// offer finds the next never-used address with one indexed lookup instead of reading every
/// used address of the range (which made each offer O(leases)). Sound because lease rows are
/// never deleted: once used, an address stays used, so the cursor only moves up. A batch works
/// on a copy that is kept only when its transaction commits (a rolled-back claim must not move
/// it). Lost on restart: it starts again at `lo` and the first gap search skips the used run.
#[derive(Default)]
struct FreshCursors(Mutex<Cursors>);

type Cursors = HashMap<(u32, u32), u32>;

impl FreshCursors {
    fn load(&self) -> Cursors {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn keep(&self, batch: Cursors) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for (range, next) in batch {
            let c = m.entry(range).or_insert(next);
            *c = (*c).max(next);
        }
    }
}

fn ip_num(ip: Ipv4Addr) -> i64 {
    i64::from(u32::from(ip))
}

fn lease_from_row(r: &SqliteRow) -> StoreResult<LeaseRecord> {
    let ip: i64 = r.try_get("ip").map_err(db)?;
    let ip = u32::try_from(ip).map_err(|e| StoreError::Corrupt {
        what: "lease ip",
        detail: e.to_string(),
    })?;
    let state: String = r.try_get("state").map_err(db)?;
    Ok(LeaseRecord {
        ip: Ipv4Addr::from(ip),
        mac: r.try_get("mac").map_err(db)?,
        subnet: r.try_get("subnet").map_err(db)?,
        state: LeaseState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            what: "lease state",
            detail: state.clone(),
        })?,
        expires_at: from_ms(r.try_get("expires_at").map_err(db)?)?,
        hostname: r.try_get("hostname").map_err(db)?,
        updated_at: from_ms(r.try_get("updated_at").map_err(db)?)?,
    })
}

const COLS: &str = "ip, mac, subnet, state, expires_at, hostname, updated_at";

/// The lease batches' connection, and the never-used cursors that go with it.
pub(super) struct LeaseConn {
    conn: Mutex<rusqlite::Connection>,
    fresh: FreshCursors,
}

type Tx<'c> = rusqlite::Transaction<'c>;

fn rdb(e: rusqlite::Error) -> StoreError {
    StoreError::Db(e.to_string())
}

impl LeaseConn {
    /// Open the database file (already created and migrated by sqlx) for lease batches.
    pub(super) fn open(path: &Path) -> StoreResult<Arc<LeaseConn>> {
        let conn = rusqlite::Connection::open(path).map_err(rdb)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(rdb)?;
        // As the sqlx connections: WAL (a property of the file), NORMAL sync (durable across
        // process crashes, see sqlite.rs).
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(rdb)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(rdb)?;
        // No checkpoints inside lease commits: a checkpoint fsyncs, and perfdhcp showed fsyncs
        // of 100-400 ms on a busy machine stalling every exchange of the batch behind them.
        // A background thread checkpoints instead (see `checkpoint_in_background`).
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(rdb)?;
        conn.set_prepared_statement_cache_capacity(32);
        let lc = Arc::new(LeaseConn {
            conn: Mutex::new(conn),
            fresh: FreshCursors::default(),
        });
        checkpoint_in_background(path, Arc::downgrade(&lc))?;
        Ok(lc)
    }

    /// Apply `ops` in one transaction (blocking: call from the blocking pool).
    fn apply(&self, ops: &[LeaseOp], now: OffsetDateTime) -> StoreResult<Vec<LeaseOutcome>> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut cursors = self.fresh.load();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(rdb)?;
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(apply_one(&tx, op, now, &mut cursors).map_err(rdb)?);
        }
        tx.commit().map_err(rdb)?;
        self.fresh.keep(cursors);
        Ok(out)
    }
}

/// How often the background thread copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);

/// Checkpoint the WAL from a thread of its own, on its own connection, until the lease
/// connection is gone. PASSIVE: it never blocks writers or readers; what it cannot copy yet
/// waits for the next round. Durability is unchanged: in WAL mode with synchronous=NORMAL a
/// commit is durable once in the WAL (across process crashes), checkpoint or not.
fn checkpoint_in_background(path: &Path, owner: std::sync::Weak<LeaseConn>) -> StoreResult<()> {
    let conn = rusqlite::Connection::open(path).map_err(rdb)?;
    conn.busy_timeout(Duration::from_secs(10)).map_err(rdb)?;
    std::thread::Builder::new()
        .name("lease-checkpoint".into())
        .spawn(move || {
            while owner.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_EVERY);
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map_err(|e| StoreError::Db(format!("starting the checkpoint thread: {e}")))?;
    Ok(())
}

/// The first never-used address at or after `from` (which must be ≤ `hi`), if any in range:
/// `from` itself when it has no row, else the address after the end of the used run that
/// starts there (one indexed walk inside SQLite, one row back).
fn next_never_used(tx: &Tx<'_>, from: u32, hi: u32) -> rusqlite::Result<Option<u32>> {
    let n: Option<i64> = tx
        .prepare_cached(
            "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM leases WHERE ip = ?1) THEN ?1 ELSE \
               (SELECT l.ip + 1 FROM leases l WHERE l.ip >= ?1 AND l.ip < ?2 \
                  AND NOT EXISTS (SELECT 1 FROM leases m WHERE m.ip = l.ip + 1) \
                ORDER BY l.ip LIMIT 1) END",
        )?
        .query_row(params![i64::from(from), i64::from(hi)], |r| r.get(0))?;
    Ok(n.and_then(|n| u32::try_from(n).ok()).filter(|n| *n <= hi))
}

/// Claim `ip` for `mac` in `state` until `until`, if the row is absent, already this MAC's (and
/// not declined), released, or expired. A bound lease of the same MAC is never shortened or
/// downgraded by an offer. True when claimed. `others` says whether the client may hold other
/// live addresses in the subnet (false only when the caller just saw it holds none), which
/// decides whether they are given back.
#[allow(clippy::too_many_arguments)]
fn claim(
    others: bool,
    tx: &Tx<'_>,
    ip: Ipv4Addr,
    mac: &str,
    subnet: &str,
    state: LeaseState,
    until: OffsetDateTime,
    hostname: Option<&str>,
    now: OffsetDateTime,
) -> rusqlite::Result<bool> {
    let done = tx
        .prepare_cached(
            "INSERT INTO leases (ip, mac, subnet, state, expires_at, hostname, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT(ip) DO UPDATE SET \
               state = CASE WHEN excluded.state = 'offered' AND leases.mac = excluded.mac \
                             AND leases.state = 'bound' AND leases.expires_at > ?7 \
                            THEN 'bound' ELSE excluded.state END, \
               expires_at = CASE WHEN excluded.state = 'offered' AND leases.mac = excluded.mac \
                             AND leases.state = 'bound' AND leases.expires_at > ?7 \
                            THEN MAX(leases.expires_at, excluded.expires_at) \
                            ELSE excluded.expires_at END, \
               mac = excluded.mac, subnet = excluded.subnet, \
               hostname = COALESCE(excluded.hostname, leases.hostname), \
               updated_at = excluded.updated_at \
             WHERE (leases.state <> 'declined' AND (leases.mac = excluded.mac OR leases.state = 'released')) \
                OR leases.expires_at <= ?7",
        )?
        .execute(params![
            ip_num(ip),
            mac,
            subnet,
            state.as_str(),
            to_ms(until),
            hostname,
            to_ms(now)
        ])?;
    if done != 1 {
        return Ok(false);
    }
    if !others {
        return Ok(true);
    }
    // One live lease per client and subnet: its other addresses are given back.
    tx.prepare_cached(
        "UPDATE leases SET state = 'released', expires_at = MIN(expires_at, ?1), updated_at = ?1 \
         WHERE mac = ?2 AND subnet = ?3 AND ip <> ?4 AND state IN ('offered', 'bound')",
    )?
    .execute(params![to_ms(now), mac, subnet, ip_num(ip)])?;
    Ok(true)
}

fn offer(
    tx: &Tx<'_>,
    op: &LeaseOp,
    now: OffsetDateTime,
    cursors: &mut Cursors,
) -> rusqlite::Result<LeaseOutcome> {
    let LeaseOp::Offer {
        subnet,
        mac,
        range,
        fixed,
        requested,
        exclude,
        hold_until,
        hostname,
    } = op
    else {
        return Ok(LeaseOutcome::Exhausted);
    };
    let host = hostname.as_deref();
    let offered = LeaseState::Offered;
    if let Some(ip) = fixed {
        return Ok(
            if claim(true, tx, *ip, mac, subnet, offered, *hold_until, host, now)? {
                LeaseOutcome::Leased(*ip)
            } else {
                LeaseOutcome::Exhausted
            },
        );
    }
    let (lo, hi) = (u32::from(range.0), u32::from(range.1));
    let usable = |ip: Ipv4Addr| {
        let n = u32::from(ip);
        n >= lo && n <= hi && !exclude.contains(&ip)
    };
    // 1. The client's own address (current, or the latest it had).
    let mut candidates: Vec<Ipv4Addr> = tx
        .prepare_cached(
            "SELECT ip FROM leases WHERE mac = ?1 AND subnet = ?2 AND state <> 'declined' \
             ORDER BY updated_at DESC LIMIT 4",
        )?
        .query_map(params![mac, subnet], |r| r.get::<_, i64>(0))?
        .filter_map(|n| n.ok().and_then(|n| u32::try_from(n).ok()))
        .map(Ipv4Addr::from)
        .collect();
    // A client with no rows here holds nothing to give back when it claims an address.
    let others = !candidates.is_empty();
    // 2. What it asked for.
    candidates.extend(requested.iter().copied());
    for ip in candidates {
        if usable(ip) && claim(others, tx, ip, mac, subnet, offered, *hold_until, host, now)? {
            return Ok(LeaseOutcome::Leased(ip));
        }
    }
    // 3. The lowest never-used address, from the cursor up.
    let mut from = cursors.get(&(lo, hi)).copied().unwrap_or(lo).max(lo);
    let mut tries = 0;
    while from <= hi && tries < FRESH_TRIES {
        let Some(n) = next_never_used(tx, from, hi)? else {
            // None left: later offers go straight to reuse.
            cursors.insert((lo, hi), hi.saturating_add(1));
            break;
        };
        from = n.saturating_add(1);
        let ip = Ipv4Addr::from(n);
        if !usable(ip) {
            // An excluded address (someone's reservation) is skipped, not used.
            if n == u32::MAX {
                break;
            }
            continue;
        }
        if claim(others, tx, ip, mac, subnet, offered, *hold_until, host, now)? {
            cursors.insert((lo, hi), from);
            return Ok(LeaseOutcome::Leased(ip));
        }
        tries += 1;
    }
    // 4. The longest-free expired or released address.
    let stale: Vec<u32> = tx
        .prepare_cached(
            "SELECT ip FROM leases WHERE ip BETWEEN ?1 AND ?2 \
             AND (expires_at <= ?3 OR state = 'released') ORDER BY expires_at LIMIT ?4",
        )?
        .query_map(
            params![i64::from(lo), i64::from(hi), to_ms(now), REUSE_TRIES],
            |r| r.get::<_, i64>(0),
        )?
        .filter_map(|n| n.ok().and_then(|n| u32::try_from(n).ok()))
        .collect();
    for n in stale {
        let ip = Ipv4Addr::from(n);
        if usable(ip) && claim(others, tx, ip, mac, subnet, offered, *hold_until, host, now)? {
            return Ok(LeaseOutcome::Leased(ip));
        }
    }
    Ok(LeaseOutcome::Exhausted)
}

fn apply_one(
    tx: &Tx<'_>,
    op: &LeaseOp,
    now: OffsetDateTime,
    cursors: &mut Cursors,
) -> rusqlite::Result<LeaseOutcome> {
    match op {
        LeaseOp::Offer { .. } => offer(tx, op, now, cursors),
        LeaseOp::Bind {
            subnet,
            mac,
            ip,
            expires_at,
            hostname,
        } => Ok(
            if claim(
                true,
                tx,
                *ip,
                mac,
                subnet,
                LeaseState::Bound,
                *expires_at,
                hostname.as_deref(),
                now,
            )? {
                LeaseOutcome::Leased(*ip)
            } else {
                LeaseOutcome::Conflict
            },
        ),
        LeaseOp::Release { mac, ip } => {
            let done = tx
                .prepare_cached(
                    "UPDATE leases SET state = 'released', expires_at = MIN(expires_at, ?1), \
                     updated_at = ?1 WHERE ip = ?2 AND mac = ?3 AND state IN ('offered', 'bound')",
                )?
                .execute(params![to_ms(now), ip_num(*ip), mac])?;
            Ok(LeaseOutcome::Applied(done == 1))
        }
        LeaseOp::Decline { mac, ip, until } => {
            let done = tx
                .prepare_cached(
                    "UPDATE leases SET state = 'declined', expires_at = ?1, updated_at = ?2 \
                     WHERE ip = ?3 AND mac = ?4 AND state IN ('offered', 'bound')",
                )?
                .execute(params![to_ms(*until), to_ms(now), ip_num(*ip), mac])?;
            Ok(LeaseOutcome::Applied(done == 1))
        }
    }
}

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn apply_lease_ops(
        &self,
        ops: &[LeaseOp],
        now: OffsetDateTime,
    ) -> StoreResult<Vec<LeaseOutcome>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let (conn, ops) = (self.leases.clone(), ops.to_vec());
        tokio::task::spawn_blocking(move || conn.apply(&ops, now))
            .await
            .map_err(|e| StoreError::Db(format!("lease batch task: {e}")))?
    }

    async fn get_lease(&self, ip: Ipv4Addr) -> StoreResult<Option<LeaseRecord>> {
        sqlx::query(&format!("SELECT {COLS} FROM leases WHERE ip = ?"))
            .bind(ip_num(ip))
            .fetch_optional(&self.reader)
            .await
            .map_err(db)?
            .as_ref()
            .map(lease_from_row)
            .transpose()
    }

    async fn leases_of(&self, mac: &str) -> StoreResult<Vec<LeaseRecord>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM leases WHERE mac = ? ORDER BY ip"
        ))
        .bind(mac)
        .fetch_all(&self.reader)
        .await
        .map_err(db)?
        .iter()
        .map(lease_from_row)
        .collect()
    }

    async fn list_leases(&self) -> StoreResult<Vec<LeaseRecord>> {
        sqlx::query(&format!("SELECT {COLS} FROM leases ORDER BY ip"))
            .fetch_all(&self.reader)
            .await
            .map_err(db)?
            .iter()
            .map(lease_from_row)
            .collect()
    }
}
