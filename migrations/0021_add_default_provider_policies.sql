-- Default provider preferences (OpenRouter's `provider` object: order, only, ignore,
-- allow_fallbacks, sort, max_price, require_parameters; docs/routing.md §2) of an organization and
-- of an API key. A request's own `provider` fields win over its key's, which win over its
-- organization's. NULL: no default.
ALTER TABLE organizations ADD COLUMN provider_policy jsonb;
ALTER TABLE api_keys ADD COLUMN provider_policy jsonb;
