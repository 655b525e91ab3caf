"""Cascade benchmark: how many MT-Bench first turns the edge keeps at each confidence threshold.

    python tests/bench/bench_cascade.py [--questions PATH] [--max-tokens 128] [--window 8]

For each first turn of the MT-Bench questions (default ``../shared/data/mt_bench/question.jsonl``)
the default classifier decides a tier; every prompt is also answered by the real edge model (the
packaged SmolLM2-135M, in-process through the edge app, temperature 0) twice: as JSON, whose
``x-r1edge-confidence`` covers the whole answer (how non-streamed ``auto`` requests are judged),
and as a stream with ``x-r1edge-confidence-window`` (how streamed ones are judged, on their first
tokens). Prints, per category, the prompts the classifier sends to the edge and the share of those
the edge keeps at each threshold (the rest escalate to the cluster); writes JSON to
tests/bench/results/cascade.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "layers" / "r1edge")]

from starlette.testclient import TestClient  # noqa: E402

from r1edge.edge.app import create_app  # noqa: E402
from r1edge.edge.model import resolve_model_path  # noqa: E402
from r1edge.edge.runtime import LlamaRuntime  # noqa: E402
from r1edge.protocol.validation import validate_chat_request  # noqa: E402
from r1edge.routing.classifier import classify  # noqa: E402
from r1edge.routing.config import Classifier  # noqa: E402

DEFAULT_QUESTIONS = ROOT.parent / "shared" / "data" / "mt_bench" / "question.jsonl"
QUICK = os.environ.get("QUICK", "") not in ("", "0")  # QUICK=1 make bench: a smaller run
THRESHOLDS = (0.4, 0.5, 0.6)


def measure(client: TestClient, prompt: str, max_tokens: int, window: int) -> tuple[float, float]:
    """``(whole-answer confidence, first-window confidence)`` for one prompt."""
    body = {"messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens, "temperature": 0}
    whole = client.post("/v1/chat/completions", json=body)
    whole.raise_for_status()
    headers = {"x-r1edge-confidence-window": str(window)}
    with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers) as head:
        head.raise_for_status()
        prefix = float(head.headers["x-r1edge-confidence"])
    return float(whole.headers["x-r1edge-confidence"]), prefix


def share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=Path, default=Path(os.environ.get("QUESTIONS", DEFAULT_QUESTIONS)))
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--every", type=int, default=5 if QUICK else 1, help="take every n-th question")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "bench" / "results" / "cascade.json")
    args = parser.parse_args()
    questions = [json.loads(line) for line in args.questions.read_text().splitlines() if line.strip()][:: args.every]
    runtime = LlamaRuntime(resolve_model_path(), n_ctx=2048)
    classifier = Classifier()
    rows = []
    with TestClient(create_app(runtime)) as client:
        for q in questions:
            prompt = q["turns"][0]
            decision = classify(
                validate_chat_request({"model": "auto", "messages": [{"role": "user", "content": prompt}]}), classifier
            )
            whole, prefix = measure(client, prompt, args.max_tokens, args.window)
            rows.append(
                {"category": q["category"], "tier": decision.tier, "confidence": whole, "prefix_confidence": prefix}
            )
    by_category: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    header = f"{'category':<12}{'n':>4}{'edge':>6}" + "".join(
        f"{f'json≥{t:g}':>10}{f'strm≥{t:g}':>10}" for t in THRESHOLDS
    )
    print(f"Cascade on MT-Bench first turns — {runtime.model_id}, max_tokens {args.max_tokens}, window {args.window}")
    print(f"{platform.machine()}, {os.cpu_count()} cores, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")
    print("edge = prompts the classifier sends to the edge; json/strm ≥ t = share of those the edge keeps")
    print(header)
    print("-" * len(header))
    summary = {}
    for category, group in [*sorted(by_category.items()), ("all", rows)]:
        edge = [r for r in group if r["tier"] == "edge"]
        kept = {}
        cells = ""
        for t in THRESHOLDS:
            json_kept = sum(r["confidence"] >= t for r in edge)
            stream_kept = sum(r["prefix_confidence"] >= t for r in edge)
            kept[str(t)] = {"json": json_kept, "stream": stream_kept}
            cells += f"{share(json_kept, len(edge)):>10}{share(stream_kept, len(edge)):>10}"
        print(f"{category:<12}{len(group):>4}{len(edge):>6}{cells}")
        summary[category] = {"n": len(group), "edge": len(edge), "kept": kept}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(),
                "model": runtime.model_id,
                "max_tokens": args.max_tokens,
                "window": args.window,
                "thresholds": THRESHOLDS,
                "summary": summary,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
