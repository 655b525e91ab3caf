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
from run import HEALTH_TABLE, free_port, moto_session  # infra/local/run.py, on pytest's pythonpath

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


#: The development key the tests give the stack (``R1EDGE_API_KEY`` in its environment).
API_KEY = "r1e-local-stack-test-key"


class Stack:
    """``run.py`` with ``args``; ``api_key`` is put in its environment as ``R1EDGE_API_KEY``
    (``None``: removed, so the stack makes a key); ``self.api_key`` is the key it printed."""

    def __init__(self, *args: str, api_key: str | None = API_KEY, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        environ = {**os.environ, **(env or {})}
        environ.pop("R1EDGE_API_KEY", None)
        if api_key is not None:
            environ["R1EDGE_API_KEY"] = api_key
        self.proc = subprocess.Popen(
            [sys.executable, str(RUN), "--port", str(self.port), *args],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=environ,
        )
        self.output: list[str] = []
        self.api_key = ""
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.output.append(line)
            if line.startswith("R1EDGE_API_KEY="):
                self.api_key = line.strip().split("=", 1)[1]
            if line.startswith('{"ready": true'):
                break
        else:
            raise RuntimeError("stack did not start:\n" + "".join(self.output))
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.auth = {"Authorization": f"Bearer {self.api_key}"}

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
    assert stack.api_key == API_KEY  # R1EDGE_API_KEY from the environment, verbatim
    return openai.OpenAI(base_url=stack.base_url, api_key=stack.api_key, max_retries=0, timeout=300)


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
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=24,
        temperature=0,
        extra_headers={"cache-control": "no-cache"},  # routing, not the response cache, is tested here
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
        extra_headers={"x-request-id": f"it-{model}-{route}", "cache-control": "no-cache"},
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
    with httpx.stream(
        "POST", f"{stack.base_url}/chat/completions", json=body, headers=stack.auth, timeout=120
    ) as response:
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
        assert len(started) == 6  # edge, cluster stand-in, local AWS (moto), health prober, router, job worker
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
        f"endpoints:\n  - {{name: via-router, url: '{edge_url}', tier: edge,\n"
        "     auth: {type: bearer, env: FULL_STACK_KEY}}\n"
        f"  - {{name: dead-backup, url: '{dead}', tier: edge, priority: 1}}\n"
    )
    # the full stack's router needs its key: this router sends it as the endpoint's bearer token
    s = Stack("--router-only", "--config", str(config), api_key=None, env={"FULL_STACK_KEY": stack.api_key})
    try:
        assert len(children(s.proc.pid)) == 2  # the router and its local AWS (moto) for the API keys
        assert s.api_key.startswith("r1e-")  # no R1EDGE_API_KEY given: a new development key, printed
        assert s.api_key != stack.api_key
        health = httpx.get(s.base_url.removesuffix("/v1") + "/health", timeout=10)
        assert health.status_code == 503
        assert health.json()["endpoints"]["via-router"] == "ok"
        assert httpx.get(f"{s.base_url}/models", timeout=10).status_code == 401
        client = openai.OpenAI(base_url=s.base_url, api_key=s.api_key, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="edge", messages=[{"role": "user", "content": SIMPLE}], max_tokens=8
        )
        assert raw.headers["x-r1edge-upstream"] == "via-router"
        counted = 'r1edge_requests_total{endpoint="via-router",route="/v1/chat/completions"'
        for _ in range(50):  # the request is counted once its response has ended, which the client may not wait for
            metrics = httpx.get(s.base_url.removesuffix("/v1") + "/metrics", timeout=10)  # no API key needed
            assert metrics.status_code == 200
            if counted in metrics.text:
                break
            time.sleep(0.1)
        assert counted in metrics.text, metrics.text
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


def test_metrics_and_the_health_table_under_make_run(stack):
    """The prober writes the moto health table every 30 s (its first round at start-up); the
    router reads it (every 5 s at most, on requests) and serves what it sees, with its request
    counts, as Prometheus text at /metrics without an API key. (Whether the stand-ins answer the
    probes in time depends on this machine's load: the router must mirror the table either way.)"""
    base = stack.base_url.removesuffix("/v1")
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"model": "edge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    gauges = {
        "edge-local": ("r1edge_endpoint_up", (("endpoint", "edge-local"), ("tier", "edge"))),
        "cluster-local": ("r1edge_endpoint_up", (("endpoint", "cluster-local"), ("tier", "cluster"))),
    }
    values: dict[tuple[str, tuple], float] = {}
    table: dict[str, dict] = {}
    deadline = time.monotonic() + 60  # the first round may wait out two 20 s completion probes
    while time.monotonic() < deadline:
        assert httpx.post(f"{stack.base_url}/chat/completions", json=body, headers=auth, timeout=60).status_code == 200
        table = health_records(stack)
        values = prometheus(httpx.get(f"{base}/metrics", timeout=10).text)
        if set(table) == set(gauges) and all(values.get(key) == mirrored(table[n]) for n, key in gauges.items()):
            break  # (a round may land between the two reads: the router sees it within 5 s)
        time.sleep(1)
    assert set(table) == set(gauges), table
    for name, key in gauges.items():
        assert table[name]["status"] in ("up", "down"), table[name]
        assert values[key] == mirrored(table[name]), (table, values)
        assert time.time() - float(table[name]["checked_at"]) < 90
    served = ("endpoint", "edge-local"), ("route", "/v1/chat/completions"), ("status", "200"), ("tier", "edge")
    assert values[("r1edge_requests_total", served)] >= 1


def mirrored(record: dict) -> float:
    """The ``r1edge_endpoint_up`` value a health record should give."""
    return 0.0 if record["status"] == "down" else 1.0


def prometheus(text: str) -> dict[tuple[str, tuple], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def health_records(stack) -> dict[str, dict]:
    """The health table in the stack's moto server (its URL from the start-up lines)."""

    [line] = [line for line in stack.output if "local DynamoDB" in line]
    endpoint = line.split()[3]
    client = moto_session().resource("dynamodb", endpoint_url=endpoint)
    return {item["endpoint"]: item for item in client.Table(HEALTH_TABLE).scan()["Items"]}


def test_api_keys_on_the_local_stack(stack):
    """The development key works in either header; no key or another key is a 401; answers carry
    the development key's limits (600 requests and 1,000,000 tokens per minute)."""
    assert f"R1EDGE_API_KEY={API_KEY}\n" in stack.output
    body = {"model": "edge", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    with httpx.Client(base_url=stack.base_url, timeout=120) as http:
        assert http.post("/chat/completions", json=body).status_code == 401
        wrong = http.post("/chat/completions", json=body, headers={"Authorization": "Bearer r1e-wrong"})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
        ok = http.post("/chat/completions", json=body, headers={"x-api-key": API_KEY})
        assert ok.status_code == 200
        assert ok.headers["x-ratelimit-limit-requests"] == "600"
        assert ok.headers["x-ratelimit-limit-tokens"] == "1000000"
        assert int(ok.headers["x-ratelimit-remaining-requests"]) < 600
        assert http.get("/models", headers=stack.auth).status_code == 200
    assert httpx.get(f"http://127.0.0.1:{stack.port}/health", timeout=30).status_code == 200  # no key needed


def test_repeats_are_answered_from_the_cache_and_stored_in_the_local_dynamodb(stack, client):

    messages = [{"role": "user", "content": "Name one colour of the rainbow."}]
    first = client.chat.completions.with_raw_response.create(
        model="edge", messages=messages, max_tokens=12, temperature=0
    )
    again = client.chat.completions.with_raw_response.create(
        model="edge", messages=messages, max_tokens=12, temperature=0, stream=True
    )
    assert first.headers["x-cache"] == "MISS"
    assert (again.headers["x-cache"], again.headers["x-r1edge-route"]) == ("HIT", "cache")
    text = "".join(c.choices[0].delta.content or "" for c in again.parse() if c.choices)
    assert text == first.parse().choices[0].message.content
    [moto_url] = [line.split()[3] for line in stack.output if "local DynamoDB" in line]
    dynamodb = moto_session().client("dynamodb", endpoint_url=moto_url)
    items = dynamodb.scan(TableName="r1edge-cache")["Items"]
    assert any(json.loads(i["entry"]["S"])["completion"]["choices"][0]["message"]["content"] == text for i in items)


def test_a_job_goes_through_the_local_queue_and_worker(stack):
    base = stack.base_url.removesuffix("/v1")
    body = {"model": "deepseek-r1", "messages": [{"role": "user", "content": SIMPLE}], "max_tokens": 8}
    with httpx.Client(base_url=base, timeout=30) as http:
        headers = {"Idempotency-Key": "local-stack-1", **stack.auth}
        submitted = http.post("/v1/jobs", json=body, headers=headers)
        assert submitted.status_code == 202
        job = submitted.json()
        again = http.post("/v1/jobs", json=body, headers=headers)
        assert again.json()["id"] == job["id"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            current = http.get(submitted.headers["location"], headers=stack.auth).json()
            if current["status"] in ("succeeded", "failed"):
                break
            time.sleep(0.2)  # polling the real model's answer, not waiting out a timer
    assert current["status"] == "succeeded", current
    assert current["attempts"] == 1
    completion = current["response"]
    assert completion["object"] == "chat.completion"
    assert completion["usage"]["completion_tokens"] <= 8
    assert completion["choices"][0]["message"]["content"]
