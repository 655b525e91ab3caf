"""The router with API keys on: 401 in the OpenAI shape, the tenant set for everything downstream,
``x-ratelimit-*`` headers on every answer, 429 per key for requests and tokens, usage recorded
per tenant, day and route, public health paths, and auth off unless configured."""

from __future__ import annotations

import json

import boto3
import httpx
import pytest
from awsauth import SECRET_VALUE, create_auth_resources
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
from moto import mock_aws
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from r1edge.access.guard import Guard
from r1edge.access.keys import DynamoKeyStore, create_key, hash_key
from r1edge.access.ratelimit import Limits
from r1edge.apps.router import create_app
from r1edge.protocol import web
from r1edge.protocol.errors import ConfigError

MSG = [{"role": "user", "content": "hi"}]
DAY = 1_767_000_000.0  # 2025-12-29T09:20:00Z


class Clock:
    def __init__(self) -> None:
        self.now = DAY

    def __call__(self) -> float:
        return self.now


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"tenant": web.tenant(request)})


@pytest.fixture
def fake() -> FakeUpstream:
    return FakeUpstream({"edge-a": [json_reply(completion("hello"))], "r1-a": [json_reply(completion("deep"))]})


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def guard(clock):
    return memory_guard(clock)


@pytest.fixture
def client(fake, guard):
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"))
    app = create_app(cfg, fake.upstream(), guard=guard, extra_routes=[Route("/v1/whoami", whoami)])
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def chat(client, key=None, body=None, header="Authorization"):
    headers = {}
    if key is not None:
        headers[header] = f"Bearer {key}" if header.lower() == "authorization" else key
    return client.post("/v1/chat/completions", json=body or {"model": "edge", "messages": MSG}, headers=headers)


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer r1e-unknown"}, {"Authorization": "Basic abc"}, {"x-api-key": "nope"}],
    ids=["missing", "unknown", "not-bearer", "unknown-x-api-key"],
)
def test_missing_or_unknown_key_is_401_in_openai_shape_and_reaches_no_upstream(client, fake, headers):
    response = client.post("/v1/chat/completions", json={"messages": MSG}, headers=headers)
    assert response.status_code == 401
    assert response.json() == {
        "error": {
            "message": response.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
    }
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["x-request-id"]
    assert "x-ratelimit-limit-requests" not in response.headers
    assert fake.calls == []


def test_revoked_key_is_401(client, guard, fake):
    key = add_key(guard)
    assert chat(client, key).status_code == 200
    [record] = guard.authenticator.store.all()
    guard.authenticator.store.set_status(record.key_hash, "revoked")
    response = chat(client, key)
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]["message"]
    assert len(fake.calls) == 1


@pytest.mark.parametrize(
    "header", ["Authorization", "AUTHORIZATION", "authorization", "x-api-key", "X-API-KEY", "X-Api-Key"]
)
def test_either_header_in_any_case_is_accepted(client, guard, header):
    key = add_key(guard)
    response = chat(client, key, header=header)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("path", ["/health", "/ping"])
def test_health_and_ping_need_no_key(client, path):
    response = client.get(path)
    assert response.status_code == 200
    assert "x-ratelimit-limit-requests" not in response.headers


def test_metrics_and_configs_paths_are_not_behind_keys(client):
    metrics = client.get("/metrics")  # Prometheus text, without a key
    assert metrics.status_code == 200
    assert "r1edge_requests_total" in metrics.text
    # no configs route in this app: a 404 (not a 401) shows the key check let it through
    assert client.get("/v1/configs/routing.json").status_code == 404
    assert client.get("/v1/metrics").status_code == 401


def test_the_tenant_comes_from_the_key(client, guard):
    key = add_key(guard, tenant="acme")
    other = add_key(guard, tenant="globex")
    assert client.get("/v1/whoami", headers={"Authorization": f"Bearer {key}"}).json() == {"tenant": "acme"}
    assert client.get("/v1/whoami", headers={"x-api-key": other}).json() == {"tenant": "globex"}
    assert client.get("/v1/whoami").status_code == 401


def test_every_answer_carries_the_rate_limit_headers(client, guard):
    key = add_key(guard, rpm=100, tpm=10_000)
    auth = {"Authorization": f"Bearer {key}"}
    ok = chat(client, key, {"model": "edge", "messages": MSG, "max_tokens": 100})
    models = client.get("/v1/models", headers=auth)
    bad = client.post("/v1/chat/completions", json={"messages": []}, headers=auth)
    missing = client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": MSG}, headers=auth)
    unknown_path = client.get("/v1/nothing", headers=auth)
    for response, status in ((ok, 200), (models, 200), (bad, 400), (missing, 404), (unknown_path, 404)):
        assert response.status_code == status
        for name in ("requests", "tokens"):
            assert response.headers[f"x-ratelimit-limit-{name}"] == ("100" if name == "requests" else "10000")
            assert f"x-ratelimit-remaining-{name}" in response.headers
            assert f"x-ratelimit-reset-{name}" in response.headers
    assert ok.headers["x-ratelimit-remaining-requests"] == "99"
    # the estimate was charged: 5 prompt tokens (ceil(2 chars / 4) + 4 per message) plus max_tokens 100
    assert ok.headers["x-ratelimit-remaining-tokens"] == str(10_000 - (5 + 100))
    assert models.headers["x-ratelimit-remaining-requests"] == "98"
    assert unknown_path.headers["x-ratelimit-remaining-requests"] == "95"  # 5th request: even 404s count


def test_requests_per_minute_429_with_retry_after_then_refill(client, guard, clock, fake):
    key = add_key(guard, rpm=3)
    for _ in range(3):
        assert chat(client, key).status_code == 200
    response = chat(client, key)
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("requests", "rate_limit_exceeded")
    assert response.headers["retry-after"] == "20"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    assert response.headers["x-ratelimit-limit-requests"] == "3"
    assert len(fake.calls) == 3
    clock.now += 20
    assert chat(client, key).status_code == 200


def test_tokens_per_minute_429_type_tokens(client, guard, fake):
    key = add_key(guard, tpm=1000)
    body = {"model": "edge", "messages": MSG, "max_tokens": 600}
    first = chat(client, key, body)
    assert first.status_code == 200
    # usage (5 + 1 tokens) was settled: the unused part of the charge came back
    assert first.headers["x-ratelimit-remaining-tokens"] == str(1000 - 605)  # headers show the charge
    assert guard.limiter.status(first_key_id(guard), Limits(600, 1000)).tokens == pytest.approx(1000 - 6, abs=0.01)
    body = {"model": "edge", "messages": MSG, "max_tokens": 999}
    response = chat(client, key, body)
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "tokens"
    assert int(response.headers["retry-after"]) >= 1
    assert len(fake.calls) == 1


def first_key_id(guard) -> str:
    [record] = guard.authenticator.store.all()
    return record.key_id


def test_limits_are_per_key(client, guard):
    a, b = add_key(guard, tenant="a", rpm=1), add_key(guard, tenant="b", rpm=1)
    assert chat(client, a).status_code == 200
    assert chat(client, a).status_code == 429
    assert chat(client, b).status_code == 200


def test_usage_is_recorded_per_tenant_day_and_route(client, guard, fake):
    key = add_key(guard, tenant="acme")
    chat(client, key, {"model": "edge", "messages": MSG})
    chat(client, key, {"model": "edge", "messages": MSG})
    chat(client, key, {"model": "deepseek-r1", "messages": MSG})
    chat(client, key, {"messages": []})  # refused: not an answer, not usage
    assert guard.usage.store.items == {
        ("acme", "2025-12-29#edge"): [2, 10, 2],
        ("acme", "2025-12-29#cluster"): [1, 5, 1],
    }


def test_streamed_usage_is_read_from_the_stream_or_estimated(guard, clock):
    with_usage = sse(
        chunk("Hel"),
        chunk("lo", finish_reason="stop"),
        {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}},
    )
    fake = FakeUpstream({"edge-a": [sse_reply(with_usage), sse_reply(sse(chunk("abcdefgh", finish_reason="stop")))]})
    app = create_app(config(endpoint("edge-a", "edge")), fake.upstream(), guard=guard)
    key = add_key(guard, tenant="acme")
    body = {"model": "edge", "messages": MSG, "stream": True, "stream_options": {"include_usage": True}}
    with TestClient(app) as client:
        first = chat(client, key, body)
        assert first.status_code == 200
        assert "data: [DONE]" in first.text
        assert first.headers["x-ratelimit-limit-requests"] == "600"
        second = chat(client, key, {**body, "stream_options": None})
        assert second.status_code == 200
    # 9 + 2 from the first stream's usage; the second estimated: 5 prompt, ceil(8 chars / 4) = 2
    assert guard.usage.store.items == {("acme", "2025-12-29#edge"): [2, 14, 4]}


def test_tokens_go_back_when_no_upstream_answers(guard):
    fake = FakeUpstream({"edge-a": [httpx.Response(400, json={"error": {"message": "no"}})]})
    app = create_app(config(endpoint("edge-a", "edge")), fake.upstream(), guard=guard)
    key = add_key(guard, tpm=1000)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = chat(client, key, {"model": "edge", "messages": MSG, "max_tokens": 500})
    assert response.status_code == 400
    assert guard.limiter.status(first_key_id(guard), Limits(600, 1000)).tokens == pytest.approx(1000, abs=0.01)
    assert guard.usage.store.items == {}


def test_a_key_store_outage_is_503_never_500_nor_a_way_in(guard, fake):
    class Broken:
        def get(self, key_hash):
            raise ConnectionError("dynamodb unreachable")

    guard.authenticator.store = Broken()
    app = create_app(config(endpoint("edge-a", "edge")), fake.upstream(), guard=guard)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = chat(client, "r1e-anything")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "overloaded"
    assert response.headers["retry-after"] == "1"
    assert fake.calls == []


def test_without_a_guard_or_keys_table_there_is_no_auth(fake, monkeypatch):
    monkeypatch.delenv("R1EDGE_KEYS_TABLE", raising=False)
    app = create_app(config(endpoint("edge-a", "edge")), fake.upstream(), extra_routes=[Route("/v1/whoami", whoami)])
    with TestClient(app) as client:
        assert client.get("/v1/whoami").json() == {"tenant": "anonymous"}
        response = chat(client)
        assert response.status_code == 200
        assert "x-ratelimit-limit-requests" not in response.headers


def test_keys_table_without_the_rest_is_a_config_error():
    with pytest.raises(ConfigError, match="R1EDGE_KEYS_SECRET"):
        Guard.from_env({"R1EDGE_KEYS_TABLE": "t", "R1EDGE_LIMITS_TABLE": "l", "R1EDGE_USAGE_TABLE": "u"})


def test_guard_from_env_on_moto_dynamodb_end_to_end(fake, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    from aws_lambda_powertools.utilities import parameters

    parameters.clear_caches()
    with mock_aws():
        env = create_auth_resources()
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        key, _ = create_key(DynamoKeyStore(env["R1EDGE_KEYS_TABLE"]), SECRET_VALUE, "acme", 2, 10_000)
        app = create_app(config(endpoint("edge-a", "edge")), fake.upstream())  # guard from the environment
        with TestClient(app) as client:
            assert chat(client).status_code == 401
            assert chat(client, key).status_code == 200
            assert chat(client, key).status_code == 200
            limited = chat(client, key)
        assert limited.status_code == 429
        assert limited.json()["error"]["type"] == "requests"
        usage = boto3.resource("dynamodb").Table(env["R1EDGE_USAGE_TABLE"]).scan()["Items"]
        assert [(u["tenant"], int(u["requests"]), int(u["completion_tokens"])) for u in usage] == [("acme", 2, 2)]
        assert usage[0]["period"].endswith("#edge")
        keys_items = boto3.client("dynamodb").scan(TableName=env["R1EDGE_KEYS_TABLE"])["Items"]
        assert key not in json.dumps(keys_items)
        assert keys_items[0]["key_hash"]["S"] == hash_key(key, SECRET_VALUE)
    parameters.clear_caches()
