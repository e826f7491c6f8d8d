"""BillingAccountService: `GET /v1/billing/subscription`, `GET /v1/billing/invoices` and
`GET /v1/billing/invoices/{id}` (and `{id}.html`) (docs/reference.md §4, docs/billing.md).

Scoped to the caller's organization (`read:billing`); a caller holding `admin:platform` may name
another with `organization_id`. Another organization's invoice answers 404 like one that does not
exist. Served by the billing process, which authenticates through the auth service.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.api import httpbody_pb2

from aggregator.auth.v1 import auth_service_pb2
from aggregator.billing.v1 import billing_account_service_pb2 as pb
from aggregator.billing.v1 import billing_account_service_pb2_grpc
from services.auth.permissions import READ_BILLING, requires
from services.auth.target_org import target_organization
from services.auth.validation import key_id
from services.billing import invoice_page
from services.billing.charges import PREPAID, charges, month_bounds, month_of, total
from services.billing.invoicing import get_invoice, list_invoices, month_credits, month_usage
from services.billing.messages import (
    cents,
    invoice_json,
    invoice_message,
    line_message,
    plan_message,
    usage_message,
)
from services.billing.plans import credit_spent, live_subscription, purchased
from services.core.errors import GatewayError, Reason, quote
from services.core.money import decimal_str
from services.core.rpc import rpc_method

Authenticate = Callable[[Any], Awaitable[auth_service_pb2.Principal]]
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
HTML = ".html"


def _no_invoice(ident: str, param: str = "id") -> GatewayError:
    return GatewayError(Reason.NOT_FOUND, f"No invoice found with id {quote(ident)}.", param=param)


class BillingAccountServicer(billing_account_service_pb2_grpc.BillingAccountServiceServicer):
    """An organization's plan, running month and invoices."""

    def __init__(self, pool: asyncpg.Pool, authenticate: Authenticate,
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._pool = pool
        self._authenticate = authenticate
        self._clock = clock

    async def _organization(self, context: Any, requested: str) -> str:
        caller = await self._authenticate(context)  # checks the permission the RPC declares
        return await target_organization(self._pool, caller, requested)

    @rpc_method
    @requires(READ_BILLING)
    async def GetSubscription(self, request: pb.GetSubscriptionRequest, context: Any) -> pb.Subscription:
        """The plan, the running month's usage and charges so far, and the prepaid balance."""
        organization = await self._organization(context, request.organization_id)
        now = self._clock()
        start, end = month_bounds(month_of(now))
        async with self._pool.acquire() as conn:
            subscription = await live_subscription(conn, organization)
            if subscription is None:
                raise GatewayError(Reason.NOT_FOUND, "This organization has no subscription.")
            usage = await month_usage(conn, organization, start, end)
            lines = charges(subscription.plan, usage, await month_credits(conn, organization, start, end))
            bought = await purchased(conn, organization)
        period = pb.BillingPeriod(usage=usage_message(usage), lines=[line_message(line) for line in lines],
                                  total_usd=cents(total(lines)))
        period.start.FromDatetime(start)
        period.end.FromDatetime(end)
        answer = pb.Subscription(object="billing.subscription", id=subscription.id,
                                 organization_id=organization, status=subscription.status,
                                 plan=plan_message(subscription.plan), current_period=period)
        if subscription.plan.kind == PREPAID:
            spent = await credit_spent(self._pool, organization)
            answer.credits.CopyFrom(pb.CreditBalance(
                purchased_usd=decimal_str(bought), spent_usd=decimal_str(spent),
                balance_usd=decimal_str(bought - spent)))
        return answer

    @rpc_method
    @requires(READ_BILLING)
    async def ListInvoices(self, request: pb.ListInvoicesRequest, context: Any) -> pb.ListInvoicesResponse:
        """A page of invoices, newest month first; `after` is the last id of the previous page."""
        organization = await self._organization(context, request.organization_id)
        limit = request.limit or DEFAULT_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            raise GatewayError(Reason.INVALID_REQUEST, f"limit must be between 1 and {MAX_LIMIT}.",
                               param="limit")
        after = None
        if request.after:
            after = key_id(request.after)
            if after is None:
                raise _no_invoice(request.after, "after")
        page, more = await list_invoices(self._pool, organization, after, limit)
        return pb.ListInvoicesResponse(object="list", data=[invoice_message(i) for i in page], has_more=more)

    @rpc_method
    @requires(READ_BILLING)
    async def GetInvoice(self, request: pb.GetInvoiceRequest, context: Any) -> httpbody_pb2.HttpBody:
        """One invoice as JSON, or (`<id>.html`) as a printable page."""
        organization = await self._organization(context, request.organization_id)
        page = request.id.endswith(HTML)
        ident = key_id(request.id[: -len(HTML)] if page else request.id)
        invoice = None if ident is None else await get_invoice(self._pool, organization, ident)
        if invoice is None:
            raise _no_invoice(request.id)
        message = invoice_message(invoice)
        if not page:
            return httpbody_pb2.HttpBody(content_type="application/json", data=invoice_json(message))
        name = await self._pool.fetchval("SELECT name FROM organizations WHERE id = $1::uuid", organization)
        return httpbody_pb2.HttpBody(content_type="text/html; charset=utf-8",
                                     data=invoice_page.render(message, name or ""))
