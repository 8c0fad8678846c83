-- A page is kept as the JSON text it is written and sent in: Postgres no
-- longer parses each page into jsonb on the way in and prints it back on
-- the way out, the larger part of a crawl's cost in the database. Nothing
-- queries inside a stored page.
ALTER TABLE job_pages ALTER COLUMN page TYPE TEXT USING page::TEXT;
