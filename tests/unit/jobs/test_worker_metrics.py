"""The worker's wiring (:func:`r1edge.apps.worker.build_runner`): the gateway's metrics (retries,
tokens) reach CloudWatch, as EMF on stdout, in the same flush as the job outcomes; and the
loop-bound gateway closes the HTTP transport it replaces when the event loop changes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from fakes import FakeUpstream, completion, json_reply
from jobstack import chat

from r1edge.apps import worker as worker_runtime
from r1edge.observe import metrics

ROUTING = """\
endpoints:
  - name: r1
    url: http://r1/v1
    tier: cluster
retry:
  max_attempts: 2
  backoff_base: 0
  backoff_cap: 0
"""


def emf_lines(out: str) -> list[dict[str, Any]]:
    """The EMF objects printed on stdout (one JSON document per line with an ``_aws`` key)."""
    return [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' in line]


def emf_values(lines: list[dict[str, Any]], name: str, **dims: str) -> list[float]:
    """Every value of metric ``name`` in EMF lines whose dimensions include ``dims``."""
    values: list[float] = []
    for line in lines:
        names = {m["Name"] for d in line["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]}
        if name in names and all(line.get(k) == v for k, v in dims.items()):
            value = line[name]
            values += value if isinstance(value, list) else [value]
    return values


def test_the_gateways_retries_and_tokens_are_flushed_with_the_job_outcome(stack, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(metrics, "_defaults", {})  # a fresh process-wide "worker" recorder
    monkeypatch.delenv("POWERTOOLS_METRICS_DISABLED", raising=False)
    routing = tmp_path / "routing.yaml"
    routing.write_text(ROUTING)
    fake = FakeUpstream(
        {"r1": [json_reply({"error": {"message": "busy"}}, status=503), json_reply(completion("done"))]}
    )
    # the real wiring, as runner_from_env builds it from the worker function's environment
    stack.runner = worker_runtime.build_runner({**stack.env, "R1EDGE_CONFIG": str(routing)}, fake.upstream)
    job = stack.service.submit("t1", chat(), "req-1")
    capsys.readouterr()

    stack.drain()

    assert stack.service.get("t1", job["id"])["status"] == "succeeded"
    assert len(fake.calls) == 2  # 503, then 200 on the retry
    lines = emf_lines(capsys.readouterr().out)
    assert lines, "the worker flushed no EMF"
    assert {line["service"] for line in lines} == {"worker"}
    assert emf_values(lines, "JobOutcomes", status="succeeded") == [1.0]
    assert emf_values(lines, "Retries", tier="cluster", endpoint="r1") == [1.0]
    assert emf_values(lines, "PromptTokens", tier="cluster", endpoint="r1") == [5.0]
    assert emf_values(lines, "CompletionTokens", tier="cluster", endpoint="r1") == [1.0]


class ClosingUpstream:
    """Stands in for :class:`~r1edge.routing.upstream.Upstream`: counts :meth:`aclose` awaits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = 0

    async def aclose(self) -> None:
        await asyncio.sleep(0)
        self.closed += 1


class RecordingGateway:
    """Stands in for :class:`~r1edge.routing.gateway.Gateway`: answers with its upstream's name."""

    def __init__(self, upstream: ClosingUpstream) -> None:
        self.upstream = upstream

    async def complete(self, *args: Any, **kwargs: Any) -> str:
        return self.upstream.name


def test_the_loop_bound_gateway_closes_the_transport_it_replaces_when_the_loop_changes():
    built = ClosingUpstream("built")
    made: list[ClosingUpstream] = []

    def factory() -> ClosingUpstream:
        made.append(ClosingUpstream(f"loop{len(made) + 1}"))
        return made[-1]

    gateway = worker_runtime.LoopBoundGateway(RecordingGateway(built), factory)  # type: ignore[arg-type]

    async def twice() -> list[str]:
        return [await gateway.complete(chat(), "r"), await gateway.complete(chat(), "r")]

    # the first loop uses the transport the gateway was built with: nothing replaced or closed
    assert asyncio.run(twice()) == ["built", "built"]
    assert (made, built.closed) == ([], 0)
    # a new loop gets a new transport; the replaced one is closed, once
    assert asyncio.run(twice()) == ["loop1", "loop1"]
    assert [u.name for u in made] == ["loop1"]
    assert (built.closed, made[0].closed) == (1, 0)
    assert asyncio.run(twice()) == ["loop2", "loop2"]
    assert (built.closed, made[0].closed, made[1].closed) == (1, 1, 0)


@pytest.fixture(autouse=True)
def _no_cached_runner() -> Any:
    """No runner of another test's environment is left in :func:`runner_from_env`'s cache."""
    worker_runtime.runner_from_env.cache_clear()
    yield
    worker_runtime.runner_from_env.cache_clear()
