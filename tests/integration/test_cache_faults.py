"""The response cache against the fault-injecting upstream on a real socket, which counts its
calls: a cut stream is never stored, a complete one is replayed as JSON with its reasoning and
usage, and identical requests in flight make one upstream call."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from fakes import FakeClock
from faultserver import Fault, FaultServer
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.routing.config import parse_config

pytestmark = pytest.mark.integration

BODY = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "max_tokens": 9}


def router(server: FaultServer) -> TestClient:
    cfg = parse_config({"endpoints": [server.endpoint()], "retry": {"max_attempts": 1}}, environ={})
    return TestClient(create_app(cfg, **FakeClock().options()), raise_server_exceptions=False)


def test_a_stream_cut_after_content_is_not_stored_and_a_whole_one_is():
    script = [Fault(chunks=4, cut_after=2), Fault(chunks=3, reasoning=2)]
    with FaultServer("r1", script) as r1, router(r1) as client:
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as cut:
            text = "".join(cut.iter_text())
        assert "upstream_stream_truncated" in text
        assert "[DONE]" not in text
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as whole:
            assert whole.headers["x-cache"] == "MISS"
            assert "".join(whole.iter_text()).endswith("data: [DONE]\n\n")
        replay = client.post("/v1/chat/completions", json=BODY)
    assert len(r1.calls) == 2
    assert replay.headers["x-cache"] == "HIT"
    message = replay.json()["choices"][0]["message"]
    assert (message["content"], message["reasoning_content"]) == ("c0 c1 c2 ", "r0 r1 ")
    assert replay.json()["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_identical_requests_in_flight_make_one_call_to_a_slow_upstream():
    slow = [Fault(delay_headers=0.3, chunks=2)]
    with FaultServer("r1", slow) as r1, router(r1) as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.post("/v1/chat/completions", json=BODY), range(4)))
    assert len(r1.calls) == 1
    assert sorted(a.headers["x-cache"] for a in answers) == ["HIT", "HIT", "HIT", "MISS"]
    assert {a.json()["choices"][0]["message"]["content"] for a in answers} == {"c0 c1 "}
