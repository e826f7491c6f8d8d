-- Limits and quotas. Redis holds the live windows and counters (one round trip per request);
-- these tables hold the rules, and the persisted usage from which counters are rebuilt when
-- Redis loses them (DESIGN.md §4).

CREATE TABLE rate_limit_rules (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    -- NULL: the default for every organization.
    organization_id uuid REFERENCES organizations(id) ON DELETE CASCADE,
    -- NULL: the whole organization.
    api_key_id      uuid REFERENCES api_keys(id) ON DELETE CASCADE,
    -- NULL: every model.
    model           text,
    window_seconds  integer NOT NULL CHECK (window_seconds > 0),
    max_requests    integer CHECK (max_requests > 0),
    max_tokens      bigint CHECK (max_tokens > 0),
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (max_requests IS NOT NULL OR max_tokens IS NOT NULL),
    CHECK (api_key_id IS NULL OR organization_id IS NOT NULL)
);
-- One rule per scope and window; COALESCE because NULL scopes must collide too.
CREATE UNIQUE INDEX rate_limit_rules_scope_idx ON rate_limit_rules (
    COALESCE(organization_id, '00000000-0000-0000-0000-000000000000'),
    COALESCE(api_key_id, '00000000-0000-0000-0000-000000000000'),
    COALESCE(model, ''), window_seconds);
CREATE TRIGGER rate_limit_rules_updated_at BEFORE UPDATE ON rate_limit_rules
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Spending and token budgets per organization, or per key within it.
CREATE TABLE usage_quotas (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    api_key_id      uuid REFERENCES api_keys(id) ON DELETE CASCADE,
    period          text NOT NULL CHECK (period IN ('day', 'month', 'total')),
    max_cost_usd    numeric(20, 10) CHECK (max_cost_usd >= 0),
    max_tokens      bigint CHECK (max_tokens >= 0),
    max_requests    bigint CHECK (max_requests >= 0),
    -- false: exceeding only warns.
    hard_limit      boolean NOT NULL DEFAULT true,
    enabled         boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (max_cost_usd IS NOT NULL OR max_tokens IS NOT NULL OR max_requests IS NOT NULL)
);
CREATE UNIQUE INDEX usage_quotas_scope_idx ON usage_quotas (
    organization_id, COALESCE(api_key_id, '00000000-0000-0000-0000-000000000000'), period);
CREATE TRIGGER usage_quotas_updated_at BEFORE UPDATE ON usage_quotas
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Settled usage per scope and period, the durable source for rebuilding Redis counters.
CREATE TABLE rate_limit_tracking (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    api_key_id      uuid REFERENCES api_keys(id) ON DELETE CASCADE,
    period          text NOT NULL CHECK (period IN ('minute', 'hour', 'day', 'month', 'total')),
    period_start    timestamptz NOT NULL,
    requests        bigint NOT NULL DEFAULT 0,
    tokens          bigint NOT NULL DEFAULT 0,
    cost_usd        numeric(20, 10) NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX rate_limit_tracking_scope_idx ON rate_limit_tracking (
    organization_id, COALESCE(api_key_id, '00000000-0000-0000-0000-000000000000'), period, period_start);
