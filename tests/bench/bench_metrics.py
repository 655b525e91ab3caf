"""Metrics and health benchmark: what recording costs a request, and what the health table costs
the router.

    python tests/bench/bench_metrics.py [--requests 2000]

In process, no sockets: the router app (``r1edge.apps.router.create_app``) over a scripted upstream
(``httpx.MockTransport``) driven through its ASGI interface, JSON answers, one request at a time:

- ``no metrics``: the app with :class:`~r1edge.observe.metrics.MetricsMiddleware` taken out and a
  recorder whose events go nowhere (the router before this change, as closely as it can be run);
- ``metrics``: as shipped — Prometheus counters and histograms, the EMF buffer, one EMF flush per
  request written to a null stdout (in Lambda, stdout goes to CloudWatch Logs);
- ``metrics + health``: plus a health table (moto DynamoDB, in process) re-read every 5 s of
  wall time, here read on the first request and whenever ``max_age`` has passed.

Also the recorder's own cost per event and per flush, and the bytes of EMF a request writes.
Prints the tables; JSON to tests/bench/results/metrics.json. ``QUICK=1``: a smaller run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "layers" / "r1edge"), str(ROOT / "tests"), str(ROOT / "infra" / "local")]
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")  # the routers' per-request logs are not measured

import boto3  # noqa: E402
import httpx  # noqa: E402
from fakes import FakeUpstream, completion, config, endpoint, json_reply  # noqa: E402
from moto import mock_aws  # noqa: E402

from r1edge.apps.router import create_app  # noqa: E402
from r1edge.observe import metrics  # noqa: E402
from r1edge.observe.health import DynamoHealthStore, HealthView, ProbeResult  # noqa: E402

QUICK = os.environ.get("QUICK", "") not in ("", "0")
#: Rounds of every variant, alternating.
ROUNDS = 5
BODY = json.dumps({"model": "deepseek-r1", "messages": [{"role": "user", "content": "Prove it."}]}).encode()


class NullRecorder(metrics.Recorder):
    """A recorder that records nothing (the baseline)."""

    def _emf(self, *args, **kwargs) -> None:
        return None

    def request(self, *args, **kwargs) -> None:
        return None

    def usage(self, *args, **kwargs) -> None:
        return None


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


async def drive(app, n: int) -> list[float]:
    """``n`` sequential POSTs through the ASGI app; microseconds each."""
    transport = httpx.ASGITransport(app=app)
    out = []
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        for _ in range(n):
            start = time.perf_counter()
            response = await client.post(
                "/v1/chat/completions", content=BODY, headers={"content-type": "application/json"}
            )
            out.append((time.perf_counter() - start) * 1e6)
            assert response.status_code == 200, response.text
    return out


def build(variant: str, health: HealthView | None):
    fake = FakeUpstream(
        {"r1-a": [lambda r: json_reply(completion("ok"))], "r1-b": [lambda r: json_reply(completion())]}
    )
    cfg = config(endpoint("r1-a", "cluster"), endpoint("r1-b", "cluster", priority=1))
    recorder = NullRecorder("router") if variant == "no metrics" else metrics.Recorder("router")
    app = create_app(cfg, fake.upstream(), recorder=recorder, health=health)
    if variant == "no metrics":
        app.user_middleware = [m for m in app.user_middleware if m.cls is not metrics.MetricsMiddleware]
    return app


async def run_variant(variant: str, n: int, health: HealthView | None) -> list[float]:
    app = build(variant, health)
    async with app.router.lifespan_context(app):
        await drive(app, min(50, n))  # warm-up
        return await drive(app, n)


def recorder_costs(n: int) -> dict[str, float]:
    recorder = metrics.Recorder("router")
    with contextlib.redirect_stdout(io.StringIO()):  # Powertools writes a line per 100 values
        start = time.perf_counter()
        for _ in range(n):
            recorder.request("/v1/chat/completions", "cluster", "r1-a", 200, 0.123)
        per_request_event = (time.perf_counter() - start) / n * 1e6
        recorder.flush()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        recorder.request("/v1/chat/completions", "cluster", "r1-a", 200, 0.123)
        recorder.usage("cluster", "r1-a", {"prompt_tokens": 12, "completion_tokens": 300})
        recorder.flush()
    emf_bytes = len(out.getvalue().encode())
    flushes = []
    with contextlib.redirect_stdout(io.StringIO()):
        for _ in range(n // 4):
            recorder.request("/v1/chat/completions", "cluster", "r1-a", 200, 0.123)
            recorder.usage("cluster", "r1-a", {"prompt_tokens": 12, "completion_tokens": 300})
            start = time.perf_counter()
            recorder.flush()
            flushes.append((time.perf_counter() - start) * 1e6)
    return {
        "request_event_us": per_request_event,
        "flush_us_p50": percentile(flushes, 50),
        "emf_bytes_per_request": emf_bytes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500 if QUICK else 3000)
    args = parser.parse_args()
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    results: dict[str, dict[str, float]] = {}
    with mock_aws():
        from run import create_health_table

        name = create_health_table(boto3.client("dynamodb", region_name="us-east-1"))
        store = DynamoHealthStore(name, boto3.client("dynamodb", region_name="us-east-1"))
        store.put(ProbeResult("r1-a", "cluster", "up", time.time(), load=0.3), ttl=600)
        store.put(ProbeResult("r1-b", "cluster", "up", time.time(), load=0.2), ttl=600)
        variants = ("no metrics", "metrics", "metrics + health")
        times: dict[str, list[float]] = {v: [] for v in variants}
        with contextlib.redirect_stdout(io.StringIO()):  # EMF lines go nowhere
            for _ in range(ROUNDS):  # variants alternate, so machine load drifts hit each alike
                for variant in variants:
                    view = HealthView(store) if variant == "metrics + health" else None
                    times[variant] += asyncio.run(run_variant(variant, args.requests // ROUNDS, view))
        for variant in variants:
            results[variant] = {
                "p50_us": percentile(times[variant], 50),
                "p99_us": percentile(times[variant], 99),
                "req_per_s": len(times[variant]) / (sum(times[variant]) / 1e6),
            }
    costs = recorder_costs(args.requests)
    base = results["no metrics"]["p50_us"]
    print(
        f"router, JSON, 1 client, {args.requests} requests per variant in {ROUNDS} alternating rounds"
        " (in process, scripted upstream)"
    )
    print(f"{'variant':<18} {'p50 µs':>9} {'p99 µs':>9} {'+p50 µs':>9} {'req/s':>8}")
    for variant, r in results.items():
        print(
            f"{variant:<18} {r['p50_us']:>9.0f} {r['p99_us']:>9.0f} {r['p50_us'] - base:>9.0f} {r['req_per_s']:>8.0f}"
        )
    print(
        f"recorder: {costs['request_event_us']:.1f} µs per request event, {costs['flush_us_p50']:.0f} µs per EMF "
        f"flush (p50), {costs['emf_bytes_per_request']} bytes of EMF per request"
    )
    out = ROOT / "tests" / "bench" / "results" / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "metrics",
                "when": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
                "quick": QUICK,
                "requests": args.requests,
                "variants": results,
                "recorder": costs,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
