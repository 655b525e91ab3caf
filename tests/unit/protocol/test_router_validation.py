"""Every invalid request gets a 400 (or 404/413) in the OpenAI shape, with ``param``, and never
reaches an upstream."""

from __future__ import annotations

import json

import pytest
from fakes import FakeUpstream, completion, config, endpoint, json_reply
from starlette.testclient import TestClient

from r1edge.apps.router import create_app

MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream({"edge-a": [json_reply(completion())], "r1-a": [json_reply(completion())]})


@pytest.fixture
def client(fake: FakeUpstream):
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), max_body_bytes=4096)
    with TestClient(create_app(cfg, fake.upstream()), raise_server_exceptions=False) as c:
        yield c


def post(client: TestClient, body, **kwargs):
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"}, **kwargs)


INVALID = [
    # (body, param, code)
    ({"model": "auto"}, "messages", "missing_required_parameter"),
    ({"messages": []}, "messages", "empty_array"),
    ({"messages": "hi"}, "messages", "invalid_type"),
    ({"messages": ["hi"]}, "messages[0]", "invalid_type"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role", "missing_required_parameter"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": 7, "content": "hi"}]}, "messages[0].role", "invalid_value"),
    ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user", "content": {"text": "hi"}}]}, "messages[0].content", "invalid_type"),
    ({"messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0]", "invalid_type"),
    (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 1}]}]},
        "messages[0].content[0].text",
        "invalid_type",
    ),
    ({"messages": MSG, "max_tokens": True}, "max_tokens", "invalid_type"),
    ({"messages": MSG, "max_tokens": 10.0}, "max_tokens", "invalid_type"),
    ({"messages": MSG, "max_tokens": 1e9}, "max_tokens", "invalid_type"),
    ({"messages": MSG, "max_tokens": "10"}, "max_tokens", "invalid_type"),
    ({"messages": MSG, "max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"messages": MSG, "max_tokens": -5}, "max_tokens", "invalid_value"),
    ({"messages": MSG, "max_completion_tokens": 2.5}, "max_completion_tokens", "invalid_type"),
    ({"messages": MSG, "temperature": 2.5}, "temperature", "invalid_value"),
    ({"messages": MSG, "temperature": -0.1}, "temperature", "invalid_value"),
    ({"messages": MSG, "temperature": "hot"}, "temperature", "invalid_type"),
    ({"messages": MSG, "temperature": False}, "temperature", "invalid_type"),
    ({"messages": MSG, "top_p": 1.5}, "top_p", "invalid_value"),
    ({"messages": MSG, "stream": "yes"}, "stream", "invalid_type"),
    ({"messages": MSG, "stop": [1, 2]}, "stop", "invalid_type"),
    ({"messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_type"),
    ({"messages": MSG, "n": 0}, "n", "invalid_value"),
    ({"messages": MSG, "seed": 1.5}, "seed", "invalid_type"),
    ({"messages": MSG, "model": 3}, "model", "invalid_type"),
    ({"messages": MSG, "stream_options": "yes"}, "stream_options", "invalid_type"),
]


@pytest.mark.parametrize(("body", "param", "code"), INVALID, ids=[f"{p}:{json.dumps(b)[:40]}" for b, p, _ in INVALID])
def test_invalid_request_is_400_with_param_and_no_upstream_call(client, fake, body, param, code):
    response = post(client, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert param.split("[")[0].split(".")[0] in error["message"]
    assert fake.calls == []
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("raw", [b"not json", b"{", b'{"messages": NaN}', b"\xff\xfe", b""])
def test_body_that_is_not_json_is_400(client, fake, raw):
    response = post(client, raw)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert fake.calls == []


@pytest.mark.parametrize("body", [[], "hi", 3, None])
def test_body_that_is_not_an_object_is_400(client, fake, body):
    response = post(client, json.dumps(body))
    assert response.status_code == 400
    assert "JSON object" in response.json()["error"]["message"]
    assert fake.calls == []


def test_null_max_tokens_means_absent(client, fake):
    response = post(client, {"model": "edge", "messages": MSG, "max_tokens": None, "temperature": None})
    assert response.status_code == 200
    assert len(fake.calls) == 1


def test_unknown_model_is_404_model_not_found(client, fake):
    response = post(client, {"model": "gpt-9", "messages": MSG})
    assert response.status_code == 404
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == ("model_not_found", "model", "invalid_request_error")
    assert "gpt-9" in error["message"]
    assert fake.calls == []


def test_body_over_the_limit_is_413(client, fake):
    response = post(client, {"messages": [{"role": "user", "content": "x" * 5000}]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert fake.calls == []


def test_unknown_path_and_method_are_openai_errors(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = client.get("/v1/chat/completions")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
