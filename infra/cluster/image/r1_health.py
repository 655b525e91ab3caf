#!/usr/bin/env python3
"""Readiness check for an engine pod: is it answering the way the r1edge router will call it?

    r1-health [--url http://127.0.0.1:8000] [--model NAME] [--timeout SECONDS]

Ready means both of:

1. ``GET /health`` is 200 (vLLM and SGLang: the server is up and its engine alive);
2. ``GET /v1/models`` with ``Authorization: Bearer $R1_API_KEY`` is 200 and lists ``--model``
   (default ``$SERVED_MODEL_NAME``) — the same call as the router's own health probe
   (``r1edge.routing.upstream.Upstream.probe``), so a wrong key or a wrong ``--served-model-name``
   keeps the pod out of the Service instead of turning every routed request into a 401 or 404.

The engines' ``/health`` alone says neither. Exit 0 when ready, 1 when not (one line on stderr
says why), 2 for bad arguments. Standard library only: it runs in the engine image as an
``exec`` readiness probe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable

#: ``(url, headers, timeout seconds) -> (HTTP status, body)``; status 0 when nothing answered.
Getter = Callable[[str, dict[str, str], float], tuple[int, bytes]]


def http_get(url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """GET with urllib; an HTTP error is a status, a connection failure is status 0."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError) as exc:
        return 0, str(exc).encode()


def check(base_url: str, model: str, api_key: str | None, timeout: float, get: Getter = http_get) -> str | None:
    """``None`` when the engine is ready, else the reason it is not.

    Args:
        base_url: the server root, e.g. ``http://127.0.0.1:8000`` (no ``/v1``).
        model: the served model name that ``/v1/models`` must list.
        api_key: the engine's bearer token, or ``None`` when it needs none.
        timeout: seconds for each request.
        get: the HTTP client (injected in tests).
    """
    base = base_url.rstrip("/")
    status, body = get(f"{base}/health", {}, timeout)
    if status != 200:
        return f"GET /health: {status or body.decode(errors='replace')[:120]}"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    status, body = get(f"{base}/v1/models", headers, timeout)
    if status != 200:
        return f"GET /v1/models: HTTP {status}" + (" (check R1_API_KEY)" if status in (401, 403) else "")
    try:
        ids = [item["id"] for item in json.loads(body)["data"]]
    except (ValueError, KeyError, TypeError):
        return "GET /v1/models: not an OpenAI model list"
    if model not in ids:
        return f"GET /v1/models: {model!r} not served (served: {', '.join(ids) or 'none'})"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="r1-health", description="engine readiness, as the router sees it")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="server root (default %(default)s)")
    parser.add_argument("--model", default=os.environ.get("SERVED_MODEL_NAME"), help="served model name")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds per request (default %(default)s)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if not args.model:
        print("r1-health: give --model or set SERVED_MODEL_NAME", file=sys.stderr)
        return 2
    reason = check(args.url, args.model, os.environ.get("R1_API_KEY") or None, args.timeout)
    if reason:
        print(f"r1-health: not ready: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
