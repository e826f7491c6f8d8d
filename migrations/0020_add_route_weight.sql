-- A route's share of requests among its model's weighted routes (docs/routing.md §3): config
-- `weight`; 0 (the default) keeps the route out of balancing, tried in the configured order.
-- Applied in one transaction by services/core/migrate.py.
ALTER TABLE provider_endpoints ADD COLUMN weight integer NOT NULL DEFAULT 0 CHECK (weight >= 0);
