-- Job logs older than the configured retention are deleted (workflow/retention.rs); the
-- attempt keeps its record, its length and when its log was pruned.
ALTER TABLE attempts ADD COLUMN log_pruned_at INTEGER;
CREATE INDEX attempts_prunable ON attempts(finished_at) WHERE log_pruned_at IS NULL AND log_len > 0;
