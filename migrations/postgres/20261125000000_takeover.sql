-- Takeover: a crawl's durable progress, the outbox of unpublished jobs,
-- events that follow a client to another gateway, and the lock service's
-- leadership.

-- {levelsDone, frontier, truncated, maxPages}: where a taken-over crawl
-- continues. The pages of each completed level are in job_levels.
ALTER TABLE jobs ADD COLUMN checkpoint JSONB;
-- Set while the job's message is not known to be in `assigned`: the time it
-- has waited since (its acceptance, or the outbox's last try).
ALTER TABLE jobs ADD COLUMN publish_pending_since_ms BIGINT;
-- The gateway the job's events go to, when it is no longer the one in spec.
ALTER TABLE jobs ADD COLUMN gateway_key TEXT;

CREATE INDEX jobs_unpublished_idx ON jobs (publish_pending_since_ms)
    WHERE publish_pending_since_ms IS NOT NULL;

-- The pages of each completed level of a running crawl; dropped when the
-- job completes, since the result then holds them.
CREATE TABLE job_levels (
    job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    depth  BIGINT NOT NULL,
    pages  JSONB NOT NULL,
    PRIMARY KEY (job_id, depth)
);

-- One row: which lock-server replica leads, until when. It always exists, so
-- every claim locks the same row and two replicas never both insert it.
CREATE TABLE lock_leader (
    id            INTEGER PRIMARY KEY CHECK (id = 1),
    holder        TEXT NOT NULL,
    address       TEXT NOT NULL,
    epoch         BIGINT NOT NULL,
    expires_at_ms BIGINT NOT NULL
);
INSERT INTO lock_leader (id, holder, address, epoch, expires_at_ms) VALUES (1, '', '', 0, 0);
