"""Gemini answers and stream events become OpenAI completions and chunks (valid for the `openai` SDK)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.genai import types
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from services.adapters import google_answers as answers
from services.adapters import google_translate as translate
from services.adapters.google_wire import GenerateContentResponse, as_response
from services.core.errors import GatewayError, Reason

USAGE = {"promptTokenCount": 10, "cachedContentTokenCount": 4, "candidatesTokenCount": 6,
         "thoughtsTokenCount": 3, "toolUsePromptTokenCount": 1, "totalTokenCount": 20}


def response(*candidates: dict[str, Any], **extra: Any) -> GenerateContentResponse:
    obj = {"candidates": list(candidates), **extra}
    types.GenerateContentResponse.model_validate(obj)  # the inputs are real Gemini shapes
    return as_response(obj)


def candidate(*parts: dict[str, Any], finish: str | None = "STOP",
              index: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}}
    if finish:
        out["finishReason"] = finish
    if index is not None:
        out["index"] = index
    return out


def complete(obj: GenerateContentResponse, n: int = 1) -> ChatCompletion:
    return ChatCompletion.model_validate(answers.completion(obj, "gemini-2.0-flash", n))


def test_text_thoughts_usage_and_labels() -> None:
    parts = ({"text": "thinking...", "thought": True}, {"text": "Hel"}, {"text": "lo"})
    answer = complete(response(candidate(*parts),
                               usageMetadata=USAGE, modelVersion="gemini-2.0-flash-001", responseId="resp-1"))
    assert answer.id == "resp-1" and answer.model == "gemini-2.0-flash-001"
    message = answer.choices[0].message
    assert message.content == "Hello" and message.model_extra == {"reasoning_content": "thinking..."}
    assert answer.choices[0].finish_reason == "stop"
    usage = answer.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 9, 20)
    assert usage.prompt_tokens_details and usage.prompt_tokens_details.cached_tokens == 4
    assert usage.completion_tokens_details and usage.completion_tokens_details.reasoning_tokens == 3


def test_function_calls_keep_arguments_ids_and_signatures() -> None:
    args = {"city": "Oslo", "days": 3, "nested": {"units": ["c", "f"]}, "ratio": 0.5}
    answer = complete(response(candidate(
        {"text": "Let me check."},
        {"functionCall": {"name": "get_weather", "args": args}, "thoughtSignature": "c2lnbmF0dXJl"},
        {"functionCall": {"name": "get_time", "args": {}, "id": "gemini-id-7"}})))
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content == "Let me check."
    first, second = choice.message.tool_calls or []
    assert first.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(first.function.arguments) == args  # type: ignore[union-attr]
    base, signature = translate.split_call_id(first.id)
    assert base.startswith("call_") and len(base) == 29 and signature == "c2lnbmF0dXJl"
    assert second.id == "gemini-id-7" and second.function.arguments == "{}"  # type: ignore[union-attr]


@pytest.mark.parametrize("gemini, openai", [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"),
    ("BLOCKLIST", "content_filter"), ("PROHIBITED_CONTENT", "content_filter"), ("SPII", "content_filter"),
    ("IMAGE_SAFETY", "content_filter"), ("LANGUAGE", "content_filter"), ("OTHER", "stop"),
    ("FINISH_REASON_UNSPECIFIED", "stop"), ("TOO_MANY_TOOL_CALLS", "stop"), ("SOMETHING_NEW", "stop"),
])
def test_finish_reasons(gemini: str, openai: str) -> None:
    assert answers.finish_reason(gemini, False) == openai
    assert answers.finish_reason(gemini, True) == ("tool_calls" if openai == "stop" else openai)


@pytest.mark.parametrize("gemini, reason", [
    ("MALFORMED_FUNCTION_CALL", Reason.UPSTREAM_ERROR), ("UNEXPECTED_TOOL_CALL", Reason.UPSTREAM_ERROR),
    ("MISSING_THOUGHT_SIGNATURE", Reason.UPSTREAM_BAD_REQUEST),
])
def test_finishes_without_an_answer_are_errors(gemini: str, reason: Reason) -> None:
    with pytest.raises(GatewayError) as info:
        complete(response(candidate(finish=gemini)))
    assert info.value.reason is reason


def test_safety_stop_without_content() -> None:
    answer = complete(response({"finishReason": "SAFETY", "safetyRatings": []}))
    assert answer.choices[0].message.content is None and answer.choices[0].finish_reason == "content_filter"


def test_blocked_prompt_is_a_content_filter_completion() -> None:
    obj = as_response({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}})
    types.GenerateContentResponse.model_validate(obj)
    answer = complete(obj, n=2)
    assert [(c.index, c.finish_reason, c.message.content) for c in answer.choices] == [
        (0, "content_filter", None), (1, "content_filter", None)]
    assert answer.usage and answer.usage.prompt_tokens == 5


def test_no_candidates_at_all_is_an_upstream_error() -> None:
    with pytest.raises(GatewayError) as info:
        complete(as_response({"usageMetadata": {}}))
    assert info.value.reason is Reason.UPSTREAM_ERROR


def test_candidates_keep_their_index() -> None:
    answer = complete(response(candidate({"text": "b"}, index=1), candidate({"text": "a"})), n=2)
    assert [(c.index, c.message.content) for c in answer.choices] == [(0, "a"), (1, "b")]
    unnumbered = complete(response(candidate({"text": "a"}), candidate({"text": "b"})), n=2)
    assert [(c.index, c.message.content) for c in unnumbered.choices] == [(0, "a"), (1, "b")]


def test_logprobs() -> None:
    result = {"chosenCandidates": [{"token": "Hi", "logProbability": -0.5},
                                   {"token": "!", "logProbability": -1.0}],
              "topCandidates": [{"candidates": [{"token": "Hi", "logProbability": -0.5},
                                                {"token": "Yo", "logProbability": -2.0}]}]}
    answer = complete(response({**candidate({"text": "Hi!"}), "logprobsResult": result}))
    logprobs = answer.choices[0].logprobs
    assert logprobs and logprobs.content
    assert [(t.token, t.logprob, t.bytes) for t in logprobs.content] == [
        ("Hi", -0.5, [72, 105]), ("!", -1.0, [33])]
    assert [t.token for t in logprobs.content[0].top_logprobs] == ["Hi", "Yo"]
    assert logprobs.content[1].top_logprobs == []


# -- streams ----------------------------------------------------------------------------------
def event(*candidates: dict[str, Any], usage: dict[str, Any] | None = None) -> GenerateContentResponse:
    obj: dict[str, Any] = {"candidates": list(candidates), "modelVersion": "gemini-2.0-flash-001",
                           "responseId": "resp-9"}
    if usage is not None:
        obj["usageMetadata"] = usage
    types.GenerateContentResponse.model_validate(obj)
    return as_response(obj)


def run(events: list[GenerateContentResponse], n: int = 1) -> list[ChatCompletionChunk]:
    stream = answers.StreamTranslator("gemini-2.0-flash", n)
    chunks = [chunk for e in events for chunk in stream.feed(e)] + stream.end()
    return [ChatCompletionChunk.model_validate(c) for c in chunks]


def test_text_stream_and_one_usage_chunk() -> None:
    running = {"promptTokenCount": 10, "totalTokenCount": 10}
    chunks = run([event(candidate({"text": "Hel"}, finish=None), usage=running),
                  event(candidate({"text": "lo"}, finish=None), usage=running),
                  event(candidate({"text": ""}), usage=USAGE)])
    deltas = [(c.choices[0].delta.role, c.choices[0].delta.content, c.choices[0].finish_reason)
              for c in chunks if c.choices]
    assert deltas == [("assistant", "", None), (None, "Hel", None), (None, "lo", None), (None, None, "stop")]
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.completion_tokens == 9
    assert sum(1 for c in chunks if c.usage) == 1
    assert {c.id for c in chunks} == {"resp-9"} and {c.model for c in chunks} == {"gemini-2.0-flash-001"}


def test_function_call_streams_whole_with_the_role() -> None:
    call = {"functionCall": {"name": "get_weather", "args": {"city": "Rome"}}}
    chunks = run([event(candidate(call, {"functionCall": {"name": "get_time", "args": {}}}), usage=USAGE)])
    first, second, finish, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content is None
    [delta] = first.choices[0].delta.tool_calls or []
    assert (delta.index, delta.type) == (0, "function")
    assert delta.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(delta.function.arguments or "") == {"city": "Rome"}  # type: ignore[union-attr]
    assert delta.id and delta.id.startswith("call_")
    assert second.choices[0].delta.role is None and (second.choices[0].delta.tool_calls or [])[0].index == 1
    assert finish.choices[0].finish_reason == "tool_calls" and usage.usage is not None


def test_text_then_call_in_later_events() -> None:
    chunks = run([event(candidate({"text": "Checking."}, finish=None)),
                  event(candidate({"functionCall": {"name": "f", "args": {"a": 1}}}), usage=USAGE)])
    calls = [bool(c.choices and c.choices[0].delta.tool_calls) for c in chunks]
    assert calls == [False, False, True, False, False]
    assert chunks[3].choices[0].finish_reason == "tool_calls"


def test_candidates_interleave_and_usage_comes_last() -> None:
    chunks = run([event(candidate({"text": "a"}, finish=None),
                        candidate({"text": "b"}, finish=None, index=1)),
                  event(candidate({"text": "!"}), usage=USAGE),
                  event(candidate({"text": "?"}, index=1), usage=USAGE)], n=2)
    finishes = [(c.choices[0].index, c.choices[0].finish_reason) for c in chunks if c.choices]
    assert finishes[-1] == (1, "stop") and (0, "stop") in finishes
    assert chunks[-1].usage is not None and all(c.usage is None for c in chunks[:-1])


def test_blocked_prompt_in_a_stream() -> None:
    stream = answers.StreamTranslator("gemini-2.0-flash", 1)
    chunks = stream.feed(as_response({"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
                                      "usageMetadata": {"promptTokenCount": 3}}))
    parsed = [ChatCompletionChunk.model_validate(c) for c in chunks]
    assert [(c.choices[0].delta.role, c.choices[0].finish_reason) for c in parsed[:2]] == [
        ("assistant", None), (None, "content_filter")]
    [usage] = [ChatCompletionChunk.model_validate(c) for c in stream.end()]
    assert usage.usage and usage.usage.prompt_tokens == 3 and len(parsed) == 2


@pytest.mark.parametrize("events", [
    [], [event(candidate({"text": "cut"}, finish=None))],
    [event(candidate({"text": "a"}), candidate({"text": "b"}, finish=None, index=1))],
])
def test_a_stream_that_never_finished_is_an_upstream_error(events: list[GenerateContentResponse]) -> None:
    stream = answers.StreamTranslator("gemini-2.0-flash", 2)
    for e in events:
        stream.feed(e)
    with pytest.raises(GatewayError) as info:
        stream.end()
    assert info.value.reason is Reason.UPSTREAM_ERROR


def test_malformed_call_in_a_stream_raises() -> None:
    stream = answers.StreamTranslator("gemini-2.0-flash", 1)
    stream.feed(event(candidate({"text": "a"}, finish=None)))
    with pytest.raises(GatewayError) as info:
        stream.feed(event(candidate(finish="MALFORMED_FUNCTION_CALL")))
    assert info.value.reason is Reason.UPSTREAM_ERROR


def test_events_after_a_choice_finished_are_ignored_but_their_usage_counts() -> None:
    later = {**USAGE, "candidatesTokenCount": 7}
    chunks = run([event(candidate({"text": "a"}), usage=USAGE),
                  event(candidate({"text": "late"}), usage=later)])
    assert "late" not in [c.choices[0].delta.content for c in chunks if c.choices]
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == 10


def test_stream_logprobs_ride_on_the_content_chunk() -> None:
    result = {"chosenCandidates": [{"token": "a", "logProbability": -0.1}]}
    chunks = run([event({**candidate({"text": "a"}), "logprobsResult": result}, usage=USAGE)])
    logprobs = chunks[1].choices[0].logprobs
    assert logprobs and logprobs.content and logprobs.content[0].logprob == -0.1
