"""Upstream error bodies turned into the client's :class:`~r1edge.protocol.errors.OpenAIError`.

An upstream's 400/413/422 is the client's fault and is relayed at once with the upstream's own
message (docs/ARCHITECTURE.md, "Errors" and Retry rules). OpenAI-compatible servers word their
errors in several shapes; :func:`upstream_client_error` reads each of them.
"""

from __future__ import annotations

import json

from r1edge.protocol.errors import OpenAIError

#: Most characters of an upstream's message kept when it is not a short string field.
MAX_MESSAGE_CHARS = 1000


def upstream_client_error(response_body: bytes, status: int) -> OpenAIError:
    """Relay an upstream 400/413/422, keeping its message: OpenAI's ``{"error": {...}}`` (with
    its ``param`` and ``code`` when they are strings), a bare ``{"error": "..."}``, the top-level
    ``{"object": "error", "message": ...}`` of SGLang and older vLLM, FastAPI's ``{"detail": ...}``
    (a non-string detail as JSON), or the text of the body; long texts are cut to
    :data:`MAX_MESSAGE_CHARS` characters. The type is always ``invalid_request_error``
    (docs/ARCHITECTURE.md, "Errors": a 4xx for the client's request).

    Args:
        response_body: the upstream's response body, bytes (any encoding; not necessarily JSON).
        status: the upstream's HTTP status, passed on as the error's status.

    Returns:
        The error to raise to the client (never raises itself).
    """
    message, param, code = f"upstream rejected the request (HTTP {status})", None, None
    try:
        body = json.loads(response_body)
        error = body.get("error")
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            param, code = (v if isinstance(v, str) else None for v in (error.get("param"), error.get("code")))
        elif isinstance(error, str):
            message = error
        elif isinstance(body.get("message"), str):
            message = body["message"]
        elif body.get("detail") is not None:
            detail = body["detail"]
            message = detail if isinstance(detail, str) else json.dumps(detail)[:MAX_MESSAGE_CHARS]
    except (ValueError, AttributeError):
        text = response_body.decode("utf-8", "replace").strip()
        if text:
            message = text[:MAX_MESSAGE_CHARS]
    return OpenAIError(message, status=status, type="invalid_request_error", param=param, code=code)
