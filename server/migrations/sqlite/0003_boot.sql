-- Boot routing (server/src/boot): which boot environment a PXE-booting machine gets.

-- A bootstrap token minted for a known machine (a rediscovery boot) may only enroll that
-- machine; NULL for every other token.
ALTER TABLE bootstrap_tokens ADD COLUMN machine_id TEXT REFERENCES machines(id);

-- Every MAC a machine presented at its latest enrollment, usable as an identifier or not
-- (QEMU's locally administered 52:54:00 MACs never identify). Used only to choose a boot
-- environment for a PXE client, never for identity.
CREATE TABLE boot_macs (
    mac        TEXT PRIMARY KEY,
    machine_id TEXT NOT NULL REFERENCES machines(id)
);
CREATE INDEX boot_macs_machine ON boot_macs(machine_id);

-- An operator's request that a known machine boot into this environment (today only
-- `discovery`) on its next PXE boot. Cleared when the machine enrolls again.
CREATE TABLE boot_requests (
    machine_id   TEXT PRIMARY KEY REFERENCES machines(id),
    boot_env     TEXT NOT NULL,
    requested_at INTEGER NOT NULL
);
