"""One in-memory span exporter per test process: OpenTelemetry accepts a global tracer provider
only once, so every tracing test installs and reads this one."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from services.core import telemetry

EXPORTER = InMemorySpanExporter()


def install() -> InMemorySpanExporter:
    """Installs the provider exporting to EXPORTER (once) and answers EXPORTER."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
        telemetry.install_tracer_provider(provider)
    return EXPORTER
