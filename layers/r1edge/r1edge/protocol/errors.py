"""Errors in the OpenAI shape.

Every error r1edge returns to a client is ``{"error": {"message", "type", "param", "code"}}`` with
OpenAI's conventions for ``type`` and ``code`` (OpenAI API reference, "Error codes"; the table is
in docs/ARCHITECTURE.md under Contracts). Each class below carries its HTTP status, so the one exception
handler of each app maps any of them to a response without a lookup table.
"""

from __future__ import annotations

import json
from typing import Any

#: Most characters of a client-supplied value an error message quotes (:func:`quote`).
MAX_QUOTED = 200


def quote(value: Any, limit: int = MAX_QUOTED) -> str:
    """A client-supplied value as an error message quotes it: at most ``limit`` characters of
    it, so an error never echoes a 10,000-character model name or a megabyte of JSON back.

    A string is shown as Python's ``repr`` (``'gpt-4'``, the style r1edge's messages always
    used); any other value as compact JSON (``true``, ``{"a":1}``), as the client sent it. When
    the string (or the JSON text) is longer than ``limit`` characters, its first ``limit`` are
    kept, an ellipsis marks the cut, and its length is said: ``'aaaa…' (10000 characters)``.

    Args:
        value: a decoded JSON value, a header value, a path or a name; any type.
        limit: most characters of the value kept (default :data:`MAX_QUOTED`, 200).

    Returns:
        The quoted text: at most ``limit`` characters of the value plus the quoting, the
        ellipsis and the length note (escapes such as ``\\n`` may add a few). Never raises.
    """
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit] + '…'!r} ({len(value)} characters)"
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):  # not JSON, or an int past Python's digit limit
        return f"(a {type(value).__name__})"
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters of JSON)"


class OpenAIError(Exception):
    """Base class: an error that becomes an OpenAI-shaped JSON response.

    Attributes:
        status: HTTP status code of the response.
        type: OpenAI error ``type`` (``invalid_request_error``, ``server_error``, ...).
        code: OpenAI error ``code`` or ``None``.
        param: the request field at fault (``"messages[0].role"``), or ``None``.
        headers: extra response headers (e.g. ``Retry-After``).
    """

    status: int = 500
    type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        status: int | None = None,
        type: str | None = None,  # noqa: A002 - OpenAI's field name
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body: ``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(
    message: str,
    type: str,  # noqa: A002 - OpenAI's field name
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Build an OpenAI error object ``{"error": {...}}`` from its four fields."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class InvalidRequest(OpenAIError):
    """400 ``invalid_request_error``: the request is malformed; ``param`` names the field."""

    status = 400
    type = "invalid_request_error"


class ContextLengthExceeded(InvalidRequest):
    """400 ``context_length_exceeded``: prompt plus ``max_tokens`` do not fit the model's context."""

    code = "context_length_exceeded"


class NotFound(OpenAIError):
    """404 ``invalid_request_error`` for an unknown URL path."""

    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(OpenAIError):
    """405 ``invalid_request_error``: the path exists but not for this HTTP method."""

    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class ModelNotFound(OpenAIError):
    """404 ``model_not_found``: the requested ``model`` is not served here."""

    status = 404
    type = "invalid_request_error"
    code = "model_not_found"


class RequestTooLarge(OpenAIError):
    """413 ``request_too_large``: the body is over the configured size limit (bytes)."""

    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RequestTimeout(OpenAIError):
    """408 ``request_timeout``: the client stopped sending its request body for longer than the
    body read limit (``R1EDGE_BODY_TIMEOUT`` seconds); answered with ``Connection: close``, as RFC
    9110 section 15.5.9 advises, since the rest of the body may still arrive."""

    status = 408
    type = "invalid_request_error"
    code = "request_timeout"


class RateLimited(OpenAIError):
    """429 ``rate_limit_exceeded`` (type ``requests``): retry after ``Retry-After`` seconds."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"


class UpstreamError(OpenAIError):
    """502 ``upstream_error``: no upstream gave a usable answer."""

    status = 502
    type = "server_error"
    code = "upstream_error"


class Overloaded(OpenAIError):
    """503 ``overloaded``: the service cannot take the request now; carries ``Retry-After``."""

    status = 503
    type = "server_error"
    code = "overloaded"


class UpstreamTimeout(OpenAIError):
    """504 ``timeout``: the upstream did not answer within its timeout or the deadline."""

    status = 504
    type = "server_error"
    code = "timeout"


class ConfigError(ValueError):
    """The routing configuration is invalid; the message names the bad field."""
