"""Health function: on an EventBridge schedule (every minute), probe every endpoint of the
routing config twice, 30 s apart, and write the results to the health table the router reads.
All logic is in :mod:`r1edge.apps.health`; environment: ``R1EDGE_CONFIG`` and ``R1EDGE_HEALTH_TABLE``.
"""

import asyncio
from typing import Any

from r1edge.apps import health

#: The wait between the two probe rounds (tests replace it, so none of their waits is real).
sleep = asyncio.sleep


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return health.lambda_handler(event, context, sleep=sleep)
