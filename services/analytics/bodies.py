"""Request and response bodies in the request log, for organizations that opt in (`store_prompts`;
docs/ledger.md §2).

* Which organizations opted in is answered from memory (services/auth/org_settings.py), so a
  request of an organization that did not opt in pays one dictionary lookup and nothing else.
* The edge keeps at most MAX_BODY_BYTES of each body in the usage event; a larger one becomes a
  note of its size, so a 10 MiB prompt never travels through JetStream twice.
* The ledger redacts before it writes (`Redactor`): the default one masks e-mail addresses, card
  numbers (Luhn-checked), secrets that look like API keys or bearer tokens, and phone numbers; an
  operator may name their own function (`ledger.redaction: package.module:function`) or `none`.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from typing import Any

import orjson

from services.core.config import ConfigError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
REDACTED = "[REDACTED]"

Redact = Callable[[Any], Any]


def bounded(body: bytes) -> bytes:
    """`body` when it is at most MAX_BODY_BYTES, else a JSON note of its size."""
    if len(body) <= MAX_BODY_BYTES:
        return body
    return orjson.dumps({"truncated": True, "bytes": len(body)})


def stream_body(chunks: list[bytes]) -> bytes:
    """A stream's chunks as one JSON array, without parsing them again."""
    return bounded(b"[" + b",".join(chunks) + b"]")


# -- redaction ---------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_SECRET = re.compile(r"\b(?:sk|pk|rk|ak)[-_](?:[A-Za-z0-9]+[-_])*[A-Za-z0-9]{16,}\b"
                     r"|\b(?:Bearer|bearer)\s+[A-Za-z0-9._~+/=-]{16,}"
                     r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b"
                     r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}\b")
_CARD = re.compile(r"\b(?:\d[ -]?){12,18}\d\b")
# Separated groups only: a plain run of digits (an order number, a timestamp) is not a phone number.
_PHONE = re.compile(r"(?<![\w.])\+?\d{1,3}[ .-]\(?\d{2,4}\)?[ .-]\d{3,4}[ .-]?\d{3,4}(?![\w.])")


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    return REDACTED if 13 <= len(digits) <= 19 and _luhn(digits) else match.group(0)


def redact_text(text: str) -> str:
    """`text` with e-mail addresses, secrets, card numbers and phone numbers replaced."""
    text = _SECRET.sub(REDACTED, text)
    text = _EMAIL.sub(REDACTED, text)
    text = _CARD.sub(_card, text)
    return _PHONE.sub(REDACTED, text)


def redact(document: Any) -> Any:
    """The default redaction hook: every string of a JSON document (keys kept) passed through
    `redact_text`; base64 data URLs of images are replaced whole (they are not text to keep)."""
    if isinstance(document, str):
        if document.startswith("data:") and ";base64," in document[:100]:
            return REDACTED
        return redact_text(document)
    if isinstance(document, list):
        return [redact(item) for item in document]
    if isinstance(document, dict):
        return {key: redact(value) for key, value in document.items()}
    return document


def _without_nul(document: Any) -> Any:
    if isinstance(document, str):
        return document.replace("\x00", "")
    if isinstance(document, list):
        return [_without_nul(item) for item in document]
    if isinstance(document, dict):
        return {_without_nul(key): _without_nul(value) for key, value in document.items()}
    return document


def _keep(document: Any) -> Any:
    return document


def redactor(setting: str) -> Redact:
    """The hook named by `ledger.redaction`: "default", "none", or "package.module:function" (a
    function of one JSON document answering the document to store)."""
    if setting == "default":
        return redact
    if setting == "none":
        return _keep
    module_name, _, attribute = setting.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"ledger.redaction: expected default, none or module:function; got {setting!r}")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"ledger.redaction: cannot load {setting!r}: {type(exc).__name__}") from exc
    if not callable(hook):
        raise ConfigError(f"ledger.redaction: {setting!r} is not a function")
    return hook  # type: ignore[no-any-return]


def stored_json(body: bytes, hook: Redact) -> str | None:
    """The body as the JSON text to store (redacted by `hook`); None when empty. A body that is not
    JSON is kept as a JSON string, redacted too. A hook that fails keeps nothing of the body (never
    the unredacted text), and the request's other columns are written as usual."""
    if not body:
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        document = body.decode("utf-8", "replace")
    try:
        text = orjson.dumps(hook(document)).decode()
        # jsonb cannot hold a NUL character ("\u0000" in JSON text): removed from every string.
        return orjson.dumps(_without_nul(orjson.loads(text))).decode() if "\\u0000" in text else text
    except Exception as exc:  # noqa: BLE001 - an operator's hook: its failure must not block the ledger
        log.error("ledger redaction hook failed (%s): body not stored", type(exc).__name__)
        return None
