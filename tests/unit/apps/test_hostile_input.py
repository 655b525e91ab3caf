"""Hostile input the router fuzz run (``test_fuzz_router.py``) found answered with a 500, each as a
minimal, deterministic reproduction: the answer must be a 4xx in the OpenAI shape (or a 200 where
the input is valid), never a 5xx."""

from __future__ import annotations

import json

import pytest
from fakes import FakeUpstream, completion, config, endpoint, json_reply
from starlette.testclient import TestClient
from test_fuzz_router import serve

from r1edge.apps.router import create_app

MSG = '[{"role": "user", "content": "hi"}]'


@pytest.fixture
def client():
    fake = FakeUpstream({"edge-a": [json_reply(completion("ok"))], "r1-a": [json_reply(completion("ok"))]})
    app = create_app(config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster")), fake.upstream())
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("depth", [500, 900])
@pytest.mark.parametrize("field", ["x_future", "tools", "response_format"])
def test_a_deeply_nested_field_of_a_valid_request_is_not_a_500(client, depth, field):
    """JSON nested ``depth`` levels parses (Python's limit is about 1,000), then the cache key's
    recursive canonical form raised RecursionError: 500 ``internal_error``."""
    body = '{"model": "edge", "temperature": 0, "messages": ' + MSG + ', "' + field + '": '
    body += "[" * depth + "]" * depth + "}"
    response = client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("declared", [b"\xb2", b"\xb9\xb2"], ids=["superscript-two", "superscript-one-two"])
def test_a_content_length_of_non_ascii_digits_is_not_a_500(client, declared):
    """``Content-Length: ²`` (latin-1 0xB2, which an HTTP/1.1 server may pass through as
    obs-text): ``str.isdigit()`` is true for it but ``int()`` refuses it, a ValueError."""
    body = ('{"model": "edge", "messages": ' + MSG + "}").encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", declared)]
    answer = client.portal.call(serve, client.app, "POST", "/v1/chat/completions", headers, [body])
    assert answer.error is None
    assert answer.status < 500, answer.body
    if answer.status >= 400:
        assert set(json.loads(answer.body)["error"]) == {"message", "type", "param", "code"}
