-- The gateway's API tokens. Only each token's SHA-256 is kept: the secret
-- is shown once, when the token is made. A revoked token stays listed.
CREATE TABLE api_tokens (
    name          TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    token_sha256  TEXT NOT NULL UNIQUE,
    created_at_ms INTEGER NOT NULL,
    revoked_at_ms INTEGER
);
