"""Retry policy, pure: which upstream outcomes retry, how long to wait, and what the upstream
asked for. No clock, no randomness that is not passed in.

Rules (docs/ARCHITECTURE.md, Retry rules): retry 408, 429, 500, 502, 503, 504, connection errors and
timeouts before the first byte; 400, 413 and 422 are the client's fault and are relayed at once;
401, 403 and 404 mean our credential or model mapping for that endpoint is wrong, so the endpoint
is taken out for this request. Backoff is exponential with full jitter ("Exponential Backoff And
Jitter", AWS Architecture Blog, 2015), capped; ``Retry-After`` (RFC 9110, section 10.2.3: seconds
or an HTTP-date) and ``retry-after-ms`` are a floor.
"""

from __future__ import annotations

import email.utils
import enum
import math
import random
from collections.abc import Mapping

from r1edge.headers import RETRY_AFTER, RETRY_AFTER_MS


class Outcome(enum.Enum):
    """What one upstream attempt's result means for the retry loop."""

    OK = "ok"
    RETRY = "retry"  # transient: back off and try again (this endpoint or the next)
    CLIENT_FAULT = "client_fault"  # relay to the client at once; endpoint health untouched
    MISCONFIGURED = "misconfigured"  # our credential/model mapping: skip this endpoint


#: Longest wait an upstream may ask for that we take literally (seconds): a day.
MAX_WAIT = 86_400.0

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
CLIENT_FAULT_STATUS = frozenset({400, 413, 422})
MISCONFIGURED_STATUS = frozenset({401, 403, 404})


def classify_status(status: int) -> Outcome:
    """Map an upstream HTTP status to an :class:`Outcome` (2xx is ``OK``; any other status not
    listed in the rules is treated as transient)."""
    if 200 <= status < 300:
        return Outcome.OK
    if status in CLIENT_FAULT_STATUS:
        return Outcome.CLIENT_FAULT
    if status in MISCONFIGURED_STATUS:
        return Outcome.MISCONFIGURED
    return Outcome.RETRY


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name``, matched without regard to case (RFC 9110, section 5.1) in a
    plain ``dict`` as well as in a case-insensitive mapping."""
    value = headers.get(name)
    if value is not None:
        return value
    wanted = name.lower()
    return next((v for k, v in headers.items() if k.lower() == wanted), None)


def parse_retry_after(headers: Mapping[str, str], now: float) -> float | None:
    """Seconds the upstream asked us to wait, or ``None`` when it did not say (or said nonsense).

    ``retry-after-ms`` (milliseconds, as OpenAI and vLLM send it) wins over ``Retry-After``,
    which is either delay-seconds (``1*DIGIT``) or an HTTP-date (RFC 9110, section 10.2.3); a
    date in the past is 0. Every answer is capped at :data:`MAX_WAIT`. Junk (negative, fractional
    or non-finite seconds, an unparsable date, a date without a time zone) is ``None``.

    Args:
        headers: response headers, names matched in any case (``httpx.Headers``, or the plain
            ``dict`` of an :class:`~r1edge.protocol.errors.OpenAIError`).
        now: current wall-clock time, seconds since the epoch (for HTTP-dates).
    """
    ms = _header(headers, RETRY_AFTER_MS)
    if ms is not None:
        try:
            value = float(ms)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and value >= 0:
            return min(value / 1000.0, MAX_WAIT)
    raw = _header(headers, RETRY_AFTER)
    if raw is None:
        return None
    raw = raw.strip()
    if raw.isascii() and raw.isdigit():
        return min(float(raw), MAX_WAIT) if len(raw) < 16 else MAX_WAIT
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return min(max(0.0, when.timestamp() - now), MAX_WAIT)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full-jitter backoff before retry number ``attempt`` (1 = first retry), in seconds:
    uniform in ``[0, min(cap, base * 2 ** (attempt - 1))]``."""
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return rng.uniform(0.0, ceiling)


def wait_before_retry(attempt: int, base: float, cap: float, retry_after: float | None, rng: random.Random) -> float:
    """Seconds to wait before retry ``attempt``: the jittered backoff, raised to ``retry_after``
    when the upstream asked for longer (Retry-After is a floor, never shortened by jitter)."""
    delay = backoff_delay(attempt, base, cap, rng)
    return max(delay, retry_after) if retry_after is not None else delay
