"""The routing service: the catalog (models, their ordered routes and prices) and candidate
selection. DESIGN.md §5, INTERFACE.md §3."""
