"""Decide, from the request alone, whether a chat request is simple (edge) or heavy (cluster).

Pure: no I/O, no clock. Every threshold and word list comes from
:class:`r1edge.routing.config.Classifier`, so operators tune routing in the routing config, not in code.
The checks run in a fixed order and the first that fires gives the reason, so a decision is
explainable in one short string (logged, and returned in ``x-r1edge-reason``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from r1edge.protocol.tokens import estimate_prompt_tokens
from r1edge.protocol.validation import ChatRequest, message_text
from r1edge.routing.config import Classifier


@dataclass(frozen=True)
class Decision:
    """The classifier's verdict.

    Attributes:
        tier: ``"edge"`` or ``"cluster"``.
        reason: short machine-readable reason, e.g. ``"simple"``, ``"tools"``,
            ``"math:integral"``, ``"prompt_tokens:1500>1024"``.
        prompt_tokens: the estimated prompt size, in tokens.
    """

    tier: str
    reason: str
    prompt_tokens: int


@lru_cache(maxsize=32)
def _compiled(patterns: tuple[tuple[str, tuple[str, ...]], ...]) -> list[tuple[str, re.Pattern[str]]]:
    return [(category, re.compile(p, re.IGNORECASE)) for category, group in patterns for p in group]


def header_safe(text: str, limit: int = 24) -> str:
    """``text`` as a short HTTP header value: printable ASCII, whitespace runs as one space, no
    leading or trailing space (RFC 9110, section 5.5), at most ``limit`` characters."""
    text = re.sub(r"[^\x20-\x7e]", "?", re.sub(r"\s+", " ", text))
    return text[:limit].strip()


def _first_match(text: str, settings: Classifier) -> str | None:
    key = tuple((category, tuple(group)) for category, group in settings.patterns.items())
    for category, pattern in _compiled(key):
        match = pattern.search(text)
        if match:
            return f"{category}:{header_safe(match.group(0))}"
    return None


def classify(request: ChatRequest, settings: Classifier) -> Decision:
    """Classify a validated request.

    Checks, in order (the first that fires decides ``cluster``): tools or function calling;
    JSON-schema output; a prompt that with its completion budget does not fit
    ``edge_context_tokens``; estimated prompt tokens over ``max_prompt_tokens``; ``max_tokens``
    over ``max_output_tokens``; more user turns than ``max_turns``; explicit reasoning options
    (``reasoning_effort``); a pattern of math, code or multi-step reasoning in the last user
    message. Otherwise ``edge`` with reason ``simple``.

    Args:
        request: the validated request.
        settings: the routing config's ``classifier`` section.

    Returns:
        A :class:`Decision`.
    """
    body = request.body
    tokens = estimate_prompt_tokens(request.messages, settings.chars_per_token)

    def heavy(reason: str) -> Decision:
        return Decision("cluster", reason, tokens)

    if body.get("tools") or body.get("functions") or body.get("tool_choice") not in (None, "none"):
        return heavy("tools")
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        return heavy("json_schema_output")
    budget = request.max_tokens if request.max_tokens is not None else settings.default_completion_tokens
    if tokens + budget > settings.edge_context_tokens:
        return heavy(f"exceeds_edge_context:{tokens}+{budget}>{settings.edge_context_tokens}")
    if tokens > settings.max_prompt_tokens:
        return heavy(f"prompt_tokens:{tokens}>{settings.max_prompt_tokens}")
    if request.max_tokens is not None and request.max_tokens > settings.max_output_tokens:
        return heavy(f"max_tokens:{request.max_tokens}>{settings.max_output_tokens}")
    turns = sum(1 for m in request.messages if m.get("role") == "user")
    if turns > settings.max_turns:
        return heavy(f"turns:{turns}>{settings.max_turns}")
    if body.get("reasoning_effort") is not None:
        return heavy("reasoning_effort")
    last_user = next((m for m in reversed(request.messages) if m.get("role") == "user"), None)
    if last_user is not None:
        matched = _first_match(message_text(last_user), settings)
        if matched:
            return heavy(matched)
    return Decision("edge", "simple", tokens)
