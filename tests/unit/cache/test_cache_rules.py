"""The cache's pure rules: key canonicalisation and what splits entries, what is cacheable,
Cache-Control, stream assembly and JSON↔SSE replay (no I/O)."""

from __future__ import annotations

import asyncio
import json

import pytest
from fakes import chunk
from hypothesis import given
from hypothesis import strategies as st

from r1edge.cache.key import cache_control, cache_key, cache_policy, canonical_json, complete_answer
from r1edge.cache.replay import StreamAssembler, replay_sse
from r1edge.protocol.sse import parse_events as sse_events
from r1edge.protocol.validation import validate_chat_request
from r1edge.routing.config import Cache

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]
BASE = {"model": "auto", "messages": MESSAGES, "temperature": 0, "max_tokens": 64}


def key(body=None, tenant="t1", model="auto", tier="edge", upstream=("edge",)):
    return cache_key(tenant, model, tier, list(upstream), body if body is not None else BASE)


def request(**fields):
    return validate_chat_request({"messages": MESSAGES, **fields})


def test_key_is_sha256_hex():
    k = key()
    assert len(k) == 64
    assert int(k, 16) >= 0


def test_key_ignores_key_order_and_json_whitespace():
    text = '{ "max_tokens" : 64,\n "temperature": 0, "messages": [ {"content": "What is the capital of France?",'
    text += ' "role": "user"} ], "model": "auto" }'
    assert key(json.loads(text)) == key()


def test_key_treats_integral_floats_and_nulls_as_the_same_value():
    assert key({**BASE, "temperature": 0.0}) == key()
    assert key({**BASE, "top_p": None}) == key()


def test_stream_and_stream_options_are_not_in_the_key():
    assert key({**BASE, "stream": True, "stream_options": {"include_usage": True}}) == key()


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": 65},
        {"temperature": 0.5},
        {"top_p": 0.9},
        {"stop": ["\n"]},
        {"seed": 1},
        {"n": 2},
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "none"},
        {"response_format": {"type": "json_object"}},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"logit_bias": {"50256": -100}},
        {"reasoning_effort": "high"},
        {"max_completion_tokens": 64},
        {"messages": [{"role": "user", "content": "What is the capital of France? "}]},
        {"messages": [{"role": "system", "content": "Be brief."}, *MESSAGES]},
    ],
)
def test_each_output_changing_parameter_splits_entries(change):
    assert key({**BASE, **change}) != key()


def test_missing_temperature_is_not_zero():
    without = {k: v for k, v in BASE.items() if k != "temperature"}
    assert key(without) != key()


@pytest.mark.parametrize(
    "other",
    [
        {"tenant": "t2"},
        {"model": "edge"},
        {"tier": "cluster"},
        {"upstream": ("deepseek-ai/DeepSeek-R1",)},
    ],
)
def test_tenant_model_tier_and_upstream_model_split_entries(other):
    assert key(**other) != key()


def test_upstream_model_order_does_not_matter():
    assert key(upstream=("a", "b", "a")) == key(upstream=("b", "a"))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-1000, 1000) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@given(st.dictionaries(st.text(max_size=8), json_values, max_size=6))
def test_canonical_json_is_independent_of_key_order_and_formatting(doc):
    reordered = json.loads(json.dumps(dict(reversed(list(doc.items())))))
    pretty = json.loads(json.dumps(doc, indent=3))
    assert canonical_json(reordered) == canonical_json(doc) == canonical_json(pretty)


@given(st.text(min_size=1), st.text(min_size=1))
def test_different_message_texts_never_share_a_key(a, b):
    if a != b:
        assert key({**BASE, "messages": [{"role": "user", "content": a}]}) != key(
            {**BASE, "messages": [{"role": "user", "content": b}]}
        )


def test_cache_control_directives_are_case_insensitive_with_values():
    assert cache_control("No-Cache, max-age=0 ,NO-STORE") == {"no-cache", "max-age", "no-store"}
    assert cache_control(None) == set()


@pytest.mark.parametrize(
    ("fields", "lookup", "store"),
    [
        ({"temperature": 0}, True, True),
        ({"temperature": 0.7, "seed": 3}, True, True),
        ({"temperature": 0.7}, False, False),
        ({}, False, False),  # a missing temperature is the engine's default, not 0
    ],
)
def test_only_deterministic_requests_are_cached_by_default(fields, lookup, store):
    policy = cache_policy(request(**fields), "edge", Cache(), set())
    assert (policy.lookup, policy.store) == (lookup, store)


def test_nondeterministic_switch_is_per_model_and_follows_the_resolved_tier():
    settings = Cache(nondeterministic_models=["deepseek-r1"])
    hot = {"temperature": 0.6}
    assert cache_policy(request(model="deepseek-r1", **hot), "cluster", settings, set()).lookup
    assert cache_policy(request(model="auto", **hot), "cluster", settings, set()).lookup
    assert not cache_policy(request(model="auto", **hot), "edge", settings, set()).lookup
    assert not cache_policy(request(model="edge", **hot), "edge", settings, set()).lookup


def test_no_cache_skips_lookup_no_store_skips_store_and_disabled_does_neither():
    req = request(temperature=0)
    no_cache = cache_policy(req, "edge", Cache(), {"no-cache"})
    assert (no_cache.lookup, no_cache.store) == (False, True)
    no_store = cache_policy(req, "edge", Cache(), {"no-store"})
    assert (no_store.lookup, no_store.store) == (True, False)
    off = cache_policy(req, "edge", Cache(enabled=False), set())
    assert (off.lookup, off.store) == (False, False)


@pytest.mark.parametrize(
    ("reasons", "whole"),
    [
        (["stop"], True),
        (["length"], True),
        (["stop", "length"], True),
        (["tool_calls"], False),
        (["content_filter"], False),
        ([None], False),
        (["stop", None], False),
        ([], False),
    ],
)
def test_only_stop_or_length_answers_are_complete(reasons, whole):
    completion = {"choices": [{"index": i, "message": {}, "finish_reason": r} for i, r in enumerate(reasons)]}
    assert complete_answer(completion) is whole


def stream_chunks():
    usage = {"prompt_tokens": 7, "completion_tokens": 4, "total_tokens": 11}
    return [
        {**chunk(), "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]},
        chunk(reasoning_content="Paris is "),
        chunk(reasoning_content="the capital."),
        chunk("The capital "),
        chunk("is Paris."),
        chunk(finish_reason="stop"),
        {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": [], "usage": usage},
    ]


def test_stream_assembles_into_a_completion_with_reasoning_and_usage():
    assembler = StreamAssembler()
    for c in stream_chunks():
        assembler.feed(c)
    completion = assembler.result()
    assert completion["object"] == "chat.completion"
    assert completion["id"] == "c1"
    [choice] = completion["choices"]
    assert choice["message"] == {
        "role": "assistant",
        "content": "The capital is Paris.",
        "reasoning_content": "Paris is the capital.",
    }
    assert choice["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] == 11


def test_stream_tool_calls_are_merged_by_index():
    assembler = StreamAssembler()
    call = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a"'}}
    more = {"index": 0, "function": {"arguments": ": 1}"}}
    for delta in ({"role": "assistant", "tool_calls": [call]}, {"tool_calls": [more]}):
        assembler.feed({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    assembler.feed(chunk(finish_reason="tool_calls"))
    [tool] = assembler.result()["choices"][0]["message"]["tool_calls"]
    assert tool == {"id": "call_1", "type": "function", "function": {"name": "get", "arguments": '{"a": 1}'}}


def test_an_error_event_spoils_the_assembly():
    assembler = StreamAssembler()
    assembler.feed(chunk("partial"))
    assembler.feed({"error": {"message": "cut", "code": "upstream_stream_truncated"}})
    assert assembler.result() is None


def replayed(completion, include_usage):
    async def collect():
        return b"".join([b async for b in replay_sse(completion, include_usage)])

    return asyncio.run(collect())


def test_sse_replay_round_trips_content_reasoning_finish_and_usage():
    assembler = StreamAssembler()
    for c in stream_chunks():
        assembler.feed(c)
    completion = assembler.result()
    data = replayed(completion, include_usage=True)
    assert data.endswith(b"data: [DONE]\n\n")
    events = sse_events(data)
    assert events[-1] == "[DONE]"
    again = StreamAssembler()
    for event in events[:-1]:
        assert event["object"] == "chat.completion.chunk"
        again.feed(event)
    assert again.result() == completion


def test_sse_replay_sends_usage_only_when_asked():
    completion = {
        "id": "x",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    without = [e for e in sse_events(replayed(completion, False)) if isinstance(e, dict)]
    assert not any("usage" in e for e in without)
    assert [e["choices"][0]["finish_reason"] for e in without][-1] == "length"
    with_usage = [e for e in sse_events(replayed(completion, True)) if isinstance(e, dict)]
    assert with_usage[-1] == {
        "id": "x",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [],
        "usage": completion["usage"],
    }
