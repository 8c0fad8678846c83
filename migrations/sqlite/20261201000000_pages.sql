-- The SQLite twin of the Postgres migration of results into rows.
CREATE TABLE job_pages (
    job_id TEXT NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    depth  INTEGER NOT NULL,
    url    TEXT NOT NULL,
    page   TEXT NOT NULL,
    PRIMARY KEY (job_id, depth, url)
);

INSERT OR IGNORE INTO job_pages (job_id, depth, url, page)
SELECT j.job_id, json_extract(p.value, '$.depth'), json_extract(p.value, '$.url'), p.value
FROM jobs j, json_each(j.result, '$.pages') p
WHERE j.result IS NOT NULL;
INSERT OR IGNORE INTO job_pages (job_id, depth, url, page)
SELECT l.job_id, l.depth, json_extract(p.value, '$.url'), p.value
FROM job_levels l, json_each(l.pages) p;
DROP TABLE job_levels;

ALTER TABLE jobs ADD COLUMN summary TEXT;
UPDATE jobs SET summary = json_object(
    'depth', json_extract(result, '$.depth'),
    'truncated', json(CASE WHEN json_extract(result, '$.truncated') THEN 'true' ELSE 'false' END),
    'levelSizes', (SELECT json_group_array(json_array_length(l.value))
                   FROM json_each(jobs.result, '$.levels') l))
WHERE result IS NOT NULL;
ALTER TABLE jobs DROP COLUMN result;

ALTER TABLE jobs ADD COLUMN pages_of TEXT;
ALTER TABLE jobs ADD COLUMN delivered INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET delivered = 1 WHERE state IN ('done', 'failed');
CREATE INDEX jobs_open_by_client_idx ON jobs (client_id, accepted_at_ms) WHERE NOT delivered;
