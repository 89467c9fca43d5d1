-- A machine's own workflow params and its ordered profiles (server/src/content/params.rs
-- resolves a value from these, then the profiles, then `global`, then the default).
-- `version` is bumped on every change so concurrent edits compare-and-set.
CREATE TABLE machine_params (
    machine_id TEXT PRIMARY KEY REFERENCES machines(id),
    profiles   TEXT NOT NULL,  -- JSON array of profile names, in order
    params     TEXT NOT NULL,  -- JSON object: param name -> value
    version    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
