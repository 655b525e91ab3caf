"""Send real prompts through r1edge and print what happened, per category.

    python infra/local/demo.py [--questions PATH] [--max-tokens 128] [--base-url URL] [--out FILE]

Reads the MT-Bench questions (JSON lines with ``category`` and ``turns``; default
``../shared/data/mt_bench/question.jsonl``, from FastChat's ``fastchat/llm_judge/data/mt_bench``),
sends the first turn of each as a streamed ``model: auto`` chat completion with the official
``openai`` client, and prints per category: requests routed to the edge and to the cluster,
median and p95 latency, median time to first token (TTFT) and median tokens per second; then
totals. The same figures go to a JSON file (default ``demo-results/mtbench.json``).

It uses the router at ``--base-url`` (default ``http://127.0.0.1:$PORT/v1``) when that answers
``/health``; otherwise it starts the local stack (``infra/local/run.py``) on a free port and stops
it afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from openai import OpenAI

HERE = Path(__file__).resolve().parent
DEFAULT_QUESTIONS = HERE.parents[1] / ".." / "shared" / "data" / "mt_bench" / "question.jsonl"


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between closest ranks."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def load_questions(path: Path) -> list[dict[str, Any]]:
    """MT-Bench questions: one JSON object per line with ``category`` and ``turns``."""
    questions = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                q = json.loads(line)
                questions.append({"id": q["question_id"], "category": q["category"], "prompt": q["turns"][0]})
    return questions


def router_healthy(base_url: str) -> bool:
    try:
        return httpx.get(base_url.removesuffix("/v1") + "/health", timeout=3).status_code == 200
    except httpx.HTTPError:
        return False


@contextmanager
def stack_at(base_url: str | None):
    """Yield ``(base URL, API key)`` of a healthy router: the given one with ``R1EDGE_API_KEY``,
    or a local stack started here with the development key it prints (``R1EDGE_API_KEY`` from
    the environment when set: run.py then uses that value)."""
    if base_url and router_healthy(base_url):
        yield base_url, os.environ.get("R1EDGE_API_KEY", "")
        return
    from run import free_port  # run.py sits beside this script, on sys.path[0]

    port = free_port()
    print(f"[demo] no router at {base_url}; starting the local stack on port {port}", flush=True)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "run.py"), "--port", str(port)], stdout=subprocess.PIPE, text=True
    )
    try:
        key = os.environ.get("R1EDGE_API_KEY", "")
        for line in proc.stdout:  # type: ignore[union-attr]
            print(line, end="", flush=True)
            if line.startswith("R1EDGE_API_KEY="):
                key = line.strip().split("=", 1)[1]
            if line.startswith('{"ready": true'):
                break
        else:
            raise SystemExit(f"the local stack did not start (exit status {proc.wait()})")
        yield f"http://127.0.0.1:{port}/v1", key
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def run_one(client: OpenAI, prompt: str, max_tokens: int) -> dict[str, Any]:
    """One streamed request; returns route, latency and token figures (seconds, tokens)."""
    started = time.perf_counter()
    first = None
    chunks = 0
    usage = None
    raw = client.chat.completions.with_raw_response.create(
        model="auto",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage
        if chunk.choices:
            delta = chunk.choices[0].delta
            text = (delta.content or "") + (getattr(delta, "reasoning_content", None) or "")
            if text:
                chunks += 1
                if first is None:
                    first = time.perf_counter()
    ended = time.perf_counter()
    completion_tokens = usage.completion_tokens if usage else chunks
    generating = ended - first if first else 0.0
    return {
        "route": raw.headers.get("x-r1edge-route"),
        "upstream": raw.headers.get("x-r1edge-upstream"),
        "reason": raw.headers.get("x-r1edge-reason"),
        "latency_s": ended - started,
        "ttft_s": (first - started) if first else None,
        "completion_tokens": completion_tokens,
        "usage_reported": usage is not None,
        "tokens_per_s": completion_tokens / generating if generating > 0 else None,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r.get("error") is None]

    def med(key: str) -> float | None:
        values = [r[key] for r in ok if r.get(key) is not None]
        return statistics.median(values) if values else None

    return {
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "edge": sum(1 for r in ok if r["route"] == "edge"),
        "cluster": sum(1 for r in ok if r["route"] == "cluster"),
        "latency_p50_s": med("latency_s"),
        "latency_p95_s": percentile([r["latency_s"] for r in ok], 95),
        "ttft_p50_s": med("ttft_s"),
        "tokens_per_s_p50": med("tokens_per_s"),
    }


def fmt(value: float | None, scale: float = 1000.0) -> str:
    return "-" if value is None else f"{value * scale:.0f}"


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    header = (
        f"{'category':<12} {'n':>3} {'edge':>5} {'cluster':>7} {'err':>4} {'p50 ms':>8} {'p95 ms':>8} "
        f"{'TTFT p50 ms':>11} {'tok/s p50':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, s in summary.items():
        if name == "total":
            print("-" * len(header))
        print(
            f"{name:<12} {s['requests']:>3} {s['edge']:>5} {s['cluster']:>7} {s['errors']:>4} "
            f"{fmt(s['latency_p50_s']):>8} {fmt(s['latency_p95_s']):>8} {fmt(s['ttft_p50_s']):>11} "
            f"{fmt(s['tokens_per_s_p50'], 1.0):>9}"
        )


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM unwinds like Ctrl-C, so a stack this script started is stopped in stack_at()."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=Path(os.environ.get("QUESTIONS") or DEFAULT_QUESTIONS))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument(
        "--base-url",
        default=os.environ.get("R1EDGE_BASE_URL") or f"http://127.0.0.1:{os.environ.get('PORT') or 8000}/v1",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-results/mtbench.json"))
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    if not args.questions.is_file():
        parser.error(f"no questions file at {args.questions}: pass QUESTIONS=path (MT-Bench question.jsonl)")
    questions = load_questions(args.questions)

    rows: list[dict[str, Any]] = []
    with stack_at(args.base_url) as (base_url, api_key):
        client = OpenAI(base_url=base_url, api_key=api_key or "unset", timeout=600, max_retries=0)
        print(
            f"[demo] {len(questions)} prompts from {args.questions} through {base_url}, max_tokens {args.max_tokens}",
            flush=True,
        )
        for i, q in enumerate(questions, 1):
            row: dict[str, Any] = {"question_id": q["id"], "category": q["category"], "error": None}
            try:
                row.update(run_one(client, q["prompt"], args.max_tokens))
            except Exception as exc:  # noqa: BLE001 - a failed request is a result to report, not a crash
                row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            rows.append(row)
            status = row["error"] or f"{row['route']:<7} {row['latency_s'] * 1000:7.0f} ms  {row['reason']}"
            print(f"[demo] {i:>2}/{len(questions)} {q['category']:<11} {status}", flush=True)

    by_category: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    summary = {name: summarize(group) for name, group in by_category.items()}
    summary["total"] = summarize(rows)
    print()
    print_table(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "questions": str(args.questions),
                "max_tokens": args.max_tokens,
                "summary": summary,
                "requests": rows,
            },
            indent=2,
        )
    )
    print(f"\n[demo] saved {args.out}")
    return 1 if summary["total"]["errors"] else 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except KeyboardInterrupt:
        raise SystemExit(130) from None
