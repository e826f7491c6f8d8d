-- A key's budget (docs/limits.md, "Budgets"): at most `max_budget_usd` per `budget_period`
-- (`daily` and `monthly` reset at 00:00 UTC, `total` never). Spend is counted in Redis with
-- reservations and persisted in rate_limit_tracking, from which Redis is re-seeded.
-- Applied in one transaction by services/core/migrate.py.
ALTER TABLE api_keys
    ADD COLUMN max_budget_usd numeric(20, 10) CHECK (max_budget_usd > 0),
    ADD COLUMN budget_period text CHECK (budget_period IN ('daily', 'monthly', 'total')),
    ADD CONSTRAINT api_keys_budget_complete CHECK ((max_budget_usd IS NULL) = (budget_period IS NULL));
