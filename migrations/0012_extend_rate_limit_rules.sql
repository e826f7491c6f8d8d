-- Rate-limit rules as `/v1/rate-limit-rules` manages them (docs/reference.md §4 "Rate-limit rules"):
-- each rule has a scope (`key`, `user`, `organization`, `model` or `global`) and its target, an
-- optional model, a window of a minute, an hour or a day, and limits on requests, tokens and cost.
--
-- Where the target lives: `key` rules in api_key_id, `user` rules in user_id (both with the
-- organization that owns the key or user in organization_id), `organization` rules in
-- organization_id, `model` rules in model (the target model is the rule's model). `model` and
-- `global` rules span every organization: organization_id is NULL.

ALTER TABLE rate_limit_rules
    ADD COLUMN scope        text,
    ADD COLUMN user_id      uuid REFERENCES users(id) ON DELETE CASCADE,
    ADD COLUMN max_cost_usd numeric(20, 10) CHECK (max_cost_usd > 0),
    -- Who created the rule, as the audit log names callers (`api_key:<id>`, `user:<id>`).
    ADD COLUMN created_by   text;

-- Rows written before this migration (none by the gateway itself: no API wrote this table) get
-- the scope their columns describe; a per-organization default (organization_id NULL) becomes
-- global, or model-wide when it names a model.
UPDATE rate_limit_rules SET scope = CASE
    WHEN api_key_id IS NOT NULL THEN 'key'
    WHEN organization_id IS NOT NULL THEN 'organization'
    WHEN model IS NOT NULL THEN 'model'
    ELSE 'global'
END;
-- A window other than a minute, an hour or a day cannot be enforced: such a rule is dropped.
DELETE FROM rate_limit_rules WHERE window_seconds NOT IN (60, 3600, 86400);

ALTER TABLE rate_limit_rules
    ALTER COLUMN scope SET NOT NULL,
    ADD CONSTRAINT rate_limit_rules_scope_check
        CHECK (scope IN ('key', 'user', 'organization', 'model', 'global')),
    ADD CONSTRAINT rate_limit_rules_window_check CHECK (window_seconds IN (60, 3600, 86400)),
    -- 0004's unnamed "at least one limit" check, now counting the cost limit too.
    DROP CONSTRAINT rate_limit_rules_check,
    ADD CONSTRAINT rate_limit_rules_limit_check
        CHECK (max_requests IS NOT NULL OR max_tokens IS NOT NULL OR max_cost_usd IS NOT NULL),
    -- Each scope keeps its target where the header says, and nothing else.
    ADD CONSTRAINT rate_limit_rules_target_check CHECK (CASE scope
        WHEN 'key' THEN api_key_id IS NOT NULL AND user_id IS NULL AND organization_id IS NOT NULL
        WHEN 'user' THEN user_id IS NOT NULL AND api_key_id IS NULL AND organization_id IS NOT NULL
        WHEN 'organization' THEN organization_id IS NOT NULL AND api_key_id IS NULL AND user_id IS NULL
        WHEN 'model' THEN model IS NOT NULL AND organization_id IS NULL AND api_key_id IS NULL
            AND user_id IS NULL
        ELSE organization_id IS NULL AND api_key_id IS NULL AND user_id IS NULL
    END);

-- One rule per (scope, target, model, window); COALESCE because NULLs must collide too.
DROP INDEX rate_limit_rules_scope_idx;
CREATE UNIQUE INDEX rate_limit_rules_target_idx ON rate_limit_rules (
    scope,
    COALESCE(api_key_id, user_id, organization_id, '00000000-0000-0000-0000-000000000000'),
    COALESCE(model, ''), window_seconds);
-- An organization's rules, oldest first (the list endpoint and the rule book's load).
CREATE INDEX rate_limit_rules_organization_idx ON rate_limit_rules (organization_id, created_at, id);
-- The rules that span every organization, read with each organization's.
CREATE INDEX rate_limit_rules_platform_idx ON rate_limit_rules (created_at, id)
    WHERE organization_id IS NULL;
