"""JSON nested deeper than ``max_json_depth`` (64 by default) is a 400 ``invalid_request_error``
naming the limit, checked before anything recursive touches the value (the cache key's
normalisation, ``json.dumps``, ``copy.deepcopy``); an upstream answer nested that deep is a failed
attempt (fallback, then 502), never a 500 and never relayed."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from fakes import (
    FakeClock,
    FakeUpstream,
    chunk,
    completion,
    config,
    endpoint,
    json_reply,
    sse,
    sse_reply,
)
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.edge import app as edgeapp
from r1edge.protocol.errors import ConfigError, InvalidRequest
from r1edge.protocol.reasoning import ThinkMode
from r1edge.protocol.sse import parse_completion, strict_loads
from r1edge.protocol.validation import parse_json_body
from r1edge.routing.config import parse_config

MSG = [{"role": "user", "content": "hi"}]


def nested(levels: int, kind: str = "object") -> str:
    """JSON text of ``levels`` containers, one inside the other (``{"a":{"a":…0…}}``)."""
    if kind == "object":
        return '{"a":' * levels + "0" + "}" * levels
    return "[" * levels + "]" * levels


def body_with(field_json: str, **fields: Any) -> bytes:
    """A chat request (depth 3 of its own) with ``extra`` set to the given JSON text."""
    head = json.dumps({"model": "deepseek-r1", "messages": MSG, **fields})
    return (head[:-1] + ', "extra": ' + field_json + "}").encode()


def post(client: TestClient, raw: bytes, path: str = "/v1/chat/completions"):
    return client.post(path, content=raw, headers={"content-type": "application/json"})


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream({"r1-a": [json_reply(completion())], "r1-b": [json_reply(completion("from b"))]})


def router(fake: FakeUpstream, **extra: Any) -> TestClient:
    cfg = config(endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1), **extra)
    return TestClient(create_app(cfg, fake.upstream(), **FakeClock().options()), raise_server_exceptions=False)


def assert_too_deep(response, limit: int) -> None:
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("invalid_request_error", "json_too_deep", None)
    assert f"more than {limit} levels" in error["message"]
    assert "max_json_depth" in error["message"]


def test_json_depth_counts_containers_without_recursion():
    from r1edge.protocol.sse import json_depth

    assert json_depth(0) == 0
    assert json_depth("s") == 0
    assert json_depth([]) == 1
    assert json_depth({"a": [1, {"b": []}]}) == 4
    deep: Any = 0
    for _ in range(100_000):  # far past the interpreter's recursion limit
        deep = [deep]
    assert json_depth(deep) == 100_000
    assert json_depth(deep, stop_after=64) == 65  # stops counting once over the limit


def test_an_unknown_field_600_deep_with_temperature_0_is_a_400_not_a_500(fake):
    # Before: 500 — RecursionError in the cache key's normalisation.
    with router(fake) as client:
        response = post(client, body_with(nested(600), temperature=0))
    assert_too_deep(response, 64)
    assert fake.calls == []


@pytest.mark.parametrize("kind", ["object", "array"])
def test_64_levels_pass_and_65_are_refused(fake, kind):
    with router(fake) as client:
        ok = post(client, body_with(nested(63, kind), temperature=0))  # the body object is level 1
        refused = post(client, body_with(nested(64, kind), temperature=0))
    assert ok.status_code == 200
    assert_too_deep(refused, 64)
    assert len(fake.calls) == 1


def test_100000_levels_are_refused_with_the_depth_error_not_a_parse_error(fake):
    with router(fake) as client:
        response = post(client, body_with(nested(100_000, "array")))
    assert_too_deep(response, 64)


def test_the_limit_comes_from_the_routing_config(fake):
    with router(fake, max_json_depth=16) as client:
        assert post(client, body_with(nested(15))).status_code == 200
        assert_too_deep(post(client, body_with(nested(16))), 16)


def test_the_largest_configurable_depth_goes_through_the_cache_without_a_500(fake):
    # 256 levels through validation, the cache key, the L1 store and the answer.
    with router(fake, max_json_depth=256) as client:
        first = post(client, body_with(nested(253), temperature=0))
        second = post(client, body_with(nested(253), temperature=0))
    assert (first.status_code, second.status_code) == (200, 200)
    assert second.headers["x-cache"] == "HIT"


@pytest.mark.parametrize("value", [15, 257])
def test_max_json_depth_is_held_between_16_and_256(value):
    with pytest.raises(ConfigError, match="max_json_depth"):
        parse_config({"endpoints": [endpoint("r1-a", "cluster")], "max_json_depth": value}, environ={})


def test_parse_json_body_checks_depth_before_anything_else():
    with pytest.raises(InvalidRequest, match="more than 64 levels") as caught:
        parse_json_body(nested(65).encode())
    assert caught.value.code == "json_too_deep"
    assert parse_json_body(nested(64).encode(), max_depth=64) is not None
    with pytest.raises(InvalidRequest, match="more than 10 levels"):
        parse_json_body(nested(11).encode(), max_depth=10)


def test_strict_loads_and_parse_completion_refuse_deep_json_as_a_value_error():
    from r1edge.protocol.sse import JSONTooDeep

    with pytest.raises(JSONTooDeep):
        strict_loads(nested(65))
    with pytest.raises(JSONTooDeep):
        strict_loads(nested(100_000, "array"))  # json's own RecursionError becomes JSONTooDeep
    assert strict_loads(nested(65), max_depth=None) is not None
    deep_answer = completion()
    deep_answer["extra"] = json.loads(nested(70))
    with pytest.raises(ValueError, match="more than 64 levels"):
        parse_completion(json.dumps(deep_answer).encode())


class _Runtime:
    """Just enough of :class:`~r1edge.edge.runtime.LlamaRuntime` for the edge app to answer."""

    loaded = True
    model_id = "edge-test"
    max_tokens = 256
    think_mode = ThinkMode.OFF

    async def complete(self, kwargs: dict[str, Any], cancel: Any, stats: Any) -> dict[str, Any]:
        return completion("edge says hi")


def test_the_edge_server_refuses_deep_bodies_the_same_way():
    with TestClient(edgeapp.create_app(_Runtime()), raise_server_exceptions=False) as client:
        ok = post(client, body_with(nested(63), model="edge"))
        refused = post(client, body_with(nested(64), model="edge"))
        very_deep = post(client, body_with(nested(100_000, "array"), model="edge"))
    assert ok.status_code == 200
    assert_too_deep(refused, 64)
    assert_too_deep(very_deep, 64)


def _deep_completion(levels: int) -> bytes:
    head = json.dumps(completion("deep"))
    return (head[:-1] + ', "extra": ' + nested(levels, "array") + "}").encode()


@pytest.mark.parametrize("levels", [65, 100_000])
def test_an_upstream_answer_nested_too_deep_is_a_failed_attempt(levels):
    deep = FakeUpstream(
        {
            "r1-a": [_reply(_deep_completion(levels))],
            "r1-b": [json_reply(completion("from b"))],
        }
    )
    with router(deep, retry={"max_attempts": 1}) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": MSG})
    assert response.status_code == 200  # before: 500 (100,000 levels) or the deep answer relayed (65)
    assert response.headers["x-r1edge-upstream"] == "r1-b"
    assert response.json()["choices"][0]["message"]["content"] == "from b"


def test_deep_answers_from_every_endpoint_are_a_502():
    deep = FakeUpstream({"r1-a": [_reply(_deep_completion(65))], "r1-b": [_reply(_deep_completion(100_000))]})
    with router(deep, retry={"max_attempts": 1}) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": MSG})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error"
    assert "more than 64 levels" in error["message"]


def _reply(raw: bytes) -> httpx.Response:
    return httpx.Response(200, content=raw, headers={"content-type": "application/json"})


def _deep_chunk(levels: int) -> str:
    head = json.dumps(chunk("deep"))
    return head[:-1] + ', "extra": ' + nested(levels) + "}"


def stream(client: TestClient) -> tuple[int, str]:
    body = {"model": "deepseek-r1", "messages": MSG, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        return response.status_code, "".join(response.iter_text())


def test_a_deep_sse_chunk_before_content_falls_back_then_502():
    deep = FakeUpstream({"r1-a": [sse_reply(sse(_deep_chunk(65)))], "r1-b": [sse_reply(sse(_deep_chunk(65)))]})
    with router(deep, retry={"max_attempts": 1}) as client:
        status, text = stream(client)
    assert status == 502
    error = json.loads(text)["error"]
    assert error["code"] == "upstream_error"
    assert "more than 64 levels" in error["message"]
    assert len(deep.calls) == 2


def test_a_deep_sse_chunk_after_content_truncates_the_stream():
    body = sse(chunk("hello "), _deep_chunk(65), chunk(finish_reason="stop"))
    deep = FakeUpstream({"r1-a": [sse_reply(body)]})
    with router(deep, retry={"max_attempts": 1}) as client:
        status, text = stream(client)
    assert status == 200
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "hello "
    last = json.loads(events[-1])["error"]
    assert last["code"] == "upstream_stream_truncated"
    assert "more than 64 levels" in last["message"]
    assert "[DONE]" not in text


def test_a_job_submission_is_held_to_the_same_limit(stack):
    from jobstack import tenant_app

    app = create_app(stack.gateway.config, stack.upstream.upstream(), jobs=stack.service, **stack.fake_clock.options())
    with TestClient(tenant_app(app), raise_server_exceptions=False) as client:
        response = post(client, body_with(nested(64), temperature=0), path="/v1/jobs")
    assert_too_deep(response, 64)
    assert stack.messages(stack.queue_url) == []
