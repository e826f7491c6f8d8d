"""The config file (`aggregator.yaml`, docs/reference.md §3) and the process settings from the
environment. Parsed once at start-up into frozen dataclasses; nothing reads YAML afterwards."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from services.core.limits import MAX_REQUEST_BYTES
from services.core.prices import PriceError, Prices, route_timeline

PROVIDER_KINDS = ("openai", "anthropic", "google", "cohere", "openai_compatible")
MODEL_TYPES = ("chat", "completion", "embedding", "image")
SERVICE_NAMES = ("auth", "routing", "adapter", "billing", "analytics", "ledger", "edge")


class ConfigError(ValueError):
    """The config file is invalid; the message names the offending entry."""


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """A provider's active health probe (docs/routing.md §5): `GET {base_url}{path}` every
    `interval_s` across all processes; `path` empty: the provider kind's free model list."""

    interval_s: float = 10.0
    timeout_s: float = 5.0
    path: str = ""


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: str
    base_url: str
    api_key_env: str = ""
    # False: the provider refuses `stream_options` (some OpenAI-compatible servers), so it is never
    # sent; a stream's usage is then estimated (docs/resilience.md §5).
    stream_options: bool = True
    health_check: HealthCheck | None = None  # None: no probe, the breaker learns from requests only


@dataclass(frozen=True, slots=True)
class Breakers:
    """The `breakers` section: when a provider endpoint's shared circuit breaker opens and for how
    long (docs/routing.md §5)."""

    failure_threshold: int = 3  # consecutive failures that open it
    open_s: float = 30.0  # the pause before one trial request
    error_rate: float = 0.5  # an error rate at or above this opens it too ...
    min_samples: int = 20  # ... once measured over at least this many attempts


@dataclass(frozen=True, slots=True)
class Resilience:
    """Timeouts, retries and hedging of upstream attempts (docs/resilience.md): the `resilience`
    section, overridden per model by a model's own `resilience` map."""

    connect_timeout_s: float = 10.0
    first_token_timeout_s: float = 120.0  # until the first content (the whole answer unstreamed)
    idle_timeout_s: float = 120.0  # silence between two chunks of a stream
    total_timeout_s: float = 600.0  # one deadline per request, across every attempt
    # Further attempts on the same candidate after a retriable failure. 0 by default: the next
    # candidate is the first remedy, and the client's SDK retries too (retries multiply).
    retries: int = 0
    backoff_initial_s: float = 0.25  # doubled per retry, with full jitter, up to backoff_max_s
    backoff_max_s: float = 4.0
    max_retry_after_s: float = 10.0  # a longer Retry-After moves on to the next candidate
    hedge_after_ms: int = 0  # start the next candidate too when no first token came by then; 0: off
    # 50..99: hedge after the first candidate's observed p<N> time to first token instead, once it
    # has enough samples (hedge_after_ms until then); 0: off (docs/resilience.md §4).
    hedge_percentile: int = 0


RESILIENCE_KEYS = frozenset(Resilience.__slots__)  # type: ignore[attr-defined]
WHOLE_KEYS = ("retries", "hedge_after_ms", "hedge_percentile")
HEDGE_PERCENTILES = (0, *range(50, 100))


def parse_resilience(raw: Any, base: Resilience, where: str) -> Resilience:
    """`base` with the keys of `raw` (a mapping) applied; ConfigError for unknown or bad ones."""
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(raw) - RESILIENCE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        try:
            number = int(value) if name in WHOLE_KEYS else float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}.{name} must be a number") from None
        if number < 0 or (number == 0 and name.endswith("timeout_s")):
            raise ConfigError(f"{where}.{name} must be positive")
        if name == "hedge_percentile" and (number not in HEDGE_PERCENTILES or number != float(value)):
            raise ConfigError(f"{where}.hedge_percentile must be 0 (off) or a whole number from 50 to 99")
        values[name] = number
    return replace(base, **values)


def _number(raw: dict[str, Any], name: str, where: str, default: float, *, integer: bool = False) -> float:
    """`raw[name]` as a number (`default` when absent); ConfigError naming the key otherwise."""
    value = raw.get(name, default)
    wrong = not isinstance(value, int) if integer else not isinstance(value, int | float)
    if isinstance(value, bool) or wrong:
        raise ConfigError(f"{where}.{name} must be {'an integer' if integer else 'a number'}")
    return value


def _keys(raw: Any, known: frozenset[str], where: str) -> dict[str, Any]:
    """`raw` as a mapping of known keys ({} when absent)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping")
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    return raw


def parse_breakers(raw: Any) -> Breakers:
    """The `breakers` section; ConfigError naming a bad key (docs/reference.md §3)."""
    values = _keys(raw, frozenset(Breakers.__slots__), "breakers")  # type: ignore[attr-defined]
    default = Breakers()
    threshold = int(_number(values, "failure_threshold", "breakers", default.failure_threshold, integer=True))
    open_s = float(_number(values, "open_s", "breakers", default.open_s))
    error_rate = float(_number(values, "error_rate", "breakers", default.error_rate))
    min_samples = int(_number(values, "min_samples", "breakers", default.min_samples, integer=True))
    if threshold < 1:
        raise ConfigError("breakers.failure_threshold must be at least 1")
    if not 0 < open_s <= 86400:
        raise ConfigError("breakers.open_s must be positive and at most 86400")
    if not 0 < error_rate <= 1:
        raise ConfigError("breakers.error_rate must be above 0 and at most 1")
    if min_samples < 1:
        raise ConfigError("breakers.min_samples must be at least 1")
    return Breakers(threshold, open_s, error_rate, min_samples)


def parse_health_check(raw: Any, where: str) -> HealthCheck | None:
    """A provider's `health_check` map, or None without one (docs/reference.md §3)."""
    if raw is None:
        return None
    values = _keys(raw, frozenset(HealthCheck.__slots__), where)  # type: ignore[attr-defined]
    default = HealthCheck()
    interval_s = float(_number(values, "interval_s", where, default.interval_s))
    timeout_s = float(_number(values, "timeout_s", where, default.timeout_s))
    path = values.get("path", "")
    if not 1 <= interval_s <= 86400:
        raise ConfigError(f"{where}.interval_s must be between 1 and 86400")
    if not 0 < timeout_s <= interval_s:
        raise ConfigError(f"{where}.timeout_s must be positive and at most interval_s")
    if not isinstance(path, str) or (path and (not path.startswith("/") or "?" in path or "#" in path)):
        raise ConfigError(f"{where}.path must start with '/' and carry no query")
    return HealthCheck(interval_s, timeout_s, path)


@dataclass(frozen=True, slots=True)
class RouteConfig:
    provider: str
    model: str
    input_per_1k: Decimal
    output_per_1k: Decimal
    per_image: Decimal | None = None  # image models priced per image rather than by tokens
    # Every price set of the route in order of its start, the route's own keys first (in effect
    # since ever): docs/pricing.md. Empty: the route's own input, output and image prices only.
    prices: tuple[Prices, ...] = ()
    # The route's share of requests among its model's weighted routes (docs/routing.md §3); 0 (the
    # default): not balanced, tried in the configured order.
    weight: int = 0
    # This route's own first-token timeout, over its model's policy (docs/resilience.md §1).
    first_token_timeout_s: float | None = None

    def timeline(self) -> tuple[Prices, ...]:
        """The route's price sets, oldest first."""
        return self.prices or (Prices(self.input_per_1k, self.output_per_1k, self.input_per_1k,
                                      self.input_per_1k, self.output_per_1k, self.per_image),)


@dataclass(frozen=True, slots=True)
class ModelConfig:
    id: str
    type: str
    context_window: int
    routes: tuple[RouteConfig, ...]
    max_output_tokens: int = 0  # 0: unknown
    cache_ttl_s: int = 300  # how long the response cache keeps an answer (services/limits/response_cache.py)
    resilience: Resilience | None = None  # the model's own `resilience` keys over the section's


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    http_port: int = 8080
    grpc_port: int = 50051
    admin_port: int = 9901
    # Prometheus scrapes /metrics here without a key (and /healthz, /readyz); it listens on
    # services_address, like the services' port. 0: none.
    ops_port: int = 9090
    listen_address: str = "0.0.0.0"
    # The services' own gRPC port serves internal services too (the adapter, routing): keep it on
    # loopback unless a mesh protects it.
    services_address: str = "127.0.0.1"
    max_request_bytes: int = MAX_REQUEST_BYTES


@dataclass(frozen=True, slots=True)
class Config:
    edge: EdgeConfig = field(default_factory=EdgeConfig)
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()
    workers: int = 0  # 0: one per CPU core
    upstream_timeout_s: float = 120.0
    resilience: Resilience = field(default_factory=Resilience)  # docs/resilience.md
    # rate_limits.on_redis_error: "open" lets requests pass uncounted while Redis is unreachable,
    # "closed" refuses them with 503 (docs/limits.md).
    rate_limits_fail_open: bool = True
    # budgets.on_redis_error: "closed" (the default) refuses requests that have a budget with 503
    # while Redis is unreachable, so a budget is never overspent; "open" lets them pass uncounted.
    budgets_fail_open: bool = False
    # retention: days kept (services/analytics/retention.py): request logs, analytics, audit log.
    retention_days: tuple[int, int, int, int] = (90, 730, 7 * 365, 7 * 365)
    # ledger.redaction: the hook stored bodies pass through (services/analytics/bodies.py):
    # "default", "none" or "package.module:function".
    ledger_redaction: str = "default"
    # ledger.stream_max_bytes: the USAGE stream's size limit (services/core/nats.py).
    usage_stream_max_bytes: int = 1 << 30
    breakers: Breakers = field(default_factory=Breakers)  # docs/routing.md §5

    @property
    def route_first_token_timeouts(self) -> dict[tuple[str, str, str], float]:
        """(model id, provider, upstream model) -> the route's own first-token timeout, where set."""
        return {(m.id, r.provider, r.model): r.first_token_timeout_s for m in self.models for r in m.routes
                if r.first_token_timeout_s is not None}

    @property
    def longest_deadline_s(self) -> float:
        """The longest request deadline of any model: Envoy's route timeout (docs/resilience.md §3)."""
        return max([self.resilience.total_timeout_s,
                    *(m.resilience.total_timeout_s for m in self.models if m.resilience)])

    def provider(self, name: str) -> ProviderConfig | None:
        return next((p for p in self.providers if p.name == name), None)

    @property
    def provider_key_envs(self) -> frozenset[str]:
        """The environment variables that hold provider keys: the only ones an adapter reads."""
        return frozenset(p.api_key_env for p in self.providers if p.api_key_env)


def parse_config(raw: dict[str, Any] | None) -> Config:
    """Validates a parsed config file; raises ConfigError naming the first bad entry."""
    raw = raw or {}
    edge_raw = raw.get("edge") or {}
    edge = EdgeConfig(**{k: edge_raw[k] for k in EdgeConfig.__slots__ if k in edge_raw})  # type: ignore[attr-defined]
    providers: list[ProviderConfig] = []
    for i, p in enumerate(raw.get("providers") or []):
        where = f"providers[{i}]"
        if not p.get("name") or "/" in p["name"]:
            raise ConfigError(f"{where}: name is required and may not contain '/'")
        if p.get("kind") not in PROVIDER_KINDS:
            raise ConfigError(f"{where}: kind must be one of {', '.join(PROVIDER_KINDS)}")
        if not p.get("base_url"):
            raise ConfigError(f"{where}: base_url is required")
        if any(q.name == p["name"] for q in providers):
            raise ConfigError(f"{where}: duplicate provider name {p['name']!r}")
        providers.append(ProviderConfig(p["name"], p["kind"], str(p["base_url"]).rstrip("/"),
                                        p.get("api_key_env") or "", bool(p.get("stream_options", True)),
                                        parse_health_check(p.get("health_check"), f"{where}.health_check")))
    names = {p.name for p in providers}
    # upstream_timeout_s (older files) is the idle timeout unless the section says otherwise.
    upstream_timeout_s = float(raw.get("upstream_timeout_s") or 120.0)
    resilience = parse_resilience(raw.get("resilience"), Resilience(idle_timeout_s=upstream_timeout_s,
                                                                    first_token_timeout_s=upstream_timeout_s),
                                  "resilience")
    models: list[ModelConfig] = []
    for i, m in enumerate(raw.get("models") or []):
        where = f"models[{i}]"
        if not m.get("id"):
            raise ConfigError(f"{where}: id is required")
        if any(seen.id == str(m["id"]) for seen in models):
            raise ConfigError(f"{where}: duplicate model id {m['id']!r}")
        model_type = m.get("type", "chat")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"{where}: type must be one of {', '.join(MODEL_TYPES)}")
        routes = []
        for j, r in enumerate(m.get("routes") or []):
            rwhere = f"{where}.routes[{j}]"
            if r.get("provider") not in names:
                raise ConfigError(f"{rwhere}: unknown provider {r.get('provider')!r}")
            if not r.get("model"):
                raise ConfigError(f"{rwhere}: model is required")
            try:
                timeline = route_timeline(r, rwhere)
            except PriceError as exc:
                raise ConfigError(str(exc)) from exc
            base = timeline[0]
            weight = r.get("weight", 0)
            if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 10000:
                raise ConfigError(f"{rwhere}: weight must be an integer between 0 and 10000")
            first_token = r.get("first_token_timeout_s")
            if first_token is not None:
                first_token = parse_resilience({"first_token_timeout_s": first_token}, Resilience(),
                                               rwhere).first_token_timeout_s
            routes.append(RouteConfig(r["provider"], str(r["model"]), base.input_per_1k, base.output_per_1k,
                                      base.per_image, timeline, weight, first_token))
        if not routes:
            raise ConfigError(f"{where}: at least one route is required")
        max_output = int(m.get("max_output_tokens") or 0)
        if max_output < 0:
            raise ConfigError(f"{where}: max_output_tokens must be positive")
        cache_ttl = int(m.get("cache_ttl_s", 300))
        if not 1 <= cache_ttl <= 86400:
            raise ConfigError(f"{where}: cache_ttl_s must be between 1 and 86400 seconds")
        own = m.get("resilience")
        models.append(ModelConfig(str(m["id"]), model_type, int(m.get("context_window") or 0), tuple(routes),
                                  max_output, cache_ttl,
                                  None if own is None else parse_resilience(own, resilience,
                                                                            f"{where}.resilience")))
    on_redis_error = (raw.get("rate_limits") or {}).get("on_redis_error", "open")
    if on_redis_error not in ("open", "closed"):
        raise ConfigError("rate_limits.on_redis_error must be 'open' or 'closed'")
    on_budget_error = (raw.get("budgets") or {}).get("on_redis_error", "closed")
    if on_budget_error not in ("open", "closed"):
        raise ConfigError("budgets.on_redis_error must be 'open' or 'closed'")
    retention_raw = raw.get("retention") or {}
    retention = tuple(int(retention_raw.get(name, default)) for name, default in (
        ("request_logs_days", 90), ("analytics_days", 730), ("audit_days", 7 * 365),
        ("billing_days", 7 * 365)))
    if any(days < 1 for days in retention):
        raise ConfigError("retention: every period must be at least 1 day")
    ledger = raw.get("ledger") or {}
    redaction = str(ledger.get("redaction", "default"))
    if redaction not in ("default", "none") and ":" not in redaction:
        raise ConfigError("ledger.redaction must be 'default', 'none' or 'package.module:function'")
    stream_max_bytes = int(ledger.get("stream_max_bytes", 1 << 30))
    if stream_max_bytes < 1 << 20:
        raise ConfigError("ledger.stream_max_bytes must be at least 1048576 (1 MiB)")
    return Config(edge=edge, providers=tuple(providers), models=tuple(models),
                  breakers=parse_breakers(raw.get("breakers")),
                  workers=int(raw.get("workers") or 0),
                  upstream_timeout_s=upstream_timeout_s, resilience=resilience,
                  rate_limits_fail_open=on_redis_error == "open", budgets_fail_open=on_budget_error == "open",
                  retention_days=(retention[0], retention[1], retention[2], retention[3]),
                  ledger_redaction=redaction, usage_stream_max_bytes=stream_max_bytes)


def config_path(explicit: str | None = None) -> Path:
    """--config PATH, else AGGREGATOR_CONFIG, else ./aggregator.yaml (docs/reference.md §2)."""
    return Path(explicit or os.environ.get("AGGREGATOR_CONFIG") or "aggregator.yaml")


def load_config(path: Path) -> Config:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    return parse_config(yaml.safe_load(path.read_text()))


def data_dir(explicit: str | None = None) -> Path:
    """--data-dir DIR, else AGGREGATOR_DATA_DIR, else ./.aggregator/ (docs/reference.md §2)."""
    return Path(explicit or os.environ.get("AGGREGATOR_DATA_DIR") or ".aggregator").resolve()


@dataclass(frozen=True, slots=True)
class StoreUrls:
    """Where the data stores are; `up` fills these for embedded servers before starting workers."""

    database_url: str
    redis_url: str
    nats_url: str

    @classmethod
    def from_env(cls) -> StoreUrls:
        missing = [k for k in ("DATABASE_URL", "REDIS_URL", "NATS_URL") if not os.environ.get(k)]
        if missing:
            raise ConfigError(f"missing environment: {', '.join(missing)}")
        return cls(os.environ["DATABASE_URL"], os.environ["REDIS_URL"], os.environ["NATS_URL"])
