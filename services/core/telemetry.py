"""Logs, traces and metrics (docs/architecture.md §2.9).

- Logs: one JSON object per line with the request id and trace id of the current context;
  never secrets or prompt text.
- Traces: OpenTelemetry; the gRPC interceptors are installed on every server and client
  channel; spans are exported only when OTEL_EXPORTER_OTLP_ENDPOINT is set (exporter off
  otherwise, so the cost is a no-op tracer).
- Metrics: prometheus_client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set by `up`), so
  `/metrics` served by any worker reports every worker.
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

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")

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
ERRORS = Counter("aggregator_errors_total", "Errors by reason", ["reason"])
PROVIDER_OPEN = Gauge("aggregator_provider_circuit_open", "1 while a provider's circuit breaker is open",
                      ["provider"], multiprocess_mode="max")
UPSTREAM_FAILURES = Counter(
    "aggregator_upstream_failures_total", "Failed upstream attempts", ["provider", "reason"]
)


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


def configure_tracing(service_name: str) -> None:
    """Installs an OTLP exporter only where one is configured; otherwise tracing stays a no-op."""
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
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
    trace.set_tracer_provider(provider)


def render_metrics() -> bytes:
    """Prometheus text of every worker (multiprocess mode) or of this process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(DEFAULT_REGISTRY)
