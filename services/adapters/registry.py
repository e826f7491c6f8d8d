"""The only place that chooses an adapter by provider kind (DESIGN.md §5).

Adding a provider is one entry in `FACTORIES` (and its module); OpenAI-compatible servers are
the OpenAI adapter with a different configuration, never a new entry of code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from services.adapters.base import ProviderAdapter
from services.adapters.credentials import CredentialResolver
from services.adapters.http import HttpClient
from services.adapters.openai import OpenAIAdapter
from services.core.errors import GatewayError, Reason


@dataclass(frozen=True, slots=True)
class AdapterDeps:
    """What every adapter is built from: the process's HTTP client and credential resolver."""

    http: HttpClient
    credentials: CredentialResolver
    default_timeout_s: float = 120.0


AdapterFactory = Callable[[AdapterDeps], ProviderAdapter]

FACTORIES: Mapping[str, AdapterFactory] = MappingProxyType({
    "openai": lambda d: OpenAIAdapter(d.http, d.credentials, key_required=True,
                                      default_timeout_s=d.default_timeout_s),
    "openai_compatible": lambda d: OpenAIAdapter(d.http, d.credentials, key_required=False,
                                                 default_timeout_s=d.default_timeout_s),
})


class AdapterRegistry:
    """Maps a provider kind (`Endpoint.kind`) to the adapter that speaks to it."""

    def __init__(self, adapters: Mapping[str, ProviderAdapter]) -> None:
        self._adapters = dict(adapters)

    @classmethod
    def build(cls, deps: AdapterDeps, factories: Mapping[str, AdapterFactory] = FACTORIES) -> AdapterRegistry:
        """One adapter per kind, all sharing `deps`."""
        return cls({kind: factory(deps) for kind, factory in factories.items()})

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
