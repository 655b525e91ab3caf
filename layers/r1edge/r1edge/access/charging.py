"""Token charging: a chat or job submission takes its estimated tokens from its key's token bucket
up front; when the answer has ended the charge is settled against the answer's ``usage`` (or an
estimate from its text), recorded in the tenant's usage, or given back when there was no answer.

The handlers call :func:`admit_chat` (``POST /v1/chat/completions``), :func:`admit_jobs`
(``POST /v1/jobs``) and :func:`keep_charge` (``Prefer: respond-async``); the middleware
(:mod:`r1edge.access.middleware`) calls :func:`settle`. Prompt sizes are estimated with
:func:`r1edge.protocol.tokens.estimate_prompt_tokens`; the bucket rules are those of
:mod:`r1edge.access.ratelimit`. Without the middleware (no :class:`~r1edge.access.context.AccessContext`)
the handlers' calls do nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Protocol

import anyio
from aws_lambda_powertools import Logger
from starlette.requests import Request

from r1edge.access.context import AccessContext, Charge, context_of, put
from r1edge.access.guard import limits_of
from r1edge.access.metering import Meter
from r1edge.access.usage import Usage
from r1edge.protocol.tokens import estimate_prompt_tokens
from r1edge.protocol.web import request_id

logger = Logger(service="r1edge-router", child=True)


class Estimator(Protocol):
    """The routing config's ``classifier`` section, as far as charging reads it."""

    @property
    def chars_per_token(self) -> float: ...


async def _charge(request: Request, prompt: int, completion: int, classifier: Estimator) -> AccessContext | None:
    """Take ``prompt + completion`` estimated tokens from the request's key's token bucket and
    note the charge for the middleware to settle; the updated context, or ``None`` without the
    middleware.

    Raises:
        RateLimited: 429 type ``tokens`` with ``Retry-After``.
    """
    context = context_of(request.scope)
    if context is None:
        return None
    status, charged = context.ratelimit, 0
    if context.guard is not None and context.key is not None:
        limits = limits_of(context.key)
        tokens = prompt + completion
        status = await anyio.to_thread.run_sync(context.guard.limiter.acquire, context.key.key_id, limits, 0, tokens)
        charged = min(tokens, limits.tokens_per_minute)
    charge = Charge(prompt, classifier.chars_per_token, charged)
    return put(request.scope, replace(context, ratelimit=status, charge=charge))


async def admit_chat(
    request: Request, messages: list[dict[str, Any]], max_tokens: int, classifier: Estimator, n: int | None = None
) -> None:
    """Called by the chat handler once a request is valid: take its estimated tokens (prompt
    estimate plus ``n × max_tokens``; ``classifier`` gives ``chars_per_token``) from its key's
    token bucket, and log its messages when ``R1EDGE_LOG_CONTENT=true``. The middleware settles the
    charge when the answer has ended. Without the middleware, nothing happens.

    Args:
        max_tokens: the completion budget of one choice (tokens): the request's ``max_tokens``,
            or ``classifier.default_completion_tokens`` when absent.
        n: the request's ``n`` (choices; ``None``: absent, one). Each choice is a completion of
            up to ``max_tokens`` tokens, billed as such (OpenAI API reference, Chat Completions,
            ``n``: "you will be charged based on the number of generated tokens across all of the
            choices").

    Raises:
        RateLimited: 429 type ``tokens`` with ``Retry-After``.
    """
    prompt = estimate_prompt_tokens(messages, classifier.chars_per_token)
    context = await _charge(request, prompt, completion_budget(max_tokens, n), classifier)
    if context is not None and context.log_content:
        logger.info("chat request content", extra={"request_id": request_id(), "messages": messages})


def completion_budget(max_tokens: int, n: Any) -> int:
    """The completion tokens a request may generate: ``n`` choices (``None``: one) of up to
    ``max_tokens`` tokens each."""
    return max_tokens * (n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1)


async def admit_jobs(request: Request, requests: list[dict[str, Any]], classifier: Estimator) -> None:
    """Called by ``POST /v1/jobs`` once a submission is valid: take the estimated tokens of all
    its requests (prompt estimate plus ``n × max_tokens`` each, ``max_tokens`` being the job cap
    when absent, as :func:`r1edge.jobs.service.parse_submission` fills it in) from the key's
    token bucket at once. A job is paid up front: the charge is kept (:func:`keep_charge`)
    and recorded in the usage table under route ``queue`` as that estimate, since the worker
    answers after this request has ended. Without the middleware, nothing happens.

    Raises:
        RateLimited: 429 type ``tokens`` with ``Retry-After``.
    """
    prompt = sum(estimate_prompt_tokens(r.get("messages") or [], classifier.chars_per_token) for r in requests)
    completion = sum(
        completion_budget(int(r.get("max_completion_tokens") or r.get("max_tokens") or 0), r.get("n")) for r in requests
    )
    context = await _charge(request, prompt, completion, classifier)
    if context is not None:
        put(request.scope, replace(context, kept=Usage(prompt, completion)))


def keep_charge(request: Request) -> None:
    """Keep the tokens this request was charged (no refund, no settling) and record them as its
    usage under route ``queue``: its answer is a queued job, paid up front
    (``Prefer: respond-async``)."""
    context = context_of(request.scope)
    if context is not None and context.charge is not None:
        charge = context.charge
        kept = Usage(charge.prompt_estimate, max(0, charge.charged - charge.prompt_estimate))
        put(request.scope, replace(context, kept=kept))


async def settle(context: AccessContext, meter: Meter) -> None:
    """Settle the tokens charged against the answer's usage (all back when there was no
    answer), add the answer to the tenant's usage record, and log its text if asked to. Store
    failures are logged, never raised (the answer has been given).

    Args:
        context: the request's latest context; its ``charge`` is set.
        meter: the meter that watched the answer go out.
    """
    charge = context.charge
    assert charge is not None
    usage, text = meter.result(charge.prompt_estimate, charge.chars_per_token)
    if context.log_content and meter.answered():
        logger.info("chat completion content", extra={"request_id": request_id(), "completion_text": text})
    guard, key = context.guard, context.key
    if guard is None or key is None:
        return
    kept = context.kept if 200 <= meter.status < 300 else None
    answered = meter.answered()
    used = usage.total_tokens if answered else 0

    def work() -> None:
        if kept is not None:  # a queued job, paid up front: nothing to settle
            guard.usage.record(key.tenant, "queue", kept)
            return
        guard.limiter.settle(key.key_id, limits_of(key), charge.charged - used)
        if answered:
            guard.usage.record(key.tenant, meter.route or "unknown", usage)

    try:
        await anyio.to_thread.run_sync(work)
    except Exception as exc:  # noqa: BLE001 - the answer was given; a lost record is logged, not a failure
        logger.error("usage not recorded", extra={"tenant": key.tenant, "error": type(exc).__name__})
