-- The last enrollment each bootstrap token paid for: the kernel boot, the machine and the
-- certificate it got. An agent whose answer was lost retries from the same boot with the same
-- token; when that was the token's last use, the retry is answered again (a fresh certificate,
-- the lost one revoked) instead of being refused as used up (store/sqlite.rs `enroll`).
ALTER TABLE bootstrap_tokens ADD COLUMN last_boot_id TEXT;
ALTER TABLE bootstrap_tokens ADD COLUMN last_machine_id TEXT;
ALTER TABLE bootstrap_tokens ADD COLUMN last_cert_serial TEXT;
ALTER TABLE bootstrap_tokens ADD COLUMN last_used_at INTEGER;
