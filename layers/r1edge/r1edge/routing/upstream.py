"""The one HTTP client the router uses for every upstream (edge, cluster nodes, public APIs).

One pooled ``httpx.AsyncClient`` per process (connection reuse matters more in Lambda than
anywhere: a cold TLS handshake to a cluster costs tens of milliseconds). Requests are always
opened in streaming mode, so the caller sees the status and headers before reading the body and
can relay an SSE stream chunk by chunk. This module never retries: the router's retry loop is the
only one (docs/ARCHITECTURE.md, Retry rules).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from typing import Any

import httpx

from r1edge import env
from r1edge.headers import AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, X_REQUEST_ID
from r1edge.protocol.errors import UpstreamError
from r1edge.routing.config import Endpoint

#: Pool limits for the shared client; a Lambda container serves one request at a time, the
#: local router many.
POOL_LIMITS = httpx.Limits(max_connections=256, max_keepalive_connections=64, keepalive_expiry=30)


#: Most bytes of an upstream's error body read (its message is cut to 1000 characters anyway).
MAX_ERROR_BODY_BYTES = 64 * 1024


class ResponseTooLarge(ValueError):
    """An upstream body is larger than the limit it is read under (nothing past it was read).

    Attributes:
        limit: the limit, bytes.
    """

    def __init__(self, limit: int, declared: str | None = None) -> None:
        size = f"of Content-Length {declared[:24]} " if declared else ""
        super().__init__(f"upstream body {size}is larger than {limit} bytes (the limit, max_response_bytes)")
        self.limit = limit


async def read_limited(response: httpx.Response, limit: int) -> bytes:
    """Read a streamed response's body, at most ``limit`` bytes of it.

    A ``Content-Length`` over ``limit`` (ASCII digits, RFC 9110 §8.6) is refused before any byte
    is read; otherwise the body is read with ``response.aiter_bytes()`` (content-encoding undone,
    so the limit holds for the decoded bytes) and reading stops at the first read that passes the
    limit. The caller closes the response.

    Args:
        response: a response opened with ``stream=True``.
        limit: most bytes accepted.

    Returns:
        The body, at most ``limit`` bytes.

    Raises:
        ResponseTooLarge: the body is (or says it is) larger than ``limit`` (a ``ValueError``).
        httpx.HTTPError: reading failed.
    """
    declared = response.headers.get(CONTENT_LENGTH, "")
    if declared.isascii() and declared.isdigit() and (len(declared) > 18 or int(declared) > limit):
        raise ResponseTooLarge(limit, declared)
    body = bytearray()
    async for read in response.aiter_bytes():
        body += read
        if len(body) > limit:
            raise ResponseTooLarge(limit)
    return bytes(body)


def _read_secret(name: str) -> str:
    """Read a Secrets Manager secret through Powertools Parameters, cached for 5 minutes."""
    from aws_lambda_powertools.utilities.parameters import get_secret  # lazy: only bearer+secret needs it

    value = get_secret(name, max_age=300)
    return value if isinstance(value, str) else value.decode()


def _default_credentials() -> Any:
    """The process's AWS credentials (botocore's chain: environment, then the Lambda role)."""
    import boto3  # lazy: only sigv4 endpoints need it

    credentials = boto3.Session().get_credentials()
    if credentials is None:
        raise RuntimeError("no AWS credentials found for a sigv4 endpoint")
    return credentials


class Upstream:
    """Sends OpenAI-compatible requests to endpoints.

    Args:
        client: an ``httpx.AsyncClient`` to use (tests pass one with a mock transport); by
            default one is created with :data:`POOL_LIMITS`.
        secret_reader: ``name -> token`` for ``auth.secret`` (default: Powertools Parameters).
        environ: where ``auth.env`` tokens are read (default ``os.environ``).
        credentials: ``() -> botocore credentials`` for ``sigv4`` endpoints (default: boto3's
            chain, read once and refreshed by botocore).
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        secret_reader: Callable[[str], str] = _read_secret,
        environ: dict[str, str] | None = None,
        credentials: Callable[[], Any] = _default_credentials,
    ) -> None:
        self.client = client or httpx.AsyncClient(limits=POOL_LIMITS, trust_env=False)
        self._secret_reader = secret_reader
        self._environ = os.environ if environ is None else environ
        self._credentials_source = credentials
        self._credentials: Any = None

    def sigv4_headers(self, endpoint: Endpoint, method: str, url: str, body: bytes) -> dict[str, str]:
        """AWS Signature Version 4 headers (``Authorization``, ``X-Amz-Date``, and
        ``X-Amz-Security-Token`` for temporary credentials) for exactly these bytes, signed with
        botocore's ``SigV4Auth`` (AWS General Reference, "Signature Version 4 signing process").

        Raises:
            UpstreamError: no credentials or no region (our misconfiguration).
        """
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        region = endpoint.auth.region or self._environ.get(env.AWS_REGION) or self._environ.get(env.AWS_DEFAULT_REGION)
        if not region:
            raise UpstreamError(f"endpoint {endpoint.name!r}: sigv4 needs auth.region or AWS_REGION")
        try:
            if self._credentials is None:
                self._credentials = self._credentials_source()
            frozen = self._credentials.get_frozen_credentials()
        except Exception as exc:  # noqa: BLE001 - any credential failure is our misconfiguration
            raise UpstreamError(f"endpoint {endpoint.name!r}: cannot get AWS credentials: {exc}") from None
        request = AWSRequest(method=method, url=url, data=body, headers={CONTENT_TYPE: "application/json"})
        SigV4Auth(frozen, endpoint.auth.service, region).add_auth(request)
        return dict(request.headers.items())

    def auth_headers(self, endpoint: Endpoint) -> dict[str, str]:
        """``Authorization`` header for the endpoint's ``auth`` setting.

        Raises:
            UpstreamError: the token's environment variable is unset or the secret unreadable
                (our misconfiguration, so a 502, never a 401 that blames the client).
        """
        auth = endpoint.auth
        if auth.type in ("none", "sigv4"):  # sigv4 signs each request: see sigv4_headers
            return {}
        if auth.env:
            token = self._environ.get(auth.env)
            if not token:
                raise UpstreamError(f"endpoint {endpoint.name!r}: environment variable {auth.env} is not set")
        else:
            try:
                token = self._secret_reader(auth.secret or "")
            except Exception as exc:  # noqa: BLE001 - any failure to read the secret is our misconfiguration
                raise UpstreamError(f"endpoint {endpoint.name!r}: cannot read secret {auth.secret!r}: {exc}") from None
        return {AUTHORIZATION: f"Bearer {token}"}

    def timeout(self, endpoint: Endpoint) -> httpx.Timeout:
        """httpx timeouts from the endpoint's ``timeouts`` (seconds); reads wait up to the larger of
        ``first_byte`` and ``idle``."""
        t = endpoint.timeouts
        return httpx.Timeout(connect=t.connect, read=max(t.first_byte, t.idle), write=t.connect, pool=t.connect)

    async def open_chat(
        self, endpoint: Endpoint, body: dict[str, Any], request_id: str, extra_headers: dict[str, str] | None = None
    ) -> httpx.Response:
        """POST ``{url}/chat/completions`` (with ``extra_headers``, if any) and return once the
        status and headers have arrived.

        The body is read by the caller, who must ``await response.aclose()``.

        Raises:
            httpx.TimeoutException, httpx.TransportError: connect or header-wait failures.
            UpstreamError: the endpoint's credentials cannot be read.
        """
        url = f"{endpoint.url}/chat/completions"
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        headers = {
            X_REQUEST_ID: request_id,
            "accept": "application/json, text/event-stream",
            CONTENT_TYPE: "application/json",
        }
        headers.update(extra_headers or {})
        headers.update(self.auth_headers(endpoint))
        if endpoint.auth.type == "sigv4":
            headers.update(self.sigv4_headers(endpoint, "POST", url, content))
        request = self.client.build_request(
            "POST", url, content=content, headers=headers, timeout=self.timeout(endpoint)
        )
        return await self.client.send(request, stream=True)

    async def probe(self, endpoint: Endpoint, timeout: float = 2.0) -> str:
        """Check that an endpoint answers ``GET {url}/models``; return ``"ok"`` or a short reason."""
        url = f"{endpoint.url}/models"
        try:
            headers = self.auth_headers(endpoint)
            if endpoint.auth.type == "sigv4":
                headers.update(self.sigv4_headers(endpoint, "GET", url, b""))
            response = await self.client.get(url, headers=headers, timeout=timeout)
        except (httpx.HTTPError, UpstreamError) as exc:
            return f"{type(exc).__name__}: {exc}"[:200]
        return "ok" if response.status_code == 200 else f"HTTP {response.status_code}"

    async def scrape_metrics(self, endpoint: Endpoint, timeout: float = 1.0) -> str | None:
        """``GET`` the engine's ``/metrics`` text, or ``None`` when it cannot be read (load is then
        unknown, which never blocks traffic)."""
        try:
            headers = self.auth_headers(endpoint)
            if endpoint.auth.type == "sigv4":
                headers.update(self.sigv4_headers(endpoint, "GET", endpoint.metrics_url, b""))
            response = await self.client.get(endpoint.metrics_url, headers=headers, timeout=timeout)
        except (httpx.HTTPError, UpstreamError):
            return None
        return response.text if response.status_code == 200 else None

    async def probe_all(self, endpoints: list[Endpoint], timeout: float = 2.0) -> dict[str, str]:
        """Probe endpoints concurrently: ``{name: "ok" | reason}``."""
        results = await asyncio.gather(*(self.probe(e, timeout) for e in endpoints))
        return {e.name: r for e, r in zip(endpoints, results, strict=True)}

    async def aclose(self) -> None:
        """Close the pooled client."""
        await self.client.aclose()
