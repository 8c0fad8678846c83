-- The gateway's API tokens. Only each token's SHA-256 is kept: the secret
-- is shown once, when the token is made. A revoked token stays listed.
CREATE TABLE api_tokens (
    name          TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at_ms BIGINT NOT NULL,
    revoked_at_ms BIGINT
);

-- A tenant's jobs are those whose client key starts with `tenant/`; its
-- quotas are counted over them by prefix.
CREATE INDEX jobs_by_client_prefix_idx ON jobs (client_id text_pattern_ops, accepted_at_ms);
