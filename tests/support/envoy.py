"""A real Envoy edge in front of a gRPC port, for integration and end-to-end tests.

    with envoy_in_front_of(grpc_port) as edge:
        httpx.get(f"{edge.base_url}/v1/models")

Envoy runs with the repository's bootstrap (`services/runtime/envoy.py`), Lua shaper and
descriptor set, on free ports, one worker thread, and stops when the block ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.runtime import envoy as envoy_runtime
from services.runtime.envoy import render_bootstrap
from services.runtime.envoy_process import EnvoyError, EnvoyProcess

_BIND_ATTEMPTS = 3


def free_port() -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class EnvoyEdge:
    """A running edge: where to reach it and where it writes."""

    base_url: str  # http://127.0.0.1:<port>, HTTP/1.1 and HTTP/2 cleartext, JSON and gRPC
    http_port: int
    admin_port: int
    access_log_path: Path
    process: EnvoyProcess

    @property
    def grpc_target(self) -> str:
        """The address for a `grpc.aio.insecure_channel` through Envoy."""
        return f"127.0.0.1:{self.http_port}"

    def access_log(self) -> list[dict[str, Any]]:
        """The access log entries written so far (Envoy flushes the file about once a second)."""
        if not self.access_log_path.exists():
            return []
        return [json.loads(line) for line in self.access_log_path.read_text().splitlines() if line.strip()]

    def wait_access_log(self, predicate: Any, timeout: float = 5.0) -> dict[str, Any]:
        """The first access log entry matching `predicate`, waiting for Envoy's periodic flush."""
        deadline = time.monotonic() + timeout
        while True:
            for entry in self.access_log():
                if predicate(entry):
                    return entry
            if time.monotonic() > deadline:
                last = self.access_log()[-3:]
                raise AssertionError(f"no matching entry in {self.access_log_path}; the last ones: {last}")
            time.sleep(0.05)


@contextlib.contextmanager
def envoy_in_front_of(upstreams: int | list[tuple[str, int]], *, run_dir: Path | None = None,
                      descriptor_path: Path | None = None, lua_path: Path | None = None,
                      concurrency: int = 1) -> Iterator[EnvoyEdge]:
    """Starts Envoy in front of a gRPC port on 127.0.0.1 (or a list of (host, port)); yields the edge.

    The descriptor set and Lua shaper default to the repository's (`gen/descriptor.pb`,
    `envoy/error_shaper.lua`).
    """
    descriptor_path = descriptor_path or envoy_runtime.DEFAULT_DESCRIPTOR_PATH
    lua_path = lua_path or envoy_runtime.DEFAULT_LUA_PATH
    targets = [("127.0.0.1", upstreams)] if isinstance(upstreams, int) else list(upstreams)
    with contextlib.ExitStack() as stack:
        if run_dir is None:
            run_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="envoy-")))
        for attempt in range(_BIND_ATTEMPTS):
            http_port, admin_port = free_port(), free_port()
            access_log_path = run_dir / "access.log"
            bootstrap = render_bootstrap(http_port=http_port, admin_port=admin_port, upstreams=targets,
                                         descriptor_path=descriptor_path, lua_path=lua_path,
                                         listen_address="127.0.0.1", access_log_path=str(access_log_path))
            process = EnvoyProcess(bootstrap, run_dir, concurrency=concurrency)
            try:
                process.start()
                break
            except EnvoyError as error:
                # Another process may have taken a port between our probe and Envoy's bind.
                if "Address already in use" not in str(error) or attempt == _BIND_ATTEMPTS - 1:
                    raise
        stack.callback(process.stop)
        yield EnvoyEdge(f"http://127.0.0.1:{http_port}", http_port, admin_port, access_log_path, process)


async def h2c_post(port: int, path: str, body: bytes, *,
                   content_type: str = "application/json") -> tuple[dict[str, str], bytes, dict[str, str]]:
    """One HTTP/2 cleartext POST (prior knowledge) to 127.0.0.1:port: (headers, body, trailers).

    For checks httpx cannot make: it hides HTTP/2 trailers. Wrap it in `asyncio.timeout()`.
    """
    import h2.config  # imported here: only this helper needs the h2 package
    import h2.connection
    import h2.events

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    connection = h2.connection.H2Connection(config)
    connection.initiate_connection()
    connection.send_headers(1, [(":method", "POST"), (":path", path), (":scheme", "http"),
                                (":authority", "localhost"), ("content-type", content_type)])
    connection.send_data(1, body, end_stream=True)
    headers: dict[str, str] = {}
    trailers: dict[str, str] = {}
    data = b""
    ended = False
    try:
        while not ended:
            writer.write(connection.data_to_send())
            received = await reader.read(65536)
            if not received:
                raise ConnectionError("the connection closed before the stream ended")
            for event in connection.receive_data(received):
                if isinstance(event, h2.events.ResponseReceived):
                    headers = _text(event.headers)
                elif isinstance(event, h2.events.TrailersReceived):
                    trailers = _text(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    data += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, 1)
                elif isinstance(event, h2.events.StreamReset):
                    raise ConnectionError(f"the stream was reset: {event.error_code!r}")
                ended = ended or isinstance(event, h2.events.StreamEnded)
    finally:
        writer.close()
    return headers, data, trailers


def _text(headers: Any) -> dict[str, str]:
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in headers or ()}
