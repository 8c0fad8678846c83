-- The SQLite twin of the Postgres takeover migration.
ALTER TABLE jobs ADD COLUMN checkpoint TEXT;
ALTER TABLE jobs ADD COLUMN publish_pending_since_ms INTEGER;
ALTER TABLE jobs ADD COLUMN gateway_key TEXT;

CREATE INDEX jobs_unpublished_idx ON jobs (publish_pending_since_ms)
    WHERE publish_pending_since_ms IS NOT NULL;

CREATE TABLE job_levels (
    job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    depth  INTEGER NOT NULL,
    pages  TEXT NOT NULL,
    PRIMARY KEY (job_id, depth)
);

CREATE TABLE lock_leader (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    holder        TEXT NOT NULL,
    address       TEXT NOT NULL,
    epoch         INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL
);
INSERT INTO lock_leader (id, holder, address, epoch, expires_at_ms) VALUES (1, '', '', 0, 0);
