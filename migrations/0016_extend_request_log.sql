-- What the usage event now carries reaches the request log (docs/analytics.md): the images an
-- image request produced, and on the flat analytics row the user and the finish reason, so
-- reports can group by them without joining the other two tables. api_requests already has
-- user_id, client_ip, user_agent and body; api_responses has finish_reason and body.
-- Adding a column with a constant default to a partitioned table rewrites nothing.
ALTER TABLE api_responses ADD COLUMN images integer NOT NULL DEFAULT 0;
ALTER TABLE request_analytics ADD COLUMN images integer NOT NULL DEFAULT 0;
ALTER TABLE request_analytics ADD COLUMN user_id uuid;
ALTER TABLE request_analytics ADD COLUMN finish_reason text;
