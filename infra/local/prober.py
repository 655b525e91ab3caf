"""The health function's prober as a local process: every ``--interval`` seconds, probe every
endpoint of ``R1EDGE_CONFIG`` into the DynamoDB table ``R1EDGE_HEALTH_TABLE`` (``make run``
points both at its own config and moto server), exactly as the scheduled health function does in
AWS (:mod:`r1edge.observe.health`). Runs until it is terminated.

    python infra/local/prober.py [--interval 30]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time

from aws_lambda_powertools import Logger

from r1edge import env
from r1edge.observe import metrics
from r1edge.observe.health import DynamoHealthStore, Prober
from r1edge.routing.config import config_from_env
from r1edge.routing.upstream import Upstream

#: The parent of r1edge.observe.health's child logger (Powertools child loggers write through it).
logger = Logger(service="r1edge-health")


async def probe_forever(interval: float) -> None:
    """Probe rounds ``interval`` seconds apart (a round's own time counts against the wait)."""
    config = config_from_env()
    recorder = metrics.default("health")
    prober = Prober(config, Upstream(), DynamoHealthStore(os.environ[env.R1EDGE_HEALTH_TABLE]), recorder)
    while True:
        started = time.monotonic()
        await prober.run_round()
        recorder.flush()
        await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=30.0, help="seconds between probe rounds")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C reaches the whole process group
        asyncio.run(probe_forever(args.interval))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
