-- Workflows (server/src/workflow, docs/workflows.md): content versions, runs, attempts, logs.

-- Every applied version of every content object. A content version is a number; the content
-- "at version V" is, per (kind, name), the newest row with version <= V unless that row is a
-- deletion. Rows are never updated, so a run's pinned version stays readable.
CREATE TABLE content_objects (
    kind    TEXT NOT NULL,
    name    TEXT NOT NULL,
    version INTEGER NOT NULL,
    -- The object as JSON; NULL marks a deletion.
    body    TEXT,
    PRIMARY KEY (kind, name, version)
);

-- The newest content version (one row).
CREATE TABLE content_head (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO content_head (id, version) VALUES (1, 0);

-- One row per workflow run. `current` marks the machine's run that agents and boots act on
-- (at most one per machine); older runs stay for their history.
CREATE TABLE runs (
    id         TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines(id),
    workflow   TEXT NOT NULL,
    content_version INTEGER NOT NULL,
    -- The pinned plan (workflow::plan::Plan) and the run's state (workflow::run::Run), JSON.
    plan       TEXT NOT NULL,
    state      TEXT NOT NULL,
    -- Copied out of `state` for listing and filtering.
    phase      TEXT NOT NULL,
    current    INTEGER NOT NULL DEFAULT 1,
    -- Bumped on every step: the compare-and-set token.
    version    INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX runs_current ON runs(machine_id) WHERE current = 1;
CREATE INDEX runs_machine ON runs(machine_id, created_at);

-- Every delivery of a task (a job attempt).
CREATE TABLE attempts (
    id          TEXT PRIMARY KEY,
    run_id      TEXT NOT NULL REFERENCES runs(id),
    machine_id  TEXT NOT NULL REFERENCES machines(id),
    stage       INTEGER NOT NULL,
    stage_name  TEXT NOT NULL,
    task        INTEGER NOT NULL,
    task_name   TEXT NOT NULL,
    -- created | running | succeeded | failed | timed_out | interrupted | cancelled
    state       TEXT NOT NULL,
    reason      TEXT,
    exit_code   INTEGER,
    -- A built-in action's structured result (JSON).
    result      TEXT,
    created_at  INTEGER NOT NULL,
    started_at  INTEGER,
    finished_at INTEGER,
    -- Bytes of log stored (the next chunk must start here).
    log_len     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX attempts_run ON attempts(run_id, created_at);
CREATE INDEX attempts_machine ON attempts(machine_id, created_at);

-- Job logs as the chunks they arrived in, keyed by byte offset.
CREATE TABLE attempt_logs (
    attempt_id TEXT NOT NULL REFERENCES attempts(id),
    offset     INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (attempt_id, offset)
);

-- The boot environment a workflow assigned a machine: what its PXE boots get (an operator's
-- rediscovery request in boot_requests goes first).
CREATE TABLE machine_boot_env (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id),
    boot_env   TEXT NOT NULL,
    set_at     INTEGER NOT NULL
);

-- Which boot environment's script minted a bootstrap token: an enrollment through it proves
-- the boot came from that script (a stage boundary, see workflow::run).
ALTER TABLE bootstrap_tokens ADD COLUMN boot_env TEXT;

-- Each machine's latest boot as its enrollment showed it: the kernel boot id and the boot
-- environment whose script minted the token it used. A workflow assigned while the machine
-- already runs its first stage's environment starts there without a reboot.
CREATE TABLE machine_boots (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id),
    boot_id    TEXT NOT NULL,
    via_env    TEXT,
    at         INTEGER NOT NULL
);
