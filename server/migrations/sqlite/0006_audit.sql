-- The audit log (server/src/audit.rs): every change made through the operator API, with who
-- (the API token, its name and role), from where (the client's address), when, what, and the
-- object before and after as JSON (secrets never included). Append-only.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    at          INTEGER NOT NULL,
    token_id    TEXT NOT NULL,
    token_name  TEXT NOT NULL,
    token_role  TEXT NOT NULL,
    address     TEXT,
    action      TEXT NOT NULL,
    target_kind TEXT NOT NULL,
    target      TEXT NOT NULL,
    -- No foreign key: the record outlives what it describes.
    machine_id  TEXT,
    before      TEXT,
    after       TEXT
);
CREATE INDEX audit_machine ON audit(machine_id, seq);
CREATE INDEX audit_target ON audit(target, seq);
CREATE INDEX audit_token ON audit(token_id, seq);
