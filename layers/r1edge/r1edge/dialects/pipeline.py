"""The chat pipeline as a dialect sees it: a port, so dialect modules never import the wiring.

:mod:`r1edge.apps.router` builds one :class:`ChatPipeline` per app (``app.state.pipeline``) from
its own two steps, the ones ``POST /v1/chat/completions`` runs: the current gateway (its routing
config re-read when due) and the routed answer to a validated chat request.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response

from r1edge.cache.response import Answer
from r1edge.protocol.validation import ChatRequest
from r1edge.routing.gateway import Gateway


@dataclass(frozen=True)
class ChatPipeline:
    """What the router does for a chat request, for the dialects to reuse.

    Attributes:
        gateway: ``await gateway(request)`` — the current :class:`Gateway` (limits such as
            ``max_body_bytes`` and ``max_json_depth`` are in ``gateway.config``).
        answer: ``await answer(request, chat)`` — the routed :class:`Answer` (a JSON chat
            completion in ``completion``, or SSE chat completion chunks in ``stream``, and the
            ``x-r1edge-*`` headers from ``headers()``), or a ready :class:`Response` (499 when the
            client left, 202 when the request was queued). Raises
            :class:`~r1edge.protocol.errors.OpenAIError` for refused input and final errors.
    """

    gateway: Callable[[Request], Awaitable[Gateway]]
    answer: Callable[[Request, ChatRequest], Awaitable[Answer | Response]]


def pipeline_of(request: Request) -> ChatPipeline:
    """The app's pipeline (``request.app.state.pipeline``)."""
    return request.app.state.pipeline
