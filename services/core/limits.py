"""Size limits every process agrees on (docs/edge.md, "Size limits").

A request is bounded to 10 MiB (`edge.max_request_bytes`): a JSON body by Envoy, a native gRPC
message by the services (`server_guard.py`). An answer is bounded by
what providers legitimately return: 2,048 embeddings of 3,072 floats is about 140 MB of compact
JSON (and more as the provider pretty-prints it), so an upstream answer may be up to
MAX_ANSWER_BYTES. Internal gRPC messages that carry a whole answer (the adapter's EmbedResponse
and ImageResponse) get the same limit plus room for their other fields; answers leave for Envoy in
HTTP_CHUNK_BYTES pieces, so no single message to Envoy is large.
"""

from __future__ import annotations

MIB = 1024 * 1024
MAX_REQUEST_BYTES = 10 * MIB  # one client request, JSON body or native gRPC message (edge.max_request_bytes)
# What a gRPC server receives at most. Above MAX_REQUEST_BYTES because Envoy's transcoder may make a
# JSON body within the limit larger as protobuf (each number in a google.protobuf.Value costs up to
# 11 bytes), and because internal messages wrap a client's request (server_guard.py checks the
# client's own messages against the limit itself): 64 MiB of request, plus room for what wraps it.
MAX_RECEIVE_BYTES = 65 * MIB
MAX_ANSWER_BYTES = 256 * MIB  # the largest upstream answer the gateway reads
MAX_GRPC_MESSAGE_BYTES = MAX_ANSWER_BYTES + MIB  # one internal message holding a whole answer
HTTP_CHUNK_BYTES = MIB  # the largest HttpBody message the facade sends Envoy


def describe(size: int) -> str:
    """`268435456` -> `256 MiB (268,435,456 bytes)`, as error messages name a limit."""
    return f"{size / MIB:g} MiB ({size:,} bytes)"
