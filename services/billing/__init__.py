"""The billing service: budgets, quotas, reservations and the ledger (a later issue)."""
