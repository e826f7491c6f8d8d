"""An incremental server-sent events decoder (the WHATWG `text/event-stream` rules).

Bytes go in as they arrive from the socket; each complete event comes out at once, so a stream
is never buffered whole. Lines may end in `\\n`, `\\r\\n` or a lone `\\r` (even split across two
reads); `data:` lines of one event are joined with `\\n`; lines starting with `:` are comments
(keep-alives); an event is dispatched on a blank line. Payloads stay bytes (orjson parses bytes),
and `[DONE]` is an ordinary payload: what it means is the caller's business.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.core.errors import GatewayError, Reason

# An upstream that never ends a line must not grow our memory without bound.
MAX_PENDING_BYTES = 16 * 1024 * 1024
_CR = 0x0D
_COLON = 0x3A


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched event: its `data` lines joined by `\\n`, its `event` name and last `id`."""

    data: bytes
    event: str = "message"
    id: str | None = None


class SSEDecoder:
    """Turns a byte stream into SSEEvents; feed it each read, then `flush()` at end of stream."""

    __slots__ = ("_pending", "_data", "_event", "_last_id", "_skip_lf")

    def __init__(self) -> None:
        self._pending = b""  # an incomplete last line
        self._data: list[bytes] = []
        self._event = ""
        self._last_id: str | None = None
        self._skip_lf = False  # the previous read ended in "\r": a leading "\n" belongs to it

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Decodes one read; returns the events it completed (often none or one)."""
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._pending + chunk if self._pending else chunk
        end = max(buf.rfind(b"\n"), buf.rfind(b"\r"))
        if end < 0:
            if len(buf) > MAX_PENDING_BYTES:
                raise GatewayError(Reason.UPSTREAM_ERROR,
                                   "The upstream provider sent an oversized stream line.")
            self._pending = buf
            return []
        if end == len(buf) - 1 and buf[end] == _CR:
            self._skip_lf = True
        self._pending = buf[end + 1:]
        events: list[SSEEvent] = []
        # bytes.splitlines() splits on exactly \n, \r\n and \r, as the SSE grammar does.
        for line in buf[: end + 1].splitlines():
            event = self._line(line)
            if event is not None:
                events.append(event)
        return events

    def flush(self) -> list[SSEEvent]:
        """Ends the stream: a last unterminated line and event are still delivered (lenient)."""
        events: list[SSEEvent] = []
        if self._pending:
            line, self._pending = self._pending, b""
            event = self._line(line)
            if event is not None:
                events.append(event)
        event = self._dispatch()
        if event is not None:
            events.append(event)
        return events

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == _COLON:
            return None  # a comment, e.g. ": keep-alive"
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\x00" not in value:
            self._last_id = value.decode("utf-8", "replace")
        # "retry" and unknown fields are ignored, as the standard says.
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        payload = data[0] if len(data) == 1 else b"\n".join(data)
        return SSEEvent(payload, event or "message", self._last_id)
