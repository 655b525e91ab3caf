"""Config function benchmark: warm-hit latency in process, and the share of 304s when clients
revalidate.

    python tests/bench/bench_configs.py [--hits 5000] [--clients 10] [--rounds 100] [--updates 10]

S3 is moto (in process). Warm hits: the config function's ``lambda_handler`` (Powertools HTTP API
resolver, functions/config/app.py) with API Gateway payload-2.0 events for a file already in the
container's memory copy, and :func:`r1edge.configfiles.api.serve` alone, to show the resolver's share.
Revalidation: ``--clients`` clients (a CDN's edge caches, say) each keep the last ETag they got
and revalidate ``--rounds`` times with ``If-None-Match``; the file changes ``--updates`` times
during the run and the container's copy is revalidated with S3 on every request (max age 0), so
every change is seen at once. Prints the tables; JSON to tests/bench/results/configs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "layers" / "r1edge"), str(ROOT / "tests")]

import boto3  # noqa: E402
from moto import mock_aws  # noqa: E402
from samlocal import load_module  # noqa: E402

from r1edge.configfiles.api import ConfigSettings, serve, store_from_settings  # noqa: E402
from r1edge.configfiles.apigw import http_api_event  # noqa: E402

QUICK = os.environ.get("QUICK", "") not in ("", "0")  # QUICK=1 make bench: a smaller run
CONTEXT = SimpleNamespace(
    function_name="bench",
    memory_limit_in_mb=256,
    invoked_function_arn="arn:aws:lambda:::function:bench",
    aws_request_id="bench",
)


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        out.append((time.perf_counter() - start) * 1e6)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hits", type=int, default=1000 if QUICK else 5000)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "bench" / "results" / "configs.json")
    args = parser.parse_args()
    body = b"endpoints:\n" + b"".join(
        f"  - {{name: r1-{i}, url: 'https://r1-{i}.example/v1', tier: cluster}}\n".encode() for i in range(20)
    )
    os.environ.update(
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        CONFIG_BUCKET="cfg",
        CONFIG_PREFIX="configs/",
        POWERTOOLS_LOG_LEVEL="WARNING",
    )
    with mock_aws(), tempfile.TemporaryDirectory() as cache:
        os.environ["CONFIG_CACHE_DIR"] = cache
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="cfg")
        s3.put_object(Bucket="cfg", Key="configs/routing.yaml", Body=body)
        app = load_module(ROOT / "functions" / "config" / "app.py", "config_bench")
        event = http_api_event("GET", "/v1/configs/routing.yaml", "", [("host", "api.example")], b"")
        assert app.lambda_handler(event, CONTEXT)["statusCode"] == 200  # cold: fetched from S3
        handler_us = timed(lambda: app.lambda_handler(event, CONTEXT), args.hits)
        settings, store = app._service()
        serve_us = timed(lambda: serve(store, settings, "GET", "routing.yaml", {}), args.hits)

        # Revalidation run: max age 0, so each request revalidates the copy with S3 (a 304 there).
        live = ConfigSettings(bucket="cfg", prefix="configs/", max_age=0, cache_dir=None)
        live_store = store_from_settings(live, s3)
        etags: list[str | None] = [None] * args.clients
        statuses: list[int] = []
        total = args.clients * args.rounds
        every = max(1, total // (args.updates + 1))
        version = 0
        for i in range(total):
            if i and i % every == 0 and version < args.updates:
                version += 1
                s3.put_object(Bucket="cfg", Key="configs/routing.yaml", Body=body + f"# v{version}\n".encode())
            client = i % args.clients
            headers = {"If-None-Match": etags[client]} if etags[client] else {}
            answer = serve(live_store, live, "GET", "routing.yaml", headers)
            statuses.append(answer.status)
            etags[client] = answer.headers["ETag"]
    warm = {
        "handler_us": {"p50": percentile(handler_us, 50), "p99": percentile(handler_us, 99)},
        "serve_us": {"p50": percentile(serve_us, 50), "p99": percentile(serve_us, 99)},
    }
    first_fetches = args.clients  # every client's first request has no ETag
    share_304 = statuses.count(304) / len(statuses)
    best = 1 - (first_fetches + args.updates * args.clients) / total
    print(
        f"Config function — {len(body)} B YAML, {args.hits} warm hits, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"{'warm hit (in process)':<40}{'p50 µs':>10}{'p99 µs':>10}")
    print(
        f"{'lambda_handler (HTTP API event)':<40}{warm['handler_us']['p50']:>10.0f}{warm['handler_us']['p99']:>10.0f}"
    )
    print(f"{'serve() alone':<40}{warm['serve_us']['p50']:>10.0f}{warm['serve_us']['p99']:>10.0f}")
    print(
        f"revalidation: {args.clients} clients × {args.rounds} requests, {args.updates} changes: "
        f"{statuses.count(304)} × 304, {statuses.count(200)} × 200 → {share_304:.1%} answered 304 "
        f"(the most possible with first requests and changes: {best:.1%})"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(),
                "bytes": len(body),
                "warm": warm,
                "revalidation": {
                    "requests": total,
                    "not_modified": statuses.count(304),
                    "ok": statuses.count(200),
                    "share_304": share_304,
                    "updates": args.updates,
                    "clients": args.clients,
                },
            },
            indent=2,
        )
    )
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
