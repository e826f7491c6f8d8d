"""The whole gateway for end-to-end tests: real stores, real service processes, a real Envoy, and
fake providers (the only fakes allowed) in the test process.

Two topologies (docs/architecture.md §2.4): "all" runs every service in one `aggregator serve` process;
"split" runs each service in its own process, reaching the others over gRPC.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.auth.secret_files import parse_secret
from services.core.config import RESILIENCE_KEYS, Config, Resilience, StoreUrls, parse_config
from services.core.prices import TOKEN_KEYS, Prices
from services.core.service_token import derive_service_token
from services.runtime import children
from services.runtime.envoy import render_bootstrap
from services.runtime.envoy_process import EnvoyProcess
from services.runtime.stores import free_port
from services.runtime.up import REPO, prepare_stores

ADMIN_KEY = "sk_live_" + "e2e" + secrets.token_urlsafe(32)
UPSTREAM_KEY = "sk-upstream-" + secrets.token_hex(8)
SPLIT = {
    "auth": ("auth",),
    "routing": ("routing",),
    "adapter": ("adapter",),
    "edge": ("edge", "billing", "analytics"),
    "ledger": ("ledger",),  # the usage ledger's own process role
}


def _route(
    provider: str, model: str, input_per_1k: str = "0.0015", output_per_1k: str = "0.002", **extra: str
) -> dict[str, str]:
    return {
        "provider": provider,
        "model": model,
        "input_per_1k": input_per_1k,
        "output_per_1k": output_per_1k,
        **extra,
    }


def gateway_config(
    primary_url: str,
    backup_url: str,
    dead_url: str,
    providers: list[dict[str, str]] = (),
    models: list[dict[str, Any]] = (),
) -> Config:
    """Models served by the fake upstreams; `fallback-chat` starts on a dead provider.
    `providers` and `models` add more (other provider kinds' fakes)."""
    return parse_config(
        {
            "providers": [
                {
                    "name": "fakeai",
                    "kind": "openai",
                    "base_url": primary_url,
                    "api_key_env": "FAKEAI_API_KEY",
                },
                {"name": "backup", "kind": "openai_compatible", "base_url": backup_url},
                {"name": "dead", "kind": "openai", "base_url": dead_url, "api_key_env": "FAKEAI_API_KEY"},
                *providers,
            ],
            "models": [
                {
                    "id": "gpt-4o-mini",
                    "type": "chat",
                    "context_window": 128000,
                    "routes": [_route("fakeai", "gpt-4o-mini")],
                },
                {
                    "id": "fallback-chat",
                    "type": "chat",
                    "routes": [_route("dead", "gpt-4o-mini"), _route("backup", "gpt-4o-mini")],
                },
                {"id": "only-dead", "type": "chat", "routes": [_route("dead", "gpt-4o-mini")]},
                {
                    "id": "text-embedding-3-small",
                    "type": "embedding",
                    "routes": [_route("fakeai", "text-embedding-3-small", "0.00002", "0")],
                },
                {
                    "id": "gpt-image-1",
                    "type": "image",
                    "routes": [_route("fakeai", "gpt-image-1", "0.005", "0.04")],
                },
                {
                    "id": "dall-e-3",
                    "type": "image",
                    "routes": [_route("fakeai", "dall-e-3", "0", "0", per_image="0.04")],
                },
                *models,
            ],
        }
    )


def _prices(prices: Prices) -> dict[str, str]:
    return {key: str(getattr(prices, key)) for key in (*TOKEN_KEYS, "per_image")
            if getattr(prices, key) is not None}


def config_document(config: Config) -> dict[str, Any]:
    """The config file that parses to `config` (service processes read it: provider key names)."""
    return {
        "providers": [
            {"name": p.name, "kind": p.kind, "base_url": p.base_url, "api_key_env": p.api_key_env,
             "stream_options": p.stream_options,
             **({"health_check": dataclasses.asdict(p.health_check)} if p.health_check else {})}
            for p in config.providers
        ],
        "models": [
            {
                "id": m.id,
                "type": m.type,
                "context_window": m.context_window,
                "max_output_tokens": m.max_output_tokens,
                **({"resilience": _resilience(m.resilience)} if m.resilience else {}),
                "routes": [
                    {
                        "provider": r.provider,
                        "model": r.model,
                        **_prices(r.timeline()[0]),
                        "prices": [{"effective_from": p.effective_from.isoformat(), **_prices(p)}
                                   for p in r.timeline()[1:]],
                        **({"weight": r.weight} if r.weight else {}),
                        **({"first_token_timeout_s": r.first_token_timeout_s}
                           if r.first_token_timeout_s is not None else {}),
                    }
                    for r in m.routes
                ],
            }
            for m in config.models
        ],
        "resilience": _resilience(config.resilience),
        "breakers": dataclasses.asdict(config.breakers),
    }


def _resilience(policy: Resilience) -> dict[str, Any]:
    return {name: getattr(policy, name) for name in RESILIENCE_KEYS}


@dataclass
class Gateway:
    """A running gateway: its public URL, Envoy's gRPC target and the bootstrap admin key."""

    base_url: str
    grpc_target: str
    services_target: str
    admin_key: str
    data_dir: Path
    service_token: str = ""  # what internal RPCs on the services' port require
    ops_url: str = ""  # the ops port: /metrics, /healthz, /readyz without a key
    secret: str = ""  # AGGREGATOR_SECRET: a replica given the same one accepts the same keys
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    envoy: Any = None
    commands: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)  # argv, env

    def respawn(self, name: str) -> None:
        """Starts service process `name` again, as it was started (after a test killed it)."""
        argv, env = self.commands[name]
        self.processes[name] = children.spawn(argv, env=env, log_path=self.data_dir / "logs" / f"{name}.log")

    def log(self, name: str) -> str:
        path = self.data_dir / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        children.stop_all(list(self.processes.values()), timeout_s=10.0)


async def start_gateway(topology: str, stores: StoreUrls, data_dir: Path, config: Config,
                        secret: str = "", groups: dict[str, tuple[str, ...]] | None = None) -> Gateway:
    """Prepares the stores and starts the service processes and Envoy; the caller stops it. A
    replica of a running gateway gets its `secret` (and the same stores). `groups` names the
    processes and their services instead of `topology`; the one hosting `edge` must host every
    gRPC service Envoy routes to."""
    data_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - test set-up, once
    os.environ["AGGREGATOR_ADMIN_KEY"] = ADMIN_KEY
    os.environ["AGGREGATOR_SECRET"] = secret or secrets.token_hex(32)
    try:
        await prepare_stores(config, stores, data_dir)
    finally:
        os.environ.pop("AGGREGATOR_ADMIN_KEY")
    env = children.child_env(
        {
            "DATABASE_URL": stores.database_url,
            "REDIS_URL": stores.redis_url,
            "NATS_URL": stores.nats_url,
            "AGGREGATOR_DATA_DIR": str(data_dir),
            "FAKEAI_API_KEY": UPSTREAM_KEY,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
    )
    config_path = data_dir / "aggregator.yaml"
    ops_port = free_port()
    document = {**config_document(config), "edge": {"ops_port": ops_port}}
    config_path.write_text(yaml.safe_dump(document))  # noqa: ASYNC240
    custom = groups is not None
    groups = groups or ({"all": ("all",)} if topology == "all" else SPLIT)
    ports = {name: free_port() for name in groups}
    token = derive_service_token(parse_secret(os.environ["AGGREGATOR_SECRET"]))
    gateway = Gateway("", "", "", ADMIN_KEY, data_dir, service_token=token,
                      ops_url=f"http://127.0.0.1:{ops_port}", secret=os.environ["AGGREGATOR_SECRET"])
    ready_files = {name: data_dir / f"{name}.ready" for name in groups}
    for name, services in groups.items():
        ready_files[name].unlink(missing_ok=True)
        remotes = [
            f"{s}=127.0.0.1:{ports[other]}"
            for other, others in groups.items()
            if other != name
            for s in others
        ]
        argv = children.serve_command(
            services=",".join(services),
            host="127.0.0.1",
            port=ports[name],
            ready_file=ready_files[name],
            config=config_path,
            data_dir=data_dir,
            remotes=remotes,
        )
        gateway.commands[name] = (list(argv), env)
        gateway.processes[name] = children.spawn(argv, env=env, log_path=data_dir / "logs" / f"{name}.log")
    try:
        children.wait_ready(
            gateway.processes, list(ready_files.values()), timeout_s=60, logs=data_dir / "logs"
        )
        front = ("all" if topology == "all" else "edge") if not custom else next(
            name for name, services in groups.items() if "edge" in services)
        routes = (
            None
            if topology == "all" or custom
            else {
                "aggregator.auth.v1.": [("127.0.0.1", ports["auth"])],
                # Organizations and users are served by the auth process (services/runtime/worker.py).
                "aggregator.tenancy.v1.": [("127.0.0.1", ports["auth"])],
                # So are the rate-limit rules.
                "aggregator.limits.v1.": [("127.0.0.1", ports["auth"])],
                "aggregator.routing.v1.": [("127.0.0.1", ports["routing"])],
                "aggregator.adapter.v1.": [("127.0.0.1", ports["adapter"])],
            }
        )
        http_port, admin_port = free_port(), free_port()
        bootstrap = render_bootstrap(
            http_port=http_port,
            admin_port=admin_port,
            upstreams=[("127.0.0.1", ports[front])],
            service_upstreams=routes,
            descriptor_path=REPO / "gen" / "descriptor.pb",
            lua_path=REPO / "envoy" / "error_shaper.lua",
            listen_address="127.0.0.1",
            access_log_path=str(data_dir / "logs" / "envoy-access.log"),
            route_timeout_s=config.longest_deadline_s,
        )
        gateway.envoy = EnvoyProcess(bootstrap, data_dir / "envoy")
        gateway.envoy.start()
    except BaseException:
        gateway.stop()
        raise
    gateway.base_url = f"http://127.0.0.1:{http_port}"
    gateway.grpc_target = f"127.0.0.1:{http_port}"
    gateway.services_target = f"127.0.0.1:{ports[front]}"
    return gateway
