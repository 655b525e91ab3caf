"""What the router needs under Lambda: the deadline from ``x-amzn-lambda-context``, SigV4 for
the edge's IAM-authenticated Function URL, an inline routing config, and a readiness path."""

from __future__ import annotations

import json

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from fakes import FakeUpstream, completion, config, endpoint, json_reply
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.aws.lambda_context import DEADLINE_MARGIN_SECONDS, request_deadline
from r1edge.routing.config import load_config
from r1edge.routing.gateway import Gateway
from r1edge.routing.upstream import Upstream

NOW = 1_800_000_000.0
SIMPLE = [{"role": "user", "content": "Say hello."}]


def lambda_context(deadline_ms: float) -> str:
    return json.dumps({"request_id": "abc", "deadline": deadline_ms, "invoked_function_arn": "arn:aws:lambda:x"})


def test_deadline_from_the_lambda_context_header():
    assert request_deadline(lambda_context(NOW * 1000 + 20_000), 300, NOW) == 20 - DEADLINE_MARGIN_SECONDS
    assert request_deadline(lambda_context(NOW * 1000 + 900_000), 300, NOW) == 300  # capped by config
    assert request_deadline(lambda_context(NOW * 1000 + 500), 300, NOW) == 0.0  # never negative
    assert request_deadline(json.dumps({"deadline_ms": NOW * 1000 + 11_000}), 300, NOW) == 10.0


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "not json",
        "[]",
        '{"deadline": "soon"}',
        '{"deadline": true}',
        "{}",
        '{"deadline": 1' + "0" * 400 + "}",
        "[" * 5000 + "]" * 5000,
        '{"deadline": 1e999}',
    ],
)
def test_without_a_usable_header_the_configured_deadline_applies(header):
    assert request_deadline(header, 42.0, NOW) == 42.0


def test_router_passes_the_lambda_deadline_to_the_gateway(monkeypatch):
    seen: list[float] = []
    original = Gateway.complete

    async def spy(self, request, request_id, deadline=None, allow_degrade=False):
        seen.append(deadline)
        return await original(self, request, request_id, deadline, allow_degrade)

    monkeypatch.setattr(Gateway, "complete", spy)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "router")
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    cfg = config(endpoint("edge-a", "edge"), deadline=120)
    with TestClient(create_app(cfg, fake.upstream(), wall_clock=lambda: NOW)) as client:
        body = {"model": "edge", "messages": SIMPLE}
        client.post(
            "/v1/chat/completions", json=body, headers={"x-amzn-lambda-context": lambda_context(NOW * 1000 + 30_000)}
        )
        client.post("/v1/chat/completions", json=body)
    assert seen == [30 - DEADLINE_MARGIN_SECONDS, 120]


def test_expired_lambda_deadline_is_504_without_an_upstream_call(monkeypatch):
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "router")
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    with TestClient(create_app(config(endpoint("edge-a", "edge")), fake.upstream(), wall_clock=lambda: NOW)) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "edge", "messages": SIMPLE},
            headers={"x-amzn-lambda-context": lambda_context(NOW * 1000 + 200)},
        )
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"
    assert fake.calls == []


def test_sigv4_signs_the_exact_bytes_sent():
    fake = FakeUpstream({"edge-fn": [json_reply(completion())]})
    creds = Credentials("AKIDEXAMPLE", "secret", "session-token")
    upstream = Upstream(
        httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)),
        environ={"AWS_REGION": "eu-west-1"},
        credentials=lambda: creds,
    )
    cfg = config(endpoint("edge-fn", "edge", auth={"type": "sigv4"}))
    with TestClient(create_app(cfg, upstream)) as client:
        assert client.post("/v1/chat/completions", json={"model": "edge", "messages": SIMPLE}).status_code == 200
    [call] = fake.calls
    auth = call.headers["authorization"]
    assert auth.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/lambda/aws4_request" in auth
    assert "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token" in auth
    assert call.headers["x-amz-security-token"] == "session-token"
    # Re-sign what was actually sent at the same instant: the signatures agree only if the body,
    # URL and signed headers reached the wire unchanged.
    again = AWSRequest(
        method="POST", url=str(call.url), data=call.content, headers={"content-type": call.headers["content-type"]}
    )
    again.context["timestamp"] = call.headers["x-amz-date"]
    SigV4Auth(creds.get_frozen_credentials(), "lambda", "eu-west-1").add_auth(again)
    assert again.headers["Authorization"] == auth


def test_sigv4_without_a_region_is_a_502_naming_the_endpoint():
    fake = FakeUpstream({"edge-fn": [json_reply(completion())]})
    upstream = Upstream(
        httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)),
        environ={},
        credentials=lambda: Credentials("a", "b"),
    )
    with TestClient(create_app(config(endpoint("edge-fn", "edge", auth={"type": "sigv4"})), upstream)) as client:
        response = client.post("/v1/chat/completions", json={"model": "edge", "messages": SIMPLE})
    assert response.status_code == 502
    assert "edge-fn" in response.json()["error"]["message"]
    assert fake.calls == []


def test_inline_json_config():
    doc = json.dumps(
        {
            "endpoints": [
                {
                    "name": "e",
                    "url": "https://abc.lambda-url.us-east-1.on.aws/v1",
                    "tier": "edge",
                    "auth": {"type": "sigv4"},
                }
            ]
        }
    )
    cfg = load_config(doc, environ={})
    assert cfg.endpoints[0].auth.type == "sigv4"
    assert cfg.endpoints[0].auth.service == "lambda"


def test_ping_answers_without_touching_upstreams():
    fake = FakeUpstream()
    with TestClient(create_app(config(endpoint("edge-a", "edge")), fake.upstream())) as client:
        assert client.get("/ping").json() == {"status": "ok"}
        assert client.get("/health").status_code == 503
    assert [c.url.path for c in fake.calls] == ["/v1/models"]  # only /health probed


def test_outside_lambda_a_client_cannot_set_the_deadline(monkeypatch):
    monkeypatch.delenv("AWS_LAMBDA_FUNCTION_NAME", raising=False)
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    with TestClient(create_app(config(endpoint("edge-a", "edge")), fake.upstream(), wall_clock=lambda: NOW)) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "edge", "messages": SIMPLE},
            headers={"x-amzn-lambda-context": json.dumps({"deadline": 0})},
        )
    assert response.status_code == 200
