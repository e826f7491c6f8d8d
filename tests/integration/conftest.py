"""Integration tests run against real data stores (tests/support/stores.py)."""

from tests.support.stores import migrated_database_url, store_urls

__all__ = ["migrated_database_url", "store_urls"]
