"""Secrets and logs: the client's API key, the ``Authorization`` header and the upstream's
credential (from Secrets Manager) never appear in logs or error messages; prompt and completion
text are logged only with ``R1EDGE_LOG_CONTENT=true``; template.yaml passes no credential in a
plain environment variable. Log output is captured as the Lambda runtime would see it (stdout)."""

from __future__ import annotations

import io
import json
import logging
import re

import httpx
import pytest
from fakes import FakeUpstream, add_key, chunk, completion, config, json_reply, memory_guard, sse, sse_reply
from samlocal import Resolver, function_environment, load_template
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.routing.upstream import Upstream

PROMPT = "PROMPT-TEXT-4711 my bank PIN is 0000"
ANSWER = "COMPLETION-TEXT-0815"
UPSTREAM_TOKEN = "sk-UPSTREAM-TOKEN-9f8e7d"
CLIENT_KEY = "r1e-CLIENT-KEY-abcdef123456"


def upstream_with_secret(fake: FakeUpstream, secrets_read: list[str]) -> Upstream:
    def secret_reader(name: str) -> str:
        secrets_read.append(name)
        return UPSTREAM_TOKEN

    return Upstream(httpx.AsyncClient(transport=httpx.MockTransport(fake.handler)), secret_reader=secret_reader)


def endpoints():
    auth = {"type": "bearer", "secret": "r1edge/cluster-api-key"}
    return [
        {"name": "r1-a", "url": "http://r1-a/v1", "tier": "cluster", "auth": auth},
        {"name": "r1-b", "url": "http://r1-b/v1", "tier": "cluster", "auth": auth, "priority": 1},
    ]


def run_traffic(fake: FakeUpstream, secrets_read: list[str]) -> list[httpx.Response]:
    guard = memory_guard()
    add_key(guard, key=CLIENT_KEY)
    cfg = config(*endpoints(), retry={"max_attempts": 1})
    app = create_app(cfg, upstream_with_secret(fake, secrets_read), guard=guard)
    responses = []
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "x-request-id": "req-1"}
    with TestClient(app, raise_server_exceptions=False) as client:
        for body in (
            {"model": "deepseek-r1", "messages": [{"role": "user", "content": PROMPT}]},
            {"model": "deepseek-r1", "messages": [{"role": "user", "content": PROMPT}], "stream": True},
            {"model": "deepseek-r1", "messages": [{"role": "user", "content": PROMPT}]},
            {"model": "deepseek-r1", "messages": [{"role": "user", "content": PROMPT}], "temperature": 9},
        ):
            responses.append(client.post("/v1/chat/completions", json=body, headers=headers))
        responses.append(client.post("/v1/chat/completions", json={"messages": []}, headers={"x-api-key": CLIENT_KEY}))
        responses.append(client.post("/v1/chat/completions", json={"messages": []}, headers={"x-api-key": "r1e-wrong"}))
    return responses


def scripted() -> FakeUpstream:
    return FakeUpstream(
        {
            "r1-a": [
                json_reply(completion(ANSWER)),
                sse_reply(sse(chunk(ANSWER[:10]), chunk(ANSWER[10:], finish_reason="stop"))),
                httpx.Response(401, json={"error": {"message": "bad key"}}),  # our credential refused
            ],
            "r1-b": [httpx.Response(500, text=f"internal error while answering {PROMPT}")],
        }
    )


@pytest.fixture
def logs(caplog):
    """Everything r1edge's Powertools loggers write (their JSON lines, extras included), plus
    every other logger's records (httpx, asyncio) through caplog."""
    caplog.set_level(logging.DEBUG)
    buffer = io.StringIO()
    swapped = []
    for name, logger in list(logging.root.manager.loggerDict.items()):
        if not name.startswith("r1edge") or not isinstance(logger, logging.Logger):
            continue
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler):
                # not setStream(), which flushes the old stream: a logger made under an earlier
                # test's captured stdout may hold a stream pytest has closed since
                swapped.append((handler, handler.stream))
                handler.stream = buffer
    assert swapped, "no r1edge log handler found"

    def read() -> str:
        return buffer.getvalue() + caplog.text

    yield read
    for handler, stream in swapped:
        handler.stream = stream


def test_no_key_token_prompt_or_answer_in_logs_or_errors(logs, monkeypatch):
    monkeypatch.delenv("R1EDGE_LOG_CONTENT", raising=False)
    fake = scripted()
    secrets_read: list[str] = []
    responses = run_traffic(fake, secrets_read)
    assert [r.status_code for r in responses] == [200, 200, 502, 400, 400, 401]
    assert ANSWER[:10] in responses[1].text  # the answer did reach the client
    text = logs()
    assert '"message":"route decided"' in text  # the JSON lines were captured
    assert '"message":"no upstream answered"' in text
    assert set(secrets_read) == {"r1edge/cluster-api-key"}
    assert all(call.headers["authorization"] == f"Bearer {UPSTREAM_TOKEN}" for call in fake.calls)
    for secret in (CLIENT_KEY, "r1e-wrong", UPSTREAM_TOKEN, "PROMPT-TEXT-4711", "COMPLETION-TEXT"):
        assert secret not in text, secret
    assert not re.search(r"authorization", text, re.IGNORECASE)
    for response in responses:
        body = response.text if response.status_code == 200 else json.dumps(response.json())
        assert UPSTREAM_TOKEN not in body
        assert CLIENT_KEY not in body


def test_content_is_logged_only_when_asked(logs, monkeypatch):
    monkeypatch.setenv("R1EDGE_LOG_CONTENT", "true")
    run_traffic(scripted(), [])
    text = logs()
    assert "PROMPT-TEXT-4711" in text
    assert ANSWER in text  # the JSON answer, and the streamed one joined
    assert text.count(ANSWER) >= 2
    for secret in (CLIENT_KEY, UPSTREAM_TOKEN):
        assert secret not in text
    assert not re.search(r"authorization", text, re.IGNORECASE)


def test_template_passes_no_credential_in_plain_environment_variables():
    template = load_template()
    attrs = {
        "EdgeFunctionUrl.FunctionUrl": "https://edge.lambda-url.us-east-1.on.aws/",
        "EdgeFunction.Arn": "arn:aws:lambda:us-east-1:1:function:e",
    }
    sensitive = re.compile(r"(^|_)(API_KEY|KEYS?|TOKEN|SECRET|PASSWORD|CREDENTIALS?)(_|$)")
    functions = [k for k, v in template["Resources"].items() if v["Type"] == "AWS::Serverless::Function"]
    checked = []
    for name in functions:
        raw = template["Resources"][name]["Properties"].get("Environment", {}).get("Variables", {})
        for var, value in raw.items():
            if sensitive.search(var):
                # names of secrets and tables are references to resources, never literal values
                assert isinstance(value, dict), f"{name}.{var} is a literal: {value!r}"
                checked.append(var)
        env = function_environment(template, name, Resolver(template, attrs))
        for var, value in env.items():
            assert not re.search(r"sk-[A-Za-z0-9]{8,}", value), f"{name}.{var} holds what looks like an API key"
            if value.lstrip().startswith("{"):  # an inline routing config: credentials only by secret name
                for endpoint in json.loads(value).get("endpoints", []):
                    auth = endpoint.get("auth", {})
                    assert "env" not in auth, f"{name}: endpoint {endpoint['name']} reads a token from the environment"
                    assert auth.get("type") in (None, "none", "sigv4", "bearer")
                    if auth.get("type") == "bearer":
                        assert auth["secret"]
    assert "R1EDGE_KEYS_SECRET" in checked  # the check saw the router's secret reference
