"""What the response cache needs of the gateway it wraps, as Protocols.

:class:`~r1edge.cache.response.ResponseCache` answers through the router's gateway
(:class:`r1edge.routing.gateway.Gateway` in the app) but never imports it: these Protocols name
exactly the members it reads, so the cache depends on a shape, not on the routing implementation,
and tests may pass any object of that shape. Each member is read-only here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from r1edge.protocol.validation import ChatRequest
from r1edge.routing.config import Cache


class RoutedAnswer(Protocol):
    """An upstream's answer (:class:`r1edge.routing.gateway.Routed`): a JSON ``completion`` or an
    SSE ``stream``, and the route headers to send with it."""

    @property
    def completion(self) -> dict[str, Any] | None: ...

    @property
    def stream(self) -> AsyncIterator[bytes] | None: ...

    def headers(self) -> dict[str, str]: ...


class TierDecision(Protocol):
    """Where a request goes (:class:`r1edge.routing.classifier.Decision`): ``edge`` or ``cluster``."""

    @property
    def tier(self) -> str: ...


class TierEndpoint(Protocol):
    """An endpoint of a tier (:class:`r1edge.routing.config.Endpoint`): the model name sent to it."""

    @property
    def upstream_model(self) -> str: ...


class GatewayConfig(Protocol):
    """The routing config's members the cache reads (:class:`r1edge.routing.config.RoutingConfig`)."""

    @property
    def cache(self) -> Cache:
        """The ``cache`` section."""
        ...

    @property
    def deadline(self) -> float:
        """Seconds a request may take by default."""
        ...

    def tier_endpoints(self, tier: str) -> Sequence[TierEndpoint]: ...


class CacheGateway(Protocol):
    """The gateway the cache wraps: its current config, its monotonic clock (seconds), how it
    decides a request's tier, and how it answers one (raising ``OpenAIError`` subclasses)."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def clock(self) -> Callable[[], float]: ...

    def decide(self, request: ChatRequest) -> TierDecision: ...

    async def complete(
        self, request: ChatRequest, request_id: str, deadline: float | None = None, allow_degrade: bool = False
    ) -> RoutedAnswer: ...
