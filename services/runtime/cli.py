"""The `aggregator` command line (docs/reference.md §2)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.core.config import (
    Breakers,
    ConfigError,
    EdgeConfig,
    Resilience,
    StoreUrls,
    config_path,
    data_dir,
    load_config,
)

# `up` forks stores, workers and Envoy; gRPC's fork handlers would run in those children before
# exec and can crash them. Every child execs at once, so they are not needed.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aggregator", description="A self-hosted OpenAI-compatible AI gateway."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="start the whole stack and block until SIGINT/SIGTERM")
    up.add_argument("--config")
    up.add_argument("--data-dir")
    up.add_argument("--workers", type=int, default=0, help="service worker processes (default: one per core)")

    serve = sub.add_parser("serve", help="one process hosting the named gRPC services")
    serve.add_argument(
        "--services",
        default="all",
        help="all, or a comma list of auth,routing,adapter,billing,analytics,ledger,edge",
    )
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=0, help="gRPC port (default: edge.grpc_port)")
    serve.add_argument(
        "--remote",
        action="append",
        default=[],
        metavar="NAME=HOST:PORT",
        help="where a service that is not local lives (repeatable)",
    )
    serve.add_argument("--config")
    serve.add_argument("--data-dir")
    serve.add_argument("--ready-file", help="written once the server serves")

    migrate = sub.add_parser("migrate", help="apply migrations/ to DATABASE_URL (or the embedded database)")
    migrate.add_argument("--data-dir")

    admin = sub.add_parser("admin", help="bootstrap administration")
    admin.add_argument("--data-dir")
    admin_sub = admin.add_subparsers(dest="admin_command", required=True)
    org = admin_sub.add_parser("create-org")
    org.add_argument("name")
    user = admin_sub.add_parser("create-user")
    user.add_argument("--org", default="default")
    user.add_argument("--email", required=True)
    user.add_argument("--password", help="read from AGGREGATOR_PASSWORD when omitted")
    user.add_argument("--role", default="member", choices=("admin", "member"))
    reset = admin_sub.add_parser("reset-password")
    reset.add_argument("--email", required=True)
    reset.add_argument("--password", help="read from AGGREGATOR_PASSWORD when omitted")
    key = admin_sub.add_parser("create-key")
    key.add_argument("--org", default="default")
    key.add_argument("--name", default="")
    key.add_argument("--role", default="member", choices=("admin", "member"))
    _billing_parsers(admin_sub)
    return parser


def _billing_parsers(admin_sub: Any) -> None:
    """`admin create-plan | subscribe | top-up | invoice` (docs/billing.md)."""
    plan = admin_sub.add_parser("create-plan", help="create a billing plan")
    plan.add_argument("name")
    plan.add_argument("--kind", default="subscription", choices=("subscription", "prepaid"))
    plan.add_argument("--monthly-fee", default="0", help="USD per month, a decimal")
    plan.add_argument("--included-requests", type=int, default=0)
    plan.add_argument("--included-tokens", type=int, default=0)
    plan.add_argument("--overage-per-1k-tokens", default="0", help="USD per 1,000 tokens past the included")
    plan.add_argument("--overage-per-1k-requests", default="0", help="USD per 1,000 requests over")
    plan.add_argument("--markup-percent", default="0", help="percent of the provider cost")
    plan.add_argument("--description", default="")
    subscribe = admin_sub.add_parser("subscribe", help="put an organization on a plan from now on")
    subscribe.add_argument("--org", default="default")
    subscribe.add_argument("--plan", required=True)
    top_up = admin_sub.add_parser("top-up", help="add prepaid credits to an organization")
    top_up.add_argument("--org", default="default")
    top_up.add_argument("--amount", required=True, help="USD, whole cents")
    top_up.add_argument("--note", default="")
    invoice = admin_sub.add_parser("invoice", help="invoice a month that has ended (idempotent)")
    invoice.add_argument("--period", required=True, help="YYYY-MM (UTC)")


def _cmd_up(args: argparse.Namespace) -> int:
    from services.runtime.up import run_up

    path = config_path(args.config)
    config = load_config(path)
    workers = args.workers or config.workers or os.cpu_count() or 1
    return run_up(config, path, data_dir(args.data_dir), workers)


def _cmd_serve(args: argparse.Namespace) -> int:
    from services.core.server import GrpcServer
    from services.core.telemetry import configure_logging, configure_tracing
    from services.runtime.topology import parse_remotes, parse_services
    from services.runtime.worker import WorkerSettings, serve

    configure_logging()
    path = config_path(args.config)
    config = load_config(path) if path.exists() else None
    services = parse_services(args.services)
    configure_tracing("aggregator-" + "-".join(sorted(services)))
    port = args.port or (config.edge.grpc_port if config else 50051)
    settings = WorkerSettings(
        services=services,
        host=args.host,
        port=port,
        remotes=parse_remotes(args.remote),
        stores=StoreUrls.from_env(),
        data_dir=data_dir(args.data_dir),
        resilience=config.resilience if config else Resilience(),
        model_resilience={m.id: m.resilience for m in config.models if m.resilience} if config else {},
        route_first_token_s=config.route_first_token_timeouts if config else {},
        provider_key_envs=config.provider_key_envs if config else frozenset(),
        providers=config.providers if config else (),
        ops_port=config.edge.ops_port if config and "edge" in services else 0,
        max_request_bytes=config.edge.max_request_bytes if config else EdgeConfig().max_request_bytes,
        rate_limits_fail_open=config.rate_limits_fail_open if config else True,
        budgets_fail_open=config.budgets_fail_open if config else False,
        retention_days=config.retention_days if config else (90, 730, 7 * 365, 7 * 365),
        ledger_redaction=config.ledger_redaction if config else "default",
        breakers=config.breakers if config else Breakers(),
        cache_ttls={m.id: m.cache_ttl_s for m in config.models} if config else {},
    )

    def on_ready(server: GrpcServer) -> None:
        if args.ready_file:  # written whole, then renamed: a reader never sees half of it
            ready = Path(args.ready_file)
            temporary = ready.with_suffix(".tmp")
            temporary.write_text(
                json.dumps({"pid": os.getpid(), "port": server.port, "private_port": server.private_port})
            )
            temporary.replace(ready)

    import uvloop

    uvloop.run(serve(settings, on_ready=on_ready))
    return 0


def _store_url(name: str, args: argparse.Namespace) -> str:
    """The variable where set; else the store of a running `up` (it writes <data-dir>/run/stores.env)."""
    if os.environ.get(name):
        return os.environ[name]
    run_file = data_dir(args.data_dir) / "run" / "stores.env"
    if run_file.exists():
        for line in run_file.read_text().splitlines():
            key, _, value = line.partition("=")
            if key == name and value:
                return value
    raise ConfigError(
        f"{name} is not set and no running `aggregator up` was found in {run_file.parent.parent}; "
        f"start `aggregator up` or export {name}."
    )


def _cmd_migrate(args: argparse.Namespace) -> int:
    from services.core.migrate import apply_migrations

    applied = asyncio.run(apply_migrations(_store_url("DATABASE_URL", args)))
    print("applied: " + (", ".join(applied) if applied else "nothing (up to date)"))
    return 0


def _cmd_admin(args: argparse.Namespace) -> int:
    from services.runtime.admin_cli import run_admin

    try:  # billing changes are announced to running gateways when NATS is known
        nats_url: str | None = _store_url("NATS_URL", args)
    except ConfigError:
        nats_url = None
    return asyncio.run(run_admin(args, _store_url("DATABASE_URL", args), data_dir(args.data_dir),
                                 nats_url=nats_url))


def main(argv: list[str] | None = None) -> int:
    from services.runtime.children import die_with_parent
    from services.runtime.stores import DataDirError

    die_with_parent()
    args = _parser().parse_args(argv)
    commands = {"up": _cmd_up, "serve": _cmd_serve, "migrate": _cmd_migrate, "admin": _cmd_admin}
    try:
        return commands[args.command](args)
    except (ConfigError, DataDirError) as exc:  # one line each: what is wrong and the ways out
        print(f"aggregator: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
