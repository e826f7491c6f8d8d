-- The request log: one row per request in each of api_requests, api_responses and
-- request_analytics, written in batches by the usage consumers, never on the request path.
-- Each table is partitioned by month of created_at (UTC), so retention is a DROP of whole
-- partitions instead of a DELETE. A partitioned table's keys must include created_at; the
-- consumers insert with ON CONFLICT (request_id, created_at) DO NOTHING, which makes a replayed
-- usage event harmless. No foreign keys: the log outlives the keys and organizations it names.

-- Creates the monthly partitions of `table_name` (named <table>_yYYYYmMM) from `months_behind`
-- months before the current UTC month to `months_ahead` months after it; returns how many it
-- created. Safe to call often and concurrently (a maintenance job runs it daily).
CREATE FUNCTION ensure_monthly_partitions(table_name text, months_ahead integer, months_behind integer DEFAULT 0)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    this_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');
    month_start timestamp;
    partition_name text;
    created integer := 0;
BEGIN
    IF months_ahead < 0 OR months_behind < 0 THEN
        RAISE EXCEPTION 'months_ahead and months_behind must not be negative';
    END IF;
    -- CREATE TABLE IF NOT EXISTS alone still races between two sessions: serialise per table.
    PERFORM pg_advisory_xact_lock(hashtext('ensure_monthly_partitions'), hashtext(table_name));
    FOR i IN -months_behind .. months_ahead LOOP
        month_start := this_month + make_interval(months => i);
        partition_name := format('%s_y%sm%s', table_name, to_char(month_start, 'YYYY'), to_char(month_start, 'MM'));
        IF to_regclass(format('%I', partition_name)) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                           partition_name, table_name,
                           month_start AT TIME ZONE 'UTC',
                           (month_start + interval '1 month') AT TIME ZONE 'UTC');
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;

-- Drops the monthly partitions of `table_name` whose whole month ends at or before `cutoff`
-- (retention: request logs 90 days, analytics 2 years); returns how many it dropped.
CREATE FUNCTION drop_monthly_partitions_before(table_name text, cutoff timestamptz)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    child text;
    month_end timestamptz;
    dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ensure_monthly_partitions'), hashtext(table_name));
    FOR child IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = to_regclass(format('%I', table_name))
          AND c.relname ~ ('^' || table_name || '_y[0-9]{4}m[0-9]{2}$')
    LOOP
        month_end := (to_date(right(child, 7), 'YYYY"m"MM') + interval '1 month')::timestamp AT TIME ZONE 'UTC';
        IF month_end <= cutoff THEN
            EXECUTE format('DROP TABLE %I', child);
            dropped := dropped + 1;
        END IF;
    END LOOP;
    RETURN dropped;
END;
$$;

CREATE TABLE api_requests (
    id              uuid NOT NULL DEFAULT gen_random_uuid(),
    request_id      text NOT NULL,
    organization_id uuid NOT NULL,
    api_key_id      uuid,
    user_id         uuid,
    endpoint        text NOT NULL,
    public_model    text NOT NULL,
    stream          boolean NOT NULL DEFAULT false,
    client_ip       inet,
    user_agent      text,
    -- The request body, only where the organization opted in (organizations.store_prompts).
    body            jsonb,
    -- When the request arrived; the same instant in all three tables, so joins prune alike.
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at),
    UNIQUE (request_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX api_requests_organization_created_idx ON api_requests (organization_id, created_at DESC);
CREATE INDEX api_requests_api_key_created_idx ON api_requests (api_key_id, created_at DESC);

CREATE TABLE api_responses (
    id                     uuid NOT NULL DEFAULT gen_random_uuid(),
    request_id             text NOT NULL,
    organization_id        uuid NOT NULL,
    provider               text NOT NULL DEFAULT '',
    upstream_model         text NOT NULL DEFAULT '',
    status                 text NOT NULL CHECK (status IN ('succeeded', 'failed', 'cancelled')),
    http_status            integer NOT NULL,
    error_reason           text,
    finish_reason          text,
    prompt_tokens          integer NOT NULL DEFAULT 0,
    completion_tokens      integer NOT NULL DEFAULT 0,
    cached_tokens          integer NOT NULL DEFAULT 0,
    reasoning_tokens       integer NOT NULL DEFAULT 0,
    cache_creation_tokens  integer NOT NULL DEFAULT 0,
    cost_usd               numeric(20, 10) NOT NULL DEFAULT 0,
    latency_ms             integer NOT NULL DEFAULT 0,
    time_to_first_token_ms integer,
    attempts               integer NOT NULL DEFAULT 1,
    -- The response body, only where the organization opted in.
    body                   jsonb,
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at),
    UNIQUE (request_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX api_responses_organization_created_idx ON api_responses (organization_id, created_at DESC);

-- One flat row per request for usage and analytics queries (GET /v1/usage, /v1/analytics/*).
CREATE TABLE request_analytics (
    request_id             text NOT NULL,
    organization_id        uuid NOT NULL,
    api_key_id             uuid,
    endpoint               text NOT NULL,
    public_model           text NOT NULL,
    provider               text NOT NULL DEFAULT '',
    upstream_model         text NOT NULL DEFAULT '',
    stream                 boolean NOT NULL DEFAULT false,
    status                 text NOT NULL CHECK (status IN ('succeeded', 'failed', 'cancelled')),
    http_status            integer NOT NULL,
    error_reason           text,
    prompt_tokens          integer NOT NULL DEFAULT 0,
    completion_tokens      integer NOT NULL DEFAULT 0,
    cached_tokens          integer NOT NULL DEFAULT 0,
    reasoning_tokens       integer NOT NULL DEFAULT 0,
    cache_creation_tokens  integer NOT NULL DEFAULT 0,
    cost_usd               numeric(20, 10) NOT NULL DEFAULT 0,
    latency_ms             integer NOT NULL DEFAULT 0,
    time_to_first_token_ms integer,
    attempts               integer NOT NULL DEFAULT 1,
    cache_hit              boolean NOT NULL DEFAULT false,
    created_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE INDEX request_analytics_organization_created_idx ON request_analytics (organization_id, created_at);
CREATE INDEX request_analytics_organization_model_idx ON request_analytics (organization_id, public_model, created_at);
CREATE INDEX request_analytics_api_key_created_idx ON request_analytics (api_key_id, created_at);

SELECT ensure_monthly_partitions(t, 3, 1)
FROM unnest(ARRAY['api_requests', 'api_responses', 'request_analytics']) AS t;
