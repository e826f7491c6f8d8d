-- Plans, subscriptions and the billed usage ledger (kept 7 years). Money is NUMERIC, never float.

CREATE TABLE billing_plans (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                text NOT NULL UNIQUE,
    description         text NOT NULL DEFAULT '',
    monthly_fee_usd     numeric(20, 10) NOT NULL DEFAULT 0 CHECK (monthly_fee_usd >= 0),
    included_usage_usd  numeric(20, 10) NOT NULL DEFAULT 0 CHECK (included_usage_usd >= 0),
    -- Added to provider cost when billing usage, in percent.
    markup_percent      numeric(9, 4) NOT NULL DEFAULT 0 CHECK (markup_percent >= 0),
    -- NULL: no monthly spending cap.
    monthly_budget_usd  numeric(20, 10) CHECK (monthly_budget_usd >= 0),
    active              boolean NOT NULL DEFAULT true,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now()
);
CREATE TRIGGER billing_plans_updated_at BEFORE UPDATE ON billing_plans
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE subscriptions (
    id                   uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id      uuid NOT NULL REFERENCES organizations(id) ON DELETE CASCADE,
    plan_id              uuid NOT NULL REFERENCES billing_plans(id) ON DELETE RESTRICT,
    status               text NOT NULL DEFAULT 'active'
                         CHECK (status IN ('trialing', 'active', 'past_due', 'canceled')),
    current_period_start timestamptz NOT NULL DEFAULT now(),
    current_period_end   timestamptz NOT NULL,
    canceled_at          timestamptz,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CHECK (current_period_end > current_period_start)
);
-- At most one subscription per organization that is not canceled.
CREATE UNIQUE INDEX subscriptions_live_organization_idx ON subscriptions (organization_id)
    WHERE status <> 'canceled';
CREATE INDEX subscriptions_plan_idx ON subscriptions (plan_id);
CREATE TRIGGER subscriptions_updated_at BEFORE UPDATE ON subscriptions
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Billed usage per organization, key, UTC day and model. No foreign keys: money records
-- outlive the keys and organizations they name.
CREATE TABLE usage_billing (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id   uuid NOT NULL,
    api_key_id        uuid,
    usage_date        date NOT NULL,
    public_model      text NOT NULL,
    requests          bigint NOT NULL DEFAULT 0,
    prompt_tokens     bigint NOT NULL DEFAULT 0,
    completion_tokens bigint NOT NULL DEFAULT 0,
    cached_tokens     bigint NOT NULL DEFAULT 0,
    reasoning_tokens  bigint NOT NULL DEFAULT 0,
    cost_usd          numeric(20, 10) NOT NULL DEFAULT 0,
    invoiced_at       timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX usage_billing_scope_idx ON usage_billing (
    organization_id, COALESCE(api_key_id, '00000000-0000-0000-0000-000000000000'), usage_date, public_model);
CREATE INDEX usage_billing_organization_date_idx ON usage_billing (organization_id, usage_date);
CREATE TRIGGER usage_billing_updated_at BEFORE UPDATE ON usage_billing
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
