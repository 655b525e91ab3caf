"""``sam local invoke HealthFunction -e tests/events/health-schedule.json`` without Docker: the
function's code, layer and resolved environment from template.yaml, its handler imported the way
Lambda would, invoked with the scheduled event against endpoints on real sockets (one up with
vLLM metrics, one down) and a moto health table made from the template's definition. The wait
between the two rounds is replaced, so nothing sleeps for real."""

from __future__ import annotations

import json
import threading
import time

import pytest
import uvicorn
from run import free_port  # infra/local/run.py
from samlocal import ROOT, Resolver, function_environment, load_event, load_module, load_template
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

pytestmark = pytest.mark.integration

TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
METRICS = 'vllm:num_requests_running{model_name="r1"} 3\nvllm:kv_cache_usage_perc{model_name="r1"} 0.4\n'


def fake_engine() -> Starlette:
    seen: list[str] = []

    async def models(request: Request) -> JSONResponse:
        seen.append(request.headers.get("authorization", ""))
        return JSONResponse({"object": "list", "data": [{"id": "deepseek-r1"}]})

    async def metrics(request: Request) -> PlainTextResponse:
        return PlainTextResponse(METRICS)

    async def chat(request: Request) -> JSONResponse:
        body = await request.json()
        assert body["max_tokens"] == 1
        message = {"role": "assistant", "content": "p"}
        return JSONResponse(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
            }
        )

    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/metrics", metrics),
            Route("/v1/chat/completions", chat, methods=["POST"]),
        ]
    )
    app.state.seen = seen
    return app


@pytest.fixture
def engine_url():
    app = fake_engine()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}/", app.state.seen
    server.should_exit = True
    thread.join(timeout=5)


def test_the_health_function_runs_as_sam_local_invoke_would_run_it(engine_url, health_table, monkeypatch, capsys):
    url, seen = engine_url
    props = RESOURCES["HealthFunction"]["Properties"]
    assert props["Events"]["EveryMinute"]["Properties"]["Schedule"] == "rate(1 minute)"
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    attrs = {"EdgeFunctionUrl.FunctionUrl": url}
    env = function_environment(
        TEMPLATE,
        "HealthFunction",
        Resolver(TEMPLATE, attrs, {"ClusterUrl": f"{down}/v1", "ClusterApiKeySecretName": ""}),
    )
    assert env["R1EDGE_HEALTH_TABLE"] == "HealthTable"  # the table's Ref; the moto table stands in
    env["R1EDGE_HEALTH_TABLE"] = health_table.name
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # what the function's role looks like to botocore inside Lambda (the edge probe is SigV4-signed)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ASIATESTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    module_name, function = props["Handler"].split(".")
    module = load_module(ROOT / props["CodeUri"] / f"{module_name}.py", "health_sam_app")
    waits: list[float] = []

    async def no_wait(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(module, "sleep", no_wait)
    context = type(
        "Context",
        (),
        {
            "function_name": "HealthFunction",
            "memory_limit_in_mb": props["MemorySize"],
            "invoked_function_arn": "arn:aws:lambda:us-east-1:123456789012:function:h",
            "aws_request_id": "sam-local",
        },
    )()
    result = getattr(module, function)(load_event("health-schedule.json"), context)

    assert len(result["rounds"]) == 2
    assert len(waits) == 1
    assert 29 < waits[0] <= 30  # the second round starts 30 s after the first
    first = {r["endpoint"]: r for r in result["rounds"][0]}
    assert first["edge-lambda"]["status"] == "up"
    assert first["edge-lambda"]["load"] == pytest.approx(0.4)
    assert first["edge-lambda"]["completion_ok"] is True
    assert first["cluster"]["status"] == "down"
    assert all(auth.startswith("AWS4-HMAC-SHA256 ") for auth in seen)  # SigV4, as to a Function URL
    stored = {i["endpoint"]: i for i in health_table.scan()["Items"]}
    assert stored["cluster"]["status"] == "down"
    assert float(stored["edge-lambda"]["kv_usage"]) == pytest.approx(0.4)
    emf = [json.loads(line) for line in capsys.readouterr().out.splitlines() if '"_aws"' in line]
    failures = [line["HealthProbeFailures"] for line in emf if "HealthProbeFailures" in line]
    assert sum(sum(v) for v in failures) == 2  # the down endpoint, once per round
    assert timeout_fits(props)


def timeout_fits(props: dict) -> bool:
    """Two rounds 30 s apart plus a round's worst case (probe, metrics and completion timeouts)
    fit in the function's timeout."""
    from r1edge.routing.config import Health

    h = Health()
    return props["Timeout"] >= h.interval + 2 * h.timeout + h.completion_timeout + 10
