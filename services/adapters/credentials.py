"""Provider credentials: the secret is named by the route (`api_key_env`) and read from this
process's environment when a request is sent, so a rotated key needs no restart and never
travels between services. Messages name the variable, never its value."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from aggregator.routing.v1 import route_pb2
from services.core.errors import GatewayError, Reason


@dataclass(frozen=True, slots=True)
class AuthScheme:
    """How a provider expects its key: a header name and a prefix before the key."""

    header: str
    prefix: str = ""


BEARER = AuthScheme("Authorization", "Bearer ")


class CredentialResolver:
    """Turns an endpoint's `api_key_env` into the auth header of one request."""

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 allowed_names: frozenset[str] | None = None) -> None:
        """`allowed_names`: the variables the config file names as provider keys. A route naming
        any other variable is refused, so a forged route cannot send, say, DATABASE_URL or the
        HMAC secret to a URL of its choosing. None allows any (tests with their own environ)."""
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._allowed = allowed_names

    def auth_headers(self, endpoint: route_pb2.Endpoint, scheme: AuthScheme, *,
                     key_required: bool) -> dict[str, str]:
        """The header carrying the key; empty for a keyless endpoint (no `api_key_env`) when the
        provider allows it. Raises UPSTREAM_AUTH_FAILED when a needed key is not configured."""
        name = endpoint.api_key_env
        if not name:
            if key_required:
                raise GatewayError(Reason.UPSTREAM_AUTH_FAILED,
                                   f"Provider '{endpoint.provider}' has no api_key_env configured.")
            return {}
        if self._allowed is not None and name not in self._allowed:
            raise GatewayError(Reason.UPSTREAM_AUTH_FAILED,
                               f"Provider '{endpoint.provider}' names a key variable that no configured "
                               "provider uses.")
        value = self._environ.get(name)
        if not value:
            raise GatewayError(Reason.UPSTREAM_AUTH_FAILED,
                               f"The environment variable {name} holding the key of provider "
                               f"'{endpoint.provider}' is not set.")
        return {scheme.header: scheme.prefix + value}
