-- The SQLite twin of the Postgres schema: JSON is stored as TEXT.
CREATE TABLE jobs (
    job_id              TEXT PRIMARY KEY NOT NULL,
    client_id           TEXT NOT NULL,
    client_job_id       TEXT NOT NULL,
    spec                TEXT NOT NULL,
    state               TEXT NOT NULL
                        CHECK (state IN ('queued', 'running', 'done', 'failed')),
    pages_done          INTEGER NOT NULL DEFAULT 0,
    current_depth       INTEGER NOT NULL DEFAULT 0,
    result              TEXT,
    failure             TEXT,
    accepted_at_ms      INTEGER NOT NULL,
    elapsed_ms          INTEGER NOT NULL DEFAULT 0,
    master_id           TEXT,
    fencing_token       INTEGER NOT NULL DEFAULT 0,
    lease_expires_at_ms INTEGER,
    created_at          TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE (client_id, client_job_id)
);

CREATE INDEX jobs_unfinished_idx ON jobs (lease_expires_at_ms)
    WHERE state IN ('queued', 'running');
