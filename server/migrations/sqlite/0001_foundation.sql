-- Foundation schema. Times are Unix milliseconds. JSON columns hold shared wire types.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL UNIQUE,
    role       TEXT NOT NULL,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

CREATE TABLE bootstrap_tokens (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    uses_left   INTEGER NOT NULL CHECK (uses_left >= 0),
    expires_at  INTEGER NOT NULL,
    mac         TEXT,
    description TEXT,
    created_at  INTEGER NOT NULL
);

CREATE TABLE machines (
    id           TEXT PRIMARY KEY,
    state        TEXT NOT NULL,
    hostname     TEXT,
    identity     TEXT NOT NULL,
    inventory    TEXT,
    inventory_at INTEGER,
    boot_id      TEXT,
    enrollments  INTEGER NOT NULL,
    created_at   INTEGER NOT NULL,
    last_seen    INTEGER,
    status       TEXT,
    version      INTEGER NOT NULL
);

-- One row per identifying value; the primary key makes two concurrent enrollments of the same
-- new machine collide instead of creating two records.
CREATE TABLE identifiers (
    kind       TEXT NOT NULL,
    value      TEXT NOT NULL,
    machine_id TEXT NOT NULL REFERENCES machines(id),
    PRIMARY KEY (kind, value)
);
CREATE INDEX identifiers_machine ON identifiers(machine_id);

-- Values seen on several different machines: they never identify anyone again.
CREATE TABLE shared_identifiers (
    kind  TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (kind, value)
);

CREATE TABLE certs (
    serial     TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines(id),
    not_after  INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX certs_machine ON certs(machine_id);

CREATE TABLE quarantine (
    id         TEXT PRIMARY KEY,
    identity   TEXT NOT NULL,
    candidates TEXT NOT NULL,
    reason     TEXT NOT NULL,
    boot_id    TEXT NOT NULL,
    at         INTEGER NOT NULL,
    -- A retrying agent updates its entry instead of adding one per attempt.
    attempts   INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX quarantine_evidence ON quarantine(boot_id, identity);

CREATE TABLE alerts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    machine_id TEXT NOT NULL REFERENCES machines(id),
    kind       TEXT NOT NULL,
    message    TEXT NOT NULL,
    at         INTEGER NOT NULL
);
CREATE INDEX alerts_machine ON alerts(machine_id);
