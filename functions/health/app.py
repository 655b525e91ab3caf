"""Health function: on an EventBridge schedule (every minute), probe every endpoint of the
routing config twice, 30 s apart, and write the results to the health table the router reads.
All logic is in :mod:`r1edge.observe.health`; environment: ``R1EDGE_CONFIG`` (the routers' routing
config) and ``R1EDGE_HEALTH_TABLE``.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
from typing import Any

from aws_lambda_powertools import Logger

from r1edge.observe import health, metrics

logger = Logger(service="r1edge-health")
recorder = metrics.default("health")
#: The wait between the two probe rounds (tests replace it, so none of their waits is real).
sleep = asyncio.sleep
#: Probe rounds per invocation: EventBridge schedules run at most once a minute, the brief asks
#: for a check every 30 s.
ROUNDS = 2


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Run the probe rounds; return every result (for logs and ``sam local invoke``)."""
    rounds = asyncio.run(health.run_from_env(os.environ, recorder, sleep=sleep, rounds=ROUNDS))
    return {"rounds": [[asdict(result) for result in results] for results in rounds]}
