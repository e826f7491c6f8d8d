-- Partition maintenance with an explicit reference month (docs/architecture.md §4, "Retention"):
-- the retention job (services/analytics/retention.py) creates each log table's monthly partitions
-- from the month of `from_time` to `months_ahead` months after it, so inserts never meet a missing
-- partition, and drops whole months past their retention with drop_monthly_partitions_before.
-- Applied in one transaction by services/core/migrate.py.
CREATE FUNCTION ensure_monthly_partitions_from(table_name text, from_time timestamptz, months_ahead integer)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    first_month timestamp := date_trunc('month', from_time AT TIME ZONE 'UTC');
    month_start timestamp;
    partition_name text;
    created integer := 0;
BEGIN
    IF months_ahead < 0 THEN
        RAISE EXCEPTION 'months_ahead must not be negative';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('ensure_monthly_partitions'), hashtext(table_name));
    FOR i IN 0 .. months_ahead LOOP
        month_start := first_month + make_interval(months => i);
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

-- The relative form of 0003 becomes a call of the one above, so one loop creates partitions.
CREATE OR REPLACE FUNCTION ensure_monthly_partitions(table_name text, months_ahead integer, months_behind integer DEFAULT 0)
RETURNS integer LANGUAGE plpgsql AS $$
BEGIN
    IF months_ahead < 0 OR months_behind < 0 THEN
        RAISE EXCEPTION 'months_ahead and months_behind must not be negative';
    END IF;
    RETURN ensure_monthly_partitions_from(table_name, now() - make_interval(months => months_behind),
                                          months_ahead + months_behind);
END;
$$;
