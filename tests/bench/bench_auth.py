"""API-key benchmark: what authentication, per-key limits and usage records cost per request.

    python tests/bench/bench_auth.py [--requests 2000] [--concurrency 8]

One healthy fake upstream (tests/faultserver.py) behind the real router, run two ways:

- ``no keys``: the router alone (uvicorn, as in Lambda), no ``R1EDGE_KEYS_TABLE``;
- ``API keys``: ``run.py --router-only`` as ``make run-router`` runs it: keys, limits and usage
  in a local moto server (DynamoDB and Secrets Manager), the development key sent as
  ``Authorization: Bearer``. Per request: one ``GetItem`` (key), one conditional ``UpdateItem``
  for each of the two buckets, and two ``UpdateItem`` (settle, usage).

Non-streamed requests, all answered 200 (the development key allows 600 requests per minute, so
the run is sized and paced to stay under it: the limit itself is not what is measured). Prints a
table and writes tests/bench/results/auth.json. moto's server is much slower than DynamoDB in a
region (tens of ms per call on a busy 2-core machine against single-digit ms there), so the overhead is an upper bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "infra" / "local")]

from faultserver import Fault, FaultServer  # noqa: E402
from run import free_port, uvicorn_argv  # noqa: E402

QUICK = os.environ.get("QUICK", "") not in ("", "0")
BODY = {"model": "deepseek-r1", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
KEY = "r1e-bench-auth-key"


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def drive(url: str, headers: dict[str, str], requests: int, concurrency: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    statuses: list[int] = []
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits, headers=headers) as client:

        async def worker() -> None:
            while queue:
                queue.pop()
                t = time.perf_counter()
                response = await client.post(url, json=BODY)
                statuses.append(response.status_code)
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - t)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, sum(1 for s in statuses if s != 200), time.perf_counter() - started


def start(argv: list[str], env: dict[str, str], ready: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if ready == "stdout":
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith('{"ready": true'):
                return proc
        raise RuntimeError("run.py did not start")
    for _ in range(400):
        try:
            if httpx.get(ready, timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"router not ready at {ready}")


def scenario(name: str, config: Path, args: argparse.Namespace) -> dict:
    port = free_port()
    env = {**os.environ, "POWERTOOLS_LOG_LEVEL": "ERROR", "R1EDGE_API_KEY": KEY}
    env.pop("R1EDGE_KEYS_TABLE", None)
    if name == "no keys":
        env["R1EDGE_CONFIG"] = str(config)
        argv = [*uvicorn_argv("router", "127.0.0.1", port), "--log-level", "warning"]
        proc = start(argv, env, f"http://127.0.0.1:{port}/ping")
        headers: dict[str, str] = {}
    else:
        argv = [sys.executable, str(ROOT / "infra/local/run.py"), "--router-only", "--config", str(config)]
        proc = start([*argv, "--port", str(port)], env, "stdout")
        headers = {"Authorization": f"Bearer {KEY}"}
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        asyncio.run(drive(url, headers, 20, 2))  # warm-up: connections, boto3 clients, secret cache
        latencies, failed, elapsed = asyncio.run(drive(url, headers, args.requests, args.concurrency))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return {
        "scenario": name,
        "requests": args.requests,
        "non_200": failed,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p95_ms": percentile(latencies, 95) * 1000,
        "throughput_rps": args.requests / elapsed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200 if QUICK else 500)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    if args.requests + 20 > 600:
        parser.error("stay under the development key's 600 requests per minute (warm-up included)")
    upstream = FaultServer("r1-0", chooser=lambda: Fault(chunks=3), log_level="critical")
    with upstream, tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "routing.json"
        config.write_text(json.dumps({"endpoints": [upstream.endpoint()]}))
        rows = [scenario(name, config, args) for name in ("no keys", "API keys")]
    print(
        f"API-key benchmark — {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{datetime.now(UTC):%Y-%m-%d}, {args.requests} requests, concurrency {args.concurrency}"
    )
    header = f"{'router':<12}{'non-200':>8}{'p50 ms':>9}{'p95 ms':>9}{'req/s':>8}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['scenario']:<12}{r['non_200']:>8}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['throughput_rps']:>8.0f}")
    overhead = rows[1]["p50_ms"] - rows[0]["p50_ms"]
    print(f"API keys add {overhead:.1f} ms at the median (moto server standing in for DynamoDB)")
    out = ROOT / "tests" / "bench" / "results" / "auth.json"
    out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
                "concurrency": args.concurrency,
                "scenarios": rows,
                "p50_overhead_ms": overhead,
            },
            indent=2,
        )
    )
    print(f"saved {out.relative_to(ROOT)}")
    return 0 if all(r["non_200"] == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
