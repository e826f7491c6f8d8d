"""One service process (`aggregator serve`): the bootstrap that wires stores, servicers and
channels for the services this process hosts, then serves until SIGTERM/SIGINT.

This is the only module that knows every service's constructor (cosmicpython's `bootstrap`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aggregator.adapter.v1 import adapter_service_pb2_grpc
from aggregator.analytics.v1 import analytics_service_pb2_grpc
from aggregator.billing.v1 import billing_service_pb2_grpc
from aggregator.openai.v1 import inference_service_pb2_grpc, openai_service_pb2_grpc
from aggregator.ops.v1 import ops_service_pb2_grpc
from aggregator.routing.v1 import routing_service_pb2_grpc
from services.core.config import Breakers, ProviderConfig, Resilience, StoreUrls
from services.core.decoding import tolerant
from services.core.limits import MAX_REQUEST_BYTES
from services.core.server import GrpcServer, Registration
from services.runtime.topology import Topology

log = logging.getLogger(__name__)
GRACE_S = 5.0

Closer = Callable[[], Awaitable[Any]]


@dataclass
class WorkerSettings:
    """What `aggregator serve` was told."""

    services: frozenset[str]
    host: str
    port: int
    remotes: dict[str, str]
    stores: StoreUrls
    data_dir: Path
    resilience: Resilience = field(default_factory=Resilience)  # docs/resilience.md
    model_resilience: dict[str, Resilience] = field(default_factory=dict)  # models with their own
    route_first_token_s: dict[tuple[str, str, str], float] = field(default_factory=dict)  # routes' own
    provider_key_envs: frozenset[str] = frozenset()  # the only variables the adapter reads keys from
    providers: tuple[ProviderConfig, ...] = ()  # the only upstreams the adapter calls (adapters/endpoints.py)
    ops_port: int = 0  # edge.ops_port: /metrics, /healthz, /readyz without credentials; 0 = none
    max_request_bytes: int = MAX_REQUEST_BYTES  # edge.max_request_bytes, native gRPC requests too
    rate_limits_fail_open: bool = True  # rate_limits.on_redis_error: open (pass uncounted) or closed (503)
    cache_ttls: dict[str, int] = field(default_factory=dict)  # model id -> response-cache TTL (s)
    budgets_fail_open: bool = False  # budgets.on_redis_error: closed (503, the default) or open
    retention_days: tuple[int, int, int, int] = (90, 730, 7 * 365, 7 * 365)  # logs, analytics, audit, billing
    ledger_redaction: str = "default"  # ledger.redaction (services/analytics/bodies.py)
    breakers: Breakers = field(default_factory=Breakers)  # the shared circuit breakers (docs/routing.md §5)


@dataclass
class Wiring:
    """What a worker built: registrations to serve and resources to close, last first."""

    registrations: list[Registration] = field(default_factory=list)
    closers: list[Closer] = field(default_factory=list)
    on_nats_reconnect: list[Callable[[], Any]] = field(default_factory=list)
    readiness: dict[str, Any] = field(default_factory=dict)  # the edge's cached store probes

    def serve(self, topology: Topology, add: Callable[[Any, Any], None], servicer: Any, name: str) -> None:
        topology.inproc.register(add, servicer)
        self.registrations.append(Registration(tolerant(add), servicer, name))

    async def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                await closer()
            except Exception:  # keep closing the rest
                log.exception("error while closing")


async def _stores(settings: WorkerSettings, wiring: Wiring, *, postgres: bool, nats: bool) -> tuple[Any, Any]:
    from services.core.db import create_pool
    from services.core.nats import connect_nats

    pool = nc = None
    if postgres:
        pool = await create_pool(settings.stores.database_url, min_size=1, max_size=10)
        wiring.closers.append(pool.close)
    if nats:

        async def reconnected() -> None:
            for callback in wiring.on_nats_reconnect:
                callback()

        nc = await connect_nats(
            settings.stores.nats_url,
            name=f"aggregator-{','.join(sorted(settings.services))}",
            reconnected_cb=reconnected,
        )
        wiring.closers.append(nc.drain)
    return pool, nc


async def _wire_auth(
    settings: WorkerSettings, topology: Topology, wiring: Wiring, pool: Any, nc: Any
) -> None:
    from services.auth.assembly import build_auth
    from services.auth.secret_files import load_server_secret

    auth = await build_auth(pool, load_server_secret(settings.data_dir), nc,
                            audit_outbox=settings.data_dir / "audit-outbox")
    wiring.closers.append(auth.close)
    for registration in auth.registrations():
        wiring.serve(topology, registration.add_to_server, registration.servicer, registration.service_name)
    # /v1/organizations and /v1/users (docs/reference.md §4 "Organizations and users").
    from services.auth.tenancy_servicer import tenancy_registrations

    for registration in tenancy_registrations(pool, auth.authenticator, auth.trail, nc):
        wiring.serve(topology, registration.add_to_server, registration.servicer, registration.service_name)
    # Invalidations sent while NATS was away are lost: forget everything cached on reconnect.
    wiring.on_nats_reconnect.append(auth.cache.clear)
    await _wire_people(settings, topology, wiring, pool, nc, auth)
    _wire_limits(settings, topology, wiring, pool, nc, auth)


def _wire_limits(settings: WorkerSettings, topology: Topology, wiring: Wiring, pool: Any, nc: Any,
                 auth: Any) -> None:
    """/v1/rate-limit-rules (docs/reference.md §4 "Rate-limit rules") and /v1/cache/invalidate, in
    the auth process: they authenticate with the auth service's Authenticator; rule changes are
    announced on NATS, and the response cache is Redis keys any process may delete."""
    from services.core.redis import create_redis
    from services.limits.cache_servicer import cache_registration
    from services.limits.quota_servicer import quota_registration
    from services.limits.response_cache import ResponseCache
    from services.limits.rule_servicer import rate_limit_rule_registration

    redis = create_redis(settings.stores.redis_url)
    wiring.closers.append(redis.aclose)
    for registration in (rate_limit_rule_registration(pool, auth.authenticator, auth.trail, nc),
                         cache_registration(auth.authenticator, ResponseCache(redis), auth.trail),
                         quota_registration(pool, auth.authenticator, auth.trail, nc)):
        wiring.serve(topology, registration.add_to_server, registration.servicer, registration.service_name)


async def _wire_people(
    settings: WorkerSettings, topology: Topology, wiring: Wiring, pool: Any, nc: Any, auth: Any,
) -> None:
    """Sign-in for people (SessionService), whose access tokens then work wherever keys do, and
    OAuth 2.0 for third-party apps (OAuthService) on top of it."""
    from services.auth.assembly import platform_organization
    from services.auth.login_servicer import build_people
    from services.auth.oauth import OAuthProvider
    from services.auth.oauth_servicer import oauth_registration
    from services.auth.secret_files import load_server_secret
    from services.core.redis import create_redis

    secret = load_server_secret(settings.data_dir)
    redis = create_redis(settings.stores.redis_url)  # failed-login counters
    wiring.closers.append(redis.aclose)
    # Sign-ins, failed sign-ins and logouts go to the same audit trail.
    people = await build_people(pool, secret, redis, auth.authenticator, nc, audit=auth.trail.record_soon)
    wiring.closers.append(people.close)
    wiring.on_nats_reconnect.append(people.forget)
    provider = OAuthProvider(pool, secret, people.people, auth.manager, platform_organization(pool))
    for registration in (people.registration(), oauth_registration(provider, auth.authenticator, auth.trail)):
        wiring.serve(topology, registration.add_to_server, registration.servicer, registration.service_name)


async def _wire_routing(settings: WorkerSettings, topology: Topology, wiring: Wiring, pool: Any,
                        nc: Any) -> None:
    from services.core.redis import create_redis
    from services.routing.health import RouteHealth
    from services.routing.probes import Prober
    from services.routing.servicer import RoutingServicer

    redis = create_redis(settings.stores.redis_url)  # route health: read for sort and /v1/providers
    wiring.closers.append(redis.aclose)
    health = RouteHealth.configured(redis, settings.breakers)
    routing = RoutingServicer(pool, nc, health=health)
    await routing.start()
    wiring.closers.append(routing.close)
    # Active health probes (docs/routing.md §5): one task per process, one probe per endpoint and
    # interval across processes.
    prober = Prober(redis, health, settings.providers, key_envs=settings.provider_key_envs)
    if prober.active:
        await prober.start()
    wiring.closers.append(prober.stop)  # before Redis closes (closers run last first)
    wiring.serve(
        topology,
        routing_service_pb2_grpc.add_RoutingServiceServicer_to_server,
        routing,
        "aggregator.routing.v1.RoutingService",
    )


async def _wire_adapter(settings: WorkerSettings, topology: Topology, wiring: Wiring) -> None:
    from services.adapters.servicer import AdapterServicer

    adapter = AdapterServicer.create(
        default_timeout_s=settings.resilience.idle_timeout_s,
        connect_timeout_s=settings.resilience.connect_timeout_s,
        key_envs=settings.provider_key_envs,
        providers=settings.providers,
    )
    wiring.closers.append(adapter.close)
    wiring.serve(
        topology,
        adapter_service_pb2_grpc.add_AdapterServiceServicer_to_server,
        adapter,
        "aggregator.adapter.v1.AdapterService",
    )


async def _wire_edge(
    settings: WorkerSettings, topology: Topology, wiring: Wiring, pool: Any, nc: Any
) -> None:
    from edge.accounting import UsageRecorder
    from edge.clients import ServiceClients
    from edge.health import CircuitBreakers
    from edge.inference_servicer import InferenceServicer
    from edge.openai_servicer import OpenAIServicer
    from edge.ops_port import admin_only
    from edge.ops_servicer import OpsServicer
    from edge.pipeline import Pipeline
    from edge.readiness import cached_probes
    from services.auth.org_settings import OrganizationSettingsBook
    from services.core.events import UsagePublisher
    from services.core.redis import create_redis
    from services.limits.budgets import SpendStore
    from services.limits.limiter import Limiter
    from services.limits.quotas import QuotaBook
    from services.limits.reconcile import Reconciler
    from services.limits.response_cache import ResponseCache
    from services.limits.rules import RuleBook
    from services.routing.health import RouteHealth

    redis = create_redis(settings.stores.redis_url)
    wiring.closers.append(redis.aclose)
    # Rate limits (docs/limits.md): one Redis round trip per request.
    limiter = Limiter(redis, fail_open=settings.rate_limits_fail_open, spend=SpendStore(pool),
                      budgets_fail_open=settings.budgets_fail_open)
    wiring.closers.append(limiter.drain)
    rules = RuleBook(pool)  # /v1/rate-limit-rules, kept current over NATS
    await rules.subscribe(nc)
    wiring.closers.append(rules.close)
    wiring.on_nats_reconnect.append(rules.invalidate)
    cache = ResponseCache(redis, settings.cache_ttls)  # services/limits/response_cache.py: only when asked
    reconciler = Reconciler(redis, pool)  # expired holds of dead workers, from the ledger
    await reconciler.start()
    wiring.closers.append(reconciler.stop)
    quotas = QuotaBook(pool)  # organization quotas, kept current over NATS
    await quotas.subscribe(nc)
    wiring.closers.append(quotas.close)
    wiring.on_nats_reconnect.append(quotas.invalidate)
    org_settings = OrganizationSettingsBook(pool)  # store_prompts, default provider preferences
    await org_settings.subscribe(nc)
    wiring.closers.append(org_settings.close)
    wiring.on_nats_reconnect.append(org_settings.invalidate)
    publisher = UsagePublisher(nc, settings.data_dir / "outbox")
    await publisher.start()
    recorder = UsageRecorder(publisher, limiter)
    wiring.closers.append(publisher.stop)
    wiring.closers.append(recorder.drain)  # closed before the publisher stops (closers run last first)

    async def postgres_ready() -> None:
        async with pool.acquire() as conn:
            await conn.fetchval("SELECT 1")

    async def nats_ready() -> None:
        if not nc.is_connected:
            raise ConnectionError("NATS is not connected")
        await nc.flush(timeout=1)

    from services.auth.audit import AuditPublisher, AuditTrail

    # Permission denials go to the audit trail through JetStream, or this outbox while NATS is away
    # (the auth service's directory: a shared outbox is replayed safely by either).
    audit_publisher = AuditPublisher(nc, settings.data_dir / "audit-outbox")
    await audit_publisher.start()
    audit = AuditTrail(audit_publisher)
    wiring.closers.append(audit_publisher.stop)
    wiring.closers.append(audit.close)  # closed before its publisher stops
    # Circuit breakers and measured figures shared by every process (docs/routing.md §4, §5).
    route_health = RouteHealth.configured(redis, settings.breakers)
    wiring.closers.append(route_health.close)  # flushed before Redis closes (closers run last first)
    pipeline = Pipeline(
        ServiceClients.on(topology.channel_for), recorder, resilience=settings.resilience,
        model_resilience=settings.model_resilience, route_first_token_s=settings.route_first_token_s,
        breakers=CircuitBreakers(route_health), audit=audit, limiter=limiter, rules=rules, cache=cache,
        quotas=quotas, org_settings=org_settings,
    )
    wiring.serve(
        topology,
        openai_service_pb2_grpc.add_OpenAIServiceServicer_to_server,
        OpenAIServicer(pipeline),
        "aggregator.openai.v1.OpenAIService",
    )
    wiring.serve(
        topology,
        inference_service_pb2_grpc.add_InferenceServiceServicer_to_server,
        InferenceServicer(pipeline),
        "aggregator.openai.v1.InferenceService",
    )
    # Probed at most once a second per process, however often /readyz is asked (edge/readiness.py).
    wiring.readiness = cached_probes({"postgres": postgres_ready, "redis": redis.ping, "nats": nats_ready})
    ops = OpsServicer(wiring.readiness, metrics_guard=admin_only(pipeline.authenticate))
    wiring.serve(
        topology, ops_service_pb2_grpc.add_OpsServiceServicer_to_server, ops, "aggregator.ops.v1.OpsService"
    )


async def _wire_ledger(settings: WorkerSettings, wiring: Wiring, pool: Any, nc: Any) -> None:
    """The usage ledger (services/analytics/ledger.py: every ledger process shares one durable
    JetStream consumer that writes the request log) and the request log's retention job. A role of
    its own (`aggregator serve --services ledger`), part of `all`."""
    from services.analytics.bodies import redactor
    from services.analytics.ledger import Ledger
    from services.analytics.retention import Retention, RetentionJob

    ledger = Ledger(nc, pool, redact=redactor(settings.ledger_redaction))
    await ledger.start()
    wiring.closers.append(ledger.stop)
    retention = RetentionJob(pool, Retention(*settings.retention_days))
    await retention.start()
    wiring.closers.append(retention.stop)


async def _wire_analytics(settings: WorkerSettings, topology: Topology, wiring: Wiring,
                          pool: Any) -> None:
    """`GET /v1/usage` and `GET /v1/analytics/*`, read from the request log, and the analytics
    rollup job (services/analytics/rollup.py) that keeps their long ranges fast."""
    from services.analytics.rollup import RollupJob
    from services.analytics.servicer import AnalyticsServicer

    rollup = RollupJob(pool, settings.retention_days[1])
    await rollup.start()
    wiring.closers.append(rollup.stop)
    wiring.serve(topology, analytics_service_pb2_grpc.add_AnalyticsServiceServicer_to_server,
                 AnalyticsServicer(pool, _authenticate_through_auth(topology)),
                 "aggregator.analytics.v1.AnalyticsService")


def _authenticate_through_auth(topology: Topology) -> Callable[[Any], Awaitable[Any]]:
    """Authenticates a public RPC's caller through the auth service (wherever it runs) and checks
    the permission the running RPC declares; answers the principal."""
    from aggregator.auth.v1 import auth_service_pb2
    from edge.clients import ServiceClients
    from services.auth.authenticator import missing_key
    from services.auth.keys import parse_bearer
    from services.auth.permissions import check
    from services.core import calls
    from services.core.rpc import metadata_value

    clients = ServiceClients.on(topology.channel_for)

    async def authenticate(context: Any) -> Any:
        key = parse_bearer(metadata_value(context, "authorization"))
        if key is None:
            raise missing_key()
        answer = await calls.unary(clients.auth.Authenticate,
                                   auth_service_pb2.AuthenticateRequest(api_key=key))
        check(answer.principal)  # the permission the running RPC declares
        return answer.principal

    return authenticate


async def _wire_billing(topology: Topology, wiring: Wiring, pool: Any) -> None:
    """The internal BillingService, the public BillingAccountService (`/v1/billing/...`) and the
    monthly invoice job (docs/billing.md)."""
    from aggregator.billing.v1 import billing_account_service_pb2_grpc
    from services.billing.account_servicer import BillingAccountServicer
    from services.billing.invoicing import InvoiceJob
    from services.billing.servicer import BillingServicer

    wiring.serve(topology, billing_service_pb2_grpc.add_BillingServiceServicer_to_server, BillingServicer(),
                 "aggregator.billing.v1.BillingService")
    wiring.serve(topology, billing_account_service_pb2_grpc.add_BillingAccountServiceServicer_to_server,
                 BillingAccountServicer(pool, _authenticate_through_auth(topology)),
                 "aggregator.billing.v1.BillingAccountService")
    invoices = InvoiceJob(pool)
    await invoices.start()
    wiring.closers.append(invoices.stop)


async def build(settings: WorkerSettings, topology: Topology) -> Wiring:
    """Constructs every local service of this process."""
    wiring = Wiring()
    wiring.closers.append(topology.close)
    services = settings.services
    pool, nc = await _stores(
        settings,
        wiring,
        postgres=bool(services & {"auth", "routing", "edge", "analytics", "ledger", "billing"}),
        nats=bool(services & {"auth", "routing", "edge", "ledger"}),
    )
    try:
        if "auth" in services:
            await _wire_auth(settings, topology, wiring, pool, nc)
        if "routing" in services:
            await _wire_routing(settings, topology, wiring, pool, nc)
        if "adapter" in services:
            await _wire_adapter(settings, topology, wiring)
        if "edge" in services:
            await _wire_edge(settings, topology, wiring, pool, nc)
        if "ledger" in services:
            await _wire_ledger(settings, wiring, pool, nc)
        if "analytics" in services:
            await _wire_analytics(settings, topology, wiring, pool)
        if "billing" in services:
            await _wire_billing(topology, wiring, pool)
    except BaseException:
        await wiring.close()
        raise
    return wiring


# Young-generation collections every 10,000 net allocations instead of 700: a request allocates
# thousands of short-lived objects (coroutines, futures, messages), almost none in cycles.
GC_THRESHOLDS = (10_000, 20, 20)


def settle_garbage_collector() -> None:
    """Once the process is built: what start-up made (modules, config, caches) is moved out of the
    collector's sight (`gc.freeze`), and young collections run less often (docs/performance.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(
    settings: WorkerSettings,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[GrpcServer], None] | None = None,
) -> None:
    """Serves until SIGTERM/SIGINT (or `stop` is set), then stops gracefully.

    `on_ready` is called once the server serves.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    from services.auth.secret_files import load_server_secret
    from services.core.service_token import derive_service_token

    # Every process of a deployment shares the server secret, hence the token internal RPCs need.
    token = derive_service_token(load_server_secret(settings.data_dir))
    topology = Topology(settings.services, settings.remotes, token)
    wiring = await build(settings, topology)
    server = GrpcServer(
        wiring.registrations,
        host=settings.host,
        port=settings.port,
        service_token=token,
        private_host="127.0.0.1",
        max_request_bytes=settings.max_request_bytes,
    )
    try:
        await server.start()
        if settings.ops_port and wiring.readiness:
            from edge.ops_port import OpsPort

            ops_port = OpsPort(wiring.readiness, host=settings.host, port=settings.ops_port)
            await ops_port.start()
            wiring.closers.append(ops_port.close)
        settle_garbage_collector()
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
        log.info("stopping: letting in-flight calls finish for %.0f s", GRACE_S)
        await server.stop(GRACE_S)
    finally:
        await wiring.close()
