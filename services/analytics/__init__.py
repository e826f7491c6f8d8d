"""The analytics service: usage reports from the usage events (a later issue)."""
