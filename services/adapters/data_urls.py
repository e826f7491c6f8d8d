"""Data URLs, as OpenAI requests carry inline images and files (`image_url.url`, `file.file_data`):
`data:<media type>[;<parameter>]*;base64,<data>`. Split only, never decoded: providers take the
base64 text as it is, and refuse bad base64 themselves."""

from __future__ import annotations


def split_data_url(url: str) -> tuple[str, str] | None:
    """(media type as written, base64 data) of a base64 data URL; None when `url` is not one."""
    header, comma, data = url.partition(",")
    media_type, *options = header.removeprefix("data:").split(";")
    if not comma or "base64" not in options or not media_type:
        return None
    return media_type, data
