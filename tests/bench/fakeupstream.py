"""Fake OpenAI-compatible upstreams in their own process, for the gateway benchmarks.

    python tests/bench/fakeupstream.py [--rates 0.22,0,0] [--seed 7] [--delay-ms 0]

Starts one :class:`faultserver.FaultServer` per entry of ``--rates`` (default: one server that
never fails) on free loopback ports, prints one JSON line ``{"urls": [...]}`` when they listen,
and runs until its standard input closes or it gets SIGTERM. A server with a rate above 0 fails
that share of calls the way the chaos benchmark's endpoints do (``bench_chaos.chooser``: 429 with
``Retry-After: 1``, 503, a reset after the headers, or a first byte 1 s late); a healthy call is
a fixed small completion (3 content chunks, then ``finish_reason`` and usage), as JSON or SSE.

Each server counts its ``POST /v1/chat/completions`` calls (without keeping them) and serves the
count at ``GET /metrics`` as ``fake_upstream_calls_total``, so a benchmark can read upstream
calls per request from outside. Running here rather than in a thread of the load generator keeps
the two from sharing one interpreter lock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import threading
import uuid
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent)]

from bench_chaos import chooser  # noqa: E402  (also puts tests/ and infra/local on the path)
from faultserver import Fault, FaultServer  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402


class CallCounter:
    """Stands in for ``FaultServer.calls``: counts appended calls instead of keeping them, so a
    run of many thousands of calls does not grow the server's memory."""

    def __init__(self) -> None:
        self.count = 0

    def append(self, call: object) -> None:
        self.count += 1

    def __len__(self) -> int:
        return self.count


class CountingFaultServer(FaultServer):
    """A :class:`FaultServer` that waits ``delay`` seconds before each chat answer and serves its
    call count at ``/metrics`` (Prometheus text format)."""

    def __init__(self, name: str, delay: float = 0.0, **kwargs: object) -> None:
        super().__init__(name, **kwargs)  # type: ignore[arg-type]
        self.calls = CallCounter()  # type: ignore[assignment]
        self.delay = delay

    async def _chat(self, request: Request) -> Response:
        if self.delay:
            await asyncio.sleep(self.delay)
        return await super()._chat(request)

    async def _metrics(self, request: Request) -> Response:
        text = f"# TYPE fake_upstream_calls_total counter\nfake_upstream_calls_total {len(self.calls)}\n"
        return Response(text, media_type="text/plain; version=0.0.4")


def unique_completion() -> Fault:
    """A healthy JSON answer whose ``id`` (and content) no other call shares, so two results of
    one job can be told apart."""
    token = uuid.uuid4().hex
    completion = {
        "id": f"chatcmpl-{token}",
        "object": "chat.completion",
        "created": 1,
        "model": "fake",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": token}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }
    return Fault(body=json.dumps(completion).encode())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="0", help="failure share per server, comma-separated (0 to 1)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before every answer, milliseconds")
    parser.add_argument(
        "--unique-ids", action="store_true", help="every JSON answer gets its own completion id (bench_queue.py)"
    )
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    servers = []
    for i, rate in enumerate(rates):
        pick = chooser(rate, random.Random(args.seed * 100 + i)) if rate > 0 else None
        if args.unique_ids and pick is None:
            pick = unique_completion
        servers.append(
            CountingFaultServer(
                f"r1-{i}", delay=args.delay_ms / 1000, chooser=pick, script=[Fault(chunks=3)], log_level="critical"
            )
        )
    for server in servers:
        server.__enter__()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(json.dumps({"urls": [s.url for s in servers]}), flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    for server in servers:
        server.__exit__(None, None, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
