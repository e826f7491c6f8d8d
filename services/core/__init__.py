"""Shared infrastructure: configuration, errors, the in-process channel, server bootstrap, store
clients and telemetry. Small and boring on purpose; business logic lives in the services."""
