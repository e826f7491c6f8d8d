-- Every price a route has had or will have, each from its instant (docs/pricing.md): the
-- catalog sync (services/routing/repository.py) adds rows and never changes or deletes one that
-- has taken effect, so a price change never rewrites history. A route is its model, provider and
-- upstream model (provider_endpoints rows are replaced on every sync; these rows are not).
-- Applied in one transaction by services/core/migrate.py.
CREATE TABLE route_prices (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    model_id            uuid NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    provider_id         uuid NOT NULL REFERENCES providers(id) ON DELETE CASCADE,
    upstream_model      text NOT NULL,
    effective_from      timestamptz NOT NULL,
    -- USD per 1k tokens of each class, exact: an unpriced route is an error, never $0.
    input_per_1k        numeric(20, 10) NOT NULL CHECK (input_per_1k >= 0),
    output_per_1k       numeric(20, 10) NOT NULL CHECK (output_per_1k >= 0),
    cached_input_per_1k numeric(20, 10) NOT NULL CHECK (cached_input_per_1k >= 0),
    cache_write_per_1k  numeric(20, 10) NOT NULL CHECK (cache_write_per_1k >= 0),
    reasoning_per_1k    numeric(20, 10) NOT NULL CHECK (reasoning_per_1k >= 0),
    -- USD per generated image; NULL when images are priced by tokens.
    per_image           numeric(20, 10) NULL CHECK (per_image >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model_id, provider_id, upstream_model, effective_from)
);
CREATE INDEX route_prices_provider_idx ON route_prices (provider_id);

-- The routes synced before this migration keep their price, in effect since ever (1970).
INSERT INTO route_prices (model_id, provider_id, upstream_model, effective_from, input_per_1k,
                          output_per_1k, cached_input_per_1k, cache_write_per_1k, reasoning_per_1k,
                          per_image)
SELECT DISTINCT ON (model_id, provider_id, upstream_model)
       model_id, provider_id, upstream_model, timestamptz '1970-01-01 00:00:00+00', input_per_1k,
       output_per_1k, input_per_1k, input_per_1k, output_per_1k, per_image
FROM provider_endpoints
ORDER BY model_id, provider_id, upstream_model, position;
