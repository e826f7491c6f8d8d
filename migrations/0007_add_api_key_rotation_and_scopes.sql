-- Key rotation and scopes (docs/reference.md §4, `POST /v1/api-keys/{id}/rotate`, `scopes`).
-- A rotated key keeps the HMAC of the secret it replaced until the grace period ends, so both
-- secrets resolve to the same key by one indexed lookup; the plaintext is never stored.
-- Applied in one transaction by services/core/migrate.py.
ALTER TABLE api_keys
    ADD COLUMN previous_key_hash text UNIQUE CHECK (previous_key_hash ~ '^[0-9a-f]{64}$'),
    ADD COLUMN previous_key_expires_at timestamptz,
    -- Permission names narrowing the key's role; empty means the role's full permissions.
    ADD COLUMN scopes text[] NOT NULL DEFAULT '{}',
    ADD CONSTRAINT api_keys_previous_key_complete
        CHECK ((previous_key_hash IS NULL) = (previous_key_expires_at IS NULL));
