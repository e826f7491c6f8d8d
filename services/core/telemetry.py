"""Logs, traces and metrics (docs/architecture.md §2.9).

- Logs: one JSON object per line with the request id and trace id of the current context;
  never secrets or prompt text.
- Traces: OpenTelemetry; the gRPC interceptors are installed on every server and client
  channel, the in-process channel (inproc.py) opens a span per call and the adapters one per
  upstream HTTP request (services/adapters/upstream.py); spans are exported over OTLP only when
  OTEL_EXPORTER_OTLP_ENDPOINT (or ..._TRACES_ENDPOINT) is set (otherwise a no-op tracer).
- Metrics: prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `up`), so
  `/metrics` served by any worker reports every worker. The list, with labels, alerts and
  dashboards: docs/observability.md.
"""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import time
from typing import Any

import orjson
from opentelemetry import trace
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client import values as prometheus_values

_pid = os.getpid()


def _refresh_pid() -> None:
    global _pid
    _pid = os.getpid()


def _cached_pid() -> int:
    return _pid


if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # In multiprocess mode every write checks the pid for a fork; `os.getpid` is a system call, once
    # per counter write. The pid is cached instead and refreshed in a forked child (docs/performance.md).
    os.register_at_fork(after_in_child=_refresh_pid)
    prometheus_values.ValueClass = prometheus_values.MultiProcessValue(process_identifier=_cached_pid)
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

# Every metric of the gateway is defined here, so that its names and labels are in one place
# (docs/observability.md §1). Labels stay bounded: endpoints, configured models and providers,
# error reasons and store names; never a client-supplied string (edge/accounting.py metric_model).
REQUESTS = Counter(
    "aggregator_requests_total",
    "Requests by endpoint, model, provider and outcome",
    ["endpoint", "model", "provider", "status"],
)
LATENCY = Histogram(
    "aggregator_request_duration_seconds",
    "Request duration",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
TTFT = Histogram(
    "aggregator_time_to_first_token_seconds",
    "Time to first content byte",
    ["model"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
TOKENS = Counter("aggregator_tokens_total", "Tokens by model and class", ["model", "kind"])
COST = Counter(
    "aggregator_cost_usd_total", "Cost in USD by model (monitoring only; bills use exact decimals)", ["model"]
)
ERRORS = Counter(
    "aggregator_errors_total",
    "Failed requests by gateway error reason (services/core/errors.py Reason) and OpenAI error type",
    ["reason", "type"],
)
PROVIDER_OPEN = Gauge("aggregator_provider_circuit_open", "1 while a provider's circuit breaker is open",
                      ["provider"], multiprocess_mode="livemax")
# Active health probes (docs/routing.md §5): outcome "ok" (2xx) or "failed" (counted by the breaker).
PROVIDER_PROBES = Counter("aggregator_provider_probes_total", "Active health probes of provider endpoints",
                          ["provider", "outcome"])
UPSTREAM_FAILURES = Counter(
    "aggregator_upstream_failures_total", "Failed upstream attempts", ["provider", "reason"]
)
UPSTREAM_RETRIES = Counter(
    "aggregator_upstream_retries_total",
    "Attempts made again on the same candidate after a retriable failure", ["provider"],
)
HEDGES = Counter(
    "aggregator_hedges_total",
    "Hedged attempts started (docs/resilience.md §4), by outcome: hedge (the hedge served), first "
    "(the first candidate served after all), failed (both failed)",
    ["outcome"],
)
UPSTREAM_LATENCY = Histogram(
    "aggregator_upstream_response_seconds",
    "Seconds from sending a request to a provider to its response headers (or its transport failure), "
    "by provider and outcome (ok: 2xx; error: any other status, a timeout or a lost connection)",
    ["provider", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
CACHE_LOOKUPS = Counter(
    "aggregator_response_cache_lookups_total",
    "Response-cache reads by result (hit, miss); only requests that ask for the cache read it",
    ["result"],
)
LEDGER_LAG = Histogram(
    "aggregator_ledger_lag_seconds",
    "Seconds from a usage event's creation (the request's start) to its commit in the usage ledger",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 21600),
)
LEDGER_PENDING = Gauge(
    "aggregator_ledger_pending_events",
    "Usage events JetStream still holds for the ledger (its consumer's num_pending at the last fetch)",
    multiprocess_mode="livemostrecent",
)
OUTBOX_EVENTS = Gauge(
    "aggregator_outbox_events",
    "Events waiting in a durable local outbox for NATS (outbox: usage, audit), counted at each replay",
    ["outbox"],
    multiprocess_mode="livemax",
)
OUTBOX_WRITES = Counter(
    "aggregator_outbox_writes_total",
    "Events written to a durable local outbox (outbox: usage, audit) because NATS was down or slow",
    ["outbox"],
)
STORE_UP = Gauge(
    "aggregator_store_up",
    "1 when the store (postgres, redis, nats) answered the last readiness probe, 0 when it did not",
    ["store"],
    multiprocess_mode="livemostrecent",
)
STORE_PROBE = Histogram(
    "aggregator_store_probe_seconds",
    "Duration of the readiness probe of a store (edge/readiness.py), failures included",
    ["store"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2),
)

# The tracer of the gateway's own spans (in-process calls, upstream HTTP). Through the API's proxy
# it follows whatever provider configure_tracing (or a test) installs later.
TRACER = trace.get_tracer("aggregator")


_tracing = False  # set once a tracer provider is installed (install_tracer_provider)


def tracing_on() -> bool:
    """Whether a tracer provider is installed; without one, spans would be no-ops, and the
    in-process channel skips even creating them (docs/observability.md §4). A plain flag: it is
    read on every in-process call."""
    return _tracing


def install_tracer_provider(provider: Any) -> None:
    """Makes `provider` the process's tracer provider (OpenTelemetry accepts one per process)."""
    global _tracing
    trace.set_tracer_provider(provider)
    _tracing = True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with request and trace ids."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        request_id = request_id_var.get()
        if request_id:
            entry["request_id"] = request_id
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            entry["trace_id"] = format(span.trace_id, "032x")
            entry["span_id"] = format(span.span_id, "016x")
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("AGGREGATOR_LOG_LEVEL") or "INFO").upper())
    for noisy in ("nats", "asyncio", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# Either one turns the exporter on; the SDK reads the rest (headers, sampler) from OTEL_* variables.
OTLP_ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def configure_tracing(service_name: str) -> None:
    """Installs an OTLP exporter only where one is configured; otherwise tracing stays a no-op."""
    if not any(os.environ.get(name) for name in OTLP_ENDPOINT_VARIABLES):
        return
    try:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        logging.getLogger(__name__).warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter "
            "package is not installed; tracing stays off"
        )
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install_tracer_provider(provider)


def render_metrics() -> bytes:
    """Prometheus text of every worker (multiprocess mode) or of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)
