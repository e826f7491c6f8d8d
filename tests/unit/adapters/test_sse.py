"""SSEDecoder: the edge cases of the event-stream grammar, fed in awkward pieces."""

from __future__ import annotations

import pytest

from services.adapters.sse import SSEDecoder, SSEEvent
from services.core.errors import GatewayError, Reason


def decode_all(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events = [e for c in chunks for e in decoder.feed(c)]
    return events + decoder.flush()


def test_events_come_out_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"a":1}\n') == []
    assert decoder.feed(b"\n") == [SSEEvent(b'{"a":1}')]
    assert decoder.feed(b"data: [DONE]\n\ndata: x") == [SSEEvent(b"[DONE]")]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    stream = b"data: one" + newline + newline + b"data: two" + newline + newline
    assert [e.data for e in decode_all(stream)] == [b"one", b"two"]


def test_crlf_split_between_reads_is_one_line_end() -> None:
    # "\r" ends a read and its "\n" starts the next: that is one line end, not a blank line.
    events = decode_all(b"data: a\r", b"\ndata: b\r", b"\n\r\n")
    assert [e.data for e in events] == [b"a\nb"]


def test_byte_by_byte() -> None:
    stream = b'event: message\r\ndata: {"x": "\xc3\xa9"}\r\n\r\n: ping\r\n\r\ndata: [DONE]\r\n\r\n'
    events = decode_all(*[stream[i:i + 1] for i in range(len(stream))])
    assert [e.data for e in events] == [b'{"x": "\xc3\xa9"}', b"[DONE]"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode_all(b"data: first\ndata: second\ndata:third\n\n") == [SSEEvent(b"first\nsecond\nthird")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    events = decode_all(b": keep-alive\n\nretry: 100\nfoo: bar\ndata: x\n\n")
    assert events == [SSEEvent(b"x")]


def test_event_name_and_id() -> None:
    events = decode_all(b"event: error\nid: 7\ndata: {}\n\ndata: next\n\n")
    assert events == [SSEEvent(b"{}", "error", "7"), SSEEvent(b"next", "message", "7")]


def test_field_without_colon_and_value_without_space() -> None:
    assert decode_all(b"data\n\ndata:x\n\n") == [SSEEvent(b""), SSEEvent(b"x")]


def test_event_without_data_is_not_dispatched() -> None:
    assert decode_all(b"event: ping\n\n") == []


def test_unterminated_last_event_is_flushed() -> None:
    assert decode_all(b"data: tail") == [SSEEvent(b"tail")]


def test_only_one_leading_space_is_removed() -> None:
    assert decode_all(b"data:  two spaces\n\n") == [SSEEvent(b" two spaces")]


def test_an_endless_line_is_refused() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: " + b"x" * 1024)
    with pytest.raises(GatewayError) as info:
        decoder.feed(b"x" * (16 * 1024 * 1024))
    assert info.value.reason is Reason.UPSTREAM_ERROR
