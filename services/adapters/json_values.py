"""Plain JSON values, as every adapter reads and writes them: pure functions, no I/O.

    whole_numbers(value)   numbers that protobuf held as doubles, integers again
    plain(message)         a Struct/Value (or any message) as plain JSON data, integers restored
    parse_object(raw)      an upstream's JSON object, or UPSTREAM_ERROR
    loads_or_none(raw)     JSON, or None for a body that is not JSON (a proxy's HTML error page)
    as_text(value)         a string as it is, any other JSON value encoded (error body fields)
"""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

from services.core.errors import GatewayError, Reason

# Beyond 2**53 a double no longer holds every integer: such a number stays as it came.
_MAX_EXACT_INT = 2**53


def whole_numbers(value: Any) -> Any:
    """Protobuf's Struct/Value and map<string, double> hold every number as a double; a JSON
    integer (a schema's `minimum`, a token id, a logit-bias value) must go out as an integer."""
    if isinstance(value, float):
        return int(value) if value.is_integer() and -_MAX_EXACT_INT < value < _MAX_EXACT_INT else value
    if isinstance(value, dict):
        return {k: whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [whole_numbers(v) for v in value]
    return value


def plain(message: Message) -> Any:
    """A Value or Struct as plain JSON data (proto JSON names), integers restored."""
    return whole_numbers(json_format.MessageToDict(message))


def parse_object(raw: bytes) -> dict[str, Any]:
    """Parses an upstream JSON object; anything else is the upstream's failure."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider sent invalid JSON.") from exc
    if not isinstance(obj, dict):
        raise GatewayError(Reason.UPSTREAM_ERROR, "The upstream provider sent an unexpected JSON value.")
    return obj


def loads_or_none(raw: bytes) -> Any:
    """The JSON value of `raw`; None when it is not JSON (error bodies then decode as empty)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def as_text(value: Any) -> str | None:
    """A string as it is, None as None, any other JSON value as its JSON text."""
    if value is None:
        return None
    return value if isinstance(value, str) else orjson.dumps(value).decode()
