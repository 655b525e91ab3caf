"""The tier decision: which tier answers a request, and which fallbacks between tiers it may take.

The requested model names the tier (:data:`~r1edge.routing.config.MODEL_TIERS`): ``edge`` and
``deepseek-r1`` force one; ``auto`` lets the classifier (:mod:`r1edge.routing.classifier`)
choose, and only ``auto`` requests cascade from the edge to the cluster. Degrading from the
cluster to the edge takes the config's ``allow_degrade`` (for ``auto``) or the request's own
``x-r1edge-allow-degrade``. Pure: no I/O, no clock.
"""

from __future__ import annotations

from r1edge.protocol.errors import ModelNotFound, quote
from r1edge.protocol.validation import ChatRequest
from r1edge.routing.classifier import Decision, classify
from r1edge.routing.config import AUTO_MODEL, MODEL_TIERS, RoutingConfig


def decide(request: ChatRequest, config: RoutingConfig) -> Decision:
    """Map the requested model to a tier: ``auto`` classifies; ``edge`` and ``deepseek-r1``
    force a tier. An ``auto`` request classified for a tier with no endpoint goes to the other
    (reason ``no_<tier>_endpoint``).

    Raises:
        ModelNotFound: an unknown model name, or a forced tier with no endpoint configured.
    """
    if request.model not in MODEL_TIERS:
        raise ModelNotFound(
            f"The model {quote(request.model)} does not exist. Use one of: {', '.join(config.served_models())}.",
            param="model",
        )
    forced = MODEL_TIERS[request.model]
    if forced is not None:
        if not config.tier_endpoints(forced):
            raise ModelNotFound(f"The model {quote(request.model)} has no endpoint configured.", param="model")
        return Decision(forced, f"model:{request.model}", 0)
    decision = classify(request, config.classifier)
    if not config.tier_endpoints(decision.tier):
        other = "cluster" if decision.tier == "edge" else "edge"
        return Decision(other, f"no_{decision.tier}_endpoint", decision.prompt_tokens)
    return decision


def cascades(request: ChatRequest, decision: Decision, config: RoutingConfig) -> bool:
    """Whether the request goes through the edge→cluster cascade: an ``auto`` request the
    classifier sent to the edge, with a cluster endpoint configured."""
    return request.model == AUTO_MODEL and decision.tier == "edge" and bool(config.tier_endpoints("cluster"))


def may_degrade(request: ChatRequest, config: RoutingConfig, allow_degrade: bool) -> bool:
    """Whether the edge may answer when the cluster cannot: the request asked for it
    (``allow_degrade``, from ``x-r1edge-allow-degrade``), or it is ``auto`` and the config's
    ``allow_degrade`` is on."""
    return allow_degrade or (request.model == AUTO_MODEL and config.allow_degrade)
