"""The edge→cluster cascade for ``model: auto``: low confidence, context-length refusals and an
unavailable edge go to the cluster; the edge's answer is kept when the cluster cannot answer."""

from __future__ import annotations

import json

import httpx
import pytest
from fakes import ChunkStream, FakeClock, FakeUpstream, chunk, completion, config, endpoint, json_reply, sse
from starlette.testclient import TestClient

from r1edge.apps.router import create_app

SIMPLE = [{"role": "user", "content": "Say hello to my friend Anna."}]
CONTEXT_ERROR = {
    "error": {
        "message": "This model's maximum context length is 2048 tokens",
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
}


def client_for(fake: FakeUpstream, **extra) -> TestClient:
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), **extra)
    return TestClient(create_app(cfg, fake.upstream(), **FakeClock().options()), raise_server_exceptions=False)


def edge_json(text: str, confidence: str, **headers: str) -> httpx.Response:
    return json_reply(completion(text), headers={"x-r1edge-confidence": confidence, **headers})


def edge_sse(text: str, confidence: str, stream: ChunkStream | None = None) -> httpx.Response:
    body = stream or ChunkStream([sse(chunk(text), chunk(finish_reason="stop"))])
    return httpx.Response(
        200, headers={"content-type": "text/event-stream", "x-r1edge-confidence": confidence}, stream=body
    )


def ask(client: TestClient, **body) -> httpx.Response:
    return client.post("/v1/chat/completions", json={"model": "auto", "messages": SIMPLE, **body})


def streamed_text(response: httpx.Response) -> str:
    events = [e.removeprefix("data: ") for e in response.text.strip().split("\n\n")]
    assert events[-1] == "[DONE]"
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in map(json.loads, events[:-1]) if c["choices"])


def test_a_confident_edge_answer_stays_at_the_edge_and_says_how_confident():
    fake = FakeUpstream({"edge-a": [edge_json("hi Anna", "0.7100", **{"x-r1edge-confidence-tokens": "5"})]})
    with client_for(fake) as c:
        response = ask(c)
    assert response.json()["choices"][0]["message"]["content"] == "hi Anna"
    assert response.headers["x-r1edge-route"] == "edge"
    assert response.headers["x-r1edge-confidence"] == "0.7100"
    assert response.headers["x-r1edge-confidence-tokens"] == "5"
    assert [r.url.host for r in fake.calls] == ["edge-a"]
    assert "x-r1edge-confidence-window" not in fake.calls[0].headers  # JSON answers are judged whole


def test_a_low_confidence_edge_answer_is_escalated_and_the_reason_given():
    fake = FakeUpstream({"edge-a": [edge_json("hm", "0.3100")], "r1-a": [json_reply(completion("Hello, Anna!"))]})
    with client_for(fake) as c:
        response = ask(c)
    assert response.json()["choices"][0]["message"]["content"] == "Hello, Anna!"
    assert response.headers["x-r1edge-route"] == "cluster"
    assert response.headers["x-r1edge-reason"] == "low_confidence:0.3100<0.4"
    assert response.headers["x-r1edge-attempts"] == "2"
    assert "x-r1edge-confidence" not in response.headers  # the cluster's answer has none
    assert [r.url.host for r in fake.calls] == ["edge-a", "r1-a"]


def test_the_threshold_comes_from_the_config_and_null_turns_the_cascade_off():
    fake = FakeUpstream({"edge-a": [edge_json("hm", "0.3100")], "r1-a": [json_reply(completion("r1"))]})
    with client_for(fake, cascade={"threshold": 0.3}) as c:
        assert ask(c).headers["x-r1edge-route"] == "edge"
    with client_for(fake, cascade={"threshold": 0.32}) as c:
        assert ask(c).headers["x-r1edge-reason"] == "low_confidence:0.3100<0.32"
    with client_for(fake, cascade={"threshold": None}) as c:
        assert ask(c).headers["x-r1edge-route"] == "edge"
    fake = FakeUpstream({"edge-a": [edge_sse("hm", "0.0100")], "r1-a": [json_reply(completion("r1"))]})
    with client_for(fake, cascade={"threshold": None}) as c:
        streamed = ask(c, stream=True)
    assert streamed_text(streamed) == "hm"
    assert streamed.headers["x-r1edge-route"] == "edge"
    assert "x-r1edge-confidence-window" not in fake.calls[0].headers


def test_forced_edge_is_never_cascaded():
    fake = FakeUpstream({"edge-a": [edge_json("hm", "0.0100")], "r1-a": [json_reply(completion("r1"))]})
    with client_for(fake) as c:
        response = ask(c, model="edge")
    assert response.headers["x-r1edge-route"] == "edge"
    assert [r.url.host for r in fake.calls] == ["edge-a"]


def test_when_the_cluster_cannot_answer_the_edge_answer_is_kept():
    busy = json_reply({"error": {"message": "busy"}}, status=503, headers={"Retry-After": "1"})
    fake = FakeUpstream({"edge-a": [edge_json("hm", "0.3100")], "r1-a": [busy]})
    with client_for(fake, retry={"max_attempts": 1}) as c:
        response = ask(c)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hm"
    assert response.headers["x-r1edge-route"] == "edge"
    assert response.headers["x-r1edge-reason"] == "low_confidence:0.3100<0.4;cluster_unavailable:overloaded"
    assert response.headers["x-r1edge-attempts"] == "2"


def test_an_edge_context_length_refusal_goes_to_the_cluster_for_auto_but_reaches_the_client_for_edge():
    fake = FakeUpstream({"edge-a": [json_reply(CONTEXT_ERROR, status=400)], "r1-a": [json_reply(completion("long"))]})
    with client_for(fake) as c:
        auto = ask(c)
        forced = ask(c, model="edge")
    assert auto.status_code == 200
    assert auto.headers["x-r1edge-route"] == "cluster"
    assert auto.headers["x-r1edge-reason"] == "edge_context_length"
    assert forced.status_code == 400
    assert forced.json()["error"]["code"] == "context_length_exceeded"


def test_other_edge_400s_are_the_clients_fault_and_not_escalated():
    bad = json_reply({"error": {"message": "n must be 1", "param": "n", "code": "unsupported_value"}}, status=400)
    fake = FakeUpstream({"edge-a": [bad], "r1-a": [json_reply(completion())]})
    with client_for(fake) as c:
        response = ask(c)
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "n"
    assert [r.url.host for r in fake.calls] == ["edge-a"]


def test_an_unavailable_edge_sends_auto_requests_to_the_cluster():
    fake = FakeUpstream({"edge-a": [httpx.ConnectError("refused")], "r1-a": [json_reply(completion("r1"))]})
    with client_for(fake, retry={"max_attempts": 1}) as c:
        response = ask(c)
    assert response.status_code == 200
    assert response.headers["x-r1edge-route"] == "cluster"
    assert response.headers["x-r1edge-reason"] == "edge_unavailable:upstream_error"


def test_a_stream_is_judged_on_its_first_tokens_before_anything_reaches_the_client():
    edge_body = ChunkStream([sse(chunk("hm"), chunk(finish_reason="stop"))])
    cluster = httpx.Response(
        200,
        headers={"content-type": "text/event-stream"},
        stream=ChunkStream([sse(chunk("Hello, "), chunk("Anna!"), chunk(finish_reason="stop"))]),
    )
    fake = FakeUpstream({"edge-a": [edge_sse("hm", "0.2000", edge_body)], "r1-a": [cluster]})
    with client_for(fake, cascade={"stream_window": 12}) as c:
        response = ask(c, stream=True)
    assert streamed_text(response) == "Hello, Anna!"
    assert response.headers["x-r1edge-route"] == "cluster"
    assert response.headers["x-r1edge-reason"] == "low_confidence:0.2000<0.4"
    assert fake.calls[0].headers["x-r1edge-confidence-window"] == "12"
    assert "x-r1edge-confidence-window" not in fake.calls[1].headers
    assert edge_body.closed  # the edge stops generating


def test_a_confident_stream_stays_at_the_edge():
    fake = FakeUpstream({"edge-a": [edge_sse("hi Anna", "0.9000")]})
    with client_for(fake) as c:
        response = ask(c, stream=True)
    assert streamed_text(response) == "hi Anna"
    assert response.headers["x-r1edge-route"] == "edge"
    assert response.headers["x-r1edge-confidence"] == "0.9000"
    assert fake.calls[0].headers["x-r1edge-confidence-window"] == "8"


def test_a_low_confidence_stream_with_the_cluster_down_is_asked_of_the_edge_again_without_the_hold():
    fake = FakeUpstream(
        {
            "edge-a": [edge_sse("hm", "0.2000"), edge_sse("hm again", "0.2000")],
            "r1-a": [httpx.ConnectError("refused")],
        }
    )
    with client_for(fake, retry={"max_attempts": 1}) as c:
        response = ask(c, stream=True)
    assert streamed_text(response) == "hm again"
    assert response.headers["x-r1edge-route"] == "edge"
    assert response.headers["x-r1edge-reason"] == "low_confidence:0.2000<0.4;cluster_unavailable:upstream_error"
    assert [r.url.host for r in fake.calls] == ["edge-a", "r1-a", "edge-a"]
    assert "x-r1edge-confidence-window" not in fake.calls[2].headers
    assert response.headers["x-r1edge-attempts"] == "3"


@pytest.mark.parametrize("value", ["nan", "-0.5", "7", "high"])
def test_a_nonsense_confidence_header_is_ignored_not_trusted(value):
    fake = FakeUpstream({"edge-a": [edge_json("hi", value)], "r1-a": [json_reply(completion("r1"))]})
    with client_for(fake) as c:
        response = ask(c)
    assert response.headers["x-r1edge-route"] == "edge"


def test_the_edges_clamp_header_reaches_the_client():
    fake = FakeUpstream({"edge-a": [edge_json("hi", "0.9", **{"x-r1edge-max-tokens-clamped": "1024"})]})
    with client_for(fake) as c:
        assert ask(c, model="edge", max_tokens=4000).headers["x-r1edge-max-tokens-clamped"] == "1024"


def test_the_kept_edge_answer_survives_any_cluster_error_even_at_the_deadline():
    clock = FakeClock()

    def slow_then_timeout(request):
        clock.offset += 400  # the cluster uses up the whole deadline
        raise httpx.ReadTimeout("slow")

    bad = json_reply({"error": {"message": "unsupported", "param": "top_k", "code": "unsupported_parameter"}}, 400)
    for cluster_reply in (slow_then_timeout, bad):
        fake = FakeUpstream({"edge-a": [edge_json("hm", "0.3100")], "r1-a": [cluster_reply]})
        cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), retry={"max_attempts": 1})
        with TestClient(create_app(cfg, fake.upstream(), **clock.options())) as c:
            response = ask(c)
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == "hm"
        assert response.headers["x-r1edge-reason"].startswith("low_confidence:0.3100<0.4;cluster_unavailable:")


def test_a_busy_edge_is_not_retried_before_the_cluster_is_asked():
    busy = json_reply({"error": {"message": "busy"}}, status=503, headers={"Retry-After": "1"})
    fake = FakeUpstream({"edge-a": [busy], "r1-a": [json_reply(completion("r1"))]})
    clock = FakeClock()
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"))  # retry.max_attempts 4
    with TestClient(create_app(cfg, fake.upstream(), **clock.options())) as c:
        response = ask(c)
    assert response.headers["x-r1edge-route"] == "cluster"
    assert response.headers["x-r1edge-reason"] == "edge_unavailable:overloaded"
    assert [r.url.host for r in fake.calls] == ["edge-a", "r1-a"]
    assert clock.sleeps == []  # no backoff spent on the edge
