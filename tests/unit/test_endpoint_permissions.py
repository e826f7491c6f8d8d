"""Every endpoint declares the permission it needs, or that it is public (docs/reference.md §4
"Permissions"): walks every RPC of every public gRPC service and every HTTP route bound in the
descriptor set Envoy loads (gen/descriptor.pb), and the permission tables of the docs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.api import annotations_pb2, http_pb2
from google.protobuf import descriptor_pb2

from edge.inference_servicer import InferenceServicer
from edge.openai_servicer import OpenAIServicer
from edge.ops_servicer import OpsServicer
from services.analytics.servicer import AnalyticsServicer
from services.auth.audit_servicer import AuditLogServicer
from services.auth.login_servicer import SessionServicer
from services.auth.oauth_servicer import OAuthServicer
from services.auth.permissions import ADMIN_PLATFORM, PERMISSIONS, PUBLIC, PUBLIC_SERVICES
from services.auth.servicer import ApiKeyServicer
from services.auth.tenancy_servicer import OrganizationServicer, UserServicer
from services.billing.account_servicer import BillingAccountServicer
from services.core.rpc import PERMISSION_ATTRIBUTE
from services.limits.cache_servicer import CacheServicer
from services.limits.quota_servicer import QuotaServicer
from services.limits.rule_servicer import RateLimitRuleServicer
from services.runtime.envoy import DEFAULT_DESCRIPTOR_PATH, PUBLIC_GRPC_SERVICES

REPO = Path(__file__).resolve().parents[2]
# The servicer class implementing each public service of ours.
SERVICERS: dict[str, type] = {
    "aggregator.openai.v1.OpenAIService": OpenAIServicer,
    "aggregator.openai.v1.InferenceService": InferenceServicer,
    "aggregator.auth.v1.ApiKeyService": ApiKeyServicer,
    "aggregator.tenancy.v1.OrganizationService": OrganizationServicer,
    "aggregator.tenancy.v1.UserService": UserServicer,
    "aggregator.auth.v1.SessionService": SessionServicer,
    "aggregator.auth.v1.AuditLogService": AuditLogServicer,
    "aggregator.auth.v1.OAuthService": OAuthServicer,
    "aggregator.limits.v1.CacheService": CacheServicer,
    "aggregator.limits.v1.QuotaService": QuotaServicer,
    "aggregator.limits.v1.RateLimitRuleService": RateLimitRuleServicer,
    "aggregator.analytics.v1.AnalyticsService": AnalyticsServicer,
    "aggregator.billing.v1.BillingAccountService": BillingAccountServicer,
    "aggregator.ops.v1.OpsService": OpsServicer,
}
VERBS = ("get", "put", "post", "delete", "patch")
WILDCARD = re.compile(r"\{(\w+)=[^}]*\}")


@dataclass(frozen=True)
class Route:
    verb: str
    path: str
    service: str
    method: str

    @property
    def shown(self) -> str:
        """How the docs write the route: `{id=**}` is `{id}`."""
        return self.verb.upper() + " " + WILDCARD.sub(r"{\1}", self.path)


def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    return descriptor_pb2.FileDescriptorSet.FromString(DEFAULT_DESCRIPTOR_PATH.read_bytes())


def services() -> dict[str, descriptor_pb2.ServiceDescriptorProto]:
    return {f"{file.package}.{service.name}": service
            for file in descriptor_set().file for service in file.service}


def _bindings(rule: http_pb2.HttpRule) -> list[http_pb2.HttpRule]:
    return [rule, *(b for extra in rule.additional_bindings for b in _bindings(extra))]


def routes() -> list[Route]:
    found = []
    for name, service in services().items():
        for method in service.method:
            if not method.options.HasExtension(annotations_pb2.http):
                continue
            for rule in _bindings(method.options.Extensions[annotations_pb2.http]):
                verb = rule.WhichOneof("pattern")
                assert verb in VERBS, f"{name}/{method.name} binds {verb}"
                found.append(Route(verb, getattr(rule, verb), name, method.name))
    return found


def declared(service: str, method: str) -> str | None:
    implementation = getattr(SERVICERS[service], method, None)
    return getattr(implementation, PERMISSION_ATTRIBUTE, None)


def public_rpcs() -> list[tuple[str, str]]:
    known = services()
    return [(name, method.name) for name in PUBLIC_GRPC_SERVICES if name in SERVICERS
            for method in known[name].method]


def test_the_walk_sees_the_whole_surface() -> None:
    """Guards the walk itself: a broken descriptor reading would make the tests below vacuous."""
    shown = {route.shown for route in routes()}
    assert {"POST /v1/chat/completions", "POST /v1/api-keys", "GET /v1/models/{id}", "GET /healthz"} <= shown
    assert len(public_rpcs()) >= 20


def test_every_public_service_is_ours_or_public_by_nature() -> None:
    for name in PUBLIC_GRPC_SERVICES:
        assert name in SERVICERS or name in PUBLIC_SERVICES, f"{name}: no servicer declares its permissions"
    for name in SERVICERS:
        assert name in services(), f"{name} is not in {DEFAULT_DESCRIPTOR_PATH}"


@pytest.mark.parametrize(("service", "method"), public_rpcs())
def test_every_public_rpc_declares_a_permission(service: str, method: str) -> None:
    permission = declared(service, method)
    assert permission is not None, (f"/{service}/{method} declares no permission: add @requires(...) "
                                    "below @rpc_method (services/auth/permissions.py)")
    assert permission in PERMISSIONS or permission == PUBLIC


@pytest.mark.parametrize("route", routes(), ids=lambda r: r.shown)
def test_every_http_route_declares_a_permission(route: Route) -> None:
    assert route.service in PUBLIC_GRPC_SERVICES, f"{route.shown} belongs to a service Envoy does not route"
    assert declared(route.service, route.method) is not None, f"{route.shown} declares no permission"


def test_only_liveness_readiness_sign_in_jwks_and_oauth_tokens_are_public() -> None:
    """OAuth's token and revocation endpoints authenticate the client inside the request."""
    public = {route.shown for route in routes() if declared(route.service, route.method) == PUBLIC}
    assert public == {"GET /healthz", "GET /readyz", "POST /v1/auth/login", "POST /v1/auth/refresh",
                      "POST /v1/auth/logout", "GET /.well-known/jwks.json", "POST /v1/oauth/token",
                      "POST /v1/oauth/revoke"}


def test_metrics_span_every_organization_so_need_the_platform() -> None:
    assert declared("aggregator.ops.v1.OpsService", "GetMetrics") == ADMIN_PLATFORM


def documented(path: Path) -> dict[str, str]:
    """The `| `VERB /path` | `permission` |` rows of a document's permissions table."""
    rows = re.findall(r"^\| `((?:GET|PUT|POST|DELETE|PATCH) [^`]+)` \| `([a-z:-]+)` \|", path.read_text(),
                      re.MULTILINE)
    return dict(rows)


@pytest.mark.parametrize("doc", ["README.md", "docs/reference.md"])
def test_the_docs_table_matches_the_declarations(doc: str) -> None:
    table = documented(REPO / doc)
    for route in routes():
        if route.shown in table:
            assert table[route.shown] == declared(route.service, route.method), f"{doc}: {route.shown}"
    served = {route.shown for route in routes()}
    assert served <= set(table), f"{doc} does not document {served - set(table)}"
