-- An email names one user on the whole gateway whatever its case (docs/reference.md §4 "Users"):
-- the API and the CLI store emails lower-cased, and this index refuses a second spelling of one
-- anyway. Forward-only; applied in one transaction by services/core/migrate.py.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
