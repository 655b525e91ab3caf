"""``POST /v1/responses`` (OpenAI Responses API) through the router, driven by the official
``openai`` SDK over Starlette's TestClient against a FakeUpstream: plain and streamed answers,
a function tool round trip, R1's reasoning as a reasoning summary, ``max_output_tokens`` →
incomplete, refused input (400 naming the field, no upstream call), a cut stream →
``response.failed``, and usage metered from the Responses shapes."""

from __future__ import annotations

import json

import httpx
import openai
import pytest
from fakes import (
    FakeUpstream,
    add_key,
    chunk,
    completion,
    config,
    endpoint,
    json_reply,
    memory_guard,
    sse,
    sse_reply,
)
from starlette.testclient import TestClient

from r1edge.access.usage import Usage, usage_of
from r1edge.apps.router import create_app

STOP = chunk(finish_reason="stop")
USAGE_CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


OPEN: list[TestClient] = []


def make(fake: FakeUpstream, guard=None) -> tuple[openai.OpenAI, TestClient]:
    """The router on ``fake`` (an edge and a cluster endpoint, one attempt each), started (its
    lifespan entered; closed after the test), and an SDK client on it."""
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), retry={"max_attempts": 1})
    app = create_app(cfg, fake.upstream(), guard=guard)
    http = TestClient(app, raise_server_exceptions=False).__enter__()
    OPEN.append(http)
    return openai.OpenAI(base_url="http://testserver/v1", api_key="x", http_client=http, max_retries=0), http


@pytest.fixture(autouse=True)
def _close_apps():
    yield
    while OPEN:
        OPEN.pop().__exit__(None, None, None)


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream({"edge-a": [json_reply(completion("hello"))], "r1-a": [json_reply(completion("deep"))]})


def tool_call_completion(name: str, arguments: str, call_id: str = "call_1") -> dict:
    body = completion(
        None, tool_calls=[{"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}]
    )
    body["choices"][0]["finish_reason"] = "tool_calls"
    return body


WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


def test_plain_request_gets_a_response_with_output_text_and_headers(fake):
    client, _ = make(fake)
    raw = client.responses.with_raw_response.create(
        model="edge", input="hi", instructions="Be brief.", max_output_tokens=50, temperature=0.2, metadata={"a": "b"}
    )
    response = raw.parse()
    assert response.output_text == "hello"
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.model == "edge"
    message = response.output[0]
    assert message.type == "message"
    assert message.id.startswith("msg_")
    assert message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert message.content[0].annotations == []
    assert response.usage.input_tokens == 5
    assert response.usage.output_tokens == 1
    assert response.usage.total_tokens == 6
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert raw.headers["x-r1edge-route"] == "edge"
    assert raw.headers["x-r1edge-upstream"] == "edge-a"
    sent = fake.bodies()[0]
    assert sent["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert sent["max_tokens"] == 50
    assert sent["temperature"] == 0.2
    assert "metadata" not in sent
    assert "instructions" not in sent


def test_input_items_with_parts_and_roles_become_chat_messages(fake):
    client, _ = make(fake)
    client.responses.create(
        model="edge",
        input=[
            {"role": "developer", "content": "dev says"},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
            },
            {"role": "assistant", "content": [{"type": "output_text", "text": "earlier"}]},
            {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "old thoughts"}]},
            {"role": "user", "content": "again"},
        ],
    )
    assert fake.bodies()[0]["messages"] == [
        {"role": "developer", "content": "dev says"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "earlier"},
        {"role": "user", "content": "again"},
    ]


def test_stream_events_in_order_deltas_join_and_completed_last():
    body = sse(chunk("Hel"), chunk("lo"), chunk(" world"), STOP, USAGE_CHUNK)
    fake = FakeUpstream({"edge-a": [sse_reply(body)]})
    client, _ = make(fake)
    events = list(client.responses.create(model="edge", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == "Hello world"
    final = events[-1].response
    assert final.status == "completed"
    assert final.output_text == "Hello world"
    assert final.usage.input_tokens == 7
    assert final.usage.output_tokens == 3
    assert fake.bodies()[0]["stream_options"] == {"include_usage": True}


def test_stream_helper_of_the_sdk_accumulates_the_same_response():
    body = sse(
        chunk(reasoning_content="think "),
        chunk(reasoning_content="hard"),
        chunk("ans"),
        chunk("wer"),
        STOP,
        USAGE_CHUNK,
    )
    fake = FakeUpstream({"r1-a": [sse_reply(body)]})
    client, _ = make(fake)
    with client.responses.stream(model="auto", input="hi", reasoning={"effort": "high"}) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert final.output_text == "answer"
    assert final.output[0].type == "reasoning"
    assert final.output[0].summary[0].text == "think hard"
    assert kinds[:6] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
    ]
    assert kinds[6:9] == [
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
    ]
    assert fake.calls[0].url.host == "r1-a"  # reasoning → the cluster


def test_reasoning_content_becomes_a_reasoning_summary_and_routes_to_the_cluster(fake):
    fake.script["r1-a"] = [json_reply(completion("42", reasoning_content="Let me think."))]
    client, _ = make(fake)
    raw = client.responses.with_raw_response.create(model="auto", input="6*7?", reasoning={"effort": "medium"})
    response = raw.parse()
    assert raw.headers["x-r1edge-route"] == "cluster"
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.output[0].id.startswith("rs_")
    assert response.output[0].summary[0].type == "summary_text"
    assert response.output[0].summary[0].text == "Let me think."
    assert response.output_text == "42"
    assert fake.bodies()[0]["model"] == "deepseek-r1"


def test_reasoning_keeps_edge_when_the_client_forced_it(fake):
    client, _ = make(fake)
    raw = client.responses.with_raw_response.create(model="edge", input="hi", reasoning={"effort": "high"})
    assert raw.headers["x-r1edge-route"] == "edge"


def test_function_tool_round_trip(fake):
    fake.script["edge-a"] = [
        json_reply(tool_call_completion("get_weather", '{"city":"Paris"}')),
        json_reply(completion("It is sunny in Paris.")),
    ]
    client, _ = make(fake)
    first = client.responses.create(model="edge", input="Weather in Paris?", tools=[WEATHER], tool_choice="auto")
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1
    assert first.output_text == ""
    call = calls[0]
    assert call.call_id == "call_1"
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert call.id.startswith("fc_")
    assert call.status == "completed"
    sent = fake.bodies()[0]
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": WEATHER["parameters"],
                "strict": True,
            },
        }
    ]
    assert sent["tool_choice"] == "auto"

    second = client.responses.create(
        model="edge",
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": '{"sky":"sunny"}'},
        ],
        tools=[WEATHER],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    assert second.output_text == "It is sunny in Paris."
    sent = fake.bodies()[1]
    assert sent["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    }
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": '{"sky":"sunny"}'}
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_streamed_function_call_arguments():
    def tool_chunk(index, arguments, call_id=None, name=None):
        call = {"index": index, "function": {"arguments": arguments}}
        if call_id:
            call.update(id=call_id, type="function")
            call["function"]["name"] = name
        body = chunk()
        body["choices"][0]["delta"] = {"tool_calls": [call]}
        return body

    body = sse(
        tool_chunk(0, "", "call_a", "get_weather"),
        tool_chunk(0, '{"city":'),
        tool_chunk(0, '"Oslo"}'),
        chunk(finish_reason="tool_calls"),
    )
    fake = FakeUpstream({"edge-a": [sse_reply(body)]})
    client, _ = make(fake)
    with client.responses.stream(model="edge", input="weather?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == '{"city":"Oslo"}'
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert done[0].arguments == '{"city":"Oslo"}'
    assert final.output[0].type == "function_call"
    assert final.output[0].call_id == "call_a"
    assert final.output[0].arguments == '{"city":"Oslo"}'


def test_max_output_tokens_reached_is_incomplete(fake):
    cut = completion("partial")
    cut["choices"][0]["finish_reason"] = "length"
    fake.script["edge-a"] = [json_reply(cut)]
    client, _ = make(fake)
    response = client.responses.create(model="edge", input="long story", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "partial"
    assert fake.bodies()[0]["max_tokens"] == 3


def test_streamed_max_output_tokens_ends_with_response_incomplete():
    fake = FakeUpstream({"edge-a": [sse_reply(sse(chunk("par"), chunk("tial", finish_reason="length")))]})
    client, _ = make(fake)
    events = list(client.responses.create(model="edge", input="x", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert "response.completed" not in [e.type for e in events]


def test_json_schema_text_format_becomes_response_format(fake):
    fake.script["edge-a"] = [json_reply(completion('{"n": 1}'))]
    client, _ = make(fake)
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    client.responses.create(
        model="edge",
        input="n?",
        text={"format": {"type": "json_schema", "name": "num", "schema": schema, "strict": True}},
    )
    assert fake.bodies()[0]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "num", "schema": schema, "strict": True},
    }


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [WEATHER, {"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[1].type"),
        ({"store": True}, "store"),
        ({"previous_response_id": "resp_123"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"store": "yes"}, "store"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": []}, "input"),
        ({"max_output_tokens": 0}, "max_output_tokens"),
        ({"text": {"format": {"type": "xml"}}}, "text.format.type"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"model": "gpt-4o"}, "model"),
        ({"temperature": 3}, "temperature"),
    ],
)
def test_refused_input_is_a_400_naming_the_field_and_reaches_no_upstream(fake, extra, param):
    client, _ = make(fake)
    with pytest.raises(openai.APIStatusError) as info:
        client.responses.create(**{"model": "edge", "input": "hi", **extra})
    error = info.value
    assert 400 <= error.status_code < 500
    assert error.body["param"] == param or (param == "model" and error.status_code == 404)
    assert error.body["type"] == "invalid_request_error"
    assert fake.calls == []


def test_missing_input_and_non_object_body_are_400(fake):
    _, http = make(fake)
    assert http.post("/v1/responses", json={"model": "edge"}).json()["error"]["param"] == "input"
    assert http.post("/v1/responses", json=[1, 2]).status_code == 400
    assert http.post("/v1/responses", content=b"{nope").json()["error"]["code"] == "invalid_json"
    assert fake.calls == []


def test_cut_stream_becomes_response_failed_never_completed():
    body = sse(chunk("Hel"), chunk("lo"), done=False)
    fake = FakeUpstream({"edge-a": [lambda request: sse_reply([body], httpx.RemoteProtocolError("peer closed"))]})
    client, _ = make(fake)
    events = list(client.responses.create(model="edge", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "response.failed"
    assert "response.completed" not in kinds
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error.code == "server_error"
    assert "upstream_stream_truncated" in failed.error.message
    assert failed.output[0].content[0].text == "Hello"
    assert failed.output[0].status == "incomplete"
    # the SDK's stream helper refuses a failed stream as an answer
    fake.script["edge-a"] = [lambda request: sse_reply([body], httpx.RemoteProtocolError("peer closed"))]
    with (
        client.responses.stream(model="edge", input="hi") as stream,
        pytest.raises(RuntimeError, match=r"response\.completed"),
    ):
        stream.get_final_response()


def test_usage_is_metered_from_the_responses_shapes():
    assert usage_of({"usage": {"input_tokens": 4, "output_tokens": 2}}) == Usage(4, 2)
    assert usage_of(
        {"type": "response.completed", "response": {"usage": {"input_tokens": 4, "output_tokens": 2}}}
    ) == Usage(4, 2)
    assert usage_of({"type": "response.output_text.delta", "delta": "x"}) is None
    guard = memory_guard()
    key = add_key(guard, tenant="acme")
    fake = FakeUpstream({"edge-a": [json_reply(completion("hi")), sse_reply(sse(chunk("ok"), STOP, USAGE_CHUNK))]})
    client, _ = make(fake, guard)
    client.api_key = key
    client.responses.create(model="edge", input="hi")
    list(client.responses.create(model="edge", input="hi", stream=True))
    (row,) = guard.usage.store.items.values()
    assert row == [2, 5 + 7, 1 + 3]
