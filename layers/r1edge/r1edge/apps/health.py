"""The health function's wiring (functions/health/app.py): one scheduled invocation runs
:data:`ROUNDS` probe rounds (:func:`r1edge.observe.health.run_from_env`, environment
``R1EDGE_CONFIG`` and ``R1EDGE_HEALTH_TABLE``) and records into the process's ``health`` recorder,
flushed as EMF after each round.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any

from aws_lambda_powertools import Logger

from r1edge.observe import health, metrics

logger = Logger(service="r1edge-health")
recorder = metrics.default("health")
#: Probe rounds per invocation: EventBridge schedules run at most once a minute, the brief asks
#: for a check every 30 s.
ROUNDS = 2


@logger.inject_lambda_context
def lambda_handler(
    event: dict[str, Any], context: Any, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
) -> dict[str, Any]:
    """Run the probe rounds, ``health.interval`` seconds apart; return every result (for logs
    and ``sam local invoke``): ``{"rounds": [[ProbeResult as a dict, ...], ...]}``.

    Args:
        sleep: the wait between rounds, in seconds (the function passes its own, so tests can
            replace it).

    Raises:
        ConfigError: ``R1EDGE_CONFIG`` or ``R1EDGE_HEALTH_TABLE`` unset, or the config invalid.
    """
    rounds = asyncio.run(health.run_from_env(os.environ, recorder, sleep=sleep, rounds=ROUNDS))
    return {"rounds": [[asdict(result) for result in results] for results in rounds]}
