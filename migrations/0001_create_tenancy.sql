-- Organizations, their people and their API keys, plus the audit log.
-- Secrets never land here in plain text: keys are stored as a hex HMAC-SHA256 (DESIGN.md §2.10),
-- passwords as an argon2/bcrypt hash.

CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TABLE organizations (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL UNIQUE,
    -- Prompt and completion text are logged only where an organization opts in (DESIGN.md §2.9).
    store_prompts boolean NOT NULL DEFAULT false,
    settings      jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER organizations_updated_at BEFORE UPDATE ON organizations
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    email           text NOT NULL UNIQUE,
    name            text NOT NULL DEFAULT '',
    password_hash   text,
    role            text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    disabled_at     timestamptz,
    last_login_at   timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX users_organization_id_idx ON users (organization_id);
CREATE TRIGGER users_updated_at BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE api_keys (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id       uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    user_id               uuid REFERENCES users(id) ON DELETE SET NULL,
    name                  text NOT NULL DEFAULT '',
    key_hash              text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    -- The first characters of the key, shown in listings so people can tell keys apart.
    prefix                text NOT NULL,
    role                  text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member')),
    allowed_models        text[],
    rate_limit_per_minute integer CHECK (rate_limit_per_minute > 0),
    rate_limit_per_hour   integer CHECK (rate_limit_per_hour > 0),
    rate_limit_per_day    integer CHECK (rate_limit_per_day > 0),
    tokens_per_minute     integer CHECK (tokens_per_minute > 0),
    expires_at            timestamptz,
    revoked_at            timestamptz,
    last_used_at          timestamptz,
    created_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_organization_created_idx ON api_keys (organization_id, created_at DESC);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id) WHERE user_id IS NOT NULL;

-- Who did what. No foreign key: the trail outlives the organization it describes.
CREATE TABLE audit_log (
    id              bigserial PRIMARY KEY,
    organization_id uuid,
    actor           text NOT NULL,
    action          text NOT NULL,
    target          text,
    details         jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_organization_created_idx ON audit_log (organization_id, created_at DESC);
CREATE INDEX audit_log_created_idx ON audit_log (created_at);
