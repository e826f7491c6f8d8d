"""The gateway's Prometheus metrics (services/core/telemetry.py, docs/observability.md §1): names,
bounded labels, and the places that feed them (errors, upstream latency, store probes, ledger)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.msg import Msg
from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from aggregator.events.v1 import usage_event_pb2 as ev
from edge.accounting import RequestRecord, UsageRecorder
from edge.readiness import CachedProbe
from services.analytics.ledger import observe_lag, pending_after
from services.core import telemetry
from services.core.errors import GatewayError, Reason
from tests.unit.adapters import test_openai_adapter as openai_adapter
from tests.unit.adapters.mock_transport import CannedResponse, MockTransport, json_response

# Every label the gateway uses. Each takes its values from a fixed set (endpoints, error reasons,
# outcomes, stores, outboxes) or from the configuration (models via metric_model, providers); a
# label holding an organization, key, user or request id would mint a series per tenant or
# request, and is refused here.
BOUNDED_LABELS = {"endpoint", "model", "provider", "status", "kind", "reason", "type", "outcome", "result",
                  "store", "outbox"}


def metrics() -> list[MetricWrapperBase]:
    return [value for value in vars(telemetry).values() if isinstance(value, MetricWrapperBase)]


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_every_metric_is_named_documented_and_bounded() -> None:
    found = metrics()
    assert len(found) >= 16
    for metric in found:
        name = metric._name  # noqa: SLF001 - prometheus_client keeps no public accessor
        assert name.startswith("aggregator_"), name
        assert metric._documentation.strip(), name  # noqa: SLF001
        assert set(metric._labelnames) <= BOUNDED_LABELS, (name, metric._labelnames)  # noqa: SLF001
        if metric._type == "histogram":  # noqa: SLF001
            assert name.endswith("_seconds"), name  # a unit, per Prometheus naming


def failed(reason: Reason) -> RequestRecord:
    record = RequestRecord(request_id="req-m", endpoint="chat.completions", public_model="gpt-4o-mini",
                           stream=False)
    record.fail(GatewayError(reason, "no"))
    return record


def test_a_failed_request_counts_its_error_reason_and_type() -> None:
    before = value("aggregator_errors_total", reason="RATE_LIMITED", type="rate_limit_error")
    internal = value("aggregator_errors_total", reason="INTERNAL", type="server_error")
    recorder = UsageRecorder(None)
    recorder.finish(failed(Reason.RATE_LIMITED))
    recorder.finish(failed(Reason.RATE_LIMITED))
    recorder.finish(failed(Reason.INTERNAL))
    assert value("aggregator_errors_total", reason="RATE_LIMITED", type="rate_limit_error") == before + 2
    assert value("aggregator_errors_total", reason="INTERNAL", type="server_error") == internal + 1


def test_successes_and_cancelled_requests_are_no_errors() -> None:
    def total() -> float:
        return sum(s.value for family in telemetry.ERRORS.collect() for s in family.samples
                   if s.name == "aggregator_errors_total")

    before = total()
    recorder = UsageRecorder(None)
    cancelled = RequestRecord(request_id="req-c", endpoint="chat.completions", public_model="m", stream=True)
    cancelled.cancel()
    recorder.finish(cancelled)
    recorder.finish(RequestRecord(request_id="req-s", endpoint="chat.completions", public_model="m",
                                  stream=True))
    assert total() == before


@pytest.mark.parametrize(("response", "outcome"), [
    (lambda r: json_response(openai_adapter.COMPLETION), "ok"),
    (lambda r: CannedResponse(status=503, chunks=[b'{"error": {"message": "busy"}}']), "error"),
])
async def test_each_upstream_request_observes_its_response_time(response: Any, outcome: str) -> None:
    before = value("aggregator_upstream_response_seconds_count", provider="acme", outcome=outcome)
    adapter = openai_adapter.adapter(MockTransport(response))
    try:
        await openai_adapter.collect(adapter, openai_adapter.call({}))
    except GatewayError as error:
        assert outcome == "error" and error.reason is Reason.UPSTREAM_UNAVAILABLE
    assert value("aggregator_upstream_response_seconds_count", provider="acme", outcome=outcome) == before + 1


async def test_a_store_probe_sets_its_up_gauge_and_duration() -> None:
    class Store:
        up = True

        async def __call__(self) -> None:
            if not self.up:
                raise ConnectionError("down")

    store = Store()
    probes = value("aggregator_store_probe_seconds_count", store="teststore")
    probe = CachedProbe(store, ttl_s=0, store="teststore")
    await probe()
    assert value("aggregator_store_up", store="teststore") == 1
    store.up = False
    with pytest.raises(ConnectionError):
        await probe()
    assert value("aggregator_store_up", store="teststore") == 0
    assert value("aggregator_store_probe_seconds_count", store="teststore") == probes + 2


def test_the_ledger_observes_each_events_lag() -> None:
    count = value("aggregator_ledger_lag_seconds_count")
    total = value("aggregator_ledger_lag_seconds_sum")
    events = []
    for age in (3.0, 7.0):
        event = ev.UsageEvent(request_id=f"lag-{age}")
        event.created_at.FromNanoseconds(int((time.time() - age) * 1e9))
        events.append(event)
    observe_lag([*events, ev.UsageEvent(request_id="no-created-at")])
    assert value("aggregator_ledger_lag_seconds_count") == count + 2
    assert 10.0 <= value("aggregator_ledger_lag_seconds_sum") - total < 20.0  # generous on a busy machine


def test_the_pending_count_comes_from_the_jetstream_acknowledgement_subject() -> None:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<timestamp>.<pending>
    reply = "$JS.ACK.USAGE.ledger-writer.1.42.40.1700000000000000000.17"
    message = Msg(None, subject="usage.org", reply=reply)
    assert pending_after(message) == 17
    assert pending_after(Msg(None, subject="usage.org", reply="")) == 0  # not from JetStream


_WORKER = """
import sys
from services.core import telemetry
store, up, outbox = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
telemetry.STORE_UP.labels(store).set(up)
telemetry.OUTBOX_EVENTS.labels("usage").set(outbox)
telemetry.ERRORS.labels("UPSTREAM_ERROR", "upstream_error").inc()
telemetry.UPSTREAM_LATENCY.labels("acme", "ok").observe(0.2)
"""
_RENDER = ("import sys; from services.core import telemetry; "
           "sys.stdout.buffer.write(telemetry.render_metrics())")


def test_workers_metrics_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    """Under `aggregator up` each worker is a process (PROMETHEUS_MULTIPROC_DIR): any one renders
    every worker's series, counters summed, the outbox gauge at its largest, a store's state the
    latest written."""
    repo = str(Path(__file__).resolve().parents[3])
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
           "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    for args in (["postgres", "1", "3"], ["postgres", "0", "5"]):  # the second worker writes last
        subprocess.run([sys.executable, "-c", _WORKER, *args], env=env, check=True, timeout=120)
    rendered = subprocess.run([sys.executable, "-c", _RENDER], env=env, check=True, timeout=120,
                              capture_output=True).stdout.decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(rendered) for s in family.samples}

    def value(name: str, **labels: str) -> float:
        return samples[(name, frozenset(labels.items()))]

    assert value("aggregator_errors_total", reason="UPSTREAM_ERROR", type="upstream_error") == 2
    assert value("aggregator_upstream_response_seconds_count", provider="acme", outcome="ok") == 2
    assert value("aggregator_outbox_events", outbox="usage") == 5
    assert value("aggregator_store_up", store="postgres") == 0
