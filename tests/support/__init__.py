"""Shared test helpers: real data stores for a test session, and a cuttable TCP proxy."""
