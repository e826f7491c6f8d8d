"""The printable page of an invoice (`GET /v1/billing/invoices/{id}.html`, docs/billing.md):
plain HTML with print styles, every value escaped (html.escape), no script, nothing fetched."""

from __future__ import annotations

from html import escape

from aggregator.billing.v1 import billing_account_service_pb2 as pb

_STYLE = ("body{font-family:system-ui,sans-serif;margin:2em;color:#111}table{border-collapse:collapse;"
          "width:100%}th,td{border-bottom:1px solid #ccc;padding:.4em;text-align:left}"
          "td.n,th.n{text-align:right}tfoot td{font-weight:bold}@media print{body{margin:0}}")


def render(invoice: pb.Invoice, organization_name: str) -> bytes:
    """The invoice as a UTF-8 HTML document."""
    e = escape
    rows = "".join(
        f"<tr><td>{e(line.description)}</td><td class=n>{e(line.quantity)}</td>"
        f"<td class=n>{e(line.unit_price)}</td><td class=n>{e(line.amount_usd)}</td></tr>"
        for line in invoice.lines)
    start = invoice.period_start.ToDatetime().date().isoformat()
    end = invoice.period_end.ToDatetime().date().isoformat()
    page = (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>Invoice {e(invoice.period)} {e(invoice.id)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>Invoice {e(invoice.period)}</h1>"
        f"<p>Invoice <code>{e(invoice.id)}</code>, status {e(invoice.status)}</p>"
        f"<p>Billed to {e(organization_name)} (<code>{e(invoice.organization_id)}</code>)</p>"
        f"<p>Period {e(start)} to {e(end)} (UTC, end excluded); plan {e(invoice.plan_name)} "
        f"({e(invoice.plan_kind)})</p>"
        f"<p>Usage: {invoice.usage.requests} requests, {invoice.usage.tokens} tokens, provider cost "
        f"{e(invoice.usage.cost_usd)} USD</p>"
        "<table><thead><tr><th>Item</th><th class=n>Quantity</th><th class=n>Unit price (USD)</th>"
        f"<th class=n>Amount (USD)</th></tr></thead><tbody>{rows}</tbody>"
        f"<tfoot><tr><td colspan=3>Total ({e(invoice.currency.upper())})</td>"
        f"<td class=n>{e(invoice.total_usd)}</td></tr></tfoot></table>"
        "<p>Each line's amount is its exact quantity times its unit price, rounded half-up to the cent; "
        "the total is the sum of the lines.</p></body></html>\n")
    return page.encode()
