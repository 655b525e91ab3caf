"""API Gateway HTTP API (payload format 2.0) events from plain HTTP requests, and back.

The local stack uses it to call an event-driven function's ``lambda_handler`` the way API Gateway
would (AWS: "Working with AWS Lambda proxy integrations for HTTP APIs", payload format 2.0):
header names in lower case, repeated headers joined with commas, cookies in ``cookies``, the raw
(still percent-encoded) path in ``rawPath``, a body that is not UTF-8 text base64-encoded.
"""

from __future__ import annotations

import base64
import binascii
import time
import uuid
from collections.abc import Iterable
from typing import Any

from r1edge.protocol.errors import InvalidRequest, RequestTooLarge

#: Largest request body (decoded bytes) a plain Lambda handler accepts: 1 MiB.
MAX_EVENT_BODY_BYTES = 1024 * 1024


def http_api_event(
    method: str,
    raw_path: str,
    raw_query: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    domain: str = "localhost",
    source_ip: str = "127.0.0.1",
) -> dict[str, Any]:
    """A payload-2.0 event for one request (route ``$default``, stage ``$default``)."""
    joined: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        joined[key] = f"{joined[key]},{value}" if key in joined else value
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": joined,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": domain,
            "domainPrefix": domain.split(".")[0],
            "http": {
                "method": method.upper(),
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": joined.get("user-agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": "$default",
            "stage": "$default",
            "timeEpoch": int(time.time() * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    if body:
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"], event["isBase64Encoded"] = base64.b64encode(body).decode("ascii"), True
    return event


def http_response(result: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
    """``(status, headers, body bytes)`` from a handler's proxy result (payload 2.0 or 1.0
    shape: ``headers`` and ``multiValueHeaders`` are both read)."""
    headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
    for name, values in (result.get("multiValueHeaders") or {}).items():
        headers[str(name)] = ",".join(str(v) for v in values)
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else str(body).encode("utf-8")
    return int(result.get("statusCode", 200)), headers, raw


def event_body(event: dict[str, Any], max_bytes: int = MAX_EVENT_BODY_BYTES) -> str:
    """The body of an API Gateway (payload 1.0 or 2.0) or Function URL event as text: decoded
    from base64 first when ``isBase64Encoded`` is set (API Gateway does so for binary media
    types and bodies that are not UTF-8), then checked for size, then decoded as UTF-8.

    Raises:
        InvalidRequest: the base64 is malformed, or the bytes are not UTF-8 (400).
        RequestTooLarge: more than ``max_bytes`` decoded bytes (413).
    """
    body = event.get("body")
    if body is None or body == "":
        return ""
    if not isinstance(body, str):
        raise InvalidRequest("The request body must be text.", code="invalid_body")
    if event.get("isBase64Encoded"):
        # A base64 text of n characters decodes to about 3n/4 bytes: refuse a huge one unread.
        if len(body) > 4 * (max_bytes // 3 + 2):
            raise RequestTooLarge(f"Request body is over the limit of {max_bytes} bytes.")
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(
                "The request body is flagged base64 but is not valid base64.", code="invalid_body"
            ) from None
    else:
        raw = body.encode("utf-8", "surrogatepass")
    if len(raw) > max_bytes:
        raise RequestTooLarge(f"Request body of {len(raw)} bytes is over the limit of {max_bytes} bytes.")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("The request body is not UTF-8 text.", code="invalid_body") from None
