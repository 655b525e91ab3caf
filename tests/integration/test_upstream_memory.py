"""The router's memory stays bounded whatever an upstream sends: a 128 MiB JSON body, an SSE line
that never ends, a stream that never ends. The router runs in its own process (uvicorn, as under
``make run-router``) so its peak resident memory (``VmHWM`` in ``/proc/<pid>/status``) is its
own; each case checks the peak against the one before it, with a generous bound, and the exact
answer the client gets."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from faultserver import Fault, FaultServer
from run import ROOT, child_env, free_port, uvicorn_argv

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
#: How much the router's peak resident memory may grow in one case (the limits it reads under
#: are 8 MiB for a JSON answer and 1 MiB for an SSE line).
GROWTH_BOUND = 64 * MiB
ASK = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}]}


def peak_rss(pid: int) -> int:
    """The process's peak resident set size (``VmHWM``), bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


class Router:
    """The router in a subprocess, against ``servers`` (in priority order, one attempt each)."""

    def __init__(self, tmp_path: Path, *servers: FaultServer) -> None:
        endpoints = [s.endpoint(priority=i) for i, s in enumerate(servers)]
        config = tmp_path / "routing.json"
        config.write_text(json.dumps({"endpoints": endpoints, "retry": {"max_attempts": 1}}))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = uvicorn_argv("router", "127.0.0.1", self.port)
        environ = child_env(R1EDGE_CONFIG=str(config), R1EDGE_CACHE_DIR=str(tmp_path / "cache"))
        self.proc = subprocess.Popen(argv, env=environ, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=sys.stderr)
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def wait_ready(self) -> None:
        for _ in range(300):
            assert self.proc.poll() is None, "the router exited"
            try:
                if self.client.get("/ping").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)  # polling a starting process, not waiting for behaviour
        raise AssertionError("the router did not start")

    @property
    def peak(self) -> int:
        return peak_rss(self.proc.pid)

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def make_router(tmp_path) -> Iterator:
    started: list[Router] = []

    def start(*servers: FaultServer) -> Router:
        router = Router(tmp_path, *servers)
        started.append(router)
        router.wait_ready()
        return router

    yield start
    for router in started:
        router.close()


def warm(router: Router) -> int:
    """Serve a normal answer and a normal stream; return the peak after them."""
    assert router.client.post("/v1/chat/completions", json=ASK).status_code == 200
    with router.client.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as response:
        assert response.status_code == 200
        assert response.read().endswith(b"data: [DONE]\n\n")
    return router.peak


def stream_text(router: Router) -> tuple[int, str]:
    with router.client.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as response:
        return response.status_code, response.read().decode()


def test_a_128_mib_json_body_is_read_no_further_than_8_mib_then_fallback_then_502(make_router):
    huge = Fault(huge_json=128 * MiB)
    with FaultServer("r1", [Fault(), Fault(), huge]) as r1, FaultServer("r2", [huge]) as r2:
        router = make_router(r1, r2)
        before = warm(router)
        response = router.client.post("/v1/chat/completions", json=ASK)
        grown = router.peak - before
        assert r1.calls[-1].hung_up.wait(10)  # neither was read to its end
        assert r2.calls[-1].hung_up.wait(10)
    assert response.status_code == 502
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "upstream_error")
    too_large = "unusable body: ResponseTooLarge: upstream body is larger than 8388608 bytes"
    assert f"r1: {too_large}" in error["message"]
    assert f"r2: {too_large}" in error["message"]
    assert grown < GROWTH_BOUND, f"the router's peak RSS grew by {grown / MiB:.1f} MiB"


def test_a_newline_less_sse_line_before_content_falls_back_then_502(make_router):
    endless_line = Fault(endless_line=True, chunks=0)
    with FaultServer("r1", [Fault(), Fault(), endless_line]) as r1, FaultServer("r2", [endless_line]) as r2:
        router = make_router(r1, r2)
        before = warm(router)
        status, text = stream_text(router)
        grown = router.peak - before
        assert r1.calls[-1].hung_up.wait(10)
        assert r2.calls[-1].hung_up.wait(10)
    assert status == 502
    error = json.loads(text)["error"]
    assert (error["type"], error["code"]) == ("server_error", "upstream_error")
    assert error["message"].count("upstream sent an SSE line longer than 1048576 bytes") == 2
    assert grown < GROWTH_BOUND, f"the router's peak RSS grew by {grown / MiB:.1f} MiB"


def test_a_newline_less_sse_line_after_content_truncates_the_stream(make_router):
    with FaultServer("r1", [Fault(), Fault(), Fault(endless_line=True, chunks=2)]) as r1:
        router = make_router(r1)
        before = warm(router)
        status, text = stream_text(router)
        grown = router.peak - before
        assert r1.calls[-1].hung_up.wait(10)
    assert status == 200
    events = [e.removeprefix("data: ") for e in text.split("\n\n") if e.startswith("data: ")]
    contents = [json.loads(e)["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == [None, "c0 ", "c1 "]  # the role chunk, then both content chunks
    assert json.loads(events[-1]) == {
        "error": {
            "message": "upstream sent an SSE line longer than 1048576 bytes (the limit, max_sse_line_bytes)",
            "type": "server_error",
            "param": None,
            "code": "upstream_stream_truncated",
        }
    }
    assert "[DONE]" not in text
    assert grown < GROWTH_BOUND, f"the router's peak RSS grew by {grown / MiB:.1f} MiB"


def test_an_endless_stream_is_relayed_without_holding_it_and_closed_when_the_client_goes(make_router):
    with FaultServer("r1", [Fault(), Fault(), Fault(endless=True)]) as r1:
        router = make_router(r1)
        before = warm(router)
        received = 0
        with router.client.stream("POST", "/v1/chat/completions", json={**ASK, "stream": True}) as response:
            assert response.status_code == 200
            for part in response.iter_bytes():
                received += len(part)
                if received > 128 * MiB:
                    break
        assert r1.calls[-1].hung_up.wait(10)  # the router closed the upstream when its client left
        grown = router.peak - before
    assert received > 128 * MiB
    assert grown < GROWTH_BOUND, f"the router's peak RSS grew by {grown / MiB:.1f} MiB"
