-- Output token limits per model (providers that require max_tokens default to it) and prices per
-- generated image for image models (images priced by tokens leave it NULL).
ALTER TABLE models ADD COLUMN max_output_tokens integer NOT NULL DEFAULT 0 CHECK (max_output_tokens >= 0);
ALTER TABLE provider_endpoints ADD COLUMN per_image numeric(20, 10) NULL CHECK (per_image >= 0);
