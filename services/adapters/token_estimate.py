"""Token estimates for a request the upstream never reported usage for: a stream the client cut
before its usage chunk (docs/ledger.md §3 "Cut streams").

Text is counted the way byte-pair tokenizers split it rather than as bytes/4: an English word and
its leading space are usually one token, a long word a few, digits go in groups of three,
punctuation runs are short tokens of their own, and each character of a script without spaces
(CJK, Thai...) is about a token. Images are priced the way each provider documents it, from the
image's own dimensions when it travels inline (a data URL), else from a typical size. A message
costs a few tokens of framing besides its text. `tools/token_corpus.py` measures the estimate
against a real tokenizer; docs/ledger.md §3 gives the figures.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
import struct
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format

_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]{1,3}|[ \t]*\n+|[ \t]+|[^\sA-Za-z0-9\u0080-\U0010ffff]+"
                    r"|[^\x00-\x7f]")
_WIDE = re.compile(r"[\u0e00-\u0e7f\u1100-\u11ff\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")
# Calibrated on tools/token_corpus.py's corpus (docs/ledger.md §3).
SHORT_WORD = 6  # letters of a word that is one token whatever it is
LETTERS_PER_TOKEN = 5.0  # letters per token beyond those (long or rare words split)
PUNCTUATION_PER_TOKEN = 1.5
WHITESPACE_TOKENS = 0.5  # a run of spaces or newlines (often merged into its neighbour)
WIDE_CHAR_TOKENS = 1.1
ACCENT_TOKENS = 0.3
OTHER_CHAR_TOKENS = 0.5
MESSAGE_OVERHEAD = 4  # role and separators of one chat message
REPLY_PRIMING = 3  # the tokens that open the assistant's reply
DEFAULT_IMAGE_SIZE = (1024, 1024)  # an image behind a URL: not fetched, assumed this size


def text_tokens(text: str) -> int:
    """About how many tokens a byte-pair tokenizer makes of `text`."""
    count = 0.0
    for piece in _PIECE.findall(text):
        first = piece[0]
        if not first.isascii():
            # Scripts without spaces: about a token a character; accented Latin letters mostly
            # ride in their word's tokens; other alphabets (Cyrillic, Greek...) two to a token.
            if _WIDE.match(first):
                count += WIDE_CHAR_TOKENS
            else:
                count += ACCENT_TOKENS if first <= "\u024f" else OTHER_CHAR_TOKENS
            continue
        word = piece.strip()
        if not word:
            count += WHITESPACE_TOKENS
        elif word[0].isalpha():
            count += 1 + max(0, len(word) - SHORT_WORD) / LETTERS_PER_TOKEN
        elif word[0].isdigit():
            count += 1
        else:
            count += len(word) / PUNCTUATION_PER_TOKEN
    return math.ceil(count)


# -- images -----------------------------------------------------------------------------------

def image_size(url: str) -> tuple[int, int]:
    """The (width, height) of an inline image (a base64 data URL of a PNG, JPEG, GIF or WebP);
    DEFAULT_IMAGE_SIZE when it is a link or cannot be read."""
    if not url.startswith("data:") or ";base64," not in url[:100]:
        return DEFAULT_IMAGE_SIZE
    try:
        data = base64.b64decode(url.partition(";base64,")[2], validate=False)
    except (binascii.Error, ValueError):
        return DEFAULT_IMAGE_SIZE
    return _dimensions(data) or DEFAULT_IMAGE_SIZE


def _dimensions(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        return struct.unpack("<HH", data[6:10])
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        if data[12:16] == b"VP8X":
            return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
        if data[12:16] == b"VP8 " and len(data) >= 30:
            width, height = struct.unpack("<HH", data[26:30])
            return width & 0x3FFF, height & 0x3FFF
        if data[12:16] == b"VP8L" and len(data) >= 25:
            bits = int.from_bytes(data[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if data[:2] == b"\xff\xd8":
        return _jpeg_dimensions(data)
    return None


def _jpeg_dimensions(data: bytes) -> tuple[int, int] | None:
    at = 2
    while at + 9 < len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[at + 5:at + 9])
            return width, height
        at += 2 + length
    return None


def image_tokens(kind: str, width: int, height: int, detail: str = "auto") -> int:
    """Prompt tokens of one image as the provider kind documents its pricing:

    * anthropic: width × height / 750, after scaling the long edge to at most 1568 px;
    * google: 258 for an image at most 384 px each way, else 258 per 768 × 768 tile;
    * openai and the rest (OpenAI's vision pricing): 85 at `detail: low`; otherwise scaled to fit
      2048 × 2048, then its short side to 768, and 85 + 170 per 512 × 512 tile.
    """
    width, height = max(width, 1), max(height, 1)
    if kind == "anthropic":
        scale = min(1.0, 1568 / max(width, height))
        return math.ceil(width * scale * height * scale / 750)
    if kind == "google":
        if width <= 384 and height <= 384:
            return 258
        return math.ceil(width / 768) * math.ceil(height / 768) * 258
    if detail == "low":
        return 85
    fit = min(1.0, 2048 / max(width, height))
    wide, high = width * fit, height * fit
    short = min(1.0, 768 / min(wide, high))
    return 85 + 170 * math.ceil(wide * short / 512) * math.ceil(high * short / 512)


# -- requests ---------------------------------------------------------------------------------

def _content_tokens(content: Any, kind: str) -> int:
    if isinstance(content, str):
        return text_tokens(content)
    count = 0
    if isinstance(content, list):
        for part in content:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                count += text_tokens(part["text"])
            image = part.get("image_url")
            if isinstance(image, dict) and isinstance(image.get("url"), str):
                detail = str(image.get("detail", "auto"))
                count += image_tokens(kind, *image_size(image["url"]), detail=detail)
    return count


def _json_tokens(values: Iterable[Any]) -> int:
    import orjson

    return sum(text_tokens(orjson.dumps(value).decode()) for value in values)


def prompt_tokens(request: Any, kind: str) -> int:
    """About how many prompt tokens a chat or completion request costs at a provider of `kind`:
    its text, its images, its tool definitions and the framing of its messages."""
    document = json_format.MessageToDict(request, preserving_proto_field_name=True)
    messages = document.get("messages")
    if isinstance(messages, list):
        count = REPLY_PRIMING
        for message in messages:
            if not isinstance(message, dict):
                continue
            count += MESSAGE_OVERHEAD + _content_tokens(message.get("content"), kind)
            count += _json_tokens(message.get("tool_calls") or [])
            if isinstance(message.get("name"), str):
                count += text_tokens(message["name"])
        return count + _json_tokens(document.get("tools") or [])
    prompt = document.get("prompt")
    if isinstance(prompt, list):
        # A prompt of token ids (lists of integers) counts exactly.
        return sum(text_tokens(p) if isinstance(p, str) else len(p) if isinstance(p, list) else 0
                   for p in prompt)
    return text_tokens(prompt) if isinstance(prompt, str) else 0


def completion_tokens(content_chars: int, content_events: int) -> int:
    """About how many tokens a cut stream generated: its content's characters at 4 a token, and
    never fewer than the chunks that carried content (a chunk is at least one token)."""
    return max(math.ceil(content_chars / 4), content_events)
