-- DHCPv4 leases. One row per address: the primary key on ip is what makes allocation race-free
-- (two servers claiming one address collide on it; the conditional upsert decides the winner).
-- ip is the IPv4 address as an unsigned 32-bit number, so ranges are BETWEEN queries.
CREATE TABLE leases (
    ip         INTEGER PRIMARY KEY,
    mac        TEXT NOT NULL,
    subnet     TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('offered', 'bound', 'released', 'declined')),
    expires_at INTEGER NOT NULL,
    hostname   TEXT,
    updated_at INTEGER NOT NULL
);
CREATE INDEX leases_mac ON leases(mac, subnet);
