"""Keep answering when upstreams fail: the router against fault-injecting upstreams on real
sockets. Waits (backoff, Retry-After) go through an injected clock and are recorded, not slept;
timing is asserted through that clock or through which endpoint answered."""

from __future__ import annotations

import email.utils
import json
import threading
import time

import httpx
import pytest
import uvicorn
from fakes import FakeClock
from faultserver import Fault, FaultServer
from run import free_port
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.routing.config import parse_config

pytestmark = pytest.mark.integration

HELLO = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}]}


def router(clock: FakeClock, *servers: FaultServer, extra: dict | None = None, **config) -> TestClient:
    endpoints = [s.endpoint(priority=i, **(extra or {})) for i, s in enumerate(servers)]
    cfg = parse_config({"endpoints": endpoints, **config}, environ={})
    return TestClient(create_app(cfg, **clock.options()), raise_server_exceptions=False)


def stream_text(client: TestClient, body: dict) -> tuple[httpx.Response, str]:
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as response:
        text = "".join(response.iter_text())
    return response, text


def data_events(text: str) -> list[str]:
    return [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]


def test_429_with_retry_after_2_then_200_retries_once_after_at_least_2_s():
    clock = FakeClock()
    with FaultServer("r1", [Fault(429, {"Retry-After": "2"}), Fault()]) as r1, router(clock, r1) as client:
        response = client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert len(r1.calls) == 2
    assert response.headers["x-r1edge-attempts"] == "2"
    assert len(clock.sleeps) == 1
    assert clock.sleeps[0] >= 2.0


def test_503_with_http_date_retry_after_waits_about_5_s():
    clock = FakeClock()
    wall = 1_800_000_000.0  # a wall clock that stands still while the servers start
    clock.wall = lambda: wall  # type: ignore[method-assign]
    when = email.utils.formatdate(wall + 5, usegmt=True)
    with FaultServer("r1", [Fault(503, {"Retry-After": when}), Fault()]) as r1, router(clock, r1) as client:
        response = client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    [wait] = clock.sleeps
    assert 3.9 <= wait <= 5.1  # an HTTP-date has one-second resolution


def test_retry_after_ms_is_understood_and_garbage_falls_back_to_backoff():
    clock = FakeClock()
    script = [Fault(429, {"retry-after-ms": "1500"}), Fault(429, {"Retry-After": "soon"}), Fault()]
    with FaultServer("r1", script) as r1, router(clock, r1, retry={"backoff_base": 0.1, "backoff_cap": 0.2}) as client:
        assert client.post("/v1/chat/completions", json=HELLO).status_code == 200
    assert clock.sleeps[0] >= 1.5
    assert clock.sleeps[1] <= 0.2  # unparseable: plain capped backoff


def test_retry_after_longer_than_the_time_left_goes_to_another_endpoint_without_sleeping():
    clock = FakeClock()
    with (
        FaultServer("r1", [Fault(429, {"Retry-After": "90"})]) as r1,
        FaultServer("r2", [Fault()]) as r2,
        router(clock, r1, r2, deadline=10) as client,
    ):
        response = client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["x-r1edge-upstream"] == "r2"
    assert all(wait < 90 for wait in clock.sleeps)


def test_retry_after_longer_than_the_time_left_on_the_only_endpoint_is_429_at_once():
    clock = FakeClock()
    with FaultServer("r1", [Fault(429, {"Retry-After": "90"})]) as r1, router(clock, r1, deadline=10) as client:
        response = client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "90"
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert clock.sleeps == []
    assert len(r1.calls) == 1


@pytest.mark.parametrize("status", [400, 413, 422])
def test_client_faults_are_relayed_after_exactly_one_call_and_leave_the_breaker_alone(status):
    clock = FakeClock()
    error = {
        "error": {
            "message": "This model's maximum context length is 8192 tokens.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    with (
        FaultServer("r1", [Fault(status, error=error)]) as r1,
        router(clock, r1, retry={"max_attempts": 3}) as client,
    ):
        response = client.post("/v1/chat/completions", json=HELLO)
        breaker = client.app.state.gateway.pool["r1"].breaker
    assert response.status_code == status
    assert response.json() == error
    assert len(r1.calls) == 1
    assert (breaker.state.value, breaker.consecutive_failures, len(breaker.calls)) == ("closed", 0, 0)


@pytest.mark.parametrize("status", [401, 403, 404])
def test_credential_or_mapping_failures_take_the_endpoint_out_after_one_call(status):
    clock = FakeClock()
    with (
        FaultServer("r1", [Fault(status)]) as r1,
        FaultServer("r2", [Fault()]) as r2,
        router(clock, r1, r2, retry={"max_attempts": 3}) as client,
    ):
        ok = client.post("/v1/chat/completions", json=HELLO)
    assert ok.status_code == 200
    assert ok.headers["x-r1edge-upstream"] == "r2"
    assert len(r1.calls) == 1
    with FaultServer("r1", [Fault(status)]) as r1, router(clock, r1, retry={"max_attempts": 3}) as client:
        alone = client.post("/v1/chat/completions", json=HELLO)
    assert alone.status_code == 502
    assert alone.json()["error"]["code"] == "upstream_error"
    assert len(r1.calls) == 1


def test_sse_error_before_content_falls_back_to_a_clean_stream_from_the_backup():
    clock = FakeClock()
    with (
        FaultServer("r1", [Fault(error_before_content=True)]) as r1,
        FaultServer("r2", [Fault(chunks=4, reasoning=2)]) as r2,
        router(clock, r1, r2) as client,
    ):
        response, text = stream_text(client, HELLO)
        pool = client.app.state.gateway.pool
        assert pool["r1"].in_flight == pool["r2"].in_flight == 0  # every attempt released once
    assert response.status_code == 200
    assert response.headers["x-r1edge-upstream"] == "r2"
    events = data_events(text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not any("error" in c for c in chunks)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert [d.get("reasoning_content") for d in deltas if "reasoning_content" in d] == ["r0 ", "r1 "]
    assert "".join(d.get("content", "") for d in deltas) == "c0 c1 c2 c3 "
    assert chunks[-1]["usage"]["completion_tokens"] == 4
    assert len(r1.calls) == 1


def test_cut_after_40_chunks_gives_40_chunks_and_an_error_event_without_done():
    clock = FakeClock()
    with FaultServer("r1", [Fault(chunks=60, cut_after=40)]) as r1, router(clock, r1) as client:
        _response, text = stream_text(client, HELLO)
        assert client.app.state.gateway.pool["r1"].in_flight == 0
    events = data_events(text)
    assert "[DONE]" not in events
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert [c for c in contents if c] == [f"c{i} " for i in range(40)]
    assert json.loads(events[-1])["error"]["code"] == "upstream_stream_truncated"


def test_first_token_timeout_abandons_the_slow_upstream_and_closes_its_connection():
    clock = FakeClock()
    with (
        FaultServer("slow", [Fault(delay_first_chunk=30)]) as slow,
        FaultServer("fast", [Fault()]) as fast,
        router(clock, slow, fast, extra={"timeouts": {"first_byte": 1}}) as client,
    ):
        response, text = stream_text(client, HELLO)
        assert response.headers["x-r1edge-upstream"] == "fast"
        assert data_events(text)[-1] == "[DONE]"
        assert slow.calls[0].hung_up.wait(5)  # the slow server notices the closed connection
    assert slow.calls[0].closed_early
    assert len(fast.calls) == 1


def test_silent_only_endpoint_gives_504_within_the_deadline():
    clock = FakeClock()
    with FaultServer("r1", [Fault(delay_first_chunk=60)]) as r1, router(clock, r1, deadline=2) as client:
        response = client.post("/v1/chat/completions", json={**HELLO, "stream": True})
        # An order of events, not a stopwatch: the 504 came while the upstream was still silent
        # (its first byte is 60 s away, the endpoint's first-byte timeout 60 s too), and the
        # router hung up on it, so the 2 s deadline is what ended the request.
        assert r1.calls[0].hung_up.wait(5)
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "timeout"


def test_keep_alive_comments_flow_while_waiting_for_the_first_token():
    clock = FakeClock()
    with (
        FaultServer("r1", [Fault(delay_first_chunk=1.2)]) as r1,
        router(clock, r1, keepalive_interval=0.3) as client,
    ):
        response, text = stream_text(client, HELLO)
    assert response.status_code == 200
    assert text.startswith(": keep-alive\n\n")
    assert text.count(": keep-alive") >= 2
    assert data_events(text)[-1] == "[DONE]"


def test_client_disconnect_mid_stream_closes_the_upstream_connection():
    clock = FakeClock()
    with FaultServer("r1", [Fault(chunks=200, chunk_delay=0.05)]) as r1:
        cfg = parse_config({"endpoints": [r1.endpoint()]}, environ={})
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(create_app(cfg, **clock.options()), host="127.0.0.1", port=port, log_level="error")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:  # the real server coming up
            time.sleep(0.01)
        try:
            with httpx.stream(
                "POST", f"http://127.0.0.1:{port}/v1/chat/completions", json={**HELLO, "stream": True}
            ) as response:
                lines = response.iter_lines()
                assert next(line for line in lines if line.startswith("data:"))
            assert r1.calls[0].hung_up.wait(5)
            assert r1.calls[0].closed_early
            # and a non-streamed request abandoned by its client is cancelled upstream too
            r1.script = [Fault(delay_headers=30)]
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=HELLO, timeout=0.5)
            assert r1.calls[1].hung_up.wait(5)
            assert r1.calls[1].closed_early
        finally:
            server.should_exit = True
            thread.join(timeout=10)


def test_breaker_opens_then_a_half_open_probe_gets_a_later_request_through():
    # Issue 19: the script had a third 500, so the probe failed and the request's retry went
    # to the endpoint whose breaker had just re-opened (a forced probe): the defect. The probe
    # now gets the answer that closes the breaker.
    clock = FakeClock()
    script = [Fault(500), Fault(500), Fault()]
    settings = {"breaker": {"failure_threshold": 2, "cooldown": 30}, "retry": {"max_attempts": 2}}
    with FaultServer("r1", script) as r1, router(clock, r1, **settings) as client:
        first = client.post("/v1/chat/completions", json=HELLO)
        breaker = client.app.state.gateway.pool["r1"].breaker
        assert first.status_code == 503
        assert breaker.state.value == "open"
        assert 1 <= int(first.headers["Retry-After"]) <= 30
        clock.offset += 31  # the cooldown passes
        second = client.post("/v1/chat/completions", json=HELLO)
    assert second.status_code == 200
    assert breaker.state.value == "closed"
    assert len(r1.calls) == 3


def test_a_failed_probe_reopens_the_breaker_and_the_request_does_not_retry_into_it():
    clock = FakeClock()
    script = [Fault(500), Fault(500), Fault(500), Fault()]
    settings = {"breaker": {"failure_threshold": 2, "cooldown": 30}, "retry": {"max_attempts": 2}}
    with FaultServer("r1", script) as r1, router(clock, r1, **settings) as client:
        client.post("/v1/chat/completions", json=HELLO)  # opens the breaker
        clock.offset += 31
        second = client.post("/v1/chat/completions", json=HELLO)  # the probe fails: open again
        breaker = client.app.state.gateway.pool["r1"].breaker
    assert second.status_code == 503
    assert second.headers["Retry-After"] == "30"
    assert breaker.state.value == "open"
    assert len(r1.calls) == 3  # no retry into the breaker it just re-opened


def test_when_every_breaker_is_open_the_one_cooling_down_first_is_probed():
    clock = FakeClock()
    settings = {"breaker": {"failure_threshold": 1, "cooldown": 60}, "retry": {"max_attempts": 1}}
    with (
        FaultServer("a", [Fault(503), Fault()]) as a,
        FaultServer("b", [Fault(503), Fault()]) as b,
        router(clock, a, b, **settings) as client,
    ):
        first = client.post("/v1/chat/completions", json=HELLO)  # a fails, b fails: both open
        assert first.status_code == 503
        pool = client.app.state.gateway.pool
        assert pool["a"].breaker.state.value == pool["b"].breaker.state.value == "open"
        # Issue 19: this request used to "force-probe" a 60 s before its cooldown ended. No
        # request reaches an open endpoint before its cooldown: it fails fast.
        shed = client.post("/v1/chat/completions", json=HELLO)
        assert (len(a.calls), len(b.calls)) == (1, 1)
        clock.offset += 61  # both cooldowns over: a's ended first (a opened first)
        second = client.post("/v1/chat/completions", json=HELLO)
    assert shed.status_code == 503
    assert shed.json()["error"]["code"] == "overloaded"
    assert 1 <= int(shed.headers["Retry-After"]) <= 60
    assert second.status_code == 200
    assert second.headers["x-r1edge-upstream"] == "a"
    assert (len(a.calls), len(b.calls)) == (2, 1)


def test_non_streamed_truncated_body_is_retried_not_returned():
    clock = FakeClock()
    script = [Fault(body=b'{"id": "x", "choices": [{"message": {"content": "hal'), Fault()]
    with FaultServer("r1", script) as r1, router(clock, r1) as client:
        response = client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "c0 c1 c2 "
    assert len(r1.calls) == 2


def test_single_endpoint_tier_retries_that_endpoint_with_backoff():
    clock = FakeClock()
    with FaultServer("r1", [Fault(502), Fault(504), Fault()]) as r1, router(clock, r1) as client:
        response = client.post("/v1/chat/completions", json=HELLO)
    assert response.status_code == 200
    assert response.headers["x-r1edge-attempts"] == "3"
    assert len(clock.sleeps) == 2
    assert all(0 <= w <= 8 for w in clock.sleeps)


def vllm_metrics(kv: float, waiting: int = 0) -> str:
    return (
        "# TYPE vllm:num_requests_running gauge\n"
        f'vllm:num_requests_running{{model_name="r1"}} 4.0\n'
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="r1"}} {waiting}.0\n'
        "# TYPE vllm:kv_cache_usage_perc gauge\n"
        f'vllm:kv_cache_usage_perc{{model_name="r1"}} {kv}\n'
    )


def test_load_over_the_target_moves_traffic_then_503_then_degrades_only_when_allowed():
    clock = FakeClock()
    with (
        FaultServer("busy", [Fault()]) as busy,
        FaultServer("calm", [Fault()]) as calm,
        FaultServer("edge", [Fault(chunks=1)]) as edge,
    ):
        busy.metrics_text = vllm_metrics(0.85)
        calm.metrics_text = vllm_metrics(0.30)
        endpoints = [busy.endpoint(metrics=True), calm.endpoint(priority=1, metrics=True), edge.endpoint(tier="edge")]
        cfg = parse_config({"endpoints": endpoints, "load": {"max_age": 0.01}}, environ={})
        with TestClient(create_app(cfg, **clock.options()), raise_server_exceptions=False) as client:
            first = client.post("/v1/chat/completions", json=HELLO)
            assert first.headers["x-r1edge-upstream"] == "calm"
            assert busy.calls == []
            calm.metrics_text = vllm_metrics(0.2, waiting=3)  # queueing: saturated
            clock.offset += 1
            refused = client.post("/v1/chat/completions", json=HELLO)
            assert refused.status_code == 503
            assert refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "overloaded"
            clock.offset += 1
            degraded = client.post("/v1/chat/completions", json=HELLO, headers={"x-r1edge-allow-degrade": "true"})
            assert degraded.status_code == 200
            assert degraded.headers["x-r1edge-route"] == "edge"
            assert degraded.headers["x-r1edge-reason"] == "degraded:overloaded"
            busy.metrics_text = vllm_metrics(0.5)
            clock.offset += 1
            recovered = client.post("/v1/chat/completions", json=HELLO)
            assert recovered.headers["x-r1edge-upstream"] == "busy"
    assert len(calm.calls) == 1
    assert len(edge.calls) == 1


def test_failing_cluster_degrades_to_the_edge_for_auto_when_configured():
    clock = FakeClock()
    with FaultServer("r1", [Fault(503)]) as r1, FaultServer("edge", [Fault()]) as edge:
        endpoints = [r1.endpoint(), edge.endpoint(tier="edge")]
        cfg = parse_config({"endpoints": endpoints, "allow_degrade": True, "retry": {"max_attempts": 2}}, environ={})
        heavy = {"model": "auto", "messages": [{"role": "user", "content": "Prove that 2 + 2 = 4."}]}
        with TestClient(create_app(cfg, **clock.options())) as client:
            auto = client.post("/v1/chat/completions", json=heavy)
            forced = client.post("/v1/chat/completions", json=HELLO)  # deepseek-r1 without the header
    assert auto.status_code == 200
    assert auto.headers["x-r1edge-route"] == "edge"
    assert auto.headers["x-r1edge-reason"].startswith("degraded:")
    assert forced.status_code == 503
