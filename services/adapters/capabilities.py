"""Which request parameters each provider kind honours, and the check that refuses the rest.

docs/architecture.md §5 and the providers issue: a parameter a provider cannot honour gets a clear 400
naming the parameter and the provider — never silently dropped. Each adapter module declares its
`SUPPORTED_CHAT_PARAMETERS`; `GET /v1/models/{id}` lists them (`supported_parameters`, as
OpenRouter does). The error is UNSUPPORTED_PARAMETER so that routing may still try a later
candidate that does honour it, and reports it only when none does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

from google.protobuf.message import Message

from services.core.errors import GatewayError, Reason

# Fields that are not generation parameters: the request's own shape and our extensions.
ALWAYS_ACCEPTED = frozenset({"model", "messages", "stream", "models", "provider", "prompt", "input"})


@functools.cache  # static tables: read once per kind, not on every /v1/models call
def supported_chat_parameters(kind: str) -> tuple[str, ...]:
    """The chat request fields a provider kind honours, sorted; empty for an unknown kind."""
    from services.adapters.registry import adapter_module

    module = adapter_module(kind)
    if module is None:
        return ()
    return tuple(sorted(set(module.SUPPORTED_CHAT_PARAMETERS) - ALWAYS_ACCEPTED))


def unsupported_parameter(param: str, message: str) -> GatewayError:
    """The 400 naming a parameter (or a value of it) a provider cannot honour; every adapter refuses
    with this one, so routing can tell it apart and try a later candidate."""
    return GatewayError(Reason.UNSUPPORTED_PARAMETER, message, param=param, code="unsupported_parameter")


def set_parameters(request: Message) -> list[str]:
    """Names of the fields the client set (presence for optional scalars, non-empty otherwise)."""
    return [field.name for field, _ in request.ListFields()]


def reject_unsupported(request: Message, supported: Iterable[str], provider: str) -> None:
    """Raises UNSUPPORTED_PARAMETER for the first set field `provider` cannot honour."""
    allowed = ALWAYS_ACCEPTED.union(supported)
    for name in set_parameters(request):
        if name not in allowed:
            raise unsupported_parameter(name, f"The parameter '{name}' is not supported by provider "
                                              f"'{provider}'.")
