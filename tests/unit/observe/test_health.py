"""Active health checks: the prober against fake endpoints that are up, down, slow and
overloaded (moto DynamoDB for the health table), its schedule, and the router obeying the table:
a down endpoint skipped until it recovers, stale records ignored, load and probe latency merged
with the router's own signals."""

from __future__ import annotations

import asyncio
import json
import threading
from decimal import Decimal

import boto3
import httpx
import pytest
from fakes import FakeClock, FakeUpstream, completion, config, endpoint, json_reply
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.observe.health import DynamoHealthStore, HealthView, Prober, ProbeResult, run_rounds
from r1edge.observe.metrics import Recorder

VLLM_IDLE = """# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{model_name="r1"} 2
vllm:num_requests_waiting{model_name="r1"} 0
vllm:kv_cache_usage_perc{model_name="r1"} 0.25
"""
SGLANG_QUEUEING = """# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="r1"} 64
sglang:num_queue_reqs{model_name="r1"} 7
sglang:token_usage{model_name="r1"} 0.55
"""
MODELS = {"object": "list", "data": [{"id": "deepseek-r1", "object": "model"}]}
HI = [{"role": "user", "content": "Prove that 2 is prime."}]


class Wall:
    """A wall clock that moves only when told."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def fake_endpoint(clock: FakeClock, models_delay: float = 0.0, completion_delay: float = 0.0, metrics: str = ""):
    """A scripted OpenAI-compatible server: ``/v1/models``, ``/metrics``, chat completions; the
    delays advance the fake clock (what the prober measures), never the real one."""

    calls: list[str] = []

    def reply(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path.endswith("/models"):
            clock.offset += models_delay
            return json_reply(MODELS)
        if request.url.path == "/metrics":
            return httpx.Response(200, text=metrics) if metrics else httpx.Response(404)
        clock.offset += completion_delay
        body = json.loads(request.content)
        assert body["max_tokens"] == 1
        return json_reply(completion("ok"))

    return reply, calls


def _client(table):
    """A boto3 DynamoDB client in the table's (moto) region."""
    return boto3.client("dynamodb", region_name="us-east-1")


def prober_for(fake: FakeUpstream, endpoints, table, clock: FakeClock, wall: Wall, **extra) -> Prober:
    cfg = config(*endpoints, **extra)
    store = DynamoHealthStore(table.name, _client(table))
    return Prober(cfg, fake.upstream(), store, Recorder("health"), wall, clock)


def items(table) -> dict[str, dict]:
    return {i["endpoint"]: i for i in table.scan()["Items"]}


def test_up_down_slow_and_overloaded_endpoints_are_recorded_as_such(health_table):
    clock, wall = FakeClock(), Wall()
    up, up_calls = fake_endpoint(clock, metrics=VLLM_IDLE)
    slow, _ = fake_endpoint(clock, models_delay=2.0, completion_delay=3.0)
    busy, _ = fake_endpoint(clock, metrics=SGLANG_QUEUEING)
    fake = FakeUpstream(
        {
            "up": [up],
            "slow": [slow],
            "busy": [busy],
            "hung": [httpx.ReadTimeout("timed out")],
            # "down" is not scripted: connecting to it fails
        }
    )
    endpoints = [endpoint(n, "cluster") for n in ("up", "down", "slow", "busy", "hung")]
    prober = prober_for(fake, endpoints, health_table, clock, wall)
    results = {r.endpoint: r for r in asyncio.run(prober.run_round())}

    assert {n: r.status for n, r in results.items()} == {
        "up": "up",
        "down": "down",
        "slow": "up",
        "busy": "overloaded",
        "hung": "down",
    }
    stored = items(health_table)
    assert stored["up"]["load"] == Decimal("0.25")
    assert (stored["up"]["running"], stored["up"]["waiting"]) == (2, 0)
    assert stored["up"]["completion_ok"] is True
    assert up_calls == ["/v1/models", "/metrics", "/v1/chat/completions"]
    assert stored["slow"]["latency"] == pytest.approx(Decimal("2.0"), abs=Decimal("0.05"))
    assert stored["slow"]["completion_latency"] == pytest.approx(Decimal("3.0"), abs=Decimal("0.05"))
    assert stored["busy"]["load"] == 1  # requests are waiting: saturated whatever the KV cache says
    assert stored["busy"]["waiting"] == 7
    assert "ConnectError" in stored["down"]["detail"]
    assert "ReadTimeout" in stored["hung"]["detail"]
    assert "latency" not in stored["down"]
    for item in stored.values():
        assert item["checked_at"] == Decimal(str(wall.now))
        assert item["expires_at"] == int(wall.now + 600)  # the TTL attribute: health.ttl after the probe
    # one probe event per endpoint
    text = prober.recorder.prometheus_text().decode()
    assert 'r1edge_health_probes_total{endpoint="busy",status="overloaded"} 1.0' in text
    assert 'r1edge_health_probes_total{endpoint="down",status="down"} 1.0' in text


def test_a_failing_completion_marks_the_endpoint_down_and_is_retried_every_round(health_table):
    clock, wall = FakeClock(), Wall()
    models_ok = json_reply(MODELS)
    fake = FakeUpstream({"r1": [lambda r: models_ok if r.url.path.endswith("/models") else httpx.Response(500)]})
    prober = prober_for(fake, [endpoint("r1", "cluster")], health_table, clock, wall)
    [first] = asyncio.run(prober.run_round())
    assert (first.status, first.completion_ok) == ("down", False)
    assert first.detail == "completion: HTTP 500"
    wall.now += 30
    asyncio.run(prober.run_round())
    completions = [c for c in fake.calls if c.url.path.endswith("/chat/completions")]
    assert len(completions) == 2  # a failed completion probe is repeated at once, not in 5 minutes


def test_the_completion_probe_runs_at_its_slower_interval(health_table):
    clock, wall = FakeClock(), Wall()
    reply, calls = fake_endpoint(clock)
    fake = FakeUpstream({"r1": [reply]})
    prober = prober_for(
        fake, [endpoint("r1", "cluster")], health_table, clock, wall, health={"completion_interval": 90}
    )
    statuses = []
    for _ in range(5):  # rounds at 0, 30, 60, 90, 120 s
        [result] = asyncio.run(prober.run_round())
        statuses.append((result.status, result.completion_at))
        wall.now += 30
    assert calls.count("/v1/chat/completions") == 2  # at 0 s and at 90 s
    assert calls.count("/v1/models") == 5
    start = statuses[0][1]
    assert [s for s, _ in statuses] == ["up"] * 5
    assert [at for _, at in statuses] == [start, start, start, start + 90, start + 90]


def test_two_rounds_start_30_seconds_apart_with_an_injected_wait(health_table):
    clock, wall = FakeClock(), Wall()
    reply, _ = fake_endpoint(clock, models_delay=4.0)  # each round takes 4 s of (fake) time
    fake = FakeUpstream({"r1": [reply]})
    prober = prober_for(fake, [endpoint("r1", "cluster")], health_table, clock, wall)
    rounds = asyncio.run(run_rounds(prober, 2, 30.0, sleep=clock.sleep, clock=clock))
    assert len(rounds) == 2
    assert len(clock.sleeps) == 1
    # 30 s after the first round began: 4 s of the endpoint's (fake) time and the round's own
    # real time are taken off the wait
    assert 24.0 < clock.sleeps[0] <= 26.0


def test_the_health_view_drops_stale_records_and_rereads_after_max_age(health_table):
    wall = Wall()
    store = DynamoHealthStore(health_table.name, _client(health_table))
    store.put(ProbeResult("r1", "cluster", "down", wall.now - 10, detail="x"), ttl=600)
    reads = []
    original = store.read_all
    store.read_all = lambda: reads.append(1) or original()
    view = HealthView(store, max_age=5, stale_after=90, wall_clock=wall)
    assert view.due
    view.refresh()
    assert view.fresh()["r1"].status == "down"
    wall.now += 4
    assert not view.due  # cached for max_age seconds
    wall.now += 77  # the record is now 91 s old: more than three probe periods
    assert view.fresh() == {}
    assert view.due
    assert len(reads) == 1


def put(table, name: str, status: str, age: float, wall: Wall, **extra) -> None:
    DynamoHealthStore(table.name, _client(table)).put(
        ProbeResult(name, "cluster", status, wall.now - age, **extra), ttl=600
    )


def router_with_health(table, wall: Wall, fake: FakeUpstream, *endpoints):
    store = DynamoHealthStore(table.name, _client(table))
    view = HealthView(store, max_age=5, stale_after=90, wall_clock=wall)
    cfg = config(*endpoints)
    return TestClient(create_app(cfg, fake.upstream(), health=view, **FakeClock().options()))


def ask(client) -> str:
    response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": HI})
    assert response.status_code == 200, response.text
    return response.headers["x-r1edge-upstream"]


PRIMARY_BACKUP = (endpoint("primary", "cluster"), endpoint("backup", "cluster", priority=1))


def test_the_router_skips_a_down_endpoint_until_it_recovers(health_table):
    wall = Wall()
    fake = FakeUpstream({"primary": [json_reply(completion())], "backup": [json_reply(completion())]})
    put(health_table, "primary", "down", 5, wall, detail="GET /models: HTTP 503")
    with router_with_health(health_table, wall, fake, *PRIMARY_BACKUP) as client:
        assert [ask(client) for _ in range(3)] == ["backup"] * 3
        assert all(c.url.host == "backup" for c in fake.calls)  # never even tried
        metrics = client.get("/metrics").text
        assert 'r1edge_endpoint_up{endpoint="primary",tier="cluster"} 0.0' in metrics
        put(health_table, "primary", "up", 0, wall)
        assert ask(client) == "backup"  # the table is re-read only after max_age (5 s)
        wall.now += 5
        assert ask(client) == "primary"


def test_stale_health_records_are_ignored(health_table):
    wall = Wall()
    fake = FakeUpstream({"primary": [json_reply(completion())], "backup": [json_reply(completion())]})
    put(health_table, "primary", "down", 91, wall)  # older than three 30 s periods
    with router_with_health(health_table, wall, fake, *PRIMARY_BACKUP) as client:
        assert ask(client) == "primary"
        assert "r1edge_endpoint_up{" not in client.get("/metrics").text


def test_with_every_endpoint_down_the_router_still_tries_them(health_table):
    wall = Wall()
    fake = FakeUpstream({"primary": [json_reply(completion())]})
    put(health_table, "primary", "down", 5, wall)
    put(health_table, "backup", "down", 5, wall)
    with router_with_health(health_table, wall, fake, *PRIMARY_BACKUP) as client:
        assert ask(client) == "primary"  # the table may lag a recovery: an answer beats a 503


def test_an_overloaded_record_sends_traffic_to_the_backup(health_table):
    wall = Wall()
    fake = FakeUpstream({"primary": [json_reply(completion())], "backup": [json_reply(completion())]})
    put(health_table, "primary", "overloaded", 5, wall, load=0.9)
    with router_with_health(health_table, wall, fake, *PRIMARY_BACKUP) as client:
        assert ask(client) == "backup"
        assert 'r1edge_endpoint_load{endpoint="primary",tier="cluster"} 0.9' in client.get("/metrics").text


def test_a_slow_completion_probe_moves_traffic_before_any_request_is_slow(health_table):
    wall = Wall()
    fake = FakeUpstream({"primary": [json_reply(completion())], "backup": [json_reply(completion())]})
    probe = {"completion_ok": True, "completion_at": wall.now - 5}
    put(health_table, "primary", "up", 5, wall, completion_latency=2.0, **probe)  # over the 0.5 s threshold
    put(health_table, "backup", "up", 5, wall, completion_latency=0.1, **probe)
    with router_with_health(health_table, wall, fake, *PRIMARY_BACKUP) as client:
        assert ask(client) == "backup"
        state = client.app.state.gateway.pool["primary"]
        assert state.ttfb == pytest.approx(2.0)  # one sample, applied once however often it is read
        wall.now += 5
        ask(client)
        assert state.ttfb == pytest.approx(2.0)


def test_a_slow_health_table_never_holds_a_request_for_long(health_table):
    wall = Wall()
    fake = FakeUpstream({"primary": [json_reply(completion())], "backup": [json_reply(completion())]})
    put(health_table, "primary", "down", 5, wall)
    store = DynamoHealthStore(health_table.name, _client(health_table))
    gate = threading.Event()
    original = store.read_all

    def slow_read():
        gate.wait(10)
        return original()

    store.read_all = slow_read
    view = HealthView(store, max_age=5, stale_after=90, wall_clock=wall)
    read = threading.Event()  # set when the worker thread's refresh has finished
    refresh = view.refresh

    def refresh_and_tell():
        refresh()
        read.set()

    view.refresh = refresh_and_tell
    with TestClient(
        create_app(config(*PRIMARY_BACKUP), fake.upstream(), health=view, **FakeClock().options())
    ) as client:
        assert ask(client) == "primary"  # routed on passive signals after READ_WAIT (0.5 s)
        assert not read.is_set()  # answered while the read is still held at the gate
        assert view.reading
        assert ask(client) == "primary"  # one read in flight at a time: no second one started
        gate.set()
        assert read.wait(10)
        assert not view.reading
        assert ask(client) == "backup"  # the read finished in its thread and serves this request


def test_the_table_store_uses_one_lazy_client_with_its_short_timeouts(health_table):
    from r1edge.aws.ddb import Table
    from r1edge.observe.health import CLIENT_CONFIG

    store = DynamoHealthStore(health_table.name)  # no client given: the production path
    assert store.table._lazy._client is None  # nothing made before the first use

    result = ProbeResult("r1-a", "cluster", "up", 1_000.0, latency=0.25, completion_ok=True)
    store.put(result, ttl=300)
    assert store.read_all() == {"r1-a": result}
    assert isinstance(store.table, Table)
    config = store.table.client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (CLIENT_CONFIG["connect_timeout"], 2)
    assert config.retries == CLIENT_CONFIG["retries"]
    assert items(health_table)["r1-a"]["expires_at"] == 1_300
