"""Bodies in the request log (services/analytics/bodies.py): the default redaction, the size bound,
the hook setting, and a failing hook keeping nothing rather than the unredacted text."""

from __future__ import annotations

import orjson
import pytest

from services.analytics import bodies
from services.analytics.bodies import REDACTED, redact, redact_text, redactor, stored_json
from services.core.config import ConfigError


@pytest.mark.parametrize("text", [
    "mail me at jane.doe+ai@example.co.uk please",
    "key sk-proj-abcdefghijklmnopqrstuvwx1234 here",
    "Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345",
    "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "card 4111 1111 1111 1111 exp 12/29",
    "call +1 415-555-2671 tomorrow",
    "aws AKIAIOSFODNN7EXAMPLE",
])
def test_the_default_redaction_hides_personal_data_and_secrets(text: str) -> None:
    redacted = redact_text(text)
    assert REDACTED in redacted
    hidden = {"jane.doe", "sk-proj", "abcdefghijklmnop", "eyJhbGci", "4111", "555-2671", "AKIA"}
    assert not any(part in redacted for part in hidden if part in text)


@pytest.mark.parametrize("text", [
    "the year 2026 had 365 days",
    "order 1234567890123 (not a card: Luhn fails)",
    "version 1.2.3 at 10:45",
    "sk-short",
])
def test_ordinary_text_is_kept(text: str) -> None:
    assert redact_text(text) == text


def test_redaction_walks_json_and_drops_inline_images() -> None:
    document = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "I am bob@example.com"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}],
        "temperature": 0.5, "n": 2}
    out = redact(document)
    assert out["messages"][0]["content"][0]["text"] == f"I am {REDACTED}"
    assert out["messages"][0]["content"][1]["image_url"]["url"] == REDACTED
    assert out["temperature"] == 0.5 and out["n"] == 2 and out["messages"][0]["role"] == "user"


def test_a_large_body_becomes_a_note_of_its_size() -> None:
    small = b'{"a": 1}'
    assert bodies.bounded(small) == small
    big = b'"' + b"x" * bodies.MAX_BODY_BYTES + b'"'
    assert orjson.loads(bodies.bounded(big)) == {"truncated": True, "bytes": len(big)}
    assert orjson.loads(bodies.stream_body([b'{"i":1}', b'{"i":2}'])) == [{"i": 1}, {"i": 2}]


def test_the_hook_setting() -> None:
    assert redactor("default") is redact
    assert redactor("none")({"x": "bob@example.com"}) == {"x": "bob@example.com"}
    assert redactor("tests.unit.analytics.test_bodies:uppercase")("abc") == "ABC"
    for bad in ("nothing", "no.such.module:f", "tests.unit.analytics.test_bodies:missing",
                "tests.unit.analytics.test_bodies:NOT_CALLABLE"):
        with pytest.raises(ConfigError):
            redactor(bad)


def uppercase(document: object) -> object:
    return document.upper() if isinstance(document, str) else document


NOT_CALLABLE = 3


def failing(document: object) -> object:
    raise RuntimeError("the operator's hook is broken")


def test_stored_json_redacts_and_a_failing_hook_keeps_nothing() -> None:
    assert stored_json(b"", redact) is None
    assert orjson.loads(stored_json(b'{"q": "ann@example.org"}', redact) or "") == {"q": REDACTED}
    assert orjson.loads(stored_json(b"not json ann@example.org", redact) or "") == f"not json {REDACTED}"
    assert orjson.loads(stored_json(b'[{"i": 1}, "bob@example.com"]', redact) or "") == [{"i": 1}, REDACTED]
    assert stored_json(b'{"q": "ann@example.org"}', failing) is None
