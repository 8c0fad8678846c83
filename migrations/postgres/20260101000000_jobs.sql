-- One row per crawl job. The spec, result and failure are stored whole as
-- JSONB (serde of the core types), so the model can grow without a migration;
-- the columns beside them are the ones queries filter on or update in place.
CREATE TABLE jobs (
    job_id              TEXT PRIMARY KEY,
    client_id           TEXT NOT NULL,
    client_job_id       TEXT NOT NULL,
    spec                JSONB NOT NULL,
    state               TEXT NOT NULL
                        CHECK (state IN ('queued', 'running', 'done', 'failed')),
    pages_done          BIGINT NOT NULL DEFAULT 0,
    current_depth       BIGINT NOT NULL DEFAULT 0,
    result              JSONB,
    failure             JSONB,
    accepted_at_ms      BIGINT NOT NULL,
    elapsed_ms          BIGINT NOT NULL DEFAULT 0,
    -- The lease: who runs the job, until when, and the fencing token that
    -- lets the store refuse writes from a master whose lease was taken over.
    master_id           TEXT,
    fencing_token       BIGINT NOT NULL DEFAULT 0,
    lease_expires_at_ms BIGINT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- A client's job ids are its idempotency keys.
    UNIQUE (client_id, client_job_id)
);

-- Recovery scans look for unfinished jobs only.
CREATE INDEX jobs_unfinished_idx ON jobs (lease_expires_at_ms)
    WHERE state IN ('queued', 'running');
