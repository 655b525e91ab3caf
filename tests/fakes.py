"""In-memory fakes for unit tests: a scripted OpenAI-compatible upstream behind
``httpx.MockTransport`` (no sockets), and helpers to build SSE bodies."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from r1edge.routing.config import RoutingConfig, parse_config
from r1edge.routing.upstream import Upstream


class ChunkStream(httpx.AsyncByteStream):
    """A response body delivered as exactly these network reads."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


def sse(*objects: Any, done: bool = True) -> bytes:
    """An SSE body: one ``data:`` event per object (dicts as JSON), then ``[DONE]``."""
    out = b""
    for obj in objects:
        data = obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)
        out += f"data: {data}\n\n".encode()
    if done:
        out += b"data: [DONE]\n\n"
    return out


def chunk(
    content: str | None = None,
    *,
    reasoning: str | None = None,
    reasoning_content: str | None = None,
    finish_reason: str | None = None,
) -> dict[str, Any]:
    """A chat.completion.chunk with one choice."""
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning"] = reasoning
    if reasoning_content is not None:
        delta["reasoning_content"] = reasoning_content
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


def completion(content: str = "hello", **message: Any) -> dict[str, Any]:
    """A chat.completion object with one choice."""
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": content, **message}, "finish_reason": "stop"}
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }


Reply = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeUpstream:
    """Scripted upstreams keyed by host name (``http://<host>/v1``).

    ``script[host]`` is a list of replies used in order (the last one repeats); a reply is an
    ``httpx.Response``, an exception to raise, or a callable ``request -> Response``.
    """

    script: dict[str, list[Any]] = field(default_factory=dict)
    calls: list[httpx.Request] = field(default_factory=list)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        replies = self.script.get(request.url.host)
        if not replies:
            raise httpx.ConnectError(f"nothing listens on {request.url.host}")
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, Exception):
            raise reply
        if callable(reply):
            return reply(request)
        return reply

    def upstream(self, environ: dict[str, str] | None = None) -> Upstream:
        return Upstream(httpx.AsyncClient(transport=httpx.MockTransport(self.handler)), environ=environ or {})

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.calls]


def json_reply(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=obj, headers=headers)


def sse_reply(body: bytes | list[bytes], error: Exception | None = None) -> httpx.Response:
    chunks = body if isinstance(body, list) else [body]
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=ChunkStream(chunks, error))


def config(*endpoints: dict[str, Any], **extra: Any) -> RoutingConfig:
    """A routing config from endpoint dicts; ``("edge-a", "edge")`` style shortcuts allowed."""
    return parse_config({"endpoints": list(endpoints), **extra}, environ={})


def endpoint(name: str, tier: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": f"http://{name}/v1", "tier": tier, **extra}


class FakeClock:
    """Monotonic and wall clocks that advance for real, plus whatever :meth:`sleep` was asked to
    wait — so backoff and Retry-After waits are recorded, not slept."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def wall(self) -> float:
        return time.time() + self.offset

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.offset += seconds
        await asyncio.sleep(0)

    def options(self) -> dict[str, Any]:
        """Keyword arguments for ``create_app``/``Gateway``."""
        return {"clock": self, "sleep": self.sleep, "wall_clock": self.wall}


class MemoryKeyStore:
    """In-memory :class:`r1edge.access.keys.KeyStore`."""

    def __init__(self) -> None:
        self.items: dict[str, Any] = {}

    def get(self, key_hash: str) -> Any:
        return self.items.get(key_hash)

    def put(self, key: Any) -> None:
        self.items[key.key_hash] = key

    def all(self) -> list[Any]:
        return list(self.items.values())

    def set_status(self, key_hash: str, status: str) -> None:
        from dataclasses import replace

        self.items[key_hash] = replace(self.items[key_hash], status=status)


class MemoryBucketStore:
    """In-memory :class:`r1edge.access.ratelimit.BucketStore`: ``items[bucket_key][field] = tat``."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, float]] = {}

    def take(self, bucket_key: str, field: str, cost: float, now: float) -> tuple[bool, dict[str, float]]:
        from r1edge.access.ratelimit import charge

        item = self.items.setdefault(bucket_key, {})
        passed, tat = charge(item.get(field), cost, now)
        if passed:
            item[field] = tat
        return passed, dict(item)

    def add(self, bucket_key: str, field: str, seconds: float, now: float) -> None:
        item = self.items.get(bucket_key)
        if item is not None and field in item:
            item[field] += seconds

    def load(self, bucket_key: str) -> dict[str, float]:
        return dict(self.items.get(bucket_key, {}))


class MemoryUsageStore:
    """In-memory :class:`r1edge.access.usage.UsageStore`: ``{(tenant, period): [requests, prompt, completion]}``."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], list[int]] = {}

    def add(self, tenant: str, period: str, requests: int, prompt_tokens: int, completion_tokens: int) -> None:
        row = self.items.setdefault((tenant, period), [0, 0, 0])
        row[0] += requests
        row[1] += prompt_tokens
        row[2] += completion_tokens


HMAC_SECRET = "test-hmac-secret"


def memory_guard(clock: Callable[[], float] | None = None) -> Any:
    """A :class:`r1edge.access.guard.Guard` on in-memory stores (``guard.authenticator.store`` etc.)."""
    from r1edge.access.guard import Guard
    from r1edge.access.keys import Authenticator
    from r1edge.access.ratelimit import RateLimiter
    from r1edge.access.usage import UsageRecorder

    clock = clock or time.time
    return Guard(
        Authenticator(MemoryKeyStore(), lambda: HMAC_SECRET),
        RateLimiter(MemoryBucketStore(), clock=clock),
        UsageRecorder(MemoryUsageStore(), clock=clock),
    )


def add_key(guard: Any, tenant: str = "acme", rpm: int = 600, tpm: int = 1_000_000, key: str | None = None) -> str:
    """Create a key in ``guard``'s store; return the key."""
    from r1edge.access.keys import create_key

    created, _ = create_key(guard.authenticator.store, HMAC_SECRET, tenant, rpm, tpm, key)
    return created
