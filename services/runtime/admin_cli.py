"""`aggregator admin ...`: bootstrap administration straight on the database (docs/reference.md §2)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.core.errors import GatewayError


def _password(args: argparse.Namespace) -> str:
    """--password, else AGGREGATOR_PASSWORD, else asked for without echo."""
    return args.password or os.environ.get("AGGREGATOR_PASSWORD") or getpass.getpass("password: ")


async def run_admin(args: argparse.Namespace, database_url: str, data_dir: Path, *,
                    nats_url: str | None = None) -> int:
    """Runs one admin subcommand; prints what it created (a key only once, to stdout)."""
    from services.auth import admin
    from services.auth.secret_files import load_server_secret
    from services.core.db import create_pool
    from services.core.migrate import apply_migrations

    await apply_migrations(database_url)
    pool = await create_pool(database_url, min_size=1, max_size=2)
    try:
        if args.admin_command == "create-org":
            print(await admin.create_org(pool, args.name))
        elif args.admin_command == "create-user":
            print(await admin.create_user(pool, args.org, args.email, _password(args), args.role))
        elif args.admin_command == "reset-password":
            print(await admin.reset_password(pool, args.email, _password(args)))
        elif args.admin_command == "create-key":
            print(await admin.create_key(pool, load_server_secret(data_dir), args.org, args.name, args.role))
        else:
            await _billing(args, pool, nats_url)
    except GatewayError as error:
        print(f"aggregator: {error.message}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
    return 0


async def _billing(args: argparse.Namespace, pool: Any, nats_url: str | None) -> None:
    """create-plan, subscribe, top-up and invoice (docs/billing.md)."""
    from services.auth.admin import resolve_org
    from services.billing import plans
    from services.billing.invoicing import invoice_month

    now = datetime.now(UTC)
    if args.admin_command == "create-plan":
        print(await plans.create_plan(
            pool, args.name, kind=args.kind, monthly_fee_usd=args.monthly_fee,
            included_requests=args.included_requests, included_tokens=args.included_tokens,
            overage_per_1k_tokens=args.overage_per_1k_tokens,
            overage_per_1k_requests=args.overage_per_1k_requests,
            markup_percent=args.markup_percent, description=args.description))
    elif args.admin_command == "subscribe":
        print(await plans.subscribe(pool, await resolve_org(pool, args.org), args.plan, now))
        await _announce(nats_url)
    elif args.admin_command == "top-up":
        bought = await plans.top_up(pool, await resolve_org(pool, args.org), args.amount, args.note)
        print(f"{bought:f}")
        await _announce(nats_url)
    elif args.admin_command == "invoice":
        for invoice in await invoice_month(pool, args.period, now):
            print(invoice)


async def _announce(nats_url: str | None) -> None:
    """Tells running gateways that an organization's credit budget changed (docs/limits.md
    "Quotas"); without NATS they see it within their book's 30 s."""
    from services.core.nats import connect_nats
    from services.limits.quotas import publish_change

    if nats_url is None:
        return
    try:
        nc = await connect_nats(nats_url, name="aggregator-admin", connect_timeout=5)
    except Exception as exc:  # noqa: BLE001 - the change is stored; processes see it within 30 s
        print(f"aggregator: warning: could not reach NATS ({type(exc).__name__}); running gateways apply "
              "the change within 30 seconds", file=sys.stderr)
        return
    try:
        await publish_change(nc)
    finally:
        await nc.drain()
