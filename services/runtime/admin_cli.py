"""`aggregator admin ...`: bootstrap administration straight on the database (docs/reference.md §2)."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from services.core.errors import GatewayError


def _password(args: argparse.Namespace) -> str:
    """--password, else AGGREGATOR_PASSWORD, else asked for without echo."""
    return args.password or os.environ.get("AGGREGATOR_PASSWORD") or getpass.getpass("password: ")


async def run_admin(args: argparse.Namespace, database_url: str, data_dir: Path) -> int:
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
    except GatewayError as error:
        print(f"aggregator: {error.message}", file=sys.stderr)
        return 1
    finally:
        await pool.close()
    return 0
