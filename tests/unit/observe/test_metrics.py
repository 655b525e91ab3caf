"""Metrics: the router's events as CloudWatch EMF (parsed from stdout) and as Prometheus text at
``GET /metrics`` (parsed with prometheus-client's parser); the Grafana dashboard and the alert
rules load, and every r1edge metric they reference is one the code emits."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from types import SimpleNamespace

import boto3
import httpx
import pytest
import yaml
from fakes import FakeClock, FakeUpstream, chunk, completion, config, endpoint, json_reply, sse, sse_reply
from prometheus_client.parser import text_string_to_metric_families
from samlocal import load_template
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.edge.app import emit_cold_start_metrics
from r1edge.observe.health import DynamoHealthStore, HealthView, Prober, ProbeResult
from r1edge.observe.metrics import Recorder

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "infra/monitoring/grafana-dashboard.json"
RULES = ROOT / "infra/monitoring/prometheus-rules.yaml"
SIMPLE = [{"role": "user", "content": "Say hello to Anna."}]
HEAVY = [{"role": "user", "content": "Prove that the square root of 2 is irrational."}]
USAGE_CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14},
}


def emf_lines(out: str) -> list[dict]:
    """The EMF objects printed on stdout (one JSON document per line with an ``_aws`` key)."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def emf_values(lines: list[dict], name: str, **dims: str) -> list[float]:
    """Every value of metric ``name`` in EMF lines whose dimensions include ``dims``."""
    values: list[float] = []
    for line in lines:
        names = {m["Name"] for d in line["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
        if name in names and all(line.get(k) == v for k, v in dims.items()):
            values += line[name]
    return values


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text → ``{(sample name, sorted labels): value}``."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(text: str, name: str, **labels: str) -> float | None:
    return samples(text).get((name, tuple(sorted(labels.items()))))


def client_for(fake: FakeUpstream, *endpoints, **extra) -> TestClient:
    cfg = config(*(endpoints or (endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"))), **extra)
    return TestClient(create_app(cfg, fake.upstream(), **FakeClock().options()), raise_server_exceptions=False)


def test_requests_are_emitted_as_emf_with_route_tier_endpoint_and_status(capsys):
    fake = FakeUpstream(
        {"edge-a": [json_reply(completion("hi"))], "r1-a": [sse_reply(sse(chunk("Since"), USAGE_CHUNK))]}
    )
    with client_for(fake) as client:
        assert client.post("/v1/chat/completions", json={"model": "edge", "messages": SIMPLE}).status_code == 200
        streamed = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": HEAVY, "stream": True})
        assert streamed.status_code == 200
        assert client.post("/v1/chat/completions", json={"model": "edge", "messages": []}).status_code == 400
    lines = emf_lines(capsys.readouterr().out)
    assert lines
    for line in lines:
        [directive] = line["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "r1edge"
        assert line["service"] == "router"
        for dimension_set in directive["Dimensions"]:
            assert "service" in dimension_set
            assert len(dimension_set) <= 30  # CloudWatch's limit per metric
    route = "/v1/chat/completions"
    assert emf_values(lines, "Requests", route=route, tier="edge", endpoint="edge-a", status="200") == [1.0]
    assert emf_values(lines, "Requests", route=route, tier="cluster", endpoint="r1-a", status="200") == [1.0]
    assert emf_values(lines, "Requests", route=route, tier="none", endpoint="none", status="400") == [1.0]
    [latency] = emf_values(lines, "RequestLatency", tier="edge", endpoint="edge-a")
    assert 0 < latency < 10_000  # milliseconds
    assert len(emf_values(lines, "TimeToFirstToken", tier="cluster", endpoint="r1-a")) == 1
    assert emf_values(lines, "TimeToFirstToken", tier="edge") == []  # JSON answers have no first token
    assert emf_values(lines, "PromptTokens", tier="edge", endpoint="edge-a") == [5.0]
    assert emf_values(lines, "CompletionTokens", tier="cluster", endpoint="r1-a") == [3.0]
    units = {m["Name"]: m["Unit"] for line in lines for d in line["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
    assert units["RequestLatency"] == units["TimeToFirstToken"] == "Milliseconds"
    assert units["Requests"] == "Count"


def test_metrics_endpoint_serves_prometheus_text_without_an_api_key_and_is_not_counted():
    fake = FakeUpstream(
        {"edge-a": [json_reply(completion("hi"))], "r1-a": [sse_reply(sse(chunk("Since"), USAGE_CHUNK))]}
    )
    with client_for(fake) as client:
        for _ in range(2):
            client.post("/v1/chat/completions", json={"model": "edge", "messages": SIMPLE})
        client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": HEAVY, "stream": True})
        first = client.get("/metrics")
        second = client.get("/metrics")
    assert first.status_code == 200
    assert first.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = second.text
    labels = {"route": "/v1/chat/completions", "tier": "edge", "endpoint": "edge-a", "status": "200"}
    assert sample(text, "r1edge_requests_total", **labels) == 2.0
    assert sample(text, "r1edge_requests_total", **{**labels, "tier": "cluster", "endpoint": "r1-a"}) == 1.0
    assert not any(key[0] == "r1edge_requests_total" and ("route", "/metrics") in key[1] for key in samples(text))
    assert sample(text, "r1edge_time_to_first_token_seconds_count", tier="cluster", endpoint="r1-a") == 1.0
    assert (
        sample(
            text, "r1edge_request_duration_seconds_count", route="/v1/chat/completions", tier="edge", endpoint="edge-a"
        )
        == 2.0
    )
    assert sample(text, "r1edge_prompt_tokens_total", tier="edge", endpoint="edge-a") == 10.0
    assert sample(text, "r1edge_completion_tokens_total", tier="cluster", endpoint="r1-a") == 3.0


def test_retries_fallbacks_and_breaker_transitions_are_counted():
    fake = FakeUpstream(
        {
            "r1-a": [json_reply({"error": "busy"}, 503)],
            "r1-b": [json_reply({"error": "busy"}, 503), json_reply(completion())],
        }
    )
    endpoints = (endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1))
    with client_for(fake, *endpoints, breaker={"failure_threshold": 2, "cooldown": 600}) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": HEAVY})
        text = client.get("/metrics").text
    assert response.status_code == 200
    assert [c.url.host for c in fake.calls] == ["r1-a", "r1-b", "r1-a", "r1-b"]
    assert sample(text, "r1edge_fallbacks_total", tier="cluster", kind="endpoint") == 1.0  # r1-a → r1-b
    assert sample(text, "r1edge_retries_total", tier="cluster", endpoint="r1-a") == 1.0
    assert sample(text, "r1edge_retries_total", tier="cluster", endpoint="r1-b") == 1.0
    assert sample(text, "r1edge_breaker_transitions_total", endpoint="r1-a", state="open") == 1.0  # 2nd failure
    assert sample(text, "r1edge_breaker_transitions_total", endpoint="r1-b", state="open") is None


def test_a_cascade_and_a_degrade_count_as_fallbacks():
    fake = FakeUpstream(
        {
            "edge-a": [json_reply(completion("hm"), headers={"x-r1edge-confidence": "0.1"}), json_reply(completion())],
            "r1-a": [json_reply(completion("sure")), json_reply({"error": "down"}, 500)],
        }
    )
    with client_for(fake, endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), retry={"max_attempts": 1}) as client:
        cascaded = client.post("/v1/chat/completions", json={"model": "auto", "messages": SIMPLE})
        degraded = client.post(
            "/v1/chat/completions",
            json={"model": "deepseek-r1", "messages": HEAVY},
            headers={"x-r1edge-allow-degrade": "true"},
        )
        text = client.get("/metrics").text
    assert cascaded.headers["x-r1edge-route"] == "cluster"
    assert degraded.headers["x-r1edge-route"] == "edge"
    assert sample(text, "r1edge_fallbacks_total", tier="cluster", kind="cascade") == 1.0
    assert sample(text, "r1edge_fallbacks_total", tier="edge", kind="degrade") == 1.0


def test_the_documented_hooks_for_cache_and_jobs_feed_both_sinks(capsys):
    recorder = Recorder("router")
    recorder.cache_lookup("hit")
    recorder.cache_lookup("miss")
    recorder.cache_lookup("hit")
    recorder.job_outcome("succeeded")
    recorder.queue_depth(7)
    assert recorder.flush() == 5
    text = recorder.prometheus_text().decode()
    assert sample(text, "r1edge_cache_lookups_total", result="hit") == 2.0
    assert sample(text, "r1edge_jobs_total", status="succeeded") == 1.0
    assert sample(text, "r1edge_queue_depth") == 7.0
    lines = emf_lines(capsys.readouterr().out)
    assert emf_values(lines, "CacheLookups", result="hit") == [1.0, 1.0]
    assert emf_values(lines, "QueueDepth") == [7.0]
    assert recorder.flush() == 0  # each event is written once


def test_metrics_disabled_writes_no_emf(capsys, monkeypatch):
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    recorder = Recorder("router")
    recorder.retry("cluster", "r1-a")
    recorder.flush()
    assert emf_lines(capsys.readouterr().out) == []
    assert sample(recorder.prometheus_text().decode(), "r1edge_retries_total", tier="cluster", endpoint="r1-a") == 1.0


# -- the dashboard and the alert rules --------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    return [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


METRIC = re.compile(r"\b([a-zA-Z_][a-zA-Z0-9_]*:[a-zA-Z0-9_:]+|r1edge_[a-zA-Z0-9_]+)")


GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")


def referenced(exprs: list[str]) -> set[str]:
    """Metric names in PromQL expressions (label names in ``by (...)`` clauses left out)."""
    return {m for e in exprs for m in METRIC.findall(GROUPING.sub("", e))}


def test_the_dashboard_is_importable_grafana_json():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "r1edge-overview"
    assert dashboard["title"]
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == ("datasource", "datasource", "prometheus")
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    graphs = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len(graphs) >= 12
    for panel in graphs:
        assert panel["title"], panel
        assert panel["targets"], panel
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["expr"].count("(") == target["expr"].count(")")
    titles = " ".join(p["title"] for p in graphs)
    for topic in (
        "tier",
        "5xx",
        "latency",
        "first token",
        "Retries",
        "breaker",
        "Tokens",
        "cold start",
        "load",
        "KV-cache",
    ):
        assert topic.lower() in titles.lower(), topic


def test_the_alert_rules_load_and_cover_load_errors_and_ttft():
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = {r["alert"]: r for g in groups for r in g["rules"]}
    for rule in rules.values():
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")")
    load = rules["R1ClusterLoadHigh"]
    assert (load["for"], "r1edge_endpoint_load" in load["expr"], load["expr"].endswith("> 0.7")) == ("5m", True, True)
    assert 'status=~"5.."' in rules["R1EdgeErrorRateHigh"]["expr"]
    assert "histogram_quantile(0.95" in rules["R1EdgeTimeToFirstTokenHigh"]["expr"]
    assert "r1edge_time_to_first_token_seconds_bucket" in rules["R1EdgeTimeToFirstTokenHigh"]["expr"]


def exercise_cache_and_jobs(monkeypatch) -> set[str]:
    """A response cache miss then hit through the router, and a queued job through the worker
    function's handler (moto, inside the caller's ``mock_aws``); the metric names emitted."""
    from jobstack import JobStack, chat

    router_metrics, worker_metrics = Recorder("router"), Recorder("worker")
    repeat = {"model": "deepseek-r1", "messages": HEAVY, "temperature": 0}
    fake = FakeUpstream({"r1-a": [json_reply(completion("cached"))]})
    app = create_app(config(endpoint("r1-a", "cluster")), fake.upstream(), recorder=router_metrics)
    with TestClient(app) as client:
        first = client.post("/v1/chat/completions", json=repeat)
        again = client.post("/v1/chat/completions", json=repeat)
    assert (first.headers["x-cache"], again.headers["x-cache"]) == ("MISS", "HIT")
    assert sample(router_metrics.prometheus_text().decode(), "r1edge_cache_lookups_total", result="hit") == 1
    jobs = JobStack(monkeypatch)
    jobs.runner.recorder = worker_metrics
    jobs.upstream.script["r1"] = [json_reply(completion("done"))]
    jobs.service.submit("t1", chat(), "req-1")
    jobs.drain()
    text = worker_metrics.prometheus_text().decode()
    assert sample(text, "r1edge_jobs_total", status="succeeded") == 1
    assert sample(text, "r1edge_queue_depth") == 0
    return {
        s.name for recorder in (router_metrics, worker_metrics) for f in recorder.registry.collect() for s in f.samples
    }


def exercise_every_code_path(health_table) -> set[str]:
    """Drive the router (JSON, stream, failover, retry, breaker, cascade, health table), the
    health prober and the edge's cold start (their EMF goes to stdout); return every Prometheus
    sample name they produced."""
    router_metrics, health_metrics, edge_metrics = Recorder("router"), Recorder("health"), Recorder("edge")
    fake = FakeUpstream(
        {
            "edge-a": [json_reply(completion("hm"), headers={"x-r1edge-confidence": "0.1"}), json_reply(completion())],
            "r1-a": [json_reply({"error": "busy"}, 503)],
            "r1-b": [
                json_reply({"error": "busy"}, 503),
                json_reply(completion()),
                lambda r: (
                    sse_reply(sse(chunk("x"), USAGE_CHUNK))  # a new body for each call
                    if json.loads(r.content).get("stream")
                    else json_reply(completion())
                ),
            ],
        }
    )
    wall = FakeClock()
    store = DynamoHealthStore(health_table.name, boto3.client("dynamodb", region_name="us-east-1"))
    store.put(ProbeResult("r1-b", "cluster", "up", wall.wall(), load=0.3), ttl=600)
    cfg = config(
        endpoint("edge-a", "edge"),
        endpoint("r1-a", "cluster"),
        endpoint("r1-b", "cluster", priority=1),
        breaker={"failure_threshold": 2, "cooldown": 600},
    )
    app = create_app(
        cfg, fake.upstream(), recorder=router_metrics, health=HealthView(store, wall_clock=wall.wall), **wall.options()
    )
    with TestClient(app) as client:
        client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": HEAVY})
        client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": HEAVY, "stream": True})
        client.post("/v1/chat/completions", json={"model": "auto", "messages": SIMPLE})
    probe_fake = FakeUpstream(
        {"r1-b": [lambda r: json_reply({"data": []}) if r.url.path.endswith("/models") else json_reply(completion())]}
    )
    asyncio.run(Prober(cfg, probe_fake.upstream(), store, health_metrics).run_round())
    health_metrics.flush()
    runtime = SimpleNamespace(model_id="SmolLM2-135M-Instruct.Q4_1", import_seconds=0.2, load_seconds=0.9)
    emit_cold_start_metrics(runtime, edge_metrics)
    names = {
        s.name
        for recorder in (router_metrics, health_metrics, edge_metrics)
        for family in recorder.registry.collect()
        for s in family.samples
    }
    return names


def test_every_metric_on_the_dashboard_and_in_the_alert_rules_is_emitted(health_table, monkeypatch, capsys):
    emitted = exercise_every_code_path(health_table) | exercise_cache_and_jobs(monkeypatch)
    lines = emf_lines(capsys.readouterr().out)
    ours = {m for m in referenced(dashboard_exprs() + rule_exprs()) if m.startswith("r1edge_")}
    engines = {m for m in referenced(dashboard_exprs()) if not m.startswith("r1edge_")}
    assert len(ours) >= 11
    assert ours - emitted == set()
    # the rest are the R1 engines' own series (vLLM, SGLang), scraped from the cluster
    assert engines
    assert all(m.startswith(("vllm:", "sglang:")) for m in engines), engines
    # the CloudWatch alarms on our namespace watch EMF metrics the code emits, with those dimensions
    template = load_template()
    alarms = [r["Properties"] for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    ours_cw = [a for a in alarms if a.get("Namespace") == "r1edge"]
    assert ours_cw
    for alarm in ours_cw:
        dims = {d["Name"]: d["Value"] for d in alarm["Dimensions"]}
        emitted_with = [
            line
            for line in lines
            if alarm["MetricName"] in line
            and {tuple(s) for d in line["_aws"]["CloudWatchMetrics"] for s in d["Dimensions"]} == {tuple(dims)}
            and all(line[k] == v for k, v in dims.items())
        ]
        assert emitted_with, alarm["MetricName"]


def test_health_probe_failures_carry_only_the_service_dimension(capsys):
    recorder = Recorder("health")
    recorder.probe("r1-a", "down", None, None)
    recorder.probe("r1-b", "up", 0.05, 0.4)
    recorder.flush()
    lines = emf_lines(capsys.readouterr().out)
    assert emf_values(lines, "HealthProbeFailures", service="health") == [1.0]
    [failure_line] = [line for line in lines if "HealthProbeFailures" in line]
    assert failure_line["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["service"]]
    assert emf_values(lines, "EngineLoad", endpoint="r1-b") == [0.4]
    assert emf_values(lines, "HealthProbes", endpoint="r1-a", status="down") == [1.0]


@pytest.mark.parametrize("path", ["/metrics", "/ping"])
def test_operational_paths_pass_through_uncounted(path):
    with client_for(FakeUpstream()) as client:
        client.get(path)
        text = client.get("/metrics").text
    assert "r1edge_requests_total{" not in text


def test_an_upstream_failure_is_counted_with_its_status():
    fake = FakeUpstream({"r1-a": [httpx.ConnectError("refused")]})
    with client_for(fake, endpoint("r1-a", "cluster"), retry={"max_attempts": 1}) as client:
        response = client.post("/v1/chat/completions", json={"model": "deepseek-r1", "messages": HEAVY})
        text = client.get("/metrics").text
    assert response.status_code == 502
    labels = {"route": "/v1/chat/completions", "tier": "cluster", "endpoint": "none", "status": "502"}
    assert sample(text, "r1edge_requests_total", **labels) == 1.0
