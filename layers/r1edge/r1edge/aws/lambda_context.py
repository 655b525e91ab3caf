"""The Lambda invocation deadline as seen by an ASGI app under the Lambda Web Adapter.

The adapter gives the app no Lambda context object; it forwards the invocation context as JSON
in the ``x-amzn-lambda-context`` request header (aws-lambda-web-adapter, "Lambda Context"), whose
``deadline`` is the epoch time in milliseconds at which Lambda stops the invocation. Outside
Lambda the header is absent and the configured deadline applies.
"""

from __future__ import annotations

import json
import math

from r1edge import env

#: Seconds kept back from Lambda's deadline to send an error response and flush logs.
DEADLINE_MARGIN_SECONDS = 1.0


def request_deadline(
    header: str | None, configured: float, now: float, margin: float = DEADLINE_MARGIN_SECONDS
) -> float:
    """Seconds this request may spend: the Lambda time left minus ``margin``, capped by
    ``configured``.

    Args:
        header: the ``x-amzn-lambda-context`` header value, or ``None`` outside Lambda.
        configured: the routing config's ``deadline``, seconds.
        now: the current wall-clock time, seconds since the epoch.
        margin: seconds kept back from Lambda's deadline.

    Returns:
        Seconds left (>= 0). An absent or unreadable header gives ``configured``.
    """
    if not header:
        return configured
    try:
        context = json.loads(header)
        deadline_ms = context.get("deadline", context.get("deadline_ms"))
        if isinstance(deadline_ms, bool) or not isinstance(deadline_ms, (int, float)):
            return configured
        seconds = float(deadline_ms) / 1000.0
    except (ValueError, AttributeError, RecursionError, OverflowError):
        return configured
    if not math.isfinite(seconds):
        return configured
    return max(0.0, min(configured, seconds - now - margin))


def in_lambda(environ: dict[str, str]) -> bool:
    """Whether this process runs in AWS Lambda (``AWS_LAMBDA_FUNCTION_NAME`` is set by the
    runtime). Only there does ``x-amzn-lambda-context`` come from the adapter rather than from
    whoever sent the request."""
    return bool(environ.get(env.AWS_LAMBDA_FUNCTION_NAME))
