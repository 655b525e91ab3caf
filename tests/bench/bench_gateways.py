"""Gateways side by side: r1edge's router against LiteLLM's proxy, over the same fake upstream.

    python tests/bench/bench_gateways.py [--rounds 3] [--requests 400] [--concurrency 1,16,64]
        [--chaos-requests 1500] [--chaos-concurrency 32] [--delay-ms 0] [--quick]

``QUICK=1`` in the environment (``QUICK=1 make bench``) is ``--quick``: 2 rounds of 100 requests
per cell and 300 per chaos run, about two minutes on 2 cores; the default sizes take about eight.

**Overhead.** One fake OpenAI upstream (``fakeupstream.py``: a fixed 3-chunk completion, as JSON
or SSE, after ``--delay-ms``) in its own process; the same requests go to it (a) directly,
(b) through r1edge's router (uvicorn, one process, a routing config with that one endpoint and
the default retry settings) and (c) through LiteLLM's proxy (``litellm --config``, one worker, one
deployment, ``num_retries: 3``: both make up to 4 attempts). Each round runs every cell — JSON
and streamed, at each concurrency — against all three, the order rotating from cell to cell, so
drift hits all alike. Reported: latency added over direct at p50, p95 and p99 (per round:
gateway minus direct in the same cell), throughput, CPU time per request of the process that
serves the client (the upstream for direct, else the gateway; from /proc, so other load on the
machine barely moves it), and r1edge as a ratio to LiteLLM (per round, then the median); every
figure is the median over rounds with [min–max] beside it. Aim: a fifth of LiteLLM's added
latency and five times its throughput.

**Resilience.** The chaos benchmark's scenarios (``bench_chaos.py``): three endpoints, A with the
primary failing 22 % of calls, B with all three failing 22 % independently (429 with
``Retry-After: 1``, 503, a reset after the headers, or a first byte 1 s late). Half the requests
stream. r1edge: priorities 0, 1, 2, ``first_byte`` timeout 0.5 s, breaker after 5 failures for
2 s. LiteLLM, as its documentation sets such a chain up: one model group per endpoint,
``fallbacks`` from the primary to the two backups, ``num_retries: 3``, ``allowed_fails: 5``,
``cooldown_time: 2``, ``timeout``/``stream_timeout`` 0.5 s. A request succeeds with a 200 and a
complete answer (JSON with choices, or SSE ending in ``[DONE]``); upstream calls are counted at
the fake upstreams.

**Memory.** Peak resident memory (VmHWM) of the router and of LiteLLM's proxy after the overhead
run; the edge server's comes from ``bench_edge.py`` (``results/edge.json``) when it has run.

LiteLLM runs in its own virtualenv (``.bench/litellm-venv``, created on first use with
``litellm[proxy]`` pinned here and every dependency pinned in ``litellm-constraints.txt``),
offline (``LITELLM_LOCAL_MODEL_COST_MAP=True``, ``--telemetry False``). The load generator is a
small HTTP/1.1 client in this process (keep-alive, one connection per concurrent client), on the
same 2 cores as what it measures. Prints the tables; JSON to tests/bench/results/gateways.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT / "infra" / "local")]

from run import free_port, uvicorn_argv  # noqa: E402

LITELLM_VERSION = "1.82.6"  # the last release before the March 2026 PyPI compromise (1.82.7, 1.82.8)
LITELLM_VENV = ROOT / ".bench" / "litellm-venv"
LITELLM_CONSTRAINTS = HERE / "litellm-constraints.txt"
RESULTS = HERE / "results" / "gateways.json"
TARGETS = ("direct", "r1edge", "litellm")
LABELS = {"direct": "direct", "r1edge": "r1edge", "litellm": "LiteLLM"}
FAILURE_RATE = 0.22
SCENARIOS = {"A": [FAILURE_RATE, 0.0, 0.0], "B": [FAILURE_RATE] * 3}
READY_TIMEOUT = 120.0  # seconds for a server to answer its readiness path (LiteLLM imports for ~15 s)
REQUEST_TIMEOUT = 60.0  # seconds per request, client side

#: The request every client sends (``stream`` is set per cell): a short chat, a small completion.
REQUEST = {
    "model": "deepseek-r1",
    "messages": [
        {"role": "system", "content": "You are a helpful assistant. Answer briefly."},
        {"role": "user", "content": "In one sentence: why do gateways retry on 429 and 503 but not on 400?"},
    ],
    "max_tokens": 16,
}


# --------------------------------------------------------------------------- load generator


@dataclass
class Result:
    """One request: whether it got a complete answer, and its latency in seconds."""

    ok: bool
    latency: float
    status: int = 0


class Connection:
    """One keep-alive HTTP/1.1 connection to ``host:port`` that POSTs JSON and reads the whole
    answer (``Content-Length`` or chunked). Leaner than a general client, so the load generator
    takes less of the CPU it shares with what it measures."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send one request and return ``(status, body bytes)``.

        Raises:
            OSError, asyncio.IncompleteReadError, ValueError: the connection failed or the answer
                is not HTTP/1.1 as expected; the connection is closed and reopened on next use.
        """
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        try:
            self.writer.write(
                b"POST %s HTTP/1.1\r\nhost: %s:%d\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (path.encode(), self.host.encode(), self.port, len(body), body)
            )
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if "content-length" in headers:
                data = await self.reader.readexactly(int(headers["content-length"]))
            elif headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    if size == 0:
                        await self.reader.readuntil(b"\r\n")  # no trailers from these servers
                        break
                    parts.append((await self.reader.readexactly(size + 2))[:-2])
                data = b"".join(parts)
            else:
                data = await self.reader.read()
                headers["connection"] = "close"
            if headers.get("connection", "").lower() == "close":
                self.close()
            return status, data
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Close the socket (reopened by the next :meth:`post`)."""
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def complete(status: int, data: bytes, stream: bool) -> bool:
    """A 200 with a whole answer: JSON with ``choices``, or SSE whose last event is ``[DONE]``."""
    if status != 200:
        return False
    if stream:
        return data.rstrip().endswith(b"data: [DONE]")
    try:
        return bool(json.loads(data).get("choices"))
    except ValueError:
        return False


async def drive(
    url: str, count: int, concurrency: int, stream: bool | None, timeout: float = REQUEST_TIMEOUT
) -> tuple[list[Result], float]:
    """Send ``count`` requests to ``url`` (``http://host:port/v1``) from ``concurrency`` clients.

    ``stream``: ``True``/``False`` for all requests, ``None`` for every other one streamed.
    Returns the results and the wall time of the whole run (seconds).
    """
    parsed = httpx.URL(url)
    path = f"{parsed.path.rstrip('/')}/chat/completions"
    bodies = {s: json.dumps({**REQUEST, "stream": s}).encode() for s in (False, True)}
    results: list[Result] = []
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        conn = Connection(parsed.host, parsed.port or 80)
        try:
            while next_index < count:
                i = next_index
                next_index += 1
                s = (i % 2 == 0) if stream is None else stream
                started = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.post(path, bodies[s]), timeout)
                    results.append(Result(complete(status, data, s), time.perf_counter() - started, status))
                except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                    results.append(Result(False, time.perf_counter() - started))
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return results, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100) of ``values``, linear between closest ranks; NaN if empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def cell_figures(results: list[Result], elapsed: float) -> dict[str, float]:
    """Latency percentiles (ms, successful requests) and throughput (successes per second)."""
    good = [r.latency * 1000 for r in results if r.ok]
    return {
        "p50_ms": percentile(good, 50),
        "p95_ms": percentile(good, 95),
        "p99_ms": percentile(good, 99),
        "rps": len(good) / elapsed if elapsed > 0 else float("nan"),
        "requests": len(results),
        "failed": len(results) - len(good),
    }


# --------------------------------------------------------------------------- processes


@dataclass
class Proc:
    """A server process this benchmark started, with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def peak_rss_mb(self) -> float:
        """Peak resident memory (VmHWM) of this process and its descendants' own peaks, in MiB."""
        total = 0
        for pid in [self.popen.pid, *descendants(self.popen.pid)]:
            with contextlib.suppress(OSError, IndexError, ValueError):
                total += int(Path(f"/proc/{pid}/status").read_text().split("VmHWM:")[1].split()[0])
        return total / 1024

    def cpu_seconds(self) -> float:
        """User plus system CPU time this process has used so far, in seconds (/proc/<pid>/stat)."""
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; waits for the exit either way."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """Every process under ``pid`` (from /proc/<pid>/task/*/children)."""
    found: list[int] = []
    for children in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            for child in children.read_text().split():
                found += [int(child), *descendants(int(child))]
    return found


def wait_ready(proc: Proc, url: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll ``url`` until it answers 200.

    Raises:
        RuntimeError: the process exited, or ``timeout`` seconds passed (its log's tail included).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            break
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    tail = proc.log.read_text(errors="replace")[-2000:] if proc.log.exists() else ""
    raise RuntimeError(f"{proc.name} did not become ready at {url}:\n{tail}")


def start_upstream(workdir: Path, rates: list[float], seed: int, delay_ms: float) -> Proc:
    """Start ``fakeupstream.py`` with one server per rate; its URLs are in ``extra["urls"]``."""
    log = workdir / f"upstream-{time.monotonic_ns()}.log"
    popen = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "fakeupstream.py"),
            "--rates",
            ",".join(str(r) for r in rates),
            "--seed",
            str(seed),
            "--delay-ms",
            str(delay_ms),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )
    assert popen.stdout is not None
    line = popen.stdout.readline()
    if not line:
        popen.wait(timeout=10)
        raise RuntimeError(f"fake upstream failed:\n{log.read_text(errors='replace')[-2000:]}")
    urls = json.loads(line)["urls"]
    return Proc("fake upstream", popen, log, urls[0], {"urls": urls})


def upstream_calls(urls: list[str]) -> int:
    """Chat calls the fake upstreams have answered so far (their ``fake_upstream_calls_total``)."""
    total = 0
    for url in urls:
        text = httpx.get(url.removesuffix("/v1") + "/metrics", timeout=5).text
        total += int(text.rsplit("fake_upstream_calls_total", 1)[1].split()[0])
    return total


def start_r1edge(workdir: Path, config: dict[str, Any], tag: str) -> Proc:
    """Start the router as it runs in Lambda (functions/router/run.sh: uvicorn, no access log,
    Powertools logs at the template's INFO level) against ``config``."""
    path = workdir / f"r1edge-{tag}.json"
    path.write_text(json.dumps(config, indent=2))
    port = free_port()
    log = workdir / f"r1edge-{tag}.log"
    env = {**os.environ, "R1EDGE_CONFIG": str(path), "POWERTOOLS_LOG_LEVEL": "INFO"}
    popen = subprocess.Popen(
        uvicorn_argv("router", "127.0.0.1", port),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    proc = Proc("r1edge router", popen, log, f"http://127.0.0.1:{port}/v1", {"config": config})
    wait_ready(proc, f"http://127.0.0.1:{port}/ping")
    return proc


def litellm_yaml(config: dict[str, Any]) -> str:
    """LiteLLM's ``config.yaml`` text for ``config`` (JSON is YAML; kept readable, one key a line)."""
    return json.dumps(config, indent=2) + "\n"


def start_litellm(workdir: Path, config: dict[str, Any], tag: str) -> Proc:
    """Start LiteLLM's proxy (``litellm --config``, one uvicorn worker, its defaults otherwise)
    offline: the model cost map from the package, telemetry off, no database, no master key."""
    path = workdir / f"litellm-{tag}.yaml"
    path.write_text(litellm_yaml(config))
    port = free_port()
    log = workdir / f"litellm-{tag}.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))},
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    popen = subprocess.Popen(
        [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(path),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--telemetry",
            "False",
        ],
        env=env,
        cwd=workdir,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    proc = Proc("LiteLLM proxy", popen, log, f"http://127.0.0.1:{port}/v1", {"config": config})
    wait_ready(proc, f"http://127.0.0.1:{port}/health/liveliness")
    return proc


def ensure_litellm(version: str = LITELLM_VERSION, venv: Path = LITELLM_VENV) -> str:
    """Create or update LiteLLM's own virtualenv with ``litellm[proxy]==version`` (dependencies
    pinned by :data:`LITELLM_CONSTRAINTS`); return the installed version.

    Raises:
        subprocess.CalledProcessError: ``venv`` or ``pip install`` failed.
    """
    python = venv / "bin" / "python"
    stamp = venv / ".r1edge-bench"
    wanted = f"litellm[proxy]=={version}\n{LITELLM_CONSTRAINTS.read_text()}"
    if not (stamp.exists() and stamp.read_text() == wanted and python.exists()):
        print(f"setting up {venv.relative_to(ROOT)} with litellm[proxy]=={version} (first time: about 2 minutes)")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                f"litellm[proxy]=={version}",
                "-c",
                str(LITELLM_CONSTRAINTS),
            ],
            check=True,
        )
        stamp.write_text(wanted)
    return package_version(python, "litellm")


def package_version(python: Path | str, name: str) -> str:
    """``name``'s installed version in the interpreter ``python``."""
    code = f"import importlib.metadata as m; print(m.version({name!r}))"
    return subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip()


# --------------------------------------------------------------------------- configs


def r1edge_overhead_config(url: str) -> dict[str, Any]:
    """One cluster endpoint, every other setting at its default (retry: up to 4 attempts)."""
    return {"endpoints": [{"name": "upstream", "url": url, "tier": "cluster"}]}


def litellm_overhead_config(url: str) -> dict[str, Any]:
    """The same single route in LiteLLM: one deployment, retries on (``num_retries: 3``, so up
    to 4 attempts as in r1edge)."""
    return {
        "model_list": [
            {
                "model_name": "deepseek-r1",
                "litellm_params": {"model": "openai/deepseek-r1", "api_base": url, "api_key": "none"},
            }
        ],
        "router_settings": {"num_retries": 3},
    }


def r1edge_chaos_config(urls: list[str]) -> dict[str, Any]:
    """The chaos benchmark's routing config: priorities 0, 1, 2; first byte within 0.5 s."""
    return {
        "endpoints": [
            {
                "name": f"r1-{i}",
                "url": url,
                "tier": "cluster",
                "priority": i,
                "timeouts": {"connect": 1, "first_byte": 0.5, "idle": 5},
            }
            for i, url in enumerate(urls)
        ],
        "deadline": 30,
        "breaker": {"failure_threshold": 5, "cooldown": 2},
    }


def litellm_chaos_config(urls: list[str]) -> dict[str, Any]:
    """A primary and two backups the way LiteLLM's docs chain them: a model group each, fallbacks
    from the primary to the backups in order, retries within a group (``num_retries: 3``, as
    r1edge's 4 attempts per endpoint), cooldown after 5 failures in a minute for 2 s, and a 0.5 s
    timeout per call (``timeout``, ``stream_timeout``), matching r1edge's first-byte timeout."""
    names = ["deepseek-r1", *(f"deepseek-r1-backup-{i}" for i in range(1, len(urls)))]
    return {
        "model_list": [
            {
                "model_name": name,
                "litellm_params": {
                    "model": "openai/deepseek-r1",
                    "api_base": url,
                    "api_key": "none",
                    "timeout": 0.5,
                    "stream_timeout": 0.5,
                },
            }
            for name, url in zip(names, urls, strict=True)
        ],
        "router_settings": {
            "num_retries": 3,
            "fallbacks": [{names[0]: names[1:]}],
            "allowed_fails": 5,
            "cooldown_time": 2,
        },
    }


# --------------------------------------------------------------------------- runs


def rotated(items: tuple[str, ...], by: int) -> list[str]:
    """``items`` starting at index ``by`` (mod its length), wrapping around."""
    by %= len(items)
    return list(items[by:] + items[:by])


def overhead(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """The overhead rounds; returns per-round figures, summaries, memory and versions."""
    procs: list[Proc] = []
    try:
        upstream = start_upstream(workdir, [0.0], args.seed, args.delay_ms)
        procs.append(upstream)
        r1edge = start_r1edge(workdir, r1edge_overhead_config(upstream.url), "overhead")
        procs.append(r1edge)
        litellm = start_litellm(workdir, litellm_overhead_config(upstream.url), "overhead")
        procs.append(litellm)
        urls = {"direct": upstream.url, "r1edge": r1edge.url, "litellm": litellm.url}
        serving = {"direct": upstream, "r1edge": r1edge, "litellm": litellm}  # whose CPU time a request costs
        sent = 0
        for target in TARGETS:  # warm-up, not recorded: lazy imports, pools, first-call caches
            results, _ = asyncio.run(drive(urls[target], args.warmup, min(16, args.warmup), None))
            bad = [r for r in results if not r.ok]
            if bad:
                raise RuntimeError(
                    f"{target}: {len(bad)} of {len(results)} warm-up requests failed (status {bad[0].status})"
                )
            sent += len(results)
        cells = [(mode, c) for mode in ("json", "stream") for c in args.concurrency]
        rounds: list[dict[str, Any]] = []
        for r in range(args.rounds):
            figures: dict[str, Any] = {}
            for k, (mode, c) in enumerate(cells):
                for target in rotated(TARGETS, r + k):
                    cpu = serving[target].cpu_seconds()
                    results, elapsed = asyncio.run(drive(urls[target], args.requests, c, mode == "stream"))
                    cpu = serving[target].cpu_seconds() - cpu
                    figures[f"{mode}/{c}/{target}"] = {
                        **cell_figures(results, elapsed),
                        "cpu_ms_per_request": cpu * 1000 / len(results),
                    }
                    sent += len(results)
            rounds.append(figures)
            print(f"  round {r + 1}/{args.rounds} done", flush=True)
        calls = upstream_calls(upstream.extra["urls"])
        memory = {"r1edge": r1edge.peak_rss_mb(), "litellm": litellm.peak_rss_mb(), "upstream": upstream.peak_rss_mb()}
        return {
            "cells": cells,
            "rounds": rounds,
            "summary": summarize(rounds, cells),
            "memory_mb": memory,
            "requests_sent": sent,
            "upstream_calls": calls,
            "configs": {"r1edge": r1edge.extra["config"], "litellm": litellm.extra["config"]},
        }
    finally:
        for proc in reversed(procs):
            proc.stop()


def spread(values: list[float]) -> dict[str, float]:
    """Median, minimum and maximum of ``values`` (NaN-free)."""
    values = [v for v in values if v == v]
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(rounds: list[dict[str, Any]], cells: list[tuple[str, int]]) -> dict[str, Any]:
    """Per cell: direct's latency and throughput; each gateway's added latency (gateway minus
    direct in the same round) and throughput; r1edge ÷ LiteLLM, pair by pair within a round.
    Each as median/min/max over rounds."""
    out: dict[str, Any] = {}
    for mode, c in cells:
        key = f"{mode}/{c}"
        cell: dict[str, Any] = {}
        for target in TARGETS:
            row: dict[str, Any] = {
                "rps": spread([rd[f"{key}/{target}"]["rps"] for rd in rounds]),
                "cpu_ms_per_request": spread([rd[f"{key}/{target}"]["cpu_ms_per_request"] for rd in rounds]),
            }
            for q in ("p50", "p95", "p99"):
                row[f"{q}_ms"] = spread([rd[f"{key}/{target}"][f"{q}_ms"] for rd in rounds])
                if target != "direct":
                    row[f"added_{q}_ms"] = spread(
                        [rd[f"{key}/{target}"][f"{q}_ms"] - rd[f"{key}/direct"][f"{q}_ms"] for rd in rounds]
                    )
            row["failed"] = sum(rd[f"{key}/{target}"]["failed"] for rd in rounds)
            cell[target] = row
        ratio: dict[str, Any] = {
            "rps": spread([rd[f"{key}/r1edge"]["rps"] / rd[f"{key}/litellm"]["rps"] for rd in rounds]),
            "cpu_ms_per_request": spread(
                [
                    rd[f"{key}/r1edge"]["cpu_ms_per_request"] / rd[f"{key}/litellm"]["cpu_ms_per_request"]
                    for rd in rounds
                ]
            ),
        }
        for q in ("p50", "p95", "p99"):
            pairs = []
            for rd in rounds:
                direct = rd[f"{key}/direct"][f"{q}_ms"]
                ours, theirs = rd[f"{key}/r1edge"][f"{q}_ms"] - direct, rd[f"{key}/litellm"][f"{q}_ms"] - direct
                pairs.append(ours / theirs if theirs > 0 else float("nan"))
            ratio[f"added_{q}"] = spread(pairs)
        cell["ratio"] = ratio
        out[key] = cell
    return out


def chaos_run(args: argparse.Namespace, workdir: Path, scenario: str, gateway: str) -> dict[str, Any]:
    """One chaos scenario through one gateway, with fresh upstreams (same seed) and a fresh
    gateway process (no breaker or cooldown state carried over)."""
    procs: list[Proc] = []
    try:
        upstream = start_upstream(workdir, SCENARIOS[scenario], args.seed, 0.0)
        procs.append(upstream)
        urls = upstream.extra["urls"]
        if gateway == "r1edge":
            proc = start_r1edge(workdir, r1edge_chaos_config(urls), f"chaos-{scenario}")
        else:
            proc = start_litellm(workdir, litellm_chaos_config(urls), f"chaos-{scenario}")
        procs.append(proc)
        asyncio.run(drive(proc.url, 10, 1, None))  # warm-up (first-call imports), not counted
        before = upstream_calls(urls)
        results, elapsed = asyncio.run(drive(proc.url, args.chaos_requests, args.chaos_concurrency, None))
        calls = upstream_calls(urls) - before
    finally:
        for p in reversed(procs):
            p.stop()
    good = [r.latency * 1000 for r in results if r.ok]
    return {
        "scenario": scenario,
        "gateway": gateway,
        "failure_rates": SCENARIOS[scenario],
        "requests": len(results),
        "succeeded": len(good),
        "success_rate": len(good) / len(results),
        "p50_ms": percentile(good, 50),
        "p99_ms": percentile(good, 99),
        "p99_all_ms": percentile([r.latency * 1000 for r in results], 99),
        "upstream_calls_per_request": calls / len(results),
        "rps": len(results) / elapsed,
        "statuses": {
            str(s): sum(1 for r in results if not r.ok and r.status == s)
            for s in {r.status for r in results if not r.ok}
        },
        "config": proc.extra["config"],
    }


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    """Cores, memory, CPU model, load average, interpreter and package versions."""
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        "load_average_at_start": os.getloadavg(),
        "python": platform.python_version(),
        "r1edge_commit": commit.stdout.strip(),
        "versions": {
            "r1edge: uvicorn": importlib.metadata.version("uvicorn"),
            "r1edge: starlette": importlib.metadata.version("starlette"),
            "r1edge: httpx": importlib.metadata.version("httpx"),
            "LiteLLM: uvicorn": package_version(LITELLM_VENV / "bin" / "python", "uvicorn"),
            "LiteLLM: fastapi": package_version(LITELLM_VENV / "bin" / "python", "fastapi"),
            "LiteLLM: openai": package_version(LITELLM_VENV / "bin" / "python", "openai"),
        },
    }


def fmt(s: dict[str, float], digits: int = 1, sign: bool = False) -> str:
    """``median [min–max]`` with ``digits`` decimals."""
    if s["median"] != s["median"]:
        return "-"
    plus = "+" if sign else ""
    return f"{s['median']:{plus}.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def overhead_table(result: dict[str, Any]) -> list[str]:
    """The overhead table: per cell, direct's latency, each gateway's added latency, throughput
    and CPU time per request, and r1edge ÷ LiteLLM."""
    rows = [["mode", "conc", "via", "p50 ms", "p95 ms", "p99 ms", "req/s", "CPU ms/req"]]
    for mode, c in result["cells"]:
        cell = result["summary"][f"{mode}/{c}"]
        for target in TARGETS:
            row = cell[target]
            if target == "direct":
                lat = [fmt(row[f"{q}_ms"], 2) for q in ("p50", "p95", "p99")]
            else:
                lat = [fmt(row[f"added_{q}_ms"], 2, sign=True) for q in ("p50", "p95", "p99")]
            failed = f"  ({row['failed']} failed)" if row["failed"] else ""
            rows.append(
                [mode, str(c), LABELS[target], *lat, fmt(row["rps"], 0), fmt(row["cpu_ms_per_request"], 2) + failed]
            )
        ratio = cell["ratio"]
        lat = [fmt(ratio[f"added_{q}"], 2) for q in ("p50", "p95", "p99")]
        rows.append(["", "", "r1e÷Lite", *lat, fmt(ratio["rps"], 2), fmt(ratio["cpu_ms_per_request"], 2)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        left = f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:<{widths[2]}}"
        lines.append(left + "".join(f"  {v:>{w}}" for v, w in zip(r[3:], widths[3:], strict=True)))
    lines.insert(1, "-" * max(len(line) for line in lines))
    return lines


def verdicts(result: dict[str, Any]) -> list[str]:
    """The issue's aims per cell, on the medians of the per-round ratios."""
    lines = []
    for mode, c in result["cells"]:
        ratio = result["summary"][f"{mode}/{c}"]["ratio"]
        lat, rps = ratio["added_p50"]["median"], ratio["rps"]["median"]
        lines.append(
            f"  {mode:<6} c={c:<3} added p50 {lat:.2f} × LiteLLM's ({'PASS' if lat <= 0.2 else 'MISS'} ≤ 0.2), "
            f"throughput {rps:.2f} × ({'PASS' if rps >= 5 else 'MISS'} ≥ 5)"
        )
    return lines


def chaos_table(rows: list[dict[str, Any]]) -> list[str]:
    """The resilience table: one row per scenario and gateway."""
    header = (
        f"{'scenario':<9}{'failing':<14}{'via':<9}{'success':>10}{'failed':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'calls/req':>11}{'req/s':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        failing = "primary 22%" if r["scenario"] == "A" else "all 3 at 22%"
        lines.append(
            f"{r['scenario']:<9}{failing:<14}{LABELS[r['gateway']]:<9}{r['success_rate'] * 100:>9.3f}%"
            f"{r['requests'] - r['succeeded']:>8}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
            f"{r['upstream_calls_per_request']:>11.3f}{r['rps']:>8.0f}"
        )
    return lines


def edge_memory() -> str:
    """The edge server's peak RSS from ``bench_edge.py``'s last JSON, or why it is missing."""
    path = HERE / "results" / "edge.json"
    try:
        edge = json.loads(path.read_text())
        rss = edge["peak_rss_kib"]["edge"] / 1024
        model = edge["model_bytes"] / 2**20
        kv = edge["kv_cache_bytes"] / 2**20
    except (OSError, KeyError, ValueError):
        return "edge server: not measured yet (bench_edge.py writes results/edge.json)"
    return (
        f"edge server (bench_edge.py, {edge['date'][:10]}): {rss:.0f} MB = model file {model:.0f} MB + "
        f"KV cache {kv:.0f} MB (n_ctx {edge['n_ctx']}) + {rss - model - kv:.0f} MB process"
    )


def report(data: dict[str, Any]) -> list[str]:
    """Every table of one run, from its JSON document (what :func:`main` saves)."""
    info, settings, over, chaos = data["machine"], data["settings"], data["overhead"], data["chaos"]
    lines = [
        f"Gateways side by side — r1edge {info['r1edge_commit']} vs LiteLLM proxy {data['litellm_version']}, "
        f"{data['date'][:16].replace('T', ' ')} UTC",
        f"{platform.machine()}, {info['cores']} cores ({info['cpu']}), {info['memory_gib']:.0f} GiB, "
        f"Python {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        f"load average at start {info['load_average_at_start'][0]:.2f}; the load generator, the fake upstream and "
        "the gateway share these cores",
        "",
        f"Overhead: fake upstream (3-chunk completion, delay {settings['delay_ms']:g} ms); {settings['rounds']} "
        f"rounds × {settings['requests']} requests per cell; median [min–max] over rounds. direct: absolute "
        "latency; r1edge, LiteLLM: added over direct in the same round; r1e÷Lite: r1edge's added latency, "
        "throughput and CPU time per request as a share of LiteLLM's, pair by pair per round. CPU ms/req: the "
        "serving process's (the upstream's for direct).",
        *overhead_table(over),
        "Aim: added p50 ≤ 0.2 × LiteLLM's, throughput ≥ 5 × LiteLLM's:",
        *verdicts(over),
        f"upstream calls {over['upstream_calls']} for {over['requests_sent']} requests sent "
        "(1 each: no hidden retries)",
    ]
    if chaos:
        lines += [
            "",
            f"Resilience: {settings['chaos_requests']} requests per run, concurrency "
            f"{settings['chaos_concurrency']}, half streamed; p50/p99 over successful requests; calls/req "
            "counted at the upstreams.",
            *chaos_table(chaos),
        ]
    memory = over["memory_mb"]
    lines += [
        "",
        "Peak resident memory (VmHWM) after the overhead run:",
        f"  r1edge router {memory['r1edge']:.0f} MB ({'PASS' if memory['r1edge'] <= 200 else 'MISS'} ≤ 200 MB), "
        f"LiteLLM proxy {memory['litellm']:.0f} MB, fake upstream {memory['upstream']:.0f} MB",
        f"  {data['edge_memory']}",
        f"took {data['seconds'] / 60:.1f} min",
    ]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of every overhead cell")
    parser.add_argument("--requests", type=int, default=400, help="requests per overhead cell and target")
    parser.add_argument("--concurrency", default="1,16,64", help="client concurrency levels, comma-separated")
    parser.add_argument("--warmup", type=int, default=200, help="unrecorded requests per target first")
    parser.add_argument("--chaos-requests", type=int, default=1500, help="requests per chaos scenario and gateway")
    parser.add_argument("--chaos-concurrency", type=int, default=32)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="fake upstream's wait before answering, ms")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--skip-chaos", action="store_true")
    parser.add_argument("--quick", action="store_true", default=os.environ.get("QUICK", "") not in ("", "0"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--report", type=Path, help="print the tables of a saved run (its JSON) and exit")
    args = parser.parse_args()
    if args.report:
        print("\n".join(report(json.loads(args.report.read_text()))))
        return 0
    if args.quick:
        args.rounds, args.requests, args.warmup, args.chaos_requests = 2, 100, 50, 300
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    random.seed(args.seed)

    started = time.perf_counter()
    litellm_version = ensure_litellm()
    info = machine()
    with tempfile.TemporaryDirectory(prefix="r1edge-bench-") as tmp:
        workdir = Path(tmp)
        print(
            f"overhead: {args.rounds} rounds × {len(args.concurrency) * 2} cells × 3 targets × "
            f"{args.requests} requests",
            flush=True,
        )
        over = overhead(args, workdir)
        chaos: list[dict[str, Any]] = []
        if not args.skip_chaos:
            for k, scenario in enumerate(SCENARIOS):
                for gateway in rotated(("r1edge", "litellm"), k):
                    print(f"  chaos {scenario} through {LABELS[gateway]}", flush=True)
                    chaos.append(chaos_run(args, workdir, scenario, gateway))
            chaos.sort(key=lambda r: (r["scenario"], r["gateway"] != "r1edge"))
    data = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "litellm_version": litellm_version,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "report")},
        "overhead": over,
        "chaos": chaos,
        "edge_memory": edge_memory(),
        "seconds": time.perf_counter() - started,
    }
    data["table"] = report(data)
    print("\n".join(data["table"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2))
    print(f"saved {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
