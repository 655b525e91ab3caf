"""``POST /v1/completions`` (served through the chat pipeline) and ``POST /v1/embeddings``
(forwarded to the edge tier) on the router, driven by the official OpenAI SDK against a
FakeUpstream."""

from __future__ import annotations

import json
import uuid

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

from r1edge.apps.router import create_app
from r1edge.protocol.embeddings import encode_base64

SIZE = 4


def router(fake: FakeUpstream, *endpoints, **kwargs) -> TestClient:
    cfg = config(*(endpoints or (endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"))))
    return TestClient(create_app(cfg, fake.upstream(), **kwargs), raise_server_exceptions=False)


def sdk(http: TestClient, key: str = "x") -> openai.OpenAI:
    return openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http, max_retries=0)


def embedding_reply(request: httpx.Request) -> httpx.Response:
    """The edge server's answer: one vector [i, i+1, ...] per input, as asked to encode it."""
    assert request.url.path.endswith("/embeddings")
    body = json.loads(request.content)
    data = []
    for i, _ in enumerate(body["input"]):
        vector = [float(i + j) for j in range(SIZE)]
        encoded = encode_base64(vector) if body.get("encoding_format") == "base64" else vector
        data.append({"object": "embedding", "index": i, "embedding": encoded})
    usage = {"prompt_tokens": 3 * len(body["input"]), "total_tokens": 3 * len(body["input"])}
    return httpx.Response(200, json={"object": "list", "data": data, "model": "smol", "usage": usage})


# ---- completions -----------------------------------------------------------------------------


def test_a_completion_is_a_chat_request_with_one_user_message_answered_as_text_completion():
    fake = FakeUpstream({"edge-a": [json_reply(completion("Hello there"))]})
    with router(fake) as http:
        raw = sdk(http).completions.with_raw_response.create(
            model="edge", prompt="Say hi", temperature=0.2, stop=["\n"]
        )
        answer = raw.parse()
    assert raw.headers["x-r1edge-route"] == "edge"
    assert raw.headers["x-r1edge-upstream"] == "edge-a"
    assert answer.object == "text_completion"
    assert answer.id == "cmpl-c1"
    [choice] = answer.choices
    assert (choice.text, choice.index, choice.finish_reason, choice.logprobs) == ("Hello there", 0, "stop", None)
    assert answer.usage.prompt_tokens == 5
    assert answer.usage.completion_tokens == 1
    [sent] = fake.bodies()
    assert sent["messages"] == [{"role": "user", "content": "Say hi"}]
    assert sent["max_tokens"] == 16  # the API reference's default
    assert (sent["temperature"], sent["stop"]) == (0.2, ["\n"])


def test_a_prompt_array_of_one_string_and_max_tokens_pass_and_reasoning_is_left_out():
    answer = completion("42", reasoning_content="let me think")
    answer["choices"][0]["finish_reason"] = "length"
    fake = FakeUpstream({"r1-a": [json_reply(answer)]})
    with router(fake) as http:
        out = sdk(http).completions.create(model="deepseek-r1", prompt=["What is 6*7?"], max_tokens=100, n=1)
    assert out.choices[0].text == "42"
    assert out.choices[0].finish_reason == "length"
    assert fake.bodies()[0]["max_tokens"] == 100


def test_a_streamed_completion_is_text_completion_chunks_then_done():
    body = sse(
        chunk(reasoning_content="hmm"),
        chunk("Hel"),
        chunk("lo"),
        chunk(finish_reason="stop"),
        {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "m",
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        },
    )
    fake = FakeUpstream({"edge-a": [sse_reply(body)]})
    with router(fake) as http:
        stream = sdk(http).completions.create(
            model="edge", prompt="hi", stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    assert all(c.object == "text_completion" for c in chunks)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Hello"
    assert [c.choices[0].finish_reason for c in chunks if c.choices] == [None, None, "stop"]
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 2
    assert fake.bodies()[0]["stream_options"] == {"include_usage": True}


def test_a_streamed_completion_ends_in_done_on_the_wire():
    fake = FakeUpstream({"edge-a": [sse_reply(sse(chunk("ok", finish_reason="stop")))]})
    with router(fake) as http:
        response = http.post("/v1/completions", json={"model": "edge", "prompt": "hi", "stream": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = response.text.strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["text"] == "ok"


def test_a_cut_chat_stream_becomes_an_error_event_without_done():
    cut = sse_reply([sse(chunk("Hel"), done=False)], error=httpx.ReadError("connection reset"))
    fake = FakeUpstream({"edge-a": [cut]})
    with router(fake) as http:
        response = http.post("/v1/completions", json={"model": "edge", "prompt": "hi", "stream": True})
        assert "[DONE]" not in response.text
        events = [json.loads(e.removeprefix("data: ")) for e in response.text.strip().split("\n\n")]
        assert events[0]["choices"][0]["text"] == "Hel"
        assert events[-1]["error"]["code"] == "upstream_stream_truncated"
        fake.script["edge-a"] = [sse_reply([sse(chunk("Hel"), done=False)], error=httpx.ReadError("reset"))]
        with pytest.raises(openai.APIError):
            list(sdk(http).completions.create(model="edge", prompt="hi", stream=True))


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "edge"}, "prompt"),
        ({"prompt": ["one", "two"]}, "prompt"),
        ({"prompt": [1, 2, 3]}, "prompt"),
        ({"prompt": [[1, 2]]}, "prompt"),
        ({"prompt": "hi", "suffix": "end"}, "suffix"),
        ({"prompt": "hi", "echo": True}, "echo"),
        ({"prompt": "hi", "logprobs": 1}, "logprobs"),
        ({"prompt": "hi", "logprobs": 0}, "logprobs"),
        ({"prompt": "hi", "best_of": 3}, "best_of"),
        ({"prompt": "hi", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "hi", "temperature": 3}, "temperature"),
        ({"prompt": "hi", "stream": "yes"}, "stream"),
        ({"prompt": "hi", "stop": [1]}, "stop"),
        ({"prompt": None}, "prompt"),
    ],
)
def test_bad_completions_input_is_a_400_naming_the_field_and_reaches_no_upstream(body, param):
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    with router(fake) as http:
        response = http.post("/v1/completions", json={"model": "edge", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)
    assert fake.calls == []


def test_bad_input_through_the_sdk_and_an_unknown_model():
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    with router(fake) as http:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk(http).completions.create(model="edge", prompt="hi", suffix="x")
        assert "fill-in-the-middle" in refused.value.message
        with pytest.raises(openai.NotFoundError):
            sdk(http).completions.create(model="gpt-3.5-turbo-instruct", prompt="hi")
        assert http.post("/v1/completions", content=b"{nope").status_code == 400
        assert http.post("/v1/completions", json=[1]).status_code == 400
    assert fake.calls == []


def test_completion_usage_is_recorded_from_the_stream_text_when_no_usage_comes():
    guard = memory_guard(lambda: 1767000000.0)
    fake = FakeUpstream({"edge-a": [sse_reply(sse(chunk("abcdefgh", finish_reason="stop")))]})
    with router(fake, endpoint("edge-a", "edge"), guard=guard) as http:
        key = add_key(guard, tenant="acme")
        response = http.post(
            "/v1/completions",
            json={"model": "edge", "prompt": "hi", "stream": True},
            headers={"authorization": f"Bearer {key}"},
        )
    assert response.status_code == 200
    [(period, row)] = guard.usage.store.items.items()
    assert period[1].endswith("#edge")
    assert row[0] == 1
    assert row[2] == 2


# ---- embeddings ------------------------------------------------------------------------------


def test_embeddings_go_to_the_edge_and_come_back_through_the_sdk():
    fake = FakeUpstream({"edge-a": [embedding_reply]})
    with router(fake) as http:
        client = sdk(http)
        raw = client.embeddings.with_raw_response.create(model="edge", input=["a", "b"])  # SDK default: base64
        answer = raw.parse()
        floats = client.embeddings.create(model="edge", input="a", encoding_format="float")
    assert raw.headers["x-r1edge-route"] == "edge"
    assert raw.headers["x-r1edge-upstream"] == "edge-a"
    assert [d.embedding for d in answer.data] == [[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]]
    assert answer.usage.prompt_tokens == 6
    assert floats.data[0].embedding == [0.0, 1.0, 2.0, 3.0]
    first, second = fake.bodies()
    assert fake.calls[0].url == "http://edge-a/v1/embeddings"
    assert first == {"input": ["a", "b"], "model": "edge", "encoding_format": "base64"}
    assert second["input"] == ["a"]
    assert second["encoding_format"] == "float"


def test_embeddings_send_a_uuid_request_id_upstream_whatever_the_clients_id():
    # A client's x-request-id that is not ASCII cannot go into an upstream header as it is (httpx
    # raised UnicodeEncodeError: a 502): the edge gets the UUID that chat upstreams get.
    import asyncio

    from asgi_correlation_id import correlation_id

    from r1edge.dialects.legacy import _post_embeddings

    fake = FakeUpstream({"edge-a": [embedding_reply]})

    async def post() -> int:
        correlation_id.set("id-\u00e9\u00e8")
        status, _ = await _post_embeddings(fake.upstream(), endpoint_of("edge-a"), {"input": ["a"]})
        return status

    assert asyncio.run(post()) == 200
    sent = fake.calls[0].headers["x-request-id"]
    assert str(uuid.UUID(sent)) == sent


def endpoint_of(name: str):
    from r1edge.routing.config import Endpoint

    return Endpoint(**endpoint(name, "edge"))


def test_embeddings_try_the_next_edge_endpoint_and_send_its_auth():
    fake = FakeUpstream({"edge-b": [embedding_reply]})  # nothing listens on edge-a
    edge_b = endpoint("edge-b", "edge", priority=1, auth={"type": "bearer", "env": "EDGE_TOKEN"})
    cfg = config(endpoint("edge-a", "edge"), edge_b)
    app = create_app(cfg, fake.upstream({"EDGE_TOKEN": "s3cret"}))
    with TestClient(app) as http:
        answer = sdk(http).embeddings.with_raw_response.create(model="edge", input="a")
    assert answer.headers["x-r1edge-upstream"] == "edge-b"
    assert [c.url.host for c in fake.calls] == ["edge-a", "edge-b"]
    assert fake.calls[1].headers["authorization"] == "Bearer s3cret"


def test_embeddings_relay_the_edges_400_and_answer_502_when_no_edge_answers():
    refusal = json_reply(
        {
            "error": {
                "message": "'dimensions' must be 4",
                "type": "invalid_request_error",
                "param": "dimensions",
                "code": "unsupported_value",
            }
        },
        status=400,
    )
    fake = FakeUpstream({"edge-a": [refusal]})
    with router(fake) as http:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk(http).embeddings.create(model="edge", input="a", dimensions=3)
        assert refused.value.body["param"] == "dimensions"
        assert len(fake.calls) == 1
        fake.script["edge-a"] = [httpx.Response(503, json={"error": {"message": "busy"}})]
        response = http.post("/v1/embeddings", json={"input": "a"})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": []}, 400, "input"),
        ({"input": ""}, 400, "input"),
        ({"input": ["a", ""]}, 400, "input[1]"),
        ({"input": [1, 2]}, 400, "input"),
        ({"input": [[1, 2]]}, 400, "input"),
        ({"input": {"a": 1}}, 400, "input"),
        ({"input": ["a"] * 2049}, 400, "input"),
        ({}, 400, "input"),
        ({"input": "a", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"input": "a", "dimensions": 0}, 400, "dimensions"),
        ({"input": "a", "dimensions": True}, 400, "dimensions"),
        ({"input": "a", "model": 3}, 400, "model"),
        ({"input": "a", "model": "deepseek-r1"}, 400, "model"),
        ({"input": "a", "model": "text-embedding-3-small"}, 404, "model"),
    ],
)
def test_bad_embeddings_input_is_refused_before_any_upstream_call(body, status, param):
    fake = FakeUpstream({"edge-a": [embedding_reply]})
    with router(fake) as http:
        response = http.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"]["param"] == param
    assert fake.calls == []


def test_embeddings_without_an_edge_tier_are_a_404_and_the_sdk_says_so():
    fake = FakeUpstream({"r1-a": [embedding_reply]})
    with router(fake, endpoint("r1-a", "cluster")) as http, pytest.raises(openai.NotFoundError):
        sdk(http).embeddings.create(model="edge", input="a")
    assert fake.calls == []


def test_embeddings_usage_is_recorded_as_prompt_tokens():
    guard = memory_guard(lambda: 1767000000.0)
    fake = FakeUpstream({"edge-a": [embedding_reply]})
    with router(fake, endpoint("edge-a", "edge"), guard=guard) as http:
        key = add_key(guard, tenant="acme")
        sdk(http, key).embeddings.create(model="edge", input=["a", "b"])
    assert list(guard.usage.store.items.values()) == [[1, 6, 0]]
