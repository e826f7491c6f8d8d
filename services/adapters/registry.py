"""The only place that chooses an adapter by provider kind (docs/architecture.md §5).

`ADAPTER_MODULES` maps each kind to the module that speaks it. Every adapter module exposes

    create(deps: AdapterDeps, kind: str) -> ProviderAdapter
    SUPPORTED_CHAT_PARAMETERS: frozenset[str]   # request fields it honours (capabilities.py)
    HEALTH_PATH: str                            # the active health probe's default path, under
                                                # base_url (services/routing/probes.py)

and its adapter an `upstream` property (UpstreamClient), whose `health_request` the probe sends.

OpenAI-compatible servers are the OpenAI module with another `kind` (a key may be absent), never
new code. Adding a provider is one adapter module (beside its `_translate`, `_answers` and `_wire`
modules) and one row here.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from types import MappingProxyType, ModuleType

from services.adapters.base import AdapterDeps, ProviderAdapter
from services.core.errors import GatewayError, Reason

__all__ = ["ADAPTER_MODULES", "AdapterDeps", "AdapterRegistry", "adapter_module"]

ADAPTER_MODULES: Mapping[str, str] = MappingProxyType({
    "openai": "services.adapters.openai",
    "openai_compatible": "services.adapters.openai",
    "anthropic": "services.adapters.anthropic",
    "google": "services.adapters.google",
    "cohere": "services.adapters.cohere",
})


def adapter_module(kind: str) -> ModuleType | None:
    """The module speaking `kind`; None for an unknown kind or one not built into this version."""
    name = ADAPTER_MODULES.get(kind)
    if name is None or importlib.util.find_spec(name) is None:
        return None
    return importlib.import_module(name)


class AdapterRegistry:
    """Maps a provider kind (`Endpoint.kind`) to the adapter that speaks to it."""

    def __init__(self, adapters: Mapping[str, ProviderAdapter]) -> None:
        self._adapters = dict(adapters)

    @classmethod
    def build(cls, deps: AdapterDeps, kinds: Mapping[str, str] = ADAPTER_MODULES) -> AdapterRegistry:
        """One adapter per kind, all sharing `deps`."""
        adapters = {}
        for kind in kinds:
            module = adapter_module(kind)
            if module is not None:
                adapters[kind] = module.create(deps, kind)
        return cls(adapters)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The provider kinds served."""
        return tuple(self._adapters)

    def adapter_for(self, kind: str) -> ProviderAdapter:
        """The adapter of `kind`; UNIMPLEMENTED for a kind this build does not speak yet."""
        adapter = self._adapters.get(kind)
        if adapter is None:
            raise GatewayError(Reason.UNIMPLEMENTED, f"Provider kind '{kind}' is not supported yet.")
        return adapter
