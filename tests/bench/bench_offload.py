"""Offload benchmark: how much MT-Bench traffic never reaches the cluster, with the response cache.

    python tests/bench/bench_offload.py [--questions PATH] [--requests 2000] [--zipf 1.1] [--seed 8]
                                        [--concurrency 1] [--max-tokens 128]

Draws ``--requests`` requests (QUICK=1: 300) from the 80 MT-Bench first turns (default
``../shared/data/mt_bench/question.jsonl``, or ``QUESTIONS``) with a Zipf-like repeat
distribution: the prompts are put in a random order (seeded) and the one at rank ``r`` (1-based)
is drawn with probability proportional to ``1 / r**s`` (``--zipf`` s = 1.1, ``--seed`` 8; 2,000
draws reach all 80 prompts, 300 reach 59). They go, in that order, with ``--concurrency`` clients
(default 1, so the two llama.cpp servers never queue on a shared 2-core machine; with more,
identical requests in flight coalesce) through the real local stack
(``infra/local/run.py``: the edge server with the packaged SmolLM2-135M, ``llama_cpp.server`` as
the cluster stand-in, the router with its L1 cache empty at the start and the L2 table in the
local DynamoDB), as non-streamed ``model: auto`` requests at temperature 0 with ``max_tokens``
128.

Each answer's ``x-r1edge-route`` says who answered: ``cache`` (a hit, or a request coalesced with
an identical one in flight), ``edge``, or ``cluster`` (directly, or escalated by the cascade).
Prints the share and latency of each over all requests, then the same for first occurrences
only (the first request for each prompt, which the cache cannot answer), per MT-Bench category;
writes JSON to tests/bench/results/offload.json. Target: at least 70 % of all requests never
reach the cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "infra" / "local")]

from run import free_port  # noqa: E402

DEFAULT_QUESTIONS = ROOT.parent / "shared" / "data" / "mt_bench" / "question.jsonl"
QUICK = os.environ.get("QUICK", "") not in ("", "0")  # QUICK=1 make bench: a smaller run
TARGET = 0.70
ROUTES = ("cache", "edge", "cluster")


def load_prompts(path: Path) -> list[dict[str, Any]]:
    """MT-Bench first turns: ``{"id", "category", "prompt"}`` per question."""
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            q = json.loads(line)
            prompts.append({"id": q["question_id"], "category": q["category"], "prompt": q["turns"][0]})
    return prompts


def zipf_draws(count: int, n: int, exponent: float, seed: int) -> list[int]:
    """``count`` indexes into ``n`` items: a seeded random ranking, rank ``r`` drawn with
    probability ∝ ``1 / r**exponent``."""
    rng = random.Random(seed)
    ranking = list(range(n))
    rng.shuffle(ranking)
    weights = [1.0 / (rank**exponent) for rank in range(1, n + 1)]
    return [ranking[i] for i in rng.choices(range(n), weights=weights, k=count)]


def percentile(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


class LocalStack:
    """``infra/local/run.py`` on a free port, stopped on exit (SIGTERM, then SIGKILL)."""

    def __init__(self, api_key: str) -> None:
        self.port = free_port()
        env = {**os.environ, "R1EDGE_API_KEY": api_key, "POWERTOOLS_LOG_LEVEL": "WARNING"}
        env.pop("R1EDGE_CACHE_DIR", None)  # every run starts with an empty L1
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "infra" / "local" / "run.py"), "--port", str(self.port)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env=env,
        )

    def __enter__(self) -> str:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            print(line, end="", flush=True)
            if line.startswith('{"ready": true'):
                threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
                return f"http://127.0.0.1:{self.port}/v1"
        raise SystemExit(f"the local stack did not start (exit status {self.proc.wait()})")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def one(client: httpx.Client, prompt: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    body = {
        "model": "auto",
        "messages": [{"role": "user", "content": prompt["prompt"]}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    started = time.perf_counter()
    try:
        response = client.post("/chat/completions", json=body)
        elapsed = time.perf_counter() - started
    except httpx.HTTPError as exc:
        return {"status": None, "error": f"{type(exc).__name__}: {exc}", "latency_s": time.perf_counter() - started}
    return {
        "status": response.status_code,
        "route": response.headers.get("x-r1edge-route"),
        "cache": response.headers.get("x-cache"),
        "reason": response.headers.get("x-r1edge-reason"),
        "latency_s": elapsed,
        "error": None if response.status_code == 200 else response.text[:200],
    }


def route_table(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Share and latency (ms) of each route."""
    table: dict[str, Any] = {}
    for route in ROUTES:
        latencies = [r["latency_s"] * 1000 for r in rows if r.get("route") == route]
        table[route] = {
            "n": len(latencies),
            "share": len(latencies) / len(rows) if rows else 0.0,
            "p50_ms": percentile(latencies, 50),
            "p95_ms": percentile(latencies, 95),
        }
    return table


def fmt_ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def print_routes(title: str, table: dict[str, Any], total: int) -> None:
    print(title)
    print(f"{'route':<10}{'requests':>9}{'share':>9}{'p50 ms':>10}{'p95 ms':>10}")
    for route in ROUTES:
        row = table[route]
        print(
            f"{route:<10}{row['n']:>9}{100 * row['share']:>8.1f}%{fmt_ms(row['p50_ms']):>10}{fmt_ms(row['p95_ms']):>10}"
        )
    print(f"{'all':<10}{total:>9}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=Path(os.environ.get("QUESTIONS") or DEFAULT_QUESTIONS))
    parser.add_argument("--requests", type=int, default=300 if QUICK else 2000)
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s: rank r drawn ∝ 1/r**s")
    parser.add_argument("--seed", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=1, help="clients; over 1, identical requests coalesce")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "bench" / "results" / "offload.json")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="send no new request after this long (a busy shared machine); the report then says it is partial",
    )
    args = parser.parse_args()
    stop = threading.Event()  # set by Ctrl-C/SIGTERM or --max-minutes: finish what runs, report what was done
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    prompts = load_prompts(args.questions)
    draws = zipf_draws(args.requests, len(prompts), args.zipf, args.seed)
    first_at: dict[int, int] = {}
    for i, p in enumerate(draws):
        first_at.setdefault(p, i)
    api_key = os.environ.get("R1EDGE_API_KEY") or "bench-offload-key"
    print(
        f"Offload on MT-Bench first turns: {args.requests} requests over {len(prompts)} prompts "
        f"({len(first_at)} distinct drawn), Zipf s={args.zipf:g}, seed {args.seed}, "
        f"concurrency {args.concurrency}, max_tokens {args.max_tokens}, temperature 0, model auto",
        flush=True,
    )
    results: list[dict[str, Any] | None] = [None] * len(draws)
    started = time.perf_counter()
    with LocalStack(api_key) as base_url:
        headers = {"Authorization": f"Bearer {api_key}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=600) as client:

            def run(i: int) -> None:
                if args.max_minutes is not None and time.perf_counter() - started > 60 * args.max_minutes:
                    stop.set()
                if stop.is_set():
                    return
                prompt = prompts[draws[i]]
                results[i] = {
                    "i": i,
                    "question_id": prompt["id"],
                    "category": prompt["category"],
                    "first": first_at[draws[i]] == i,
                    **one(client, prompt, args.max_tokens),
                }
                done = sum(r is not None for r in results)
                if done % 100 == 0:
                    print(f"[bench] {done}/{len(draws)} requests", flush=True)

            with ThreadPoolExecutor(args.concurrency) as pool:
                list(pool.map(run, range(len(draws))))
    wall = time.perf_counter() - started
    rows = [r for r in results if r is not None]
    partial = len(rows) < len(draws)
    failed = [r for r in rows if r["status"] != 200]
    ok = [r for r in rows if r["status"] == 200]
    overall = route_table(ok)
    never_cluster = (overall["cache"]["n"] + overall["edge"]["n"]) / len(rows)
    firsts = [r for r in ok if r["first"]]

    print()
    print(f"{platform.machine()}, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {wall:.0f} s")
    if partial:
        print(f"PARTIAL RUN: stopped after {len(rows)} of {len(draws)} requests")
    print_routes("All requests", overall, len(rows))
    print(
        f"never reached the cluster: {100 * never_cluster:.1f}% (target ≥ {100 * TARGET:.0f}%: "
        f"{'met' if never_cluster >= TARGET else 'NOT met'}); failed: {len(failed)}"
    )
    print()
    print_routes("First occurrences only", route_table(firsts), len(firsts))
    print()
    print("First occurrences per category (latency p50 ms)")
    header = f"{'category':<12}{'first':>6}{'edge':>6}{'cluster':>8}{'cache':>6}{'edge share':>11}"
    header += f"{'edge ms':>9}{'cluster ms':>11}"
    print(header)
    print("-" * len(header))
    categories: dict[str, Any] = {}
    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in firsts:
        by_category[r["category"]].append(r)
    for category, group in [*sorted(by_category.items()), ("all", firsts)]:
        table = route_table(group)
        categories[category] = {"first": len(group), **table}
        print(
            f"{category:<12}{len(group):>6}{table['edge']['n']:>6}{table['cluster']['n']:>8}{table['cache']['n']:>6}"
            f"{100 * table['edge']['share']:>10.0f}%{fmt_ms(table['edge']['p50_ms']):>9}"
            f"{fmt_ms(table['cluster']['p50_ms']):>11}"
        )
    escalated = sum(1 for r in firsts if r["route"] == "cluster" and (r["reason"] or "").startswith("low_confidence"))
    print(f"of the first occurrences at the cluster, {escalated} were escalated by the cascade (low edge confidence)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(),
                "requests": args.requests,
                "completed": len(rows),
                "partial": partial,
                "distinct_prompts": len(first_at),
                "zipf_exponent": args.zipf,
                "seed": args.seed,
                "concurrency": args.concurrency,
                "max_tokens": args.max_tokens,
                "wall_s": wall,
                "failed": len(failed),
                "never_reached_cluster": never_cluster,
                "target": TARGET,
                "overall": overall,
                "first_occurrences": categories,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"JSON: {args.out}")
    return 0 if not failed and not partial else 1


if __name__ == "__main__":
    raise SystemExit(main())
