"""Upstream 400/422 bodies in the shapes real servers send are relayed with their message and
OpenAI's ``invalid_request_error`` type (docs/ARCHITECTURE.md, "Retry rules" and "Errors")."""

from __future__ import annotations

import httpx
import pytest
from fakes import FakeClock, FakeUpstream, config, endpoint, json_reply
from starlette.testclient import TestClient

from r1edge.apps.router import create_app

BODY = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (json_reply({"error": {"message": "context too long", "type": "BadRequestError"}}, 400), "context too long"),
        (
            json_reply({"object": "error", "message": "bad temp", "type": "BadRequestError", "code": 400}, 400),
            "bad temp",
        ),
        (json_reply({"detail": "field required"}, 422), "field required"),
        (json_reply({"detail": [{"loc": ["body", "x"], "msg": "field required"}]}, 422), '"msg": "field required"'),
        (httpx.Response(400, content=b"plain words"), "plain words"),
    ],
)
def test_the_upstreams_message_is_kept_in_the_openai_shape(reply, message):
    fake = FakeUpstream({"r1": [reply]})
    app = create_app(config(endpoint("r1", "cluster")), fake.upstream(), **FakeClock().options())
    with TestClient(app) as client:
        response = client.post("/v1/chat/completions", json=BODY)
    assert response.status_code == reply.status_code
    error = response.json()["error"]
    assert message in error["message"]
    assert error["type"] == "invalid_request_error"
    assert len(fake.calls) == 1  # the client's fault: not retried
