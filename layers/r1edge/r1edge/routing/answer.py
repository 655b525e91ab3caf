"""One tier's answer: refresh the endpoints' signals, then run the retry loop until an endpoint
gives a usable JSON completion, or open a stream (:mod:`r1edge.routing.streaming`).

A JSON body that is not a chat completion, cannot be read, is larger than the endpoint's
``max_response_bytes`` (read no further), nests deeper than ``max_json_depth``, or does not arrive
before the deadline is a retryable failure of that endpoint (docs/ARCHITECTURE.md, Retry rules).
"""

from __future__ import annotations

from typing import Protocol

import anyio
import httpx

from r1edge.protocol.sse import parse_completion
from r1edge.routing.attempts import Host, RetryLoop
from r1edge.routing.routed import Routed, relayed_headers
from r1edge.routing.streaming import open_stream
from r1edge.routing.upstream import read_limited


class AnswerHost(Host, Protocol):
    """What answering reads of the :class:`~r1edge.routing.gateway.Gateway`: the retry loop's
    :class:`~r1edge.routing.attempts.Host`, and the signal refreshes run before each tier."""

    async def refresh_health(self) -> None:
        """Merge the health table into the endpoints' states."""

    async def refresh_load(self, tier: str) -> None:
        """Re-read the tier's stale ``/metrics`` load readings."""


async def answer(host: AnswerHost, loop: RetryLoop) -> Routed:
    """The answer of ``loop``'s tier: a JSON completion, or a held stream (streamed requests).

    Raises:
        OpenAIError: as :meth:`RetryLoop.next_response <r1edge.routing.attempts.RetryLoop.next_response>`.
        LowConfidence: see :func:`~r1edge.routing.streaming.open_stream`.
    """
    await host.refresh_health()
    await host.refresh_load(loop.decision.tier)
    if loop.request.stream:
        return await open_stream(host, loop)
    return await read_completion(host, loop)


async def read_completion(host: Host, loop: RetryLoop) -> Routed:
    """Read whole JSON completions until one parses; each unusable body (too large, too deep, not
    a completion, or not read before the deadline, or a probe's body before its lease ends) is a
    recorded failure, and the loop goes on to its next response. Records the answer's ``usage``
    (tokens). A probe slot the loop holds is given back however this ends (cancelled included).

    Raises:
        OpenAIError: as :meth:`RetryLoop.next_response <r1edge.routing.attempts.RetryLoop.next_response>`.
    """
    decision = loop.decision
    try:
        while True:
            state, response = await loop.next_response()
            # A probe's body must come within its lease, so that the lease is a true bound.
            until = loop.deadline_at if loop.probe is None else min(loop.deadline_at, loop.probe.until)
            try:
                with anyio.fail_after(max(0.0, until - host.clock())):
                    raw = await read_limited(response, state.endpoint.max_response_bytes)
                completion = parse_completion(raw, host.config.max_json_depth)
            except (ValueError, httpx.HTTPError, TimeoutError) as exc:
                loop.failed(
                    state,
                    f"unusable body: {type(exc).__name__}: {exc}",
                    timeout=isinstance(exc, (TimeoutError, httpx.TimeoutException)),
                )
                continue
            finally:
                await response.aclose()
                state.in_flight -= 1
            loop.succeeded(state)
            host.metrics.usage(decision.tier, state.endpoint.name, completion.get("usage"))
            return Routed(
                decision,
                state.endpoint,
                loop.total_attempts,
                completion=completion,
                upstream_headers=relayed_headers(response.headers),
            )
    finally:
        loop.release_probe()
