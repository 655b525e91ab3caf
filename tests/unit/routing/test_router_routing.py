"""Routing through the router app with scripted upstreams (no sockets): tiers, headers, model
mapping, fallback within a tier, and how upstream errors reach the client."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
from fakes import FakeClock, FakeUpstream, chunk, completion, config, endpoint, json_reply, sse, sse_reply
from starlette.testclient import TestClient

from r1edge.apps.router import create_app

SIMPLE = [{"role": "user", "content": "Say hello to my friend Anna."}]
HEAVY = [{"role": "user", "content": "Prove that the square root of 2 is irrational."}]


def make_client(fake: FakeUpstream, *endpoints):
    cfg = config(*(endpoints or (endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"))))
    return TestClient(create_app(cfg, fake.upstream(), **FakeClock().options()), raise_server_exceptions=False)


@pytest.mark.parametrize(
    ("model", "messages", "route", "upstream", "sent_model"),
    [
        ("auto", SIMPLE, "edge", "edge-a", "edge"),
        ("auto", HEAVY, "cluster", "r1-a", "deepseek-r1"),
        ("edge", HEAVY, "edge", "edge-a", "edge"),
        ("deepseek-r1", SIMPLE, "cluster", "r1-a", "deepseek-r1"),
    ],
)
def test_model_picks_tier_and_headers_say_so(model, messages, route, upstream, sent_model):
    fake = FakeUpstream({"edge-a": [json_reply(completion("from edge"))], "r1-a": [json_reply(completion("from r1"))]})
    with make_client(fake) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": model, "messages": messages},
            headers={"x-request-id": "0b5b6f3e-8d0c-4f7c-9a57-6b8e2f1d3c4a"},
        )
    assert response.status_code == 200
    assert response.headers["x-r1edge-route"] == route
    assert response.headers["x-r1edge-upstream"] == upstream
    assert response.headers["x-r1edge-attempts"] == "1"
    assert response.headers["x-r1edge-reason"]
    assert response.headers["x-request-id"] == "0b5b6f3e-8d0c-4f7c-9a57-6b8e2f1d3c4a"
    assert response.json()["choices"][0]["message"]["content"] == ("from edge" if route == "edge" else "from r1")
    [call] = fake.calls
    assert call.url.host == upstream
    assert call.headers["x-request-id"] == "0b5b6f3e-8d0c-4f7c-9a57-6b8e2f1d3c4a"
    assert json.loads(call.content)["model"] == sent_model


def test_missing_request_id_gets_a_new_one_sent_upstream():
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    with make_client(fake) as client:
        response = client.post("/v1/chat/completions", json={"model": "edge", "messages": SIMPLE})
    rid = response.headers["x-request-id"]
    assert len(rid) == 32
    assert fake.calls[0].headers["x-request-id"] == rid


def test_non_uuid_request_id_is_echoed_and_sent_upstream_as_a_derived_uuid():
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    with make_client(fake) as client:
        first = client.post(
            "/v1/chat/completions", json={"model": "edge", "messages": SIMPLE}, headers={"x-request-id": "my-trace-7"}
        )
        client.post(
            "/v1/chat/completions", json={"model": "edge", "messages": SIMPLE}, headers={"x-request-id": "my-trace-7"}
        )
    assert first.headers["x-request-id"] == "my-trace-7"
    sent = [c.headers["x-request-id"] for c in fake.calls]
    assert sent[0] == sent[1] == str(uuid.UUID(sent[0]))
    assert sent[0] != "my-trace-7"


def test_endpoint_model_mapping_and_openai_fields_are_forwarded():
    fake = FakeUpstream({"r1-a": [json_reply(completion())]})
    body = {
        "model": "deepseek-r1",
        "messages": SIMPLE,
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
        "response_format": {"type": "json_object"},
        "reasoning_effort": "high",
        "temperature": 0.6,
        "max_completion_tokens": 64,
        "seed": 7,
    }
    with make_client(fake, endpoint("r1-a", "cluster", model="deepseek-ai/DeepSeek-R1")) as client:
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    sent = fake.bodies()[0]
    assert sent["model"] == "deepseek-ai/DeepSeek-R1"
    for key in (
        "tools",
        "tool_choice",
        "response_format",
        "reasoning_effort",
        "temperature",
        "max_completion_tokens",
        "seed",
    ):
        assert sent[key] == body[key]


def test_falls_back_to_next_endpoint_of_the_tier_before_any_byte():
    fake = FakeUpstream(
        {
            "r1-a": [json_reply({"error": {"message": "busy"}}, status=503)],
            "r1-b": [httpx.ConnectError("refused")],
            "r1-c": [json_reply(completion("third"))],
        }
    )
    eps = (
        endpoint("r1-a", "cluster"),
        endpoint("r1-b", "cluster", priority=1),
        endpoint("r1-c", "cluster", priority=2),
    )
    with make_client(fake, *eps) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == 200
    assert response.headers["x-r1edge-upstream"] == "r1-c"
    assert response.headers["x-r1edge-attempts"] == "3"
    assert [c.url.host for c in fake.calls] == ["r1-a", "r1-b", "r1-c"]


def test_priority_orders_endpoints_not_config_order():
    fake = FakeUpstream({"r1-a": [json_reply(completion("a"))], "r1-b": [json_reply(completion("b"))]})
    with make_client(fake, endpoint("r1-a", "cluster", priority=5), endpoint("r1-b", "cluster", priority=1)) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.headers["x-r1edge-upstream"] == "r1-b"


@pytest.mark.parametrize("status", [400, 413, 422])
def test_client_fault_from_upstream_is_relayed_with_its_message_and_not_retried(status):
    error = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    fake = FakeUpstream({"r1-a": [json_reply(error, status=status)], "r1-b": [json_reply(completion())]})
    with make_client(fake, endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1)) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == status
    assert response.json() == error
    assert response.headers["x-r1edge-upstream"] == "r1-a"
    assert len(fake.calls) == 1


def test_upstream_400_without_openai_shape_still_gets_one():
    fake = FakeUpstream({"r1-a": [httpx.Response(400, text="prompt too long")]})
    with make_client(fake, endpoint("r1-a", "cluster")) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "prompt too long"
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_upstream_auth_or_mapping_failure_skips_endpoint_and_never_blames_the_client(status):
    fake = FakeUpstream({"r1-a": [json_reply({"error": {"message": "bad key"}}, status=status)]})
    with make_client(fake, endpoint("r1-a", "cluster")) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "upstream_error")
    assert f"HTTP {status}" in error["message"]
    assert response.headers["x-r1edge-route"] == "cluster"


def test_upstream_auth_failure_moves_to_the_next_endpoint():
    fake = FakeUpstream({"r1-a": [json_reply({}, status=401)], "r1-b": [json_reply(completion("b"))]})
    with make_client(fake, endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1)) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == 200
    assert response.headers["x-r1edge-upstream"] == "r1-b"


def test_every_endpoint_timing_out_is_504():
    fake = FakeUpstream({"r1-a": [httpx.ReadTimeout("slow")]})
    with make_client(fake, endpoint("r1-a", "cluster")) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"


@pytest.mark.parametrize("body", [b'{"choices": [{"mess', b"<html>oops</html>", b'{"no": "choices"}'])
def test_cut_or_broken_json_body_is_never_a_200(body):
    fake = FakeUpstream({"r1-a": [httpx.Response(200, content=body)], "r1-b": [json_reply(completion("ok"))]})
    with make_client(fake, endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1)) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == 200
    assert response.headers["x-r1edge-upstream"] == "r1-b"
    with make_client(FakeUpstream({"r1-a": [httpx.Response(200, content=body)]}), endpoint("r1-a", "cluster")) as c:
        assert c.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE}).status_code == 502


def test_non_stream_reasoning_is_renamed():
    fake = FakeUpstream({"r1-a": [json_reply(completion("42", reasoning="think"))]})
    with make_client(fake, endpoint("r1-a", "cluster")) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    message = response.json()["choices"][0]["message"]
    assert message["reasoning_content"] == "think"
    assert "reasoning" not in message


def test_stream_is_relayed_with_headers_and_done():
    body = sse(
        chunk("Hel"),
        chunk(reasoning="hmm"),
        chunk("lo", finish_reason="stop"),
        {"id": "c1", "object": "chat.completion.chunk", "choices": [], "usage": {"total_tokens": 9}},
    )
    fake = FakeUpstream({"edge-a": [sse_reply(body)]})
    with (
        make_client(fake) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={"model": "edge", "messages": SIMPLE, "stream": True}
        ) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-r1edge-route"] == "edge"
        assert response.headers["x-r1edge-upstream"] == "edge-a"
        text = "".join(response.iter_text())
    events = [e.removeprefix("data: ") for e in text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    objs = [json.loads(e) for e in events[:-1]]
    assert [o["choices"][0]["delta"] for o in objs[:3]] == [
        {"content": "Hel"},
        {"reasoning_content": "hmm"},
        {"content": "lo"},
    ]
    assert objs[3]["usage"] == {"total_tokens": 9}


def test_stream_request_answered_with_json_is_a_failure():
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    with make_client(fake, endpoint("edge-a", "edge")) as client:
        response = client.post("/v1/chat/completions", json={"model": "edge", "messages": SIMPLE, "stream": True})
    assert response.status_code == 502
    assert "content-type" in response.json()["error"]["message"]


def test_auto_uses_the_other_tier_when_one_has_no_endpoint():
    fake = FakeUpstream({"r1-a": [json_reply(completion())]})
    with make_client(fake, endpoint("r1-a", "cluster")) as client:
        response = client.post("/v1/chat/completions", json={"messages": SIMPLE})
        assert response.headers["x-r1edge-route"] == "cluster"
        assert response.headers["x-r1edge-reason"] == "no_edge_endpoint"
        forced = client.post("/v1/chat/completions", json={"model": "edge", "messages": SIMPLE})
        assert forced.status_code == 404
        assert forced.json()["error"]["code"] == "model_not_found"
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["auto", "deepseek-r1"]


def test_models_lists_the_public_names():
    with make_client(FakeUpstream()) as client:
        body = client.get("/v1/models").json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        ("auto", "model", "r1edge"),
        ("edge", "model", "r1edge"),
        ("deepseek-r1", "model", "r1edge"),
    ]


def test_health_is_200_only_when_every_endpoint_answers():
    models = json_reply({"object": "list", "data": []})
    with make_client(FakeUpstream({"edge-a": [models], "r1-a": [models]})) as client:
        response = client.get("/health")
        assert response.status_code == 200
        assert response.json() == {"status": "ok", "endpoints": {"edge-a": "ok", "r1-a": "ok"}}
    with make_client(FakeUpstream({"edge-a": [models]})) as client:
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["endpoints"]["edge-a"] == "ok"
        assert response.json()["endpoints"]["r1-a"].startswith("ConnectError")


def test_bearer_token_from_environment_is_sent():
    fake = FakeUpstream({"r1-a": [json_reply(completion())]})
    upstream = fake.upstream(environ={"R1_TOKEN": "sk-test"})
    cfg = config(endpoint("r1-a", "cluster", auth={"type": "bearer", "env": "R1_TOKEN"}))
    with TestClient(create_app(cfg, upstream)) as client:
        client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert fake.calls[0].headers["authorization"] == "Bearer sk-test"


def test_missing_bearer_token_is_a_502_not_a_401():
    fake = FakeUpstream({"r1-a": [json_reply(completion())]})
    cfg = config(endpoint("r1-a", "cluster", auth={"type": "bearer", "env": "UNSET_TOKEN_VAR"}))
    with TestClient(create_app(cfg, fake.upstream())) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == 502
    assert "UNSET_TOKEN_VAR" in response.json()["error"]["message"]
    assert fake.calls == []


def test_lone_surrogate_is_400_not_500():
    fake = FakeUpstream({"edge-a": [json_reply(completion())]})
    with make_client(fake) as client:
        response = client.post(
            "/v1/chat/completions",
            content=b'{"model":"edge","messages":[{"role":"user","content":"a\\ud800b"}]}',
            headers={"content-type": "application/json"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"
    assert fake.calls == []


def test_trailing_slash_is_an_openai_404_not_a_redirect():
    with make_client(FakeUpstream()) as client:
        response = client.post("/v1/chat/completions/", json={"messages": SIMPLE}, follow_redirects=False)
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "body",
    [b'{"choices": [{"message": {"content": NaN}}]}', b'{"choices": [{"message": {"content": "x"}}], "u": Infinity}'],
)
def test_non_finite_numbers_in_an_upstream_answer_are_a_failure(body):
    fake = FakeUpstream({"r1-a": [httpx.Response(200, content=body)], "r1-b": [json_reply(completion("ok"))]})
    with make_client(fake, endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1)) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE})
    assert response.status_code == 200
    assert response.headers["x-r1edge-upstream"] == "r1-b"


def test_malformed_chunks_and_absurd_retry_after_never_give_a_500():
    weird = sse({"choices": [{"delta": "oops"}]}, {"choices": "x"}, done=False)
    fake = FakeUpstream(
        {
            "r1-a": [lambda request: sse_reply(weird)],
            "r1-b": [json_reply({"error": {"message": "busy"}}, status=429, headers={"Retry-After": "9" * 400})],
        }
    )
    eps = (endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1))
    with make_client(fake, *eps) as client:
        response = client.post(
            "/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE, "stream": True}
        )
    assert response.status_code in (429, 502, 503)
    assert int(response.headers.get("Retry-After", "1")) <= 86_400
    assert "error" in response.json()


def test_done_without_a_finish_reason_is_a_truncated_stream():
    body = sse(chunk("Cats are the"))  # [DONE] with no finish_reason: an interrupted answer
    fake = FakeUpstream({"r1-a": [sse_reply(body)]})
    with (
        make_client(fake, endpoint("r1-a", "cluster")) as client,
        client.stream(
            "POST", "/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE, "stream": True}
        ) as response,
    ):
        text = "".join(response.iter_text())
    assert "data: [DONE]" not in text
    assert "upstream_stream_truncated" in text


def test_relayed_upstream_error_fields_are_strings_or_null():
    error = {"error": {"message": "bad", "type": 5, "param": {"x": 1}, "code": ["x"]}}
    fake = FakeUpstream({"r1-a": [json_reply(error, status=400)]})
    with make_client(fake, endpoint("r1-a", "cluster")) as client:
        body = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE}).json()
    assert body["error"] == {"message": "bad", "type": "invalid_request_error", "param": None, "code": None}


def test_a_reader_crash_before_content_fails_over_instead_of_hanging():
    fake = FakeUpstream(
        {
            "r1-a": [lambda request: sse_reply([b": hi\n\n"], error=RuntimeError("boom"))],
            "r1-b": [lambda request: sse_reply(sse(chunk("ok", finish_reason="stop")))],
        }
    )
    with make_client(fake, endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1)) as client:
        response = client.post(
            "/v1/chat/completions", json={"model": "deepseek-r1", "messages": SIMPLE, "stream": True}
        )
    assert response.status_code == 200
    assert response.headers["x-r1edge-upstream"] == "r1-b"
    assert response.text.rstrip().endswith("data: [DONE]")
