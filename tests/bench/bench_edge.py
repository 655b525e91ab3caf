"""Edge server versus raw llama.cpp, on the same model, threads, context and prompts.

    python tests/bench/bench_edge.py [--rounds 4] [--max-tokens 96] [--prompts 8]

Variants, run alternately (each round visits every prompt in every variant, the variant order
rotating per prompt, so drift hits all alike):

- ``raw``: ``llama_cpp.Llama.create_chat_completion(stream=True)`` in this process
  (``logits_all=False``, as the edge uses it);
- ``raw+logits_all``: the same with ``logits_all=True``, the setting llama-cpp-python needs for
  its own ``logprobs`` (for reference: the edge reads token log-probabilities without it);
- ``edge``: the edge server (uvicorn, a separate process) over HTTP, streamed, with its
  confidence computation, reasoning split and usage counting on;
- ``edge+window8``: the same with ``x-r1edge-confidence-window: 8``, how the router asks for a
  streamed ``auto`` answer it may escalate (the first 8 tokens are generated before the headers).

Temperature 0, so every variant generates the same tokens. Reports decode tokens/s (content
chunks after the first, per second), time to first token (request to first content chunk), cold
start (process start to the first token, for the raw library in a fresh process and for the
server), and the server's peak resident memory (VmHWM) against the model file plus its KV cache.
Targets: edge ≥ 0.95 × raw tokens/s, TTFT overhead ≤ 10 ms at the median, memory ≤ model + KV
cache + 150 MB. JSON goes to tests/bench/results/edge.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import llama_cpp

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "layers" / "r1edge"), str(ROOT / "infra" / "local")]

from run import free_port, uvicorn_argv  # noqa: E402

from r1edge.edge.model import resolve_model_path  # noqa: E402

DEFAULT_QUESTIONS = ROOT.parent / "shared" / "data" / "mt_bench" / "question.jsonl"
QUICK = os.environ.get("QUICK", "") not in ("", "0")  # QUICK=1 make bench: a smaller run
N_CTX = 2048
CORES = len(os.sched_getaffinity(0))
THREADS = int(os.environ.get("BENCH_THREADS", CORES))  # llama.cpp threads, the same for every variant
VARIANTS = ("raw", "raw+logits_all", "edge", "edge+window8")

COLD_RAW = textwrap.dedent(
    """
    import sys, llama_cpp
    llm = llama_cpp.Llama(model_path=sys.argv[1], n_ctx=int(sys.argv[2]), n_threads=int(sys.argv[3]), verbose=False)
    for chunk in llm.create_chat_completion(
        messages=[{"role": "user", "content": "hi"}], max_tokens=4, temperature=0, stream=True
    ):
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            print("first", flush=True)
            break
    print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0], flush=True)
    """
)


def prompts(path: Path, count: int) -> list[str]:
    """The first turn of ``count`` MT-Bench questions, spread over the categories."""
    questions = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [q["turns"][0] for q in questions[:: max(1, len(questions) // count)][:count]]


#: Decode rate is measured from this content chunk on, so the burst a confidence window
#: releases at once does not count as speed.
DECODE_FROM = 9


def timed(chunks) -> dict[str, float]:
    """TTFT and decode rate from an iterator of content strings, timed from now."""
    start = time.perf_counter()
    stamps = [time.perf_counter() for text in chunks if text]
    if len(stamps) <= DECODE_FROM:
        return {"ttft_ms": float("nan"), "tok_s": float("nan"), "tokens": len(stamps)}
    decode = stamps[-1] - stamps[DECODE_FROM - 1]
    return {
        "ttft_ms": (stamps[0] - start) * 1000,
        "tok_s": (len(stamps) - DECODE_FROM) / decode if decode > 0 else float("nan"),
        "tokens": len(stamps),
    }


def raw_run(llm: llama_cpp.Llama, prompt: str, max_tokens: int) -> dict[str, float]:
    stream = llm.create_chat_completion(
        messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0, stream=True
    )
    return timed(c["choices"][0]["delta"].get("content") if c["choices"] else None for c in stream)


def edge_run(client: httpx.Client, prompt: str, max_tokens: int, window: int) -> dict[str, float]:
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    headers = {"x-r1edge-confidence-window": str(window)} if window else {}

    def contents():
        with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    chunk = json.loads(line[6:])
                    yield chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None

    return timed(contents())


def start_edge(model: Path | None, extra_env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str, float]:
    """Start the edge server; return it, its URL and the cold start (process start to first token).

    ``model`` is passed as ``MODEL_PATH`` (the model baked into an image); ``None`` leaves the
    source to ``extra_env`` (``MODEL_URI``)."""
    port = free_port()
    env = {
        **os.environ,
        **({"MODEL_PATH": str(model)} if model else {}),
        **(extra_env or {}),
        "EDGE_N_CTX": str(N_CTX),
        "EDGE_N_THREADS": str(THREADS),
        "EDGE_MAX_TOKENS": "4096",
        "POWERTOOLS_METRICS_DISABLED": "true",
        "POWERTOOLS_LOG_LEVEL": "WARNING",
    }
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*uvicorn_argv("edge", "127.0.0.1", port), "--log-level", "warning"],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0, "stream": True}
    while True:
        try:
            with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if '"content":"' in line:
                        return proc, url, time.perf_counter() - started
        except httpx.TransportError:
            if proc.poll() is not None:
                raise RuntimeError("the edge server exited") from None
            time.sleep(0.01)


def cold_raw(model: Path) -> tuple[float, int]:
    """Process start to first token for the raw library, and that process's peak RSS (KiB)."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", COLD_RAW, str(model), str(N_CTX), str(THREADS)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    cold = time.perf_counter() - started
    rss_kib = int(proc.stdout.readline())
    proc.wait()
    return cold, rss_kib


def cold_edge_from_s3(model: Path) -> float:
    """Cold start with the model fetched from S3 (a moto server on loopback, so the transfer is
    far faster than real S3; what it shows is the download, check and rename on top of the load)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from r1edge.edge.model import DEFAULT_MODEL_SHA256

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    aws = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=aws["AWS_ENDPOINT_URL"],
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="models")
        s3.upload_file(str(model), "models", "smollm2.gguf")
        with tempfile.TemporaryDirectory() as cache:
            env = {
                **aws,
                "MODEL_URI": "s3://models/smollm2.gguf",
                "MODEL_SHA256": DEFAULT_MODEL_SHA256,
                "MODEL_CACHE_DIR": cache,
            }
            proc, _, cold = start_edge(None, env)
            proc.terminate()
            proc.wait(timeout=10)
        return cold
    finally:
        server.stop()


def peak_rss_kib(pid: int) -> int:
    return int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0])


def kv_cache_bytes(llm: llama_cpp.Llama) -> int:
    """KV cache size at ``N_CTX`` for an f16 cache: n_ctx × layers × 2 × (n_embd / heads × kv heads) × 2."""
    meta = llm.metadata
    arch = meta["general.architecture"]
    layers = int(meta[f"{arch}.block_count"])
    embd = int(meta[f"{arch}.embedding_length"])
    heads = int(meta[f"{arch}.attention.head_count"])
    kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
    return N_CTX * layers * 2 * (embd // heads * kv_heads) * 2


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=1 if QUICK else 4)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--prompts", type=int, default=4 if QUICK else 8)
    parser.add_argument("--questions", type=Path, default=Path(os.environ.get("QUESTIONS", DEFAULT_QUESTIONS)))
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "bench" / "results" / "edge.json")
    args = parser.parse_args()
    model = resolve_model_path()
    texts = prompts(args.questions, args.prompts)

    cold_raw_s, raw_rss_kib = cold_raw(model)
    cold_s3_s = cold_edge_from_s3(model)
    edge, url, cold_edge_s = start_edge(model)
    try:
        raw = llama_cpp.Llama(model_path=str(model), n_ctx=N_CTX, n_threads=THREADS, verbose=False)
        raw_all = llama_cpp.Llama(model_path=str(model), n_ctx=N_CTX, n_threads=THREADS, logits_all=True, verbose=False)
        runners = {
            "raw": lambda p: raw_run(raw, p, args.max_tokens),
            "raw+logits_all": lambda p: raw_run(raw_all, p, args.max_tokens),
        }
        results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        with httpx.Client(base_url=url, timeout=300) as client:
            runners["edge"] = lambda p: edge_run(client, p, args.max_tokens, 0)
            runners["edge+window8"] = lambda p: edge_run(client, p, args.max_tokens, 8)
            for prompt in texts:  # warm-up: every variant once, not recorded
                for variant in VARIANTS:
                    runners[variant](prompt)
                break
            # Variant-major within a round, the order rotating per round: no variant ever follows
            # itself on the same prompt (llama.cpp would reuse the cached prompt), and drift
            # hits every variant alike.
            for turn in range(args.rounds):
                for variant in VARIANTS[turn % len(VARIANTS) :] + VARIANTS[: turn % len(VARIANTS)]:
                    for prompt in texts:
                        results[variant].append(runners[variant](prompt))
        edge_rss_kib = peak_rss_kib(edge.pid)
        kv = kv_cache_bytes(raw)
    finally:
        edge.terminate()
        edge.wait(timeout=10)

    summary = {
        v: {
            "tok_s_p50": median([r["tok_s"] for r in rows]),
            "ttft_ms_p50": median([r["ttft_ms"] for r in rows]),
            "tokens": sum(r["tokens"] for r in rows),
        }
        for v, rows in results.items()
    }
    base = summary["raw"]
    model_mb = model.stat().st_size / 2**20
    budget_mb = model_mb + kv / 2**20 + 150
    print(
        f"Edge vs raw llama.cpp — {model.name} ({model_mb:.0f} MB), n_ctx {N_CTX}, {THREADS} threads, "
        f"max_tokens {args.max_tokens}, {len(texts)} prompts × {args.rounds} rounds, temperature 0"
    )
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, {memory_gib:.0f} GiB, llama-cpp-python "
        f"{llama_cpp.__version__}, Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    header = f"{'variant':<16}{'tok/s p50':>10}{'× raw':>8}{'TTFT p50 ms':>13}{'+ms vs raw':>12}{'tokens':>8}"
    print(header)
    print("-" * len(header))
    for v, s in summary.items():
        print(
            f"{v:<16}{s['tok_s_p50']:>10.1f}{s['tok_s_p50'] / base['tok_s_p50']:>8.3f}{s['ttft_ms_p50']:>13.1f}"
            f"{s['ttft_ms_p50'] - base['ttft_ms_p50']:>12.1f}{s['tokens']:>8}"
        )
    print(
        f"cold start (process start → first token): raw {cold_raw_s * 1000:.0f} ms, edge with the model on disk "
        f"(as in the image) {cold_edge_s * 1000:.0f} ms, edge fetching it from S3 (moto, loopback) "
        f"{cold_s3_s * 1000:.0f} ms"
    )
    print(
        f"peak RSS: edge server {edge_rss_kib / 1024:.0f} MB, raw process {raw_rss_kib / 1024:.0f} MB; "
        f"budget model {model_mb:.0f} + KV cache {kv / 2**20:.0f} + 150 = {budget_mb:.0f} MB"
    )
    verdicts = {
        "throughput ≥ 0.95 × raw": summary["edge"]["tok_s_p50"] >= 0.95 * base["tok_s_p50"],
        "TTFT overhead ≤ 10 ms": summary["edge"]["ttft_ms_p50"] - base["ttft_ms_p50"] <= 10,
        "memory within budget": edge_rss_kib / 1024 <= budget_mb,
    }
    for name, ok in verdicts.items():
        print(f"  {'PASS' if ok else 'MISS'}  {name}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": datetime.now(UTC).isoformat(),
                "model": model.name,
                "model_bytes": model.stat().st_size,
                "kv_cache_bytes": kv,
                "n_ctx": N_CTX,
                "threads": THREADS,
                "max_tokens": args.max_tokens,
                "summary": summary,
                "cold_start_s": {"raw": cold_raw_s, "edge": cold_edge_s, "edge_s3": cold_s3_s},
                "peak_rss_kib": {"edge": edge_rss_kib, "raw": raw_rss_kib},
                "verdicts": verdicts,
                "runs": results,
            },
            indent=2,
        )
    )
    print(f"JSON: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
