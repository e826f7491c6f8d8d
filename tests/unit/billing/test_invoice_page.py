"""The printable invoice page escapes every value it shows (docs/billing.md §3)."""

from __future__ import annotations

from datetime import UTC, datetime

from aggregator.billing.v1 import billing_account_service_pb2 as pb
from services.billing.invoice_page import render
from services.billing.messages import invoice_json


def invoice() -> pb.Invoice:
    message = pb.Invoice(
        object="invoice", id="0b0e5a4e-9d7c-4f0e-8a53-1f7a0c2d9e11", organization_id="org", period="2026-11",
        status="open", currency="usd", plan_name="<script>alert(1)</script>", plan_kind="subscription",
        usage=pb.BilledUsage(requests=3, tokens=1200, cost_usd="0.5"), total_usd="12.35",
        lines=[pb.InvoiceLine(kind="base_fee", description='Fee & "more" <i>', quantity="1",
                              unit_price="12.345", amount_usd="12.35")])
    message.period_start.FromDatetime(datetime(2026, 11, 1, tzinfo=UTC))
    message.period_end.FromDatetime(datetime(2026, 12, 1, tzinfo=UTC))
    message.created_at.FromDatetime(datetime(2026, 12, 1, 1, tzinfo=UTC))
    return message


def test_every_value_is_escaped() -> None:
    page = render(invoice(), "<b>Acme</b> & 'Co'").decode()
    assert page.startswith("<!DOCTYPE html>")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;Acme&lt;/b&gt; &amp; &#x27;Co&#x27;" in page
    assert "Fee &amp; &quot;more&quot; &lt;i&gt;" in page
    assert "12.35" in page and "2026-11-01 to 2026-12-01" in page


def test_the_json_keeps_proto_names_and_defaults() -> None:
    text = invoice_json(pb.Invoice(object="invoice", id="x")).decode()
    assert '"plan_name": ""' in text and '"lines": []' in text and '"period_start"' not in text
    assert '"usage"' not in text  # unset messages are absent, as the transcoder prints them
