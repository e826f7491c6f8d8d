"""A request too deep for protobuf's decoder reaches the servicer as UNDECODABLE, a 400."""

from __future__ import annotations

from typing import Any

import grpc

from aggregator.openai.v1 import chat_pb2, openai_service_pb2_grpc
from services.core.decoding import UNDECODABLE, tolerant, undecodable_error


def chat_bytes(depth: int) -> bytes:
    """A chat request whose first message's content is `depth` arrays deep (built in place: a
    copy of a message this deep would itself hit the decoder's limit)."""
    request = chat_pb2.ChatCompletionRequest(model="m")
    value = request.messages.add(role="user").content
    for _ in range(depth):
        value = value.list_value.values.add()
    value.string_value = "x"
    return request.SerializeToString()


class Capture:
    def __init__(self) -> None:
        self.registered: dict[str, grpc.RpcMethodHandler] = {}
        self.generic: list[Any] = []

    def add_registered_method_handlers(self, service: str,
                                       handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        self.registered.update({f"/{service}/{name}": h for name, h in handlers.items()})

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self.generic.extend(handlers)


def handlers() -> Capture:
    server = Capture()
    tolerant(openai_service_pb2_grpc.add_OpenAIServiceServicer_to_server)(
        openai_service_pb2_grpc.OpenAIServiceServicer(), server)
    return server


def test_a_request_too_deep_to_decode_becomes_undecodable() -> None:
    path = "/aggregator.openai.v1.OpenAIService/CreateChatCompletion"
    decode = handlers().registered[path].request_deserializer
    assert decode(chat_bytes(120)) is UNDECODABLE
    assert decode(chat_bytes(10)).messages[0].content.list_value.values


def test_generic_and_registered_handlers_are_both_the_tolerant_ones() -> None:
    server = handlers()
    assert len(server.generic) == 1 and server.registered
    assert all(h.request_deserializer.__name__ == "decode" for h in server.registered.values())


def test_the_error_is_a_400_that_says_why() -> None:
    error = undecodable_error()
    assert error.http_status == 400 and "nested too deeply" in error.message
