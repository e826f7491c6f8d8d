-- A key's `cache` setting (docs/limits.md, "Response cache"): its requests use the response cache
-- without asking for it. Applied in one transaction by services/core/migrate.py.
ALTER TABLE api_keys ADD COLUMN cache boolean NOT NULL DEFAULT false;
