-- The analytics rollup (docs/analytics.md §3): GET /v1/analytics/{requests,tokens,cost} read
-- whole closed UTC days from request_analytics_daily and only the days after its watermark
-- (analytics_rollup_state.rolled_until) from request_analytics itself, so a report over a year of
-- a busy organization reads a few thousand rollup rows instead of millions of requests.
-- The rollup job (services/analytics/rollup.py) writes it; the ledger's INSERTs are unchanged.
-- Applied in one transaction by services/core/migrate.py.

-- A latency's histogram bucket: exact below 100 ms, then rounded down to a multiple of half a unit
-- of its second significant digit (5 ms from 100 ms, 50 ms from 1000 ms, 500 ms from 10 s: at most
-- 5 % low, 180 buckets a decade). Percentiles are computed over these values, from the raw rows
-- and from the rollup alike, so both give the same answer (docs/analytics.md §2).
-- Integer arithmetic only, and not STRICT so that PostgreSQL inlines it: it runs once per raw row
-- a series reads (NULL gives NULL all the same).
CREATE FUNCTION analytics_bucket_ms(ms integer) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms < 100 THEN greatest(ms, 0)
                WHEN ms < 1000 THEN ms / 5 * 5
                WHEN ms < 10000 THEN ms / 50 * 50
                WHEN ms < 100000 THEN ms / 500 * 500
                WHEN ms < 1000000 THEN ms / 5000 * 5000
                WHEN ms < 10000000 THEN ms / 50000 * 50000
                WHEN ms < 100000000 THEN ms / 500000 * 500000
                WHEN ms < 1000000000 THEN ms / 5000000 * 5000000
                ELSE ms / 50000000 * 50000000
           END
$$;

-- Rows per organization and UTC day at four levels, so that a series reads one row per point:
-- level 3 every request of the day (public_model '', api_key_id the zero uuid), 1 per model, 2 per
-- API key, 0 per model and key (the zero uuid also stands for requests without a key). Counters
-- are summed, latencies and times to first token kept as histograms (value and count arrays,
-- sorted by value), failed requests counted per error type.
CREATE TABLE request_analytics_daily (
    organization_id   uuid NOT NULL,
    day               date NOT NULL,
    level             smallint NOT NULL CHECK (level BETWEEN 0 AND 3),
    public_model      text NOT NULL,
    api_key_id        uuid NOT NULL,
    requests          integer NOT NULL,
    failed            integer NOT NULL,
    prompt_tokens     bigint NOT NULL,
    completion_tokens bigint NOT NULL,
    cached_tokens     bigint NOT NULL,
    reasoning_tokens  bigint NOT NULL,
    cost_usd          numeric(30, 10) NOT NULL,
    latency_values    integer[] NOT NULL,
    latency_counts    integer[] NOT NULL,
    ttft_values       integer[] NOT NULL,
    ttft_counts       integer[] NOT NULL,
    error_types       text[] NOT NULL,
    error_counts      integer[] NOT NULL,
    PRIMARY KEY (organization_id, level, day, public_model, api_key_id)
);
-- The rollup job deletes the days past the analytics retention every run: a BRIN index on the
-- days (written mostly in order) finds them without reading the table.
CREATE INDEX request_analytics_daily_day_brin ON request_analytics_daily USING brin (day);

-- The first UTC day not in the rollup yet: days before it are read from request_analytics_daily,
-- the rest from request_analytics. One row.
CREATE TABLE analytics_rollup_state (
    singleton    boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    rolled_until date NOT NULL
);

-- The rollup job reads a day or two of every organization at a time: a BRIN index on the
-- append-mostly created_at finds them without scanning a whole month (a few kB per partition).
CREATE INDEX request_analytics_created_brin ON request_analytics USING brin (created_at);
