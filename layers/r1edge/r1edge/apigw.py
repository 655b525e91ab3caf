"""API Gateway HTTP API (payload format 2.0) events from plain HTTP requests, and back.

The local stack uses it to call an event-driven function's ``lambda_handler`` the way API Gateway
would (AWS: "Working with AWS Lambda proxy integrations for HTTP APIs", payload format 2.0):
header names in lower case, repeated headers joined with commas, cookies in ``cookies``, the raw
(still percent-encoded) path in ``rawPath``, a body that is not UTF-8 text base64-encoded.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Iterable
from typing import Any


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
