-- The provider and model catalog, synchronised from the config file at start-up.
-- A provider's secret stays in the environment: only the variable's name is stored.

CREATE TABLE providers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name        text NOT NULL UNIQUE,
    kind        text NOT NULL
                CHECK (kind IN ('openai', 'anthropic', 'google', 'cohere', 'openai_compatible')),
    base_url    text NOT NULL,
    api_key_env text NOT NULL DEFAULT '',
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER providers_updated_at BEFORE UPDATE ON providers
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE models (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    public_id      text NOT NULL UNIQUE,
    type           text NOT NULL CHECK (type IN ('chat', 'completion', 'embedding', 'image')),
    context_window integer NOT NULL DEFAULT 0 CHECK (context_window >= 0),
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER models_updated_at BEFORE UPDATE ON models
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- A model's routes in order of preference: position 0 serves first, the rest are fallbacks.
CREATE TABLE provider_endpoints (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id       uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    provider_id    uuid NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
    upstream_model text NOT NULL,
    -- USD per 1k tokens, exact: an unpriced route is an error, never $0 (DESIGN.md §2.5).
    input_per_1k   numeric(20, 10) NOT NULL CHECK (input_per_1k >= 0),
    output_per_1k  numeric(20, 10) NOT NULL CHECK (output_per_1k >= 0),
    position       integer NOT NULL CHECK (position >= 0),
    enabled        boolean NOT NULL DEFAULT true,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, position)
);
CREATE INDEX provider_endpoints_provider_idx ON provider_endpoints (provider_id);
CREATE INDEX provider_endpoints_upstream_idx ON provider_endpoints (provider_id, upstream_model);
CREATE TRIGGER provider_endpoints_updated_at BEFORE UPDATE ON provider_endpoints
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
