"""A routed answer, and the response headers it carries.

:class:`Routed` is what :meth:`Gateway.complete <r1edge.routing.gateway.Gateway.complete>` returns.
Its :meth:`Routed.headers` are the ``x-r1edge-*`` response headers (docs/ARCHITECTURE.md,
Contracts): the route taken (:func:`route_headers`), with the edge's own headers
(:data:`RELAYED_HEADERS`) passed on.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from r1edge.headers import (
    X_R1EDGE_ATTEMPTS,
    X_R1EDGE_CONFIDENCE,
    X_R1EDGE_CONFIDENCE_TOKENS,
    X_R1EDGE_MAX_TOKENS_CLAMPED,
    X_R1EDGE_REASON,
    X_R1EDGE_ROUTE,
    X_R1EDGE_UPSTREAM,
)
from r1edge.routing.classifier import Decision
from r1edge.routing.config import Endpoint

#: Edge response headers passed on to the client (see :mod:`r1edge.edge.app`).
RELAYED_HEADERS = (X_R1EDGE_CONFIDENCE, X_R1EDGE_CONFIDENCE_TOKENS, X_R1EDGE_MAX_TOKENS_CLAMPED)


def relayed_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The :data:`RELAYED_HEADERS` present in an upstream response's headers (``httpx.Headers``)."""
    return {name: headers[name] for name in RELAYED_HEADERS if name in headers}


def header_confidence(headers: Mapping[str, str]) -> float | None:
    """The edge's ``x-r1edge-confidence`` (a geometric mean token probability, in [0, 1]);
    ``None`` when absent, not a number, or out of range."""
    try:
        value = float(headers.get(X_R1EDGE_CONFIDENCE, "nan"))
    except ValueError:
        return None
    return value if 0.0 <= value <= 1.0 else None


def route_headers(decision: Decision | None, endpoint: str | None, attempts: int) -> dict[str, str]:
    """``x-r1edge-route`` (the tier), ``x-r1edge-reason``, ``x-r1edge-upstream`` (the endpoint's
    name) and ``x-r1edge-attempts`` (upstream calls, a count); the first three only when known."""
    headers: dict[str, str] = {X_R1EDGE_ATTEMPTS: str(attempts)}
    if decision is not None:
        headers[X_R1EDGE_ROUTE] = decision.tier
        headers[X_R1EDGE_REASON] = decision.reason
    if endpoint is not None:
        headers[X_R1EDGE_UPSTREAM] = endpoint
    return headers


@dataclass
class Routed:
    """A routed answer.

    Attributes:
        decision: the tier and the reason it was chosen.
        endpoint: the endpoint that answered.
        attempts: upstream calls made, this one included.
        completion: the chat completion object (non-streamed requests).
        stream: SSE bytes to send (streamed requests); closing it closes the upstream.
        upstream_headers: the :data:`RELAYED_HEADERS` the answering endpoint sent.
    """

    decision: Decision
    endpoint: Endpoint
    attempts: int
    completion: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None
    upstream_headers: dict[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        """The ``x-r1edge-*`` response headers (docs/ARCHITECTURE.md, Contracts), with the edge's own
        (:data:`RELAYED_HEADERS`) passed on."""
        return {**self.upstream_headers, **route_headers(self.decision, self.endpoint.name, self.attempts)}

    @property
    def confidence(self) -> float | None:
        """The edge's ``x-r1edge-confidence`` for this answer, if it sent one."""
        return header_confidence(self.upstream_headers)
