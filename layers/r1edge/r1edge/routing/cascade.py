"""Fallbacks between tiers: the edge→cluster cascade of ``model: auto``, and the cluster→edge
degrade. Each tier's answer comes from its own :class:`~r1edge.routing.attempts.RetryLoop`
("fallbacks wrap retries wrap one attempt", docs/ARCHITECTURE.md, Retry rules); the attempts
of earlier loops count in ``x-r1edge-attempts``.

Cascade (``model: auto`` only, see :func:`~r1edge.routing.decide.cascades`): a request the
classifier sends to the edge goes to the cluster instead when the edge refuses it as too long
for its context window, or answers with a confidence (its ``x-r1edge-confidence`` header) under
``cascade.threshold``; ``x-r1edge-reason`` says which. A JSON answer is judged whole; a stream is
judged on its first ``cascade.stream_window`` tokens, which the edge generates before it sends
its headers (asked for with ``x-r1edge-confidence-window``), so nothing has reached the client
when the router decides. If the cluster then cannot answer, the edge's answer is used after all
(a JSON answer as kept; a stream is asked of the edge again, without the hold). An edge tier
that cannot answer at all (busy, failing, timing out) also sends ``auto`` requests to the cluster.

Degrade (see :func:`~r1edge.routing.decide.may_degrade`): when the cluster cannot answer, the
edge answers instead (reason ``degraded:<error code>``).
"""

from __future__ import annotations

from aws_lambda_powertools import Logger

from r1edge.headers import X_R1EDGE_CONFIDENCE_WINDOW
from r1edge.protocol.errors import OpenAIError
from r1edge.protocol.validation import ChatRequest
from r1edge.routing.answer import AnswerHost, answer
from r1edge.routing.attempts import UNAVAILABLE, RetryLoop
from r1edge.routing.classifier import Decision
from r1edge.routing.routed import Routed
from r1edge.routing.streaming import LowConfidence

logger = Logger(service="r1edge-router", child=True)


async def answer_or_degrade(
    host: AnswerHost, request: ChatRequest, decision: Decision, request_id: str, deadline_at: float, degrade: bool
) -> Routed:
    """The decided tier's answer; with ``degrade``, a cluster that cannot answer (one of
    :data:`~r1edge.routing.attempts.UNAVAILABLE`) hands the request to the edge while the
    deadline (``deadline_at``, monotonic seconds) has not passed.

    Raises:
        OpenAIError: the (last) tier's error, as
            :meth:`RetryLoop.next_response <r1edge.routing.attempts.RetryLoop.next_response>`.
    """
    first = RetryLoop(host, request, decision, request_id, deadline_at)
    try:
        return await answer(host, first)
    except UNAVAILABLE as exc:
        if not (degrade and decision.tier == "cluster" and host.config.tier_endpoints("edge")):
            raise
        if host.clock() >= deadline_at:
            raise
        edge = Decision("edge", f"degraded:{exc.code}", decision.prompt_tokens)
        host.metrics.fallback("edge", "degrade")
        logger.warning(
            "cluster cannot answer; degrading to the edge", extra={"request_id": request_id, "error": exc.message}
        )
        return await answer(
            host, RetryLoop(host, request, edge, request_id, deadline_at, prior_attempts=first.total_attempts)
        )


async def cascade(
    host: AnswerHost, request: ChatRequest, decision: Decision, request_id: str, deadline_at: float
) -> Routed:
    """Edge first; the cluster when the edge cannot serve the prompt or is not confident
    enough (see the module docstring); ``deadline_at`` in monotonic seconds.

    Raises:
        OpenAIError: the edge's error other than ``context_length_exceeded`` and unavailability
            (relayed at once), or the cluster's when no edge answer can stand in for it.
    """
    settings = host.config.cascade
    window = settings.stream_window if request.stream and settings.threshold is not None else 0
    edge = RetryLoop(
        host,
        request,
        decision,
        request_id,
        deadline_at,
        min_confidence=settings.threshold if window else None,
        attempts_per_endpoint=1,  # the cluster is the fallback: no backoff on a busy edge
    )
    edge.extra_headers = {X_R1EDGE_CONFIDENCE_WINDOW: str(window)} if window else {}
    kept: Routed | None = None
    try:
        routed = await answer(host, edge)
    except LowConfidence as low:
        reason = f"low_confidence:{low.confidence:.4f}<{settings.threshold:g}"
    except UNAVAILABLE as exc:
        reason = f"edge_unavailable:{exc.code}"
    except OpenAIError as exc:
        if exc.code != "context_length_exceeded":
            raise
        reason = "edge_context_length"
    else:
        confidence = routed.confidence
        if routed.stream is not None or settings.threshold is None or confidence is None:
            return routed
        if confidence >= settings.threshold:
            return routed
        reason = f"low_confidence:{confidence:.4f}<{settings.threshold:g}"
        kept = routed
    logger.info("escalating to the cluster", extra={"request_id": request_id, "reason": reason})
    escalated = Decision("cluster", reason, decision.prompt_tokens)
    host.metrics.fallback("cluster", "cascade")
    cluster = RetryLoop(host, request, escalated, request_id, deadline_at, prior_attempts=edge.total_attempts)
    try:
        return await answer(host, cluster)
    except OpenAIError as exc:
        if kept is not None:  # the edge's complete answer beats any cluster error
            logger.warning(
                "cluster cannot answer; keeping the edge's answer",
                extra={"request_id": request_id, "error": exc.message},
            )
            kept.decision = Decision("edge", f"{reason};cluster_unavailable:{exc.code}", decision.prompt_tokens)
            kept.attempts = cluster.total_attempts
            return kept
        if not isinstance(exc, UNAVAILABLE) or not reason.startswith("low_confidence") or host.clock() >= deadline_at:
            raise
        fallback = Decision("edge", f"{reason};cluster_unavailable:{exc.code}", decision.prompt_tokens)
        host.metrics.fallback("edge", "degrade")
        again = RetryLoop(host, request, fallback, request_id, deadline_at, prior_attempts=cluster.total_attempts)
        return await answer(host, again)
