"""The router's core: pick a tier, try its endpoints, and relay the answer.

``Gateway.complete`` takes a validated request and returns a :class:`Routed` answer (a JSON
completion, or an SSE byte stream), or raises an :class:`~r1edge.errors.OpenAIError`. Within the
tier, endpoints are tried in priority order; an endpoint that fails before any byte reached the
client (connection error, timeout, 408/429/5xx, a body that is not a completion, a stream that is
not SSE) is passed over for the next. Client faults an upstream reports (400, 413, 422) are
relayed at once with the upstream's message. 401/403/404 from an upstream mean our credential or
model mapping is wrong: logged loudly, the endpoint is skipped, and with none left the client
gets 502 — never a 401 that blames its key (DESIGN.md, Retry rules).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
from aws_lambda_powertools import Logger

from r1edge.classifier import Decision, classify
from r1edge.config import MODEL_TIERS, Endpoint, RoutingConfig
from r1edge.errors import ModelNotFound, OpenAIError, UpstreamError, UpstreamTimeout
from r1edge.relay import parse_completion, relay_sse
from r1edge.upstream import Upstream
from r1edge.validation import ChatRequest

#: Upstream statuses that are the client's fault: relayed as they are (DESIGN.md, Retry rules).
CLIENT_FAULT = frozenset({400, 413, 422})
#: Upstream statuses that mean our credential or model mapping for that endpoint is wrong.
MISCONFIGURED = frozenset({401, 403, 404})

logger = Logger(service="r1edge-router", child=True)


#: Namespace for UUIDs derived from client request ids that are not UUIDs themselves.
REQUEST_ID_NAMESPACE = uuid.UUID("6f0d2b8e-3c1a-5b7e-9a40-2f6e1d9c8b71")


def upstream_request_id(request_id: str) -> str:
    """The ``x-request-id`` sent upstream: the client's id when it is a UUID, else a UUID derived
    from it (UUIDv5), since some OpenAI-compatible servers (llama-cpp-python's, through
    starlette-context) answer 400 to a request id that is not a UUID. Both are logged."""
    try:
        uuid.UUID(request_id)
    except ValueError:
        return str(uuid.uuid5(REQUEST_ID_NAMESPACE, request_id))
    return request_id


@dataclass
class Routed:
    """A routed answer.

    Attributes:
        decision: the tier and the reason it was chosen.
        endpoint: the endpoint that answered.
        attempts: upstream calls made, this one included.
        completion: the chat completion object (non-streamed requests).
        stream: SSE bytes to send (streamed requests); closing it closes the upstream.
    """

    decision: Decision
    endpoint: Endpoint
    attempts: int
    completion: dict[str, Any] | None = None
    stream: AsyncIterator[bytes] | None = None

    def headers(self) -> dict[str, str]:
        """The ``x-r1edge-*`` response headers (DESIGN.md, Contracts)."""
        return route_headers(self.decision, self.endpoint.name, self.attempts)


def route_headers(decision: Decision | None, endpoint: str | None, attempts: int) -> dict[str, str]:
    """``x-r1edge-route``, ``x-r1edge-reason``, ``x-r1edge-upstream`` and ``x-r1edge-attempts``."""
    headers: dict[str, str] = {"x-r1edge-attempts": str(attempts)}
    if decision is not None:
        headers["x-r1edge-route"] = decision.tier
        headers["x-r1edge-reason"] = decision.reason
    if endpoint is not None:
        headers["x-r1edge-upstream"] = endpoint
    return headers


@dataclass
class _Failures:
    notes: list[str] = field(default_factory=list)
    all_timeouts: bool = True

    def add(self, endpoint: Endpoint, note: str, timeout: bool = False) -> None:
        self.notes.append(f"{endpoint.name}: {note}")
        self.all_timeouts = self.all_timeouts and timeout


def _upstream_client_error(response_body: bytes, status: int) -> OpenAIError:
    """Relay an upstream 400/413/422, keeping its OpenAI-shaped message when it has one."""
    message, param, code, type_ = f"upstream rejected the request (HTTP {status})", None, None, None
    try:
        error = json.loads(response_body).get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            param, code, type_ = error.get("param"), error.get("code"), error.get("type")
        elif isinstance(error, str):
            message = error
    except (ValueError, AttributeError):
        text = response_body.decode("utf-8", "replace").strip()
        if text:
            message = text[:1000]
    return OpenAIError(message, status=status, type=type_ or "invalid_request_error", param=param, code=code)


class Gateway:
    """Routes validated chat requests to the edge or cluster tier.

    Args:
        config: the routing configuration.
        upstream: the HTTP transport.
        clock: monotonic clock in seconds (injected for tests).
    """

    def __init__(self, config: RoutingConfig, upstream: Upstream, clock: Any = time.monotonic) -> None:
        self.config = config
        self.upstream = upstream
        self.clock = clock

    def decide(self, request: ChatRequest) -> Decision:
        """Map the requested model to a tier: ``auto`` classifies; ``edge`` and ``deepseek-r1``
        force a tier.

        Raises:
            ModelNotFound: an unknown model name, or a forced tier with no endpoint configured.
        """
        if request.model not in MODEL_TIERS:
            raise ModelNotFound(
                f"The model '{request.model}' does not exist. Use one of: {', '.join(self.config.served_models())}.",
                param="model",
            )
        forced = MODEL_TIERS[request.model]
        if forced is not None:
            if not self.config.tier_endpoints(forced):
                raise ModelNotFound(f"The model '{request.model}' has no endpoint configured.", param="model")
            return Decision(forced, f"model:{request.model}", 0)
        decision = classify(request, self.config.classifier)
        if not self.config.tier_endpoints(decision.tier):
            other = "cluster" if decision.tier == "edge" else "edge"
            return Decision(other, f"no_{decision.tier}_endpoint", decision.prompt_tokens)
        return decision

    async def complete(self, request: ChatRequest, request_id: str, deadline: float | None = None) -> Routed:
        """Answer a request from the first endpoint of its tier that gives a usable answer.

        Args:
            request: the validated request.
            request_id: the request's id (logged, and sent upstream).
            deadline: seconds this request may take to get an answer (default: the config's
                ``deadline``); under Lambda, the invocation's time left.

        Raises:
            ModelNotFound: see :meth:`decide`.
            OpenAIError: an upstream's 400/413/422, relayed with its message and status.
            UpstreamTimeout: every endpoint timed out, or the ``deadline`` (seconds) passed.
            UpstreamError: no endpoint gave a usable answer.
        """
        decision = self.decide(request)
        logger.info(
            "route decided",
            extra={
                "request_id": request_id,
                "upstream_request_id": upstream_request_id(request_id),
                "tier": decision.tier,
                "reason": decision.reason,
                "prompt_tokens_estimate": decision.prompt_tokens,
                "stream": request.stream,
            },
        )
        deadline = self.config.deadline if deadline is None else deadline
        timeout = UpstreamTimeout(
            f"No answer within the deadline of {deadline:.3g} s.", headers=route_headers(decision, None, 0)
        )
        if deadline <= 0:
            raise timeout
        try:
            with anyio.fail_after(deadline):
                return await self._try_endpoints(request, decision, request_id)
        except TimeoutError:
            raise timeout from None

    async def _try_endpoints(self, request: ChatRequest, decision: Decision, request_id: str) -> Routed:
        failures = _Failures()
        attempts = 0
        for endpoint in self.config.tier_endpoints(decision.tier):
            attempts += 1
            body = dict(request.body, model=endpoint.upstream_model)
            started = self.clock()
            try:
                response = await self.upstream.open_chat(endpoint, body, upstream_request_id(request_id))
            except httpx.TimeoutException as exc:
                failures.add(endpoint, f"timeout ({type(exc).__name__})", timeout=True)
                continue
            except httpx.TransportError as exc:
                failures.add(endpoint, f"{type(exc).__name__}: {exc}")
                continue
            except UpstreamError as exc:
                logger.error("endpoint misconfigured", extra={"endpoint": endpoint.name, "error": exc.message})
                failures.add(endpoint, exc.message)
                continue
            routed = await self._take_response(request, decision, endpoint, response, attempts, failures)
            if routed is not None:
                logger.info(
                    "upstream answered",
                    extra={
                        "request_id": request_id,
                        "endpoint": endpoint.name,
                        "attempts": attempts,
                        "status": response.status_code,
                        "header_ms": round((self.clock() - started) * 1000, 1),
                    },
                )
                return routed
        headers = route_headers(decision, None, attempts)
        summary = "; ".join(failures.notes) or "no endpoint"
        logger.warning("no upstream answered", extra={"request_id": request_id, "failures": failures.notes})
        if failures.notes and failures.all_timeouts:
            raise UpstreamTimeout(f"Every {decision.tier} endpoint timed out ({summary}).", headers=headers)
        raise UpstreamError(f"No {decision.tier} endpoint gave a usable answer ({summary}).", headers=headers)

    async def _take_response(
        self,
        request: ChatRequest,
        decision: Decision,
        endpoint: Endpoint,
        response: httpx.Response,
        attempts: int,
        failures: _Failures,
    ) -> Routed | None:
        """Turn one upstream response into a :class:`Routed`, or record why it is unusable."""
        status = response.status_code
        streaming = False
        try:
            if status in CLIENT_FAULT:
                error = _upstream_client_error(await response.aread(), status)
                error.headers.update(route_headers(decision, endpoint.name, attempts))
                raise error
            if status in MISCONFIGURED:
                logger.error(
                    "upstream refused our credentials or model mapping; endpoint skipped",
                    extra={"endpoint": endpoint.name, "status": status, "model": endpoint.upstream_model},
                )
                failures.add(endpoint, f"HTTP {status} (credential or model mapping)")
                return None
            if status != 200:
                failures.add(endpoint, f"HTTP {status}")
                return None
            if request.stream:
                content_type = response.headers.get("content-type", "")
                if "text/event-stream" not in content_type:
                    failures.add(endpoint, f"stream answered with content-type {content_type!r}")
                    return None
                streaming = True
                return Routed(decision, endpoint, attempts, stream=_owned_stream(response))
            try:
                completion = parse_completion(await response.aread())
            except (ValueError, httpx.HTTPError) as exc:
                failures.add(endpoint, f"unusable body: {exc}", timeout=isinstance(exc, httpx.TimeoutException))
                return None
            return Routed(decision, endpoint, attempts, completion=completion)
        finally:
            if not streaming:
                await response.aclose()


async def _owned_stream(response: httpx.Response) -> AsyncIterator[bytes]:
    """Relay ``response`` as SSE and close it however the relay ends (done, cut, or the client
    went away — closing the connection is what stops the upstream generating)."""
    try:
        async for data in relay_sse(response):
            yield data
    finally:
        await response.aclose()
