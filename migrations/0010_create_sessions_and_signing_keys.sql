-- People's sessions and the keys that sign their access tokens (docs/reference.md §4 "People").
-- No secret is stored in plain text: a signing key's private half is derived from the server
-- secret and its kid (services/auth/jwt_keys.py), so only the public half is kept here, and a
-- refresh token is kept as a hex HMAC-SHA256 keyed by the server secret.
-- Applied in one transaction by services/core/migrate.py.

CREATE TABLE signing_keys (
    kid         text PRIMARY KEY CHECK (kid ~ '^[A-Za-z0-9_-]{1,64}$'),
    algorithm   text NOT NULL CHECK (algorithm = 'EdDSA'),
    -- The Ed25519 public key, raw 32 bytes.
    public_key  bytea NOT NULL CHECK (length(public_key) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- New tokens are signed with the newest key until this moment (the rotation period).
    sign_until  timestamptz NOT NULL,
    -- Tokens it signed verify until this moment: sign_until plus the access tokens' lifetime.
    verify_until timestamptz NOT NULL,
    CHECK (verify_until >= sign_until)
);
CREATE INDEX signing_keys_verify_until_idx ON signing_keys (verify_until);

-- One session per login; the refresh tokens it rotates through form its family.
CREATE TABLE auth_sessions (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    revoked_at      timestamptz,
    -- 'logout' or 'refresh_token_reuse'.
    revoked_reason  text
);
CREATE INDEX auth_sessions_user_id_idx ON auth_sessions (user_id);
CREATE INDEX auth_sessions_revoked_at_idx ON auth_sessions (revoked_at) WHERE revoked_at IS NOT NULL;

CREATE TABLE refresh_tokens (
    token_hash text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    session_id uuid NOT NULL REFERENCES auth_sessions(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- Set when the token is exchanged; presenting it again revokes the session.
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_session_id_idx ON refresh_tokens (session_id);
