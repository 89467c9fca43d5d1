-- Fleet operations (server/src/fleet, docs/workflows.md "Fleet operations"): tags and location
-- an operator edits, the claim that lets a machine run a destructive workflow, and what the
-- rules for newly discovered machines did. JSON columns hold shared wire types (api.rs).

-- Tags: a JSON array of strings, sorted and unique (syntax checked by fleet/labels.rs).
ALTER TABLE machines ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
-- Location: a JSON object with optional site, row, rack and slot.
ALTER TABLE machines ADD COLUMN location TEXT NOT NULL DEFAULT '{}';
-- Why the machine may run a destructive workflow (api::Claim: an operator's claim, or marked
-- new at its first enrollment); NULL when it may not. The assignment of a destructive workflow
-- consumes it.
ALTER TABLE machines ADD COLUMN claim TEXT;
-- What the rules did when the machine was first ready for work (api::RuleOutcome); NULL until
-- then. Written once, by a conditional update, so rules never fire twice for a machine.
ALTER TABLE machines ADD COLUMN rule TEXT;
-- Machines enrolled before rules existed were never new to them: rules never fire for them.
UPDATE machines SET rule = json_object(
    'at', strftime('%Y-%m-%dT%H:%M:%SZ', 'now'),
    'result', 'skipped',
    'reason', 'enrolled before rules existed');

-- A bootstrap token whose enrollments mark the machines they create as new.
ALTER TABLE bootstrap_tokens ADD COLUMN marks_new INTEGER NOT NULL DEFAULT 0;
