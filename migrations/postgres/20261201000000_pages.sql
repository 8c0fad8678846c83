-- Results as rows. A crawl's pages are stored one row each, level by level
-- as they are fetched, instead of in one document per job: a crawl's size
-- is then bounded by the database, not by one row, one message or one
-- master's memory, and a result is read (and sent) in parts. The job row
-- keeps a summary beside them (depth, truncation, pages per level).

-- `url` compares byte by byte (COLLATE "C"), as the crawler sorts levels,
-- whatever the database's collation.
CREATE TABLE job_pages (
    job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    depth  BIGINT NOT NULL,
    url    TEXT COLLATE "C" NOT NULL,
    page   JSONB NOT NULL,
    PRIMARY KEY (job_id, depth, url)
);

-- The pages of finished jobs and of running jobs' saved levels move over.
INSERT INTO job_pages (job_id, depth, url, page)
SELECT j.job_id, (p ->> 'depth')::BIGINT, p ->> 'url', p
FROM jobs j, jsonb_array_elements(j.result -> 'pages') p
WHERE j.result IS NOT NULL
ON CONFLICT DO NOTHING;
INSERT INTO job_pages (job_id, depth, url, page)
SELECT l.job_id, l.depth, p ->> 'url', p
FROM job_levels l, jsonb_array_elements(l.pages) p
ON CONFLICT DO NOTHING;
DROP TABLE job_levels;

ALTER TABLE jobs ADD COLUMN summary JSONB;
UPDATE jobs SET summary = jsonb_build_object(
    'depth', result -> 'depth',
    'truncated', COALESCE(result -> 'truncated', 'false'::JSONB),
    'levelSizes', (SELECT COALESCE(jsonb_agg(jsonb_array_length(l) ORDER BY n), '[]'::JSONB)
                   FROM jsonb_array_elements(result -> 'levels') WITH ORDINALITY AS t (l, n)))
WHERE result IS NOT NULL;
ALTER TABLE jobs DROP COLUMN result;

-- A job answered from the cache: the job whose pages are its result.
ALTER TABLE jobs ADD COLUMN pages_of TEXT;
-- A gateway has sent the outcome to the client. A client that reconnects
-- is sent what is finished and not delivered, wherever it reconnects.
ALTER TABLE jobs ADD COLUMN delivered BOOLEAN NOT NULL DEFAULT false;
UPDATE jobs SET delivered = true WHERE state IN ('done', 'failed');
CREATE INDEX jobs_open_by_client_idx ON jobs (client_id, accepted_at_ms) WHERE NOT delivered;
