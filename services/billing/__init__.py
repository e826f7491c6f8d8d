"""The billing service: plans, subscriptions, invoices and prepaid credits (docs/billing.md)."""
