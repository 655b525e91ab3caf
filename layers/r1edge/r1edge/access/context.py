"""The access state of one request: one typed, frozen :class:`AccessContext` under one key
(:data:`STATE_KEY`) of the ASGI scope's ``state`` (``request.state.access`` in a handler).

The middleware (:mod:`r1edge.access.middleware`) puts it there for every non-public request; the
chat and job handlers' charging calls (:mod:`r1edge.access.charging`) replace it with an updated
copy (:func:`put`); the middleware reads the latest copy when the answer starts (the
``x-ratelimit-*`` headers) and when it has ended (settling). Without the middleware there is no
context, and the charging calls do nothing.

The tenant is also kept as ``request.state.tenant``: that key is the protocol layer's, read by
:func:`r1edge.protocol.web.tenant` (which cannot import this package) for everything
tenant-scoped, and set by test stand-ins for authentication.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from r1edge.access.guard import Guard
from r1edge.access.keys import ApiKey
from r1edge.access.ratelimit import LimitStatus
from r1edge.access.usage import Usage

#: The key of the request's :class:`AccessContext` in the ASGI scope's ``state``.
STATE_KEY = "access"


@dataclass(frozen=True)
class Charge:
    """Tokens a request took from its key's token bucket up front (:mod:`r1edge.access.charging`).

    Attributes:
        prompt_estimate: the prompt estimate, tokens (:func:`r1edge.protocol.tokens.estimate_prompt_tokens`).
        chars_per_token: the characters per token of that estimate (for the answer's estimate
            when it carries no ``usage``).
        charged: tokens taken: the prompt estimate plus the completion allowance, capped at the
            key's tokens per minute; 0 without a key.
    """

    prompt_estimate: int
    chars_per_token: float
    charged: int


@dataclass(frozen=True)
class AccessContext:
    """What access control knows of one request.

    Attributes:
        guard: the guard (``None``: no keys, the middleware only logs content).
        log_content: whether prompt and completion text are logged (``R1EDGE_LOG_CONTENT``).
        key: the authenticated key (``None`` before authentication, or without a guard).
        ratelimit: what the key had left after its last charge (the ``x-ratelimit-*`` headers).
        charge: the tokens charged by a chat or job submission (``None``: not a charged request;
            nothing to settle).
        kept: usage paid up front and recorded under route ``queue`` instead of being settled
            (a job, or a chat request answered by queueing it).
    """

    guard: Guard | None
    log_content: bool
    key: ApiKey | None = None
    ratelimit: LimitStatus | None = None
    charge: Charge | None = None
    kept: Usage | None = None

    @property
    def tenant(self) -> str | None:
        """The tenant of the authenticated key, or ``None``."""
        return self.key.tenant if self.key is not None else None


def context_of(scope: MutableMapping[str, Any]) -> AccessContext | None:
    """The request's context (an ASGI scope, or ``request.scope``); ``None`` without the middleware."""
    state = scope.get("state")
    return None if state is None else state.get(STATE_KEY)


def put(scope: MutableMapping[str, Any], context: AccessContext) -> AccessContext:
    """Store ``context`` as the request's context (replacing the previous one); returns it."""
    scope.setdefault("state", {})[STATE_KEY] = context
    return context
