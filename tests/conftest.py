"""Settings for every test process, applied before anything imports gRPC."""

import os

# The tests fork child processes (stores, services, Envoy) from a process where gRPC threads
# run; gRPC's fork handlers then crash the child before it execs. Our children always exec.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

# A hung test prints its asyncio tasks, then fails after `timeout` seconds (pyproject.toml).
pytest_plugins = ["tests.support.hang_report"]
