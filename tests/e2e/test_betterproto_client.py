"""The contracts serve a second generator: betterproto2 clients (on grpclib) talk to Envoy's listener.

`make gen` writes them into `gen/betterproto/`; they share no code with the grpcio stubs, so these
calls prove that the protos alone are enough for a client in another toolchain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from betterproto.aggregator.openai.v1 import (
    ChatCompletionRequest,
    ChatMessage,
    InferenceServiceStub,
    StreamOptions,
    Usage,
)
from betterproto.google.protobuf import Value
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from tests.e2e.harness import Gateway

pytestmark = pytest.mark.e2e


@pytest.fixture
async def stub(gateway: Gateway) -> AsyncIterator[InferenceServiceStub]:
    """A betterproto2 stub on a grpclib channel to Envoy, carrying the admin key."""
    host, port = gateway.grpc_target.rsplit(":", 1)
    channel = Channel(host, int(port))
    try:
        yield InferenceServiceStub(channel, metadata={"authorization": f"Bearer {gateway.admin_key}"},
                                   timeout=30)
    finally:
        channel.close()


def _say_hello(model: str = "gpt-4o-mini") -> ChatCompletionRequest:
    return ChatCompletionRequest(
        model=model, messages=[ChatMessage(role="user", content=Value(string_value="Say hello"))],
        stream_options=StreamOptions(include_usage=True))


async def test_streaming_chat_gives_typed_chunks(stub: InferenceServiceStub) -> None:
    text, usage, ids = "", None, set()
    async for chunk in stub.stream_chat_completion(_say_hello()):
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == "gpt-4o-mini"
        assert chunk.provider is not None and chunk.provider.name == "fakeai"
        ids.add(chunk.id)
        for choice in chunk.choices:
            assert choice.delta is not None
            text += choice.delta.content or ""
        if chunk.usage is not None:
            usage = chunk.usage
    assert "Say hello" in text
    assert len(ids) == 1 and ids.pop()
    assert isinstance(usage, Usage) and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_unary_chat_gives_a_typed_completion(stub: InferenceServiceStub) -> None:
    completion = await stub.create_chat_completion(_say_hello())
    assert completion.object == "chat.completion"
    assert completion.provider is not None and completion.provider.name == "fakeai"
    choice = completion.choices[0]
    assert choice.message is not None and choice.message.role == "assistant"
    assert "Say hello" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0


async def test_errors_reach_grpclib_as_status_codes(stub: InferenceServiceStub, gateway: Gateway) -> None:
    with pytest.raises(GRPCError) as caught:
        await stub.create_chat_completion(_say_hello(model="no-such-model"))
    assert caught.value.status == Status.NOT_FOUND
    with pytest.raises(GRPCError) as caught:
        await stub.create_chat_completion(_say_hello(), metadata={"authorization": "Bearer sk_live_wrong"})
    assert caught.value.status == Status.UNAUTHENTICATED
