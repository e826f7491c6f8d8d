-- OAuth 2.0 for third-party apps (docs/reference.md §4 "OAuth 2.0"). No secret is stored in plain
-- text: a client secret and an authorization code are kept as hex HMAC-SHA256 keyed by the server
-- secret, like API keys and refresh tokens.
-- Applied in one transaction by services/core/migrate.py.

CREATE TABLE oauth_clients (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    name            text NOT NULL,
    -- Exact redirect URIs; a request must name one of them.
    redirect_uris   text[] NOT NULL CHECK (cardinality(redirect_uris) > 0),
    confidential    boolean NOT NULL,
    secret_hash     text CHECK (secret_hash ~ '^[0-9a-f]{64}$'),
    -- The permissions it may be granted (services/auth/permissions.py).
    scopes          text[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    deleted_at      timestamptz,
    CHECK (confidential = (secret_hash IS NOT NULL))
);
CREATE INDEX oauth_clients_organization_idx ON oauth_clients (organization_id, created_at, id)
    WHERE deleted_at IS NULL;

-- Authorization codes: single use, 60 seconds.
CREATE TABLE oauth_codes (
    code_hash       text PRIMARY KEY CHECK (code_hash ~ '^[0-9a-f]{64}$'),
    client_id       uuid NOT NULL REFERENCES oauth_clients(id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    -- As the authorization request named it; '' when it named none (the client's only one).
    redirect_uri    text NOT NULL,
    code_challenge  text NOT NULL CHECK (code_challenge ~ '^[A-Za-z0-9_-]{43}$'),
    scopes          text[] NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    -- Set when the code is exchanged; presenting it again revokes the key it gave.
    used_at         timestamptz,
    api_key_id      uuid REFERENCES api_keys(id) ON DELETE SET NULL
);
CREATE INDEX oauth_codes_expires_at_idx ON oauth_codes (expires_at);

-- The keys a client obtained (revoked with the client) ...
ALTER TABLE api_keys ADD COLUMN oauth_client_id uuid REFERENCES oauth_clients(id);
CREATE INDEX api_keys_oauth_client_idx ON api_keys (oauth_client_id) WHERE oauth_client_id IS NOT NULL;

-- ... and its client-credentials access tokens: a session without a user, so that revoking one
-- takes the same path as a logout (services/auth/sessions.py).
ALTER TABLE auth_sessions
    ALTER COLUMN user_id DROP NOT NULL,
    ADD COLUMN oauth_client_id uuid REFERENCES oauth_clients(id) ON DELETE CASCADE,
    ADD CONSTRAINT auth_sessions_one_holder CHECK ((user_id IS NULL) <> (oauth_client_id IS NULL));
CREATE INDEX auth_sessions_oauth_client_idx ON auth_sessions (oauth_client_id)
    WHERE oauth_client_id IS NOT NULL;
