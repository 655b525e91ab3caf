"""Coalescing of identical requests in flight.

Identical requests (same cache key) arriving while one is upstream wait for it, each for at most
its own deadline, and get its answer; if it fails (or its answer is not cacheable), they look
again and one of them goes upstream (docs/ARCHITECTURE.md, "Request path"). Per process and per
event loop: requests in other containers are not coalesced.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from r1edge.cache.key import MISS
from r1edge.headers import X_CACHE
from r1edge.protocol.errors import UpstreamTimeout

#: Hands the leader's outcome to the waiting requests: the completion, or ``None`` when it failed.
Settle = Callable[[dict[str, Any] | None], None]


class Coalescer:
    """The requests in flight of one process, by cache key.

    ``flights[key]`` is the future the leader of ``key`` settles with its complete answer (a
    ``chat.completion`` object) or ``None``; the entry is removed when it is settled.
    """

    def __init__(self) -> None:
        self.flights: dict[str, asyncio.Future[dict[str, Any] | None]] = {}

    def in_flight(self, key: str) -> asyncio.Future[dict[str, Any] | None] | None:
        """The flight of ``key`` to wait on, or ``None`` when no request leads it."""
        return self.flights.get(key)

    async def wait(self, flight: asyncio.Future[dict[str, Any] | None], timeout: float) -> dict[str, Any] | None:
        """Wait up to ``timeout`` seconds (negative: none) for ``flight``: its completion, or
        ``None`` when the leader failed. Cancelling the waiter does not cancel the flight.

        Raises:
            UpstreamTimeout: the timeout passed first (504 with ``x-cache: MISS``).
        """
        try:
            return await asyncio.wait_for(asyncio.shield(flight), timeout=max(0.0, timeout))
        except TimeoutError:
            raise UpstreamTimeout(
                "No answer within the deadline while an identical request was in flight.",
                headers={X_CACHE: MISS},
            ) from None

    def lead(self, key: str) -> Settle:
        """Lead ``key`` unless a request already does (a request that skipped the lookup may go
        upstream beside the leader; it then settles nothing). Returns the settle function: its
        first call hands the outcome to the waiting requests and ends the flight; later calls do
        nothing. Must run on the event loop."""
        future: asyncio.Future[dict[str, Any] | None] | None = None
        if key not in self.flights:
            future = asyncio.get_running_loop().create_future()
            self.flights[key] = future

        def settle(completion: dict[str, Any] | None) -> None:
            if future is not None and not future.done():
                future.set_result(completion)
                if self.flights.get(key) is future:
                    del self.flights[key]

        return settle
