"""The Anthropic Messages API (``POST /v1/messages``, ``/v1/messages/count_tokens``) driven by the
official ``anthropic`` SDK against the router in-process and a scripted upstream: plain and
streamed answers, ``messages.stream``, a tool_use/tool_result round trip, thinking from
``reasoning_content``, aliased model names, errors in Anthropic's shape (400, 401, 404, 529), a cut
stream, usage metering, and what goes upstream."""

from __future__ import annotations

import json

import anthropic
import httpx2
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

from r1edge.apps.router import create_app
from r1edge.protocol.errors import ConfigError

ROUTES = {"edge-a": "edge", "r1-a": "cluster"}


def bridge(client: TestClient) -> httpx2.Client:
    """An ``httpx2.Client`` (the SDK's HTTP client type) whose requests go to the app through
    Starlette's TestClient: no sockets."""

    def handler(request: httpx2.Request) -> httpx2.Response:
        reply = client.request(
            request.method, str(request.url), headers=list(request.headers.multi_items()), content=request.read()
        )
        headers = [(k, v) for k, v in reply.headers.multi_items() if k.lower() != "content-encoding"]
        return httpx2.Response(reply.status_code, headers=headers, content=reply.content)

    return httpx2.Client(transport=httpx2.MockTransport(handler), base_url="http://testserver")


def sdk(client: TestClient, key: str = "x") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url="http://testserver", api_key=key, http_client=bridge(client), max_retries=0)


def make_client(fake: FakeUpstream, guard=None, **extra) -> TestClient:
    cfg = config(
        endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), aliases={"claude-sonnet-4-5": "auto"}, **extra
    )
    return TestClient(create_app(cfg, fake.upstream(), guard=guard), raise_server_exceptions=False)


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream({"edge-a": [json_reply(completion("hello"))], "r1-a": [json_reply(completion("deep"))]})


@pytest.fixture
def client(fake):
    with make_client(fake) as c:
        yield c


HI = [{"role": "user", "content": "hi"}]


def test_plain_message(client, fake):
    message = sdk(client).messages.create(
        model="edge", max_tokens=50, messages=HI, system="be brief", extra_body={"temperature": 0.5}
    )
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.model == "edge"
    assert message.id.startswith("msg_")
    assert [b.type for b in message.content] == ["text"]
    assert message.content[0].text == "hello"
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 1)
    sent = fake.bodies()[0]
    assert sent["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    assert sent["max_tokens"] == 50
    assert sent["temperature"] == 0.5


def test_route_headers_passed(client):
    raw = sdk(client).messages.with_raw_response.create(model="edge", max_tokens=10, messages=HI)
    assert raw.headers["x-r1edge-route"] == "edge"
    assert raw.headers["x-r1edge-upstream"] == "edge-a"


def test_alias_routes_by_rule(client, fake):
    message = sdk(client).messages.create(model="claude-sonnet-4-5", max_tokens=10, messages=HI)
    assert message.model == "claude-sonnet-4-5"  # as the client asked
    assert fake.bodies()[0]["messages"][-1]["content"] == "hi"


def test_thinking_routes_to_cluster_and_returns_thinking_block(fake):
    fake.script["r1-a"] = [json_reply(completion("42", reasoning_content="let me think"))]
    with make_client(fake) as c:
        message = sdk(c).messages.create(
            model="claude-sonnet-4-5",
            max_tokens=2000,
            thinking={"type": "enabled", "budget_tokens": 1024},
            messages=HI,
        )
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "let me think"
    assert message.content[0].signature == ""
    assert fake.calls[0].url.host == "r1-a"


def test_no_thinking_block_unless_asked(fake):
    fake.script["edge-a"] = [json_reply(completion("42", reasoning_content="hmm"))]
    with make_client(fake) as c:
        message = sdk(c).messages.create(model="edge", max_tokens=20, messages=HI)
    assert [b.type for b in message.content] == ["text"]


def test_thinking_with_forced_edge_stays_on_edge(fake):
    with make_client(fake) as c:
        sdk(c).messages.create(
            model="edge", max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 1024}, messages=HI
        )
    assert fake.calls[0].url.host == "edge-a"


TOOLS = [
    {
        "name": "get_weather",
        "description": "Weather of a city",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def tool_call_completion() -> dict:
    reply = completion(
        None,
        tool_calls=[
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    )
    reply["choices"][0]["finish_reason"] = "tool_calls"
    return reply


def test_tool_use_round_trip(fake):
    fake.script["edge-a"] = [json_reply(tool_call_completion()), json_reply(completion("Sunny in Paris"))]
    with make_client(fake) as c:
        client = sdk(c)
        first = client.messages.create(
            model="edge", max_tokens=100, tools=TOOLS, tool_choice={"type": "any"}, messages=[HI[0]]
        )
        assert first.stop_reason == "tool_use"
        use = first.content[0]
        assert (use.type, use.id, use.name, use.input) == ("tool_use", "call_1", "get_weather", {"city": "Paris"})
        second = client.messages.create(
            model="edge",
            max_tokens=100,
            tools=TOOLS,
            messages=[
                HI[0],
                {"role": "assistant", "content": first.content},
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": use.id, "content": "sunny"},
                        {"type": "text", "text": "and?"},
                    ],
                },
            ],
        )
    assert second.content[0].text == "Sunny in Paris"
    one, two = fake.bodies()
    assert one["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": TOOLS[0]["input_schema"],
            },
        }
    ]
    assert one["tool_choice"] == "required"
    assert two["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ],
    }
    assert two["messages"][2] == {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    assert two["messages"][3] == {"role": "user", "content": "and?"}


def test_streamed_create_events(fake):
    fake.script["edge-a"] = [
        sse_reply(
            sse(
                chunk("Hel"),
                chunk("lo"),
                chunk(finish_reason="stop"),
                {"id": "c1", "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}},
            )
        )
    ]
    with make_client(fake) as c:
        events = list(sdk(c).messages.create(model="edge", max_tokens=20, messages=HI, stream=True))
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    ]
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "Hello"
    assert events[-2].delta.stop_reason == "end_turn"
    assert events[-2].usage.output_tokens == 2
    assert fake.bodies()[0]["stream_options"] == {"include_usage": True}


def test_messages_stream_with_thinking_and_tools(fake):
    tool_chunk = chunk()
    tool_chunk["choices"][0]["delta"]["tool_calls"] = [
        {"index": 0, "id": "call_9", "type": "function", "function": {"name": "get_weather", "arguments": '{"ci'}}
    ]
    more = chunk()
    more["choices"][0]["delta"]["tool_calls"] = [{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]
    fake.script["r1-a"] = [
        sse_reply(
            sse(
                chunk(reasoning_content="think "),
                chunk(reasoning_content="hard"),
                chunk("Let me check."),
                tool_chunk,
                more,
                chunk(finish_reason="tool_calls"),
                {"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 12}},
            )
        )
    ]
    with (
        make_client(fake) as c,
        sdk(c).messages.stream(
            model="auto",
            max_tokens=4000,
            thinking={"type": "enabled", "budget_tokens": 2000},
            tools=TOOLS,
            messages=HI,
        ) as stream,
    ):
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "Let me check."
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == "think hard"
    assert final.content[2].input == {"city": "Oslo"}
    assert final.content[2].id == "call_9"
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (9, 12)
    assert fake.calls[0].url.host == "r1-a"


def test_stop_sequence_reported_when_engine_names_it(fake):
    reply = completion("abc")
    reply["choices"][0]["stop_reason"] = "END"  # vLLM's matched stop string
    fake.script["edge-a"] = [json_reply(reply)]
    with make_client(fake) as c:
        message = sdk(c).messages.create(model="edge", max_tokens=10, messages=HI, stop_sequences=["END"])
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "END")
    assert fake.bodies()[0]["stop"] == ["END"]


def test_length_is_max_tokens(fake):
    reply = completion("abc")
    reply["choices"][0]["finish_reason"] = "length"
    fake.script["edge-a"] = [json_reply(reply)]
    with make_client(fake) as c:
        assert sdk(c).messages.create(model="edge", max_tokens=3, messages=HI).stop_reason == "max_tokens"


def test_cut_stream_raises_in_sdk(fake):
    fake.script["edge-a"] = [sse_reply(sse(chunk("partial"), done=False))]
    with make_client(fake) as c:
        raw = c.post("/v1/messages", json={"model": "edge", "max_tokens": 10, "messages": HI, "stream": True}).text
        assert "event: error" in raw
        assert "message_stop" not in raw
        with pytest.raises(anthropic.APIStatusError):
            list(sdk(c).messages.create(model="edge", max_tokens=10, messages=HI, stream=True))


def test_missing_max_tokens_is_400(client, fake):
    reply = client.post("/v1/messages", json={"model": "edge", "messages": HI})
    assert reply.status_code == 400
    assert reply.json() == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required."},
    }
    assert not fake.calls


def test_unknown_model_is_404_not_found(client, fake):
    with pytest.raises(anthropic.NotFoundError) as caught:
        sdk(client).messages.create(model="claude-opus-9", max_tokens=10, messages=HI)
    assert caught.value.body["error"]["type"] == "not_found_error"
    assert "claude-opus-9" in caught.value.body["error"]["message"]
    assert not fake.calls


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (
            [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AA=="}}],
            "messages.0.content.0.type",
        ),
        (
            [{"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}],
            "messages.0.content.0.type",
        ),
    ],
)
def test_unsupported_blocks_are_400(client, fake, content, field):
    with pytest.raises(anthropic.BadRequestError) as caught:
        sdk(client).messages.create(model="edge", max_tokens=10, messages=[{"role": "user", "content": content}])
    assert caught.value.body["error"]["message"].startswith(field)
    assert not fake.calls


def test_server_tool_is_400(client, fake):
    reply = client.post(
        "/v1/messages",
        json={
            "model": "edge",
            "max_tokens": 10,
            "messages": HI,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
        },
    )
    assert reply.status_code == 400
    assert reply.json()["error"]["message"].startswith("tools.0.type")
    assert not fake.calls


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1.5}, "temperature"),
        ({"stop_sequences": "x"}, "stop_sequences"),
        ({"thinking": {"type": "enabled", "budget_tokens": 10}}, "thinking.budget_tokens"),
        ({"tool_choice": {"type": "sometimes"}}, "tool_choice.type"),
        ({"messages": [{"role": "system", "content": "x"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({"system": [{"type": "image"}]}, "system.0.type"),
    ],
)
def test_bad_fields_are_400_naming_the_field(client, fake, extra, field):
    body = {"model": "edge", "max_tokens": 10, "messages": HI, **extra}
    reply = client.post("/v1/messages", json=body)
    assert reply.status_code == 400, reply.text
    assert reply.json()["type"] == "error"
    assert reply.json()["error"]["message"].startswith(field)
    assert not fake.calls


def test_bad_json_and_wrong_method(client):
    reply = client.post("/v1/messages", content=b"{nope")
    assert reply.status_code == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"
    reply = client.get("/v1/messages")
    assert reply.status_code == 405
    assert reply.headers["allow"] == "POST"
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_upstream_503_is_529_overloaded(fake):
    fake.script["edge-a"] = [json_reply({"error": {"message": "busy"}}, status=503, headers={"Retry-After": "2"})]
    with make_client(fake, retry={"max_attempts": 1}) as c, pytest.raises(anthropic.OverloadedError) as caught:
        sdk(c).messages.create(model="edge", max_tokens=10, messages=HI)
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert caught.value.response.headers["retry-after"]


def test_count_tokens(client, fake):
    counted = sdk(client).messages.count_tokens(model="claude-sonnet-4-5", system="s", messages=HI)
    assert counted.input_tokens == 10  # two messages: 1 token of text + 4 of overhead each
    assert not fake.calls
    reply = client.post("/v1/messages/count_tokens", json={"model": "nope", "messages": HI})
    assert reply.status_code == 404
    assert reply.json()["error"]["type"] == "not_found_error"


def test_api_keys_and_usage():
    guard = memory_guard()
    key = add_key(guard)
    fake = FakeUpstream({"edge-a": [json_reply(completion("hello"))]})
    with make_client(fake, guard=guard) as c:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            sdk(c, key="wrong").messages.create(model="edge", max_tokens=10, messages=HI)
        assert caught.value.body["error"]["type"] == "authentication_error"
        message = sdk(c, key=key).messages.create(model="edge", max_tokens=10, messages=HI)  # x-api-key
        assert message.content[0].text == "hello"
        fake.script["edge-a"] = [
            sse_reply(
                sse(
                    chunk("ok", finish_reason="stop"),
                    {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}},
                )
            )
        ]
        list(sdk(c, key=key).messages.create(model="edge", max_tokens=10, messages=HI, stream=True))
    rows = guard.usage.store.items
    assert list(rows.values()) == [[2, 5 + 3, 1 + 4]]


def test_alias_targets_must_be_public():
    with pytest.raises(ConfigError, match="aliases"):
        config(endpoint("edge-a", "edge"), aliases={"claude": "gpt-4"})
    with pytest.raises(ConfigError, match="aliases"):
        config(endpoint("edge-a", "edge"), aliases={"edge": "auto"})


def test_raw_stream_shape(fake):
    fake.script["edge-a"] = [sse_reply([b": keep-alive\n\n", sse(chunk("hi", finish_reason="stop"))])]
    with make_client(fake) as c:
        raw = c.post("/v1/messages", json={"model": "edge", "max_tokens": 10, "messages": HI, "stream": True})
    names = [line[len("event: ") :] for line in raw.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "message_start"
    assert names[-2:] == ["message_delta", "message_stop"]
    datas = [json.loads(line[6:]) for line in raw.text.splitlines() if line.startswith("data: ")]
    assert all(d["type"] == n for d, n in zip(datas, names, strict=True))
    assert raw.headers["x-r1edge-route"] == "edge"
