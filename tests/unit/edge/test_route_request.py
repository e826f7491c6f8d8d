"""What the pipeline asks the routing service (docs/routing.md §1): the request's provider preferences,
and the parameters it sets when `require_parameters` needs them."""

from __future__ import annotations

from google.protobuf import json_format

from aggregator.openai.v1 import completion_pb2
from tests.unit.edge.test_pipeline import AUTHORIZED, Script, chat_request, event, make, new_record, run_chat


async def test_resolve_route_carries_the_provider_preferences() -> None:
    pipeline, clients = make({"p1": Script([event("ok")])})
    provider = {"order": ["p1"], "sort": "price", "max_price": {"prompt": 1.5}}
    await run_chat(pipeline, new_record(), chat_request(provider=provider, temperature=0.5))
    sent = clients.routing.requests[-1]
    assert json_format.MessageToDict(sent.provider) == provider
    assert list(sent.parameters) == []  # not asked for: not sent


async def test_require_parameters_sends_the_parameters_the_request_sets() -> None:
    pipeline, clients = make({"p1": Script([event("ok")])})
    request = chat_request(provider={"require_parameters": True}, temperature=0.5, logprobs=True)
    await run_chat(pipeline, new_record(), request)
    assert list(clients.routing.requests[-1].parameters) == ["logprobs", "temperature"]


async def test_no_preferences_send_none() -> None:
    pipeline, clients = make({"p1": Script([event("ok")])})
    await run_chat(pipeline, new_record())
    assert not clients.routing.requests[-1].HasField("provider")


async def test_completions_carry_them_too() -> None:
    pipeline, clients = make({"p1": Script([event("ok")])})
    clients.adapter.Complete = clients.adapter.Chat  # type: ignore[attr-defined]  # the fake streams alike
    request = json_format.ParseDict({"model": "gpt-4o-mini", "prompt": "hi", "provider": {"only": ["p1"]}},
                                    completion_pb2.CompletionRequest())
    assert [e.body async for e in pipeline.complete(request, AUTHORIZED, new_record())] == [b"ok"]
    assert json_format.MessageToDict(clients.routing.requests[-1].provider) == {"only": ["p1"]}
