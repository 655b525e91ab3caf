"""The cache key and the caching policy: which requests share an entry, and which requests and
answers are cached at all (docs/ARCHITECTURE.md, "Request path"). Pure: no I/O, no clock.

**Key** (:func:`cache_key`): SHA-256 over a canonical JSON encoding (keys sorted, no
insignificant whitespace, ``1.0`` written as ``1``, ``null`` fields dropped because ``null`` means
absent) of the tenant, the requested model, the tier it resolves to (after classification), the
upstream model names of that tier, the messages and every other request field except
``stream``, ``stream_options`` and fields that cannot change the output (``user``, ``metadata``,
``store``). Everything else — ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``,
``n``, ``tools``, ``tool_choice``, ``response_format``, penalties, ``logit_bias``, reasoning
options, and any field we do not know — splits entries. A missing ``temperature`` is not 0
(engines default to 0.2 or 1). Streamed and JSON requests share entries.

**What is cached** (:func:`cache_policy`): only deterministic requests (``temperature`` 0, or a
``seed``) unless ``cache.nondeterministic_models`` widens it; only complete, successful answers
(:func:`complete_answer`: every choice's ``finish_reason`` ``stop`` or ``length``);
``Cache-Control: no-cache`` skips the lookup and ``no-store`` the store (RFC 9111 §5.2.1.4 and
§5.2.1.5, the request directives).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from r1edge.protocol.validation import ChatRequest
from r1edge.routing.config import TIER_MODELS, Cache

#: Bumped when the key or the entry format changes, so old entries are never misread.
KEY_VERSION = 1
#: Request fields that are not part of the key: how the answer is delivered, or fields that
#: cannot change it (OpenAI API reference: ``user`` and ``metadata`` are for abuse tracking and
#: filtering, ``store`` for OpenAI's own storage). ``model`` is replaced by the resolved names.
UNKEYED_FIELDS = frozenset({"model", "stream", "stream_options", "user", "metadata", "store"})
#: ``finish_reason`` values of a complete, successful answer (OpenAI API reference).
CACHEABLE_FINISH = frozenset({"stop", "length"})

#: Values of the ``x-cache`` response header.
HIT, MISS, BYPASS = "HIT", "MISS", "BYPASS"


def _normalise(value: Any) -> Any:
    """JSON value with ``null`` members dropped and integral floats as ints (``0.0`` → ``0``)."""
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def canonical_json(value: Any) -> bytes:
    """Canonical UTF-8 JSON of a decoded JSON value: keys sorted, no insignificant whitespace,
    ``null`` object members dropped (a ``null`` field means absent, as in the request rules),
    integral numbers written without a fraction. Strings are kept exactly (whitespace inside a
    message is significant)."""
    return json.dumps(_normalise(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def cache_key(tenant: str, model: str, tier: str, upstream_models: list[str], body: dict[str, Any]) -> str:
    """The cache key of a request: 64 hex digits of SHA-256 over the canonical JSON of the tenant,
    the requested public model, the resolved tier, that tier's upstream model names (sorted), and
    the request body without :data:`UNKEYED_FIELDS`.

    Args:
        tenant: the tenant the request acts for (:func:`r1edge.protocol.web.tenant`).
        model: the requested public model name (``auto``, ``edge``, ``deepseek-r1``).
        tier: the tier the request resolves to (``edge`` or ``cluster``).
        upstream_models: model names sent to that tier's endpoints.
        body: the validated request body.
    """
    keyed = {k: v for k, v in body.items() if k not in UNKEYED_FIELDS}
    document = {
        "v": KEY_VERSION,
        "tenant": tenant,
        "model": model,
        "tier": tier,
        "upstream_models": sorted(set(upstream_models)),
        "request": keyed,
    }
    return hashlib.sha256(canonical_json(document)).hexdigest()


def cache_control(header: str | None) -> set[str]:
    """The directive names of a ``Cache-Control`` request header, lower-cased (RFC 9111 §5.2:
    comma-separated, case-insensitive names, optional ``=value``)."""
    if not header:
        return set()
    return {part.split("=", 1)[0].strip().lower() for part in header.split(",") if part.strip()}


def deterministic(request: ChatRequest) -> bool:
    """Whether the answer is fixed by the request: ``temperature`` 0, or a ``seed`` given. A
    missing temperature is not 0 (llama.cpp defaults to 0.2, OpenAI to 1)."""
    return request.temperature == 0 or request.body.get("seed") is not None


@dataclass(frozen=True)
class Policy:
    """What the cache does for one request: ``lookup`` (and coalesce), ``store``, and the
    ``x-cache`` value when nothing is looked up (``BYPASS``)."""

    lookup: bool
    store: bool


def cache_policy(request: ChatRequest, tier: str, settings: Cache, directives: set[str]) -> Policy:
    """Decide whether to look up and whether to store.

    Args:
        request: the validated request.
        tier: the tier the request resolves to.
        settings: the config's ``cache`` section.
        directives: the request's ``Cache-Control`` directives (:func:`cache_control`).

    Rules: nothing when the cache is off; nothing for a non-deterministic request unless its
    model (or, for ``auto``, its tier's public model) is in ``nondeterministic_models``;
    ``no-cache`` skips the lookup and ``no-store`` the store (RFC 9111 §5.2.1).
    """
    if not settings.enabled:
        return Policy(False, False)
    widened = {request.model, TIER_MODELS.get(tier, "")} & set(settings.nondeterministic_models)
    if not (deterministic(request) or widened):
        return Policy(False, False)
    return Policy(lookup="no-cache" not in directives, store="no-store" not in directives)


def complete_answer(completion: dict[str, Any]) -> bool:
    """Whether a chat completion is whole and successful: at least one choice, and every
    choice's ``finish_reason`` is ``stop`` or ``length``."""
    choices = completion.get("choices")
    if not isinstance(choices, list) or not choices:
        return False
    return all(isinstance(c, dict) and c.get("finish_reason") in CACHEABLE_FINISH for c in choices)
