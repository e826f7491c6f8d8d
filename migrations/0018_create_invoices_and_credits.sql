-- Billing (docs/billing.md): what a plan charges, invoices with their line items, and prepaid
-- credit purchases. Money is NUMERIC, never float; invoice amounts are whole cents.

-- A plan is either billed monthly after the fact ('subscription': base fee, included requests and
-- tokens, overage, markup on provider cost) or paid in advance ('prepaid': credits that requests
-- draw down, enforced as a `total` cost budget of the organization, docs/limits.md "Budgets").
ALTER TABLE billing_plans
    ADD COLUMN kind text NOT NULL DEFAULT 'subscription' CHECK (kind IN ('subscription', 'prepaid')),
    ADD COLUMN included_requests bigint NOT NULL DEFAULT 0 CHECK (included_requests >= 0),
    ADD COLUMN included_tokens bigint NOT NULL DEFAULT 0 CHECK (included_tokens >= 0),
    ADD COLUMN overage_per_1k_tokens numeric(20, 10) NOT NULL DEFAULT 0 CHECK (overage_per_1k_tokens >= 0),
    ADD COLUMN overage_per_1k_requests numeric(20, 10) NOT NULL DEFAULT 0
        CHECK (overage_per_1k_requests >= 0);

-- One invoice per organization and calendar month (UTC): the job and `aggregator admin invoice`
-- may both run, any number of times, and still make one. No foreign key on the organization:
-- money records outlive what they name (kept 7 years).
CREATE TABLE invoices (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    -- The month billed, 'YYYY-MM', and its bounds.
    period          text NOT NULL CHECK (period ~ '^[0-9]{4}-[0-9]{2}$'),
    period_start    timestamptz NOT NULL,
    period_end      timestamptz NOT NULL,
    plan_id         uuid,
    plan_name       text NOT NULL,
    plan_kind       text NOT NULL,
    currency        text NOT NULL DEFAULT 'usd',
    status          text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'paid', 'void')),
    -- What the month used (every request the usage ledger recorded).
    requests        bigint NOT NULL DEFAULT 0,
    tokens          bigint NOT NULL DEFAULT 0,
    cost_usd        numeric(20, 10) NOT NULL DEFAULT 0,
    -- The sum of the lines' amounts, each already rounded to the cent.
    total_usd       numeric(20, 2) NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (organization_id, period),
    CHECK (period_end > period_start)
);
-- Lists page newest month first, then by id (the cursor).
CREATE INDEX invoices_organization_period_idx ON invoices (organization_id, period_start DESC, id DESC);

CREATE TABLE invoice_lines (
    invoice_id  uuid NOT NULL REFERENCES invoices(id) ON DELETE CASCADE,
    position    integer NOT NULL,
    kind        text NOT NULL,
    description text NOT NULL,
    -- How many units (tokens, requests, USD of provider cost, 1 for a fee) at what price.
    quantity    numeric(30, 10) NOT NULL,
    unit_price  numeric(30, 10) NOT NULL,
    -- quantity * unit_price rounded half-up to the cent (docs/billing.md "Rounding").
    amount_usd  numeric(20, 2) NOT NULL,
    PRIMARY KEY (invoice_id, position)
);

-- Prepaid credits bought by an organization; their sum is the limit of its `total` cost budget.
CREATE TABLE credit_purchases (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL,
    amount_usd      numeric(20, 2) NOT NULL CHECK (amount_usd > 0),
    note            text NOT NULL DEFAULT '',
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_purchases_organization_idx ON credit_purchases (organization_id, created_at);
