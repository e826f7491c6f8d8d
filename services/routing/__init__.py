"""The routing service: the catalog (models, their ordered routes and prices) and candidate
selection. docs/architecture.md §5, docs/reference.md §3."""
