"""The real local stack (``infra/local/run.py``: edge server with the real SmolLM2 file,
``llama_cpp.server`` as the cluster stand-in, the router), driven with the official ``openai``
client, streamed and not, for each public model name."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from run import free_port  # infra/local/run.py, on pytest's pythonpath

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "infra" / "local" / "run.py"

SIMPLE = "Say hello to my friend Anna."
#: The packaged SmolLM2 answers "hi" with confidence about 0.69 (0.64 on its first 8 tokens) and
#: SIMPLE with about 0.33, at temperature 0: one stays at the edge, the other is escalated.
CONFIDENT = "hi"
HEAVY = "Prove that the square root of 2 is irrational."


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux /proc)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status  # a zombie has exited


class Stack:
    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(RUN), "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=dict(os.environ),
        )
        self.output: list[str] = []
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            if line.startswith('{"ready": true'):
                break
        else:
            raise RuntimeError("stack did not start:\n" + "".join(self.output))
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def stack():
    s = Stack()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=300)


CASES = [
    ("auto", CONFIDENT, "edge"),
    ("auto", HEAVY, "cluster"),
    ("auto", SIMPLE, "cluster"),  # classified simple, but the edge is not confident: escalated
    ("edge", SIMPLE, "edge"),
    ("deepseek-r1", SIMPLE, "cluster"),
]
REASONS = {CONFIDENT: "simple", HEAVY: "math:", SIMPLE: "low_confidence:"}


@pytest.mark.parametrize(("model", "prompt", "route"), CASES)
def test_openai_client_non_streamed(client, model, prompt, route):
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": prompt}], max_tokens=24, temperature=0
    )
    completion = raw.parse()
    assert raw.headers["x-r1edge-route"] == route
    if model == "auto":
        assert raw.headers["x-r1edge-reason"].startswith(REASONS[prompt])
    assert raw.headers["x-r1edge-upstream"] == ("edge-local" if route == "edge" else "cluster-local")
    assert raw.headers["x-request-id"]
    assert completion.choices[0].message.content.strip()
    assert completion.usage.completion_tokens > 0


@pytest.mark.parametrize(("model", "prompt", "route"), CASES)
def test_openai_client_streamed(client, model, prompt, route):
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=24,
        temperature=0,
        stream=True,
        extra_headers={"x-request-id": f"it-{model}-{route}"},
    )
    assert raw.headers["x-r1edge-route"] == route
    if model == "auto":
        assert raw.headers["x-r1edge-reason"].startswith(REASONS[prompt])
    assert raw.headers["x-request-id"] == f"it-{model}-{route}"
    text = ""
    finish = None
    for chunk in raw.parse():
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    assert text.strip()
    assert finish in ("stop", "length")


def test_raw_sse_ends_with_done(stack):
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": SIMPLE}], "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{stack.base_url}/chat/completions", json=body, timeout=120) as response:
        text = "".join(response.iter_text())
    events = [e for e in text.split("\n\n") if e.strip()]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    json.loads(events[0].removeprefix("data: "))


def test_health_models_and_openai_errors(stack, client):
    health = httpx.get(f"http://127.0.0.1:{stack.port}/health").json()
    assert health == {"status": "ok", "endpoints": {"edge-local": "ok", "cluster-local": "ok"}}
    assert [m.id for m in client.models.list()] == ["auto", "edge", "deepseek-r1"]
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-x", messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], max_tokens=0)
    assert bad.value.param == "max_tokens"


def test_edge_prompt_over_its_context_goes_to_the_cluster(client):
    long_prompt = "Tell me about apples. " * 450  # ~2475 estimated tokens: over the edge's 2048
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": long_prompt}], max_tokens=8
    )
    assert raw.headers["x-r1edge-route"] == "cluster"
    assert raw.headers["x-r1edge-reason"].startswith("exceeds_edge_context")
    assert raw.parse().choices[0].message.content is not None


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_every_process_the_stack_started(sig):
    s = Stack()
    started = children(s.proc.pid)
    try:
        assert len(started) == 5  # edge, cluster stand-in, local AWS (moto), router, job worker
    except AssertionError:
        s.stop()  # a failed count must not leave the stack running
        raise
    assert s.stop(sig) == 0
    assert [pid for pid in started if alive(pid)] == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{s.port}/health", timeout=2)


def test_router_only_with_a_config_file(tmp_path, stack):
    config = tmp_path / "routing.yaml"
    edge_url = f"http://127.0.0.1:{stack.port}/v1"  # the full stack's router, as an upstream
    dead = f"http://127.0.0.1:{free_port()}/v1"  # a backup that is down must not stop the start
    config.write_text(
        f"endpoints:\n  - {{name: via-router, url: '{edge_url}', tier: edge}}\n"
        f"  - {{name: dead-backup, url: '{dead}', tier: edge, priority: 1}}\n"
    )
    s = Stack("--router-only", "--config", str(config))
    try:
        assert len(children(s.proc.pid)) == 1
        health = httpx.get(s.base_url.removesuffix("/v1") + "/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["endpoints"]["via-router"] == "ok"
        client = openai.OpenAI(base_url=s.base_url, api_key="unused", max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="edge", messages=[{"role": "user", "content": SIMPLE}], max_tokens=8
        )
        assert raw.headers["x-r1edge-upstream"] == "via-router"
    finally:
        assert s.stop() == 0


def test_configs_are_served_on_the_router_port_from_the_local_s3(stack):
    base = stack.base_url.removesuffix("/v1")
    with httpx.Client(base_url=base, timeout=30) as http:
        routing = http.get("/v1/configs/routing.json")
        assert routing.status_code == 200
        assert routing.headers["content-type"] == "application/json"
        assert {e["name"] for e in routing.json()["endpoints"]} == {"edge-local", "cluster-local"}
        etag = routing.headers["etag"]
        assert routing.headers["cache-control"].startswith("public, max-age=60")
        revalidated = http.get("/v1/configs/routing.json", headers={"If-None-Match": f'"x", W/{etag}'})
        assert (revalidated.status_code, revalidated.content, revalidated.headers["etag"]) == (304, b"", etag)
        manifest = http.get("/v1/configs/models/edge.json").json()
        assert manifest["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
        head = http.head("/v1/configs/models/edge.json")
        assert (head.status_code, head.content) == (200, b"")
        assert http.get("/v1/configs/%2e%2e/secret").json()["error"]["code"] == "invalid_config_name"
        missing = http.get("/v1/configs/nope.yaml")
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")


def test_a_job_goes_through_the_local_queue_and_worker(stack):
    base = stack.base_url.removesuffix("/v1")
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": SIMPLE}], "max_tokens": 8}
    with httpx.Client(base_url=base, timeout=30) as http:
        submitted = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "local-stack-1"})
        assert submitted.status_code == 202
        job = submitted.json()
        again = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "local-stack-1"})
        assert again.json()["id"] == job["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            current = http.get(submitted.headers["location"]).json()
            if current["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)  # polling the real model's answer, not waiting out a timer
    assert current["status"] == "succeeded", current
    assert current["attempts"] == 1
    completion = current["response"]
    assert completion["object"] == "chat.completion"
    assert completion["usage"]["completion_tokens"] <= 8
    assert completion["choices"][0]["message"]["content"]
