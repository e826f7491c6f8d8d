-- The audit trail (docs/architecture.md §2.11): where a change or a refusal came from and what it
-- changed. `ip` is the client address Envoy saw (x-forwarded-for), `request_id` Envoy's
-- x-request-id, `before`/`after` the changed record's settings (never a secret or its hash).
-- `event_id` makes the JetStream consumer idempotent: a redelivered event inserts nothing.
-- Forward-only; applied in one transaction by services/core/migrate.py.
ALTER TABLE audit_log
    ADD COLUMN ip inet,
    ADD COLUMN request_id text,
    ADD COLUMN before jsonb,
    ADD COLUMN after jsonb,
    ADD COLUMN event_id uuid UNIQUE;
-- GET /v1/audit-log pages an organization's rows by id, newest first.
CREATE INDEX audit_log_organization_id_idx ON audit_log (organization_id, id DESC);
