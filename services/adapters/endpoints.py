"""The upstreams an adapter may call: the providers of its own process's config file.

A RouteCandidate arrives over the services' port, which any local process can reach. If the
adapter trusted the candidate's `base_url` and `api_key_env`, that process could have a provider
key sent to a server of its choosing (docs/architecture.md §2.10). So the adapter looks the
provider up by name in the config it loaded itself and refuses a candidate whose endpoint differs
from it in any way, rather than quietly using the configured one: a difference is either a forged
call or a catalog synchronized from another config file than this adapter's, and both must show
(PERMISSION_DENIED, logged) instead of sending traffic somewhere nobody reviewed.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from aggregator.routing.v1 import route_pb2
from services.core.config import ProviderConfig
from services.core.errors import GatewayError, Reason, quote

log = logging.getLogger(__name__)


class ConfiguredEndpoints:
    """The configured providers by name; `check` passes only an endpoint identical to one of them."""

    def __init__(self, providers: Iterable[ProviderConfig]) -> None:
        self._providers = {provider.name: provider for provider in providers}

    def check(self, endpoint: route_pb2.Endpoint) -> None:
        """Raises PERMISSION_DENIED unless the endpoint is its provider's configured one (kind,
        base URL and key variable)."""
        configured = self._providers.get(endpoint.provider)
        if configured is None:
            log.warning("refused a call to provider %r: not in this adapter's config", endpoint.provider[:64])
            raise GatewayError(Reason.PERMISSION_DENIED,
                               f"The provider {quote(endpoint.provider)} is not configured in this adapter.")
        wanted = (configured.kind, configured.base_url, configured.api_key_env)
        if (endpoint.kind, endpoint.base_url.rstrip("/"), endpoint.api_key_env) != wanted:
            log.warning("refused a call to provider %r: its endpoint differs from the configured one",
                        configured.name)
            raise GatewayError(Reason.PERMISSION_DENIED,
                               f"The endpoint of provider {quote(configured.name)} differs from the one "
                               "this adapter's config gives it.")
