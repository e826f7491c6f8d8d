"""multipart/form-data bodies (OpenAI's image edit and variation uploads) parsed into the typed
`ImageUpload` the adapters re-encode. Envoy passes the raw body as `google.api.HttpBody` and
has already refused anything over 10 MiB."""

from __future__ import annotations

import email.parser
import email.policy

from aggregator.openai.v1 import image_pb2
from services.core.errors import GatewayError, Reason, quote

MAX_PARTS = 64


def _invalid(message: str) -> GatewayError:
    return GatewayError(Reason.INVALID_REQUEST, message, code="invalid_multipart")


def parse_image_upload(content_type: str, body: bytes, operation: str) -> image_pb2.ImageUpload:
    """Text fields and files of a multipart/form-data body; 400 for anything else."""
    if not content_type.lower().startswith("multipart/form-data") or "boundary=" not in content_type.lower():
        raise _invalid("Expected a multipart/form-data body with a boundary.")
    head = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart() or message.defects:
        raise _invalid("The multipart/form-data body is malformed.")
    upload = image_pb2.ImageUpload(operation=operation)
    for index, part in enumerate(message.iter_parts()):
        if index >= MAX_PARTS:
            raise _invalid(f"Too many parts: at most {MAX_PARTS}.")
        name = part.get_param("name", header="content-disposition")
        if not isinstance(name, str) or not name:
            raise _invalid("Every part needs a Content-Disposition name.")
        payload = part.get_payload(decode=True)
        data = payload if isinstance(payload, bytes) else b""
        filename = part.get_filename()
        if filename is None:
            try:
                upload.fields[name] = data.decode("utf-8")
            except UnicodeDecodeError:
                raise _invalid(f"Field {quote(name)} is not UTF-8 text.") from None
        else:
            upload.files.add(field=name, filename=filename, content_type=part.get_content_type(), data=data)
    return upload
