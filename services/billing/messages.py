"""Billing rows as BillingAccountService messages (amounts as decimal strings, counts as int32:
the transcoder prints int64 as a JSON string), and the JSON an `Invoice` prints as, the same
bytes whether the transcoder prints it in a list or GetInvoice writes it itself."""

from __future__ import annotations

from decimal import Decimal

from google.protobuf import json_format

from aggregator.billing.v1 import billing_account_service_pb2 as pb
from services.billing.charges import Line, Plan, Usage
from services.billing.invoicing import Invoice
from services.core.money import decimal_str

_INT32 = 2_147_483_647


def _count(value: int) -> int:
    return min(int(value), _INT32)


def cents(value: Decimal) -> str:
    """An amount already rounded to the cent, always with two decimals: "12.50"."""
    return f"{value:.2f}"


def plan_message(plan: Plan) -> pb.Plan:
    return pb.Plan(object="billing.plan", id=plan.id, name=plan.name, kind=plan.kind,
                   monthly_fee_usd=decimal_str(plan.monthly_fee_usd),
                   included_requests=_count(plan.included_requests),
                   included_tokens=_count(plan.included_tokens),
                   overage_per_1k_tokens=decimal_str(plan.overage_per_1k_tokens),
                   overage_per_1k_requests=decimal_str(plan.overage_per_1k_requests),
                   markup_percent=decimal_str(plan.markup_percent))


def usage_message(usage: Usage) -> pb.BilledUsage:
    return pb.BilledUsage(requests=_count(usage.requests), tokens=_count(usage.tokens),
                          cost_usd=decimal_str(usage.cost_usd))


def line_message(line: Line, amount: Decimal | None = None) -> pb.InvoiceLine:
    return pb.InvoiceLine(kind=line.kind, description=line.description, quantity=decimal_str(line.quantity),
                          unit_price=decimal_str(line.unit_price),
                          amount_usd=cents(line.amount if amount is None else amount))


def invoice_message(invoice: Invoice) -> pb.Invoice:
    row = invoice.row
    lines = zip(invoice.lines, invoice.amounts, strict=True)
    message = pb.Invoice(
        object="invoice", id=str(row["id"]), organization_id=str(row["organization_id"]),
        period=row["period"], status=row["status"], currency=row["currency"], plan_name=row["plan_name"],
        plan_kind=row["plan_kind"],
        usage=usage_message(Usage(row["requests"], row["tokens"], row["cost_usd"])),
        lines=[line_message(line, amount) for line, amount in lines],
        total_usd=cents(row["total_usd"]))
    message.period_start.FromDatetime(row["period_start"])
    message.period_end.FromDatetime(row["period_end"])
    message.created_at.FromDatetime(row["created_at"])
    return message


def invoice_json(message: pb.Invoice) -> bytes:
    """The invoice as the transcoder prints messages: proto field names, defaults included."""
    return json_format.MessageToJson(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True, indent=None).encode()
