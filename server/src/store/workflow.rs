//! What workflows (`crate::workflow`) need from the store: versioned content, runs stepped
//! inside one transaction together with their effects, attempts, and job logs by byte offset.
//!
//! A run is changed only through [`WorkflowStore::step_run`]: the store reads the machine's
//! current run, calls the pure step function, and writes the run and every
//! [`Effect`](crate::workflow::run::Effect) (attempt rows, the machine's boot environment) in the
//! same transaction. Two servers sharing a database, or two requests racing, therefore never
//! both act on one state: the second sees the first's result.

use anneal_shared::content::{ContentObject, Kind};
use anneal_shared::MachineId;
use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;

use super::StoreResult;
use crate::workflow::plan::Plan;
use crate::workflow::run::{AttemptId, Outcome, Run, StepError};

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// The run's id.
    pub id: Uuid,
    /// Its machine.
    pub machine_id: MachineId,
    /// The pinned plan.
    pub plan: Plan,
    /// Its state.
    pub run: Run,
    /// Whether it is the machine's current run.
    pub current: bool,
    /// Bumped on every step.
    pub version: i64,
    /// When it was assigned.
    pub created_at: OffsetDateTime,
    /// Its latest step.
    pub updated_at: OffsetDateTime,
}

/// The state of an attempt as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptState {
    /// Handed out, not started.
    Created,
    /// The agent acknowledged its start.
    Running,
    /// Exit code 0.
    Succeeded,
    /// Reported failure, or could not be rendered.
    Failed,
    /// No result before its deadline.
    TimedOut,
    /// Started and then lost.
    Interrupted,
    /// Cancelled (operator, restart, or never started before a reboot).
    Cancelled,
}

impl AttemptState {
    /// As stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Created => "created",
            AttemptState::Running => "running",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::TimedOut => "timed_out",
            AttemptState::Interrupted => "interrupted",
            AttemptState::Cancelled => "cancelled",
        }
    }

    /// Back from [`AttemptState::as_str`].
    pub fn parse(s: &str) -> Option<AttemptState> {
        Some(match s {
            "created" => AttemptState::Created,
            "running" => AttemptState::Running,
            "succeeded" => AttemptState::Succeeded,
            "failed" => AttemptState::Failed,
            "timed_out" => AttemptState::TimedOut,
            "interrupted" => AttemptState::Interrupted,
            "cancelled" => AttemptState::Cancelled,
            _ => return None,
        })
    }

    /// Whether the attempt has ended.
    pub fn is_final(self) -> bool {
        !matches!(self, AttemptState::Created | AttemptState::Running)
    }
}

/// An attempt (one delivery of a task) as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    /// Its id.
    pub id: AttemptId,
    /// Its run.
    pub run_id: Uuid,
    /// Its machine.
    pub machine_id: MachineId,
    /// Stage index and name.
    pub stage: usize,
    /// The stage's name.
    pub stage_name: String,
    /// Task index within the stage.
    pub task: usize,
    /// The task's name.
    pub task_name: String,
    /// Where it stands.
    pub state: AttemptState,
    /// Why it failed, timed out or was cancelled.
    pub reason: Option<String>,
    /// The process's exit code, when it ran a script.
    pub exit_code: Option<i32>,
    /// A built-in action's structured result.
    pub result: Option<Value>,
    /// When it was handed out.
    pub created_at: OffsetDateTime,
    /// When the agent acknowledged its start.
    pub started_at: Option<OffsetDateTime>,
    /// When it ended.
    pub finished_at: Option<OffsetDateTime>,
    /// Bytes of log stored.
    pub log_len: u64,
    /// When retention deleted its log (`log_len` still says how long it was).
    pub log_pruned_at: Option<OffsetDateTime>,
}

/// What one pass of log retention deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunedLogs {
    /// Attempts whose logs were deleted.
    pub attempts: u64,
    /// Bytes deleted.
    pub bytes: u64,
}

/// What the agent reported with an attempt's end, stored on the attempt row when the step that
/// ends it commits.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AttemptReport {
    /// The attempt.
    pub attempt: AttemptId,
    /// Exit code of the script.
    pub exit_code: Option<i32>,
    /// A built-in action's result.
    pub result: Option<Value>,
}

/// The pure step applied inside the store's transaction. It builds its own
/// [`crate::workflow::run::Ctx`] (clock, fresh attempt ids).
pub type StepFn<'a> = dyn Fn(&mut Run, &Plan) -> Result<Outcome, StepError> + Send + Sync + 'a;

/// Making a new run inside the store's transaction.
pub type StartFn<'a> = dyn Fn(&Plan) -> (Run, Outcome) + Send + Sync + 'a;

/// A committed step: the run as it is now and what the step produced.
#[derive(Debug, Clone)]
pub struct Stepped {
    /// The run after the step.
    pub record: RunRecord,
    /// The step's answer and effects.
    pub outcome: Outcome,
}

/// What happened to one object in [`WorkflowStore::apply_content`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyAction {
    /// It did not exist.
    Created,
    /// It existed with other content.
    Updated,
    /// It existed exactly so; nothing written.
    Unchanged,
    /// It was deleted.
    Deleted,
}

/// The result of applying content.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplyOutcome {
    /// The content version after the call (unchanged if nothing changed).
    pub version: i64,
    /// Per object, in the order given.
    pub objects: Vec<(Kind, String, ApplyAction)>,
}

/// How a log chunk was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogAppend {
    /// Appended (or partly, when it overlapped identically); the log is now this long.
    Appended(u64),
    /// Entirely an identical copy of bytes already stored: nothing changed.
    Duplicate(u64),
    /// Refused: it starts past the end, or differs from bytes already stored. The log's
    /// length is given so the sender can resume there.
    Conflict(u64),
}

/// A machine's own params and its profiles, as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineParams {
    /// Profile names, in order (`global` is always under them, whether listed or not).
    pub profiles: Vec<String>,
    /// The machine's own values, over every profile.
    pub params: std::collections::BTreeMap<String, Value>,
    /// Bumped on every change; 0 before the first.
    pub version: i64,
}

/// Store methods of workflows.
#[async_trait]
pub trait WorkflowStore: Send + Sync {
    /// The newest content version (0 before anything was applied).
    async fn content_version(&self) -> StoreResult<i64>;

    /// Every content object at `version` (the newest when `None`), with that version.
    async fn content_at(&self, version: Option<i64>) -> StoreResult<(i64, Vec<ContentObject>)>;

    /// Write `objects` and delete `deletions` as one new content version, in one transaction.
    /// Objects identical to their newest version are left alone; when nothing changes, no
    /// version is made.
    async fn apply_content(
        &self,
        objects: &[ContentObject],
        deletions: &[(Kind, String)],
    ) -> StoreResult<ApplyOutcome>;

    /// Make `plan` the machine's current run (the previous current run, if any, stays as
    /// history, and `on_replace` is applied to it first, e.g. cancelling it). False in
    /// `Ok(None)` when there is no such machine.
    async fn start_run(
        &self,
        machine: MachineId,
        plan: &Plan,
        make: &StartFn,
        on_replace: &StepFn,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Stepped>>;

    /// Apply `step` to the machine's current run and commit it with its effects; `report` is
    /// stored on the attempt the step ends. `Ok(None)`: the machine has no current run.
    async fn step_run(
        &self,
        machine: MachineId,
        step: &StepFn,
        report: Option<&AttemptReport>,
        now: OffsetDateTime,
    ) -> StoreResult<Option<Result<Stepped, StepError>>>;

    /// The machine's latest boot: kernel boot id, and the boot environment whose script minted
    /// the token it enrolled with (recorded by the enrollment transaction).
    async fn current_boot(
        &self,
        machine: MachineId,
    ) -> StoreResult<Option<(String, Option<String>)>>;

    /// An installed agent reported boot `boot_id` of environment `env` (no enrollment): record
    /// it as the machine's latest boot and its boot id on the machine record.
    async fn report_boot(
        &self,
        machine: MachineId,
        boot_id: &str,
        env: &str,
        now: OffsetDateTime,
    ) -> StoreResult<()>;

    /// Forget the machine's latest boot: it is booting again (a script was served).
    async fn forget_boot(&self, machine: MachineId) -> StoreResult<()>;

    /// The machine's current run.
    async fn current_run(&self, machine: MachineId) -> StoreResult<Option<RunRecord>>;

    /// Machines whose current run is not settled (done, failed, cancelled): they need
    /// deadline ticks.
    async fn machines_with_active_runs(&self) -> StoreResult<Vec<MachineId>>;

    /// An attempt.
    async fn get_attempt(&self, id: AttemptId) -> StoreResult<Option<AttemptRecord>>;

    /// Attempts of a machine (all machines when `None`), newest first, at most `limit`.
    async fn list_attempts(
        &self,
        machine: Option<MachineId>,
        limit: u32,
    ) -> StoreResult<Vec<AttemptRecord>>;

    /// Add `data` to an attempt's log at byte `offset`: taken only at the log's current length
    /// or as an identical overlap, so a retried upload neither loses nor duplicates a byte.
    /// `Ok(None)` when there is no such attempt.
    async fn append_log(
        &self,
        attempt: AttemptId,
        offset: u64,
        data: &[u8],
    ) -> StoreResult<Option<LogAppend>>;

    /// A machine's own params and profiles (empty at version 0 when never set); `None` when
    /// there is no such machine.
    async fn machine_params(&self, machine: MachineId) -> StoreResult<Option<MachineParams>>;

    /// Replace a machine's params and profiles if they are still at `expected` version
    /// (`params.version` is ignored). `Cas::Conflict` also when there is no such machine.
    async fn set_machine_params(
        &self,
        machine: MachineId,
        params: &MachineParams,
        expected: i64,
        now: OffsetDateTime,
    ) -> StoreResult<super::Cas>;

    /// Delete the logs of up to `limit` attempts that ended before `ended_before`, marking
    /// each pruned at `now`. Running attempts and logs already pruned are left alone.
    async fn prune_logs(
        &self,
        ended_before: OffsetDateTime,
        now: OffsetDateTime,
        limit: u32,
    ) -> StoreResult<PrunedLogs>;

    /// Up to `max` bytes of an attempt's log from `offset`, and the log's length.
    async fn read_log(
        &self,
        attempt: AttemptId,
        offset: u64,
        max: usize,
    ) -> StoreResult<Option<(Vec<u8>, u64)>>;
}
