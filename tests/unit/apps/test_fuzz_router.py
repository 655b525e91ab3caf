"""Property-based fuzzing of the router (hypothesis), every route: ``POST /v1/chat/completions``,
``POST /v1/responses`` (the OpenAI Responses API), ``POST /v1/completions`` and
``POST /v1/embeddings`` (the legacy dialect),
``POST /v1/messages`` (the Anthropic Messages API; its 4xx in Anthropic's error shape),
``POST /v1/jobs`` and ``GET /v1/jobs/{id}`` (the jobs service on moto, as ``tests/jobstack.py``
builds it), ``GET /v1/models``, ``/health``, ``/ping``, ``/metrics``, unknown paths, and every
method on each. Inputs: JSON bodies (chat requests and job submissions that are valid, nearly
valid and not at all), raw bytes, truncated JSON, nesting up to 1,000 levels deep (bare and inside
otherwise valid requests), bodies of every size up to and over ``max_body_bytes`` (chunked or
not), and odd headers: ``Content-Type``, a ``Content-Length`` that does not match the body (or is
no number), ``Idempotency-Key``, ``Prefer``, ``Authorization``/``x-api-key`` in any case, good,
bad or missing, and header values with any latin-1 byte, as an HTTP/1.1 server passes them on.

Requests go to the ASGI app as a server would send them (``scope`` built here, the path
percent-decoded as uvicorn does), so headers reach the app exactly as drawn. Properties: no
answer is a 5xx (there is no failing upstream here, so a 5xx is always the router's own fault);
every 4xx is in the OpenAI error shape; a refused chat request made no upstream call and an
answered one made at least one (or was a cache hit); nothing but a chat, completions, Messages or
Responses request reaches an upstream's ``/chat/completions``, nothing but an embeddings request the edge's
``/embeddings``; every upstream call went to a configured endpoint with only
allow-listed fields; a 405 says ``Allow``. The tally (status counts per route, refused inputs,
the first failures) goes to ``tests/bench/results/fuzz_router.json`` and is printed.

``R1EDGE_FUZZ_EXAMPLES`` sets the number of examples in all (default 10,000).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import anyio
import httpx
import pytest
from fakes import add_key, chunk, completion, config, endpoint, memory_guard, sse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.protocol.validation import FORWARDED_FIELDS
from r1edge.routing.upstream import Upstream

EXAMPLES = int(os.environ.get("R1EDGE_FUZZ_EXAMPLES", "10000"))
#: The interpreter's recursion limit as the app runs with it. Hypothesis raises the (process-wide)
#: limit by thousands while a test runs, which hid every RecursionError from deep nesting: each
#: request is served under this limit instead.
RECURSION_LIMIT = sys.getrecursionlimit()
MAX_BODY = 8192
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "fuzz_router.json"
KEY = "r1e-fuzz-valid-key-0123456789"

settings.register_profile(
    "fuzz-router",
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples every run: CI can't be red by the draw
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# --- strategies ---

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
roles = st.one_of(
    st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "wizard", "", "USER"]),
    scalars,
)
parts = st.lists(
    st.fixed_dictionaries(
        {}, optional={"type": st.sampled_from(["text", "image_url", "input_audio"]) | scalars, "text": scalars}
    ),
    max_size=3,
)
contents = st.one_of(st.text(max_size=80), parts, scalars, json_values)
messages = st.one_of(
    st.fixed_dictionaries(
        {"role": roles, "content": contents},
        optional={"name": st.text(max_size=5), "tool_calls": json_values, "reasoning_content": st.text(max_size=5)},
    ),
    st.fixed_dictionaries({}, optional={"role": roles, "content": contents}),
    json_values,
)
numbers = st.one_of(
    st.none(),
    st.integers(min_value=-10, max_value=200_000),
    st.floats(allow_nan=False, allow_infinity=False, min_value=-5, max_value=5),
    st.booleans(),
    st.text(max_size=3),
)
OPTIONAL_FIELDS = {
    "model": st.sampled_from(["auto", "edge", "deepseek-r1", "gpt-9", "", "http://evil.example/v1"]) | scalars,
    "messages": st.lists(messages, max_size=5) | json_values,
    "max_tokens": numbers,
    "max_completion_tokens": numbers,
    "temperature": numbers,
    "top_p": numbers,
    "presence_penalty": numbers,
    "frequency_penalty": numbers,
    "n": numbers,
    "seed": numbers,
    "stream": st.booleans() | scalars,
    "stream_options": st.none() | st.just({"include_usage": True}) | json_values,
    "stop": st.none() | st.text(max_size=4) | st.lists(st.text(max_size=3), max_size=6) | json_values,
    "tools": st.none() | json_values,
    "response_format": st.none() | st.just({"type": "json_object"}) | json_values,
    "api_base": st.just("http://evil.example/v1"),
}
#: Chat requests from valid to nonsense: every field optional, each from valid and invalid values.
chat_bodies = st.builds(
    lambda fields, extra: {**extra, **fields},
    st.fixed_dictionaries({}, optional=OPTIONAL_FIELDS),
    st.dictionaries(st.text(min_size=1, max_size=10), json_values, max_size=2),
)
#: Mostly valid requests, so the "valid" side is exercised too.
good_bodies = st.fixed_dictionaries(
    {
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=60)}
            ),
            min_size=1,
            max_size=4,
        )
    },
    optional={
        "model": st.sampled_from(["auto", "edge", "deepseek-r1"]),
        "max_tokens": st.none() | st.integers(min_value=1, max_value=2000),
        "temperature": st.none() | st.floats(min_value=0, max_value=2),
        "stream": st.booleans(),
        "some_future_field": json_values,
    },
)


anthropic_blocks = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=40) | scalars}),
    st.fixed_dictionaries(
        {"type": st.just("tool_use"), "id": st.text(max_size=6) | scalars, "name": st.text(max_size=6) | scalars},
        optional={"input": json_values},
    ),
    st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": st.text(max_size=6) | scalars},
        optional={"content": st.text(max_size=20) | json_values, "is_error": scalars},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["image", "document", "thinking", "redacted_thinking", "server_tool_use"])},
        optional={"thinking": st.text(max_size=5), "source": json_values},
    ),
    json_values,
)
anthropic_messages = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", ""]) | scalars,
            "content": st.text(max_size=60) | st.lists(anthropic_blocks, max_size=3) | scalars,
        }
    ),
    json_values,
)
#: Anthropic Messages requests, valid to nonsense.
anthropic_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["auto", "edge", "deepseek-r1", "claude-sonnet-4-5", "nope", ""]) | scalars,
        "max_tokens": numbers,
        "messages": st.lists(anthropic_messages, max_size=4) | json_values,
        "system": st.text(max_size=20) | st.lists(anthropic_blocks, max_size=2) | json_values,
        "stream": st.booleans() | scalars,
        "stop_sequences": st.lists(st.text(max_size=3), max_size=6) | json_values,
        "temperature": numbers,
        "top_k": numbers,
        "tools": st.lists(
            st.fixed_dictionaries(
                {"name": st.text(max_size=6) | scalars, "input_schema": json_values},
                optional={"type": st.sampled_from(["custom", "web_search_20250305"]) | scalars},
            ),
            max_size=2,
        )
        | json_values,
        "tool_choice": st.fixed_dictionaries(
            {"type": st.sampled_from(["auto", "any", "tool", "none", "x"]) | scalars}, optional={"name": scalars}
        )
        | json_values,
        "thinking": st.fixed_dictionaries(
            {"type": st.sampled_from(["enabled", "disabled", "adaptive", "x"]) | scalars},
            optional={"budget_tokens": numbers | st.integers(min_value=1024, max_value=3000)},
        )
        | json_values,
        "metadata": json_values,
    },
)
good_anthropic_bodies = st.fixed_dictionaries(
    {
        "model": st.sampled_from(["auto", "edge", "deepseek-r1", "claude-sonnet-4-5"]),
        "max_tokens": st.integers(min_value=1, max_value=2000),
        "messages": st.lists(
            st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": st.text(max_size=60)}),
            min_size=1,
            max_size=4,
        ),
    },
    optional={"stream": st.booleans(), "system": st.text(max_size=30), "temperature": st.floats(0, 1)},
)


def encode(value: Any) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return b"{}"


raw_bodies = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    json_values.map(encode),
    chat_bodies.map(lambda b: encode(b)[: len(encode(b)) // 2]),  # truncated JSON
    st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),  # deep nesting
)
#: Bodies over the size cap (413 before any parsing).
big_bodies = st.integers(min_value=MAX_BODY + 1, max_value=3 * MAX_BODY).map(
    lambda n: b'{"messages": [{"role": "user", "content": "' + b"x" * n + b'"}]}'
)

header_names = st.sampled_from(
    ["authorization", "Authorization", "AUTHORIZATION", "x-api-key", "X-Api-Key", "X-API-KEY"]
)
credentials = st.one_of(
    st.just(("bearer", KEY)),
    st.just(("bearer-lower", KEY)),
    st.just(("raw", KEY)),
    st.tuples(st.just("bearer"), st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=40)),
    st.tuples(st.just("raw"), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30)),
    st.tuples(st.just("raw"), st.integers(min_value=100, max_value=9000).map(lambda n: "r1e-" + "k" * n)),
    st.just(("basic", "dXNlcjpwYXNz")),
    st.just(("none", "")),
)
ascii_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
other_headers = st.dictionaries(
    st.sampled_from(
        ["content-type", "x-request-id", "x-r1edge-allow-degrade", "accept", "x-amzn-lambda-context", "host", "x-foo"]
    ),
    ascii_values,
    max_size=3,
)


#: Nesting ``depth`` levels deep, up to 1,000 (Python's own recursion limit): bare, or inside an
#: otherwise valid request at one of the places a client controls.
NEST_PLACES = ["extra", "tools", "response_format", "stop", "logit_bias", "metadata", "content", "tool_calls"]
depths = st.one_of(st.integers(min_value=1, max_value=1000), st.sampled_from([100, 400, 500, 700, 900, 985, 999, 1000]))


def nested(depth: int, kind: str) -> str:
    return "[" * depth + "]" * depth if kind == "list" else '{"a":' * depth + "1" + "}" * depth


@st.composite
def nested_bodies(draw: st.DrawFn) -> bytes:
    inner = nested(draw(depths), draw(st.sampled_from(["list", "dict"])))
    place = draw(st.sampled_from([*NEST_PLACES, "bare"]))
    if place == "bare":
        return inner.encode()
    model = draw(st.sampled_from(["auto", "edge", "deepseek-r1"]))
    message = '{"role": "user", "content": "hi"}'
    if place == "content":
        message = '{"role": "user", "content": ' + inner + "}"
    elif place == "tool_calls":
        message = '{"role": "assistant", "content": "x", "tool_calls": ' + inner + "}"
        message = message + ', {"role": "user", "content": "hi"}'
    body = '{"model": "' + model + '", "temperature": 0, "messages": [' + message + "]"
    if place not in ("content", "tool_calls"):
        body += ', "' + (place if place != "extra" else "x_future") + '": ' + inner
    return (body + "}").encode()


@st.composite
def sized_bodies(draw: st.DrawFn) -> bytes:
    """A valid chat request of exactly ``size`` bytes, sizes clustered around the limit."""
    size = draw(
        st.one_of(
            st.integers(min_value=MAX_BODY - 8, max_value=MAX_BODY + 8),
            st.integers(min_value=60, max_value=3 * MAX_BODY),
        )
    )
    head = b'{"model": "edge", "messages": [{"role": "user", "content": "'
    tail = b'"}]}'
    return head + b"x" * max(0, size - len(head) - len(tail)) + tail


input_parts = st.lists(
    st.fixed_dictionaries(
        {}, optional={"type": st.sampled_from(["input_text", "output_text", "input_image"]) | scalars, "text": scalars}
    ),
    max_size=3,
)
input_items = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant", "system", "developer", "tool"]) | scalars},
        optional={"type": st.just("message") | scalars, "content": st.text(max_size=40) | input_parts | json_values},
    ),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["function_call", "function_call_output", "reasoning", "item_reference"])},
        optional={
            "call_id": st.text(max_size=5) | scalars,
            "name": st.text(max_size=5) | scalars,
            "arguments": st.text(max_size=10) | scalars,
            "output": st.text(max_size=10) | input_parts | scalars,
        },
    ),
    json_values,
)
RESPONSES_FIELDS = {
    "model": st.sampled_from(["auto", "edge", "deepseek-r1", "gpt-9"]) | scalars,
    "input": st.text(max_size=60) | st.lists(input_items, max_size=4) | json_values,
    "instructions": st.text(max_size=20) | scalars,
    "max_output_tokens": numbers,
    "temperature": numbers,
    "top_p": numbers,
    "stream": st.booleans() | scalars,
    "store": st.booleans() | scalars,
    "previous_response_id": st.none() | st.text(max_size=8),
    "background": st.booleans() | scalars,
    "reasoning": st.none() | st.just({"effort": "high"}) | json_values,
    "tools": st.none()
    | st.just([{"type": "function", "name": "f", "parameters": {"type": "object"}}])
    | st.just([{"type": "web_search"}])
    | json_values,
    "tool_choice": st.sampled_from(["auto", "none", "required"]) | json_values,
    "text": st.none() | st.just({"format": {"type": "json_object"}}) | json_values,
    "metadata": json_values,
}
#: Responses API requests (``POST /v1/responses``), valid to nonsense.
responses_bodies = st.one_of(
    st.fixed_dictionaries({}, optional=RESPONSES_FIELDS).map(encode),
    st.fixed_dictionaries(
        {"model": st.sampled_from(["auto", "edge", "deepseek-r1"]), "input": st.text(max_size=60)},
        optional={"stream": st.booleans(), "max_output_tokens": st.integers(1, 500), "store": st.just(False)},
    ).map(encode),
    raw_bodies,
    nested_bodies(),
)


def job_batches(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(inner, min_size=0, max_size=4).map(lambda rs: encode({"requests": rs})),
        json_values.map(lambda v: encode({"requests": v})),
    )


def chat_bodies_any() -> st.SearchStrategy[bytes]:
    return st.one_of(
        chat_bodies.map(encode),
        good_bodies.map(encode),
        good_bodies.map(encode),
        raw_bodies,
        big_bodies,
        nested_bodies(),
        sized_bodies(),
    )


#: Legacy completions requests from valid to nonsense (``prompt`` and the fields only it has).
completion_bodies = st.one_of(
    st.builds(
        lambda fields, prompt: {**fields, **prompt},
        st.fixed_dictionaries(
            {}, optional={k: v for k, v in OPTIONAL_FIELDS.items() if k not in ("messages", "tools", "response_format")}
        ),
        st.fixed_dictionaries(
            {},
            optional={
                "prompt": st.text(max_size=40) | st.lists(st.text(max_size=10), max_size=3) | json_values,
                "suffix": st.none() | st.text(max_size=3) | scalars,
                "echo": st.booleans() | scalars,
                "logprobs": st.none() | numbers,
                "best_of": st.none() | numbers,
            },
        ),
    ).map(encode),
    st.fixed_dictionaries(
        {"prompt": st.text(min_size=1, max_size=60)},
        optional={
            "model": st.sampled_from(["auto", "edge", "deepseek-r1"]),
            "max_tokens": st.integers(min_value=1, max_value=200),
            "stream": st.booleans(),
        },
    ).map(encode),
    raw_bodies,
    big_bodies,
)
#: Embeddings requests from valid to nonsense.
embedding_bodies = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "input": st.text(max_size=30) | st.lists(st.text(max_size=10), max_size=4) | json_values,
            "model": st.sampled_from(["edge", "auto", "deepseek-r1", "text-embedding-3-small"]) | scalars,
            "encoding_format": st.sampled_from(["float", "base64", "hex"]) | scalars,
            "dimensions": numbers,
        },
    ).map(encode),
    st.fixed_dictionaries({"input": st.lists(st.text(min_size=1, max_size=20), min_size=1, max_size=3)}).map(encode),
    st.integers(min_value=2040, max_value=2060).map(lambda n: encode({"input": ["a"] * n})),
    raw_bodies,
    big_bodies,
)

messages_bodies = st.one_of(
    anthropic_bodies.map(encode), good_anthropic_bodies.map(encode), good_anthropic_bodies.map(encode), raw_bodies
)
job_bodies = st.one_of(chat_bodies_any(), job_batches(good_bodies), job_batches(chat_bodies))

latin1 = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"), max_size=40)
odd_values = st.one_of(ascii_values, latin1.map(lambda t: t.encode("latin-1")), st.just(b""))
content_types = st.sampled_from(
    [
        b"application/json",
        b"application/json; charset=utf-8",
        b"application/JSON;charset=latin-1",
        b"text/plain",
        b"multipart/form-data; boundary=xyz",
        b"application/x-www-form-urlencoded",
        b"",
        b"\xff\xfe",
    ]
)
idempotency_keys = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=20),
    st.integers(min_value=250, max_value=300).map(lambda n: "k" * n),
    odd_values,
)
prefers = st.one_of(
    st.sampled_from(
        ["respond-async", "respond-async, wait=10", "RESPOND-ASYNC;x=1", "wait=abc", "return=minimal", ",,;=", ""]
    ),
    odd_values,
)


@st.composite
def content_lengths(draw: st.DrawFn, size: int) -> list[bytes]:
    """``Content-Length`` values, mostly lies: larger, smaller, no number, several."""
    value = draw(
        st.one_of(
            st.integers(min_value=0, max_value=2**70).map(str),
            st.sampled_from([str(size + 1), str(max(0, size - 1)), "0", str(MAX_BODY), str(MAX_BODY + 1)]),
            st.sampled_from(["-1", "1e3", " 12", "0x10", "abc", "", "1, 1", "\u00b2", "\u0661\u0662", "\uff11"]),
            odd_values,
        )
    )
    value = value if isinstance(value, bytes) else value.encode("latin-1", "replace")
    return [value] * draw(st.integers(min_value=1, max_value=2))


ODD_HEADERS = ["x-request-id", "cache-control", "accept", "x-forwarded-for", "x-r1edge-allow-degrade"]


@st.composite
def header_lists(draw: st.DrawFn, size: int) -> list[tuple[bytes, bytes]]:
    """Request headers as a server passes them: lower-case names, latin-1 bytes, repeats allowed."""
    headers: list[tuple[bytes, bytes]] = []
    style, value = draw(credentials) if draw(st.integers(0, 9)) < 4 else ("bearer", KEY)
    name = draw(header_names)
    if style != "none":
        if name.lower() == "authorization":
            prefix = {"bearer": "Bearer ", "bearer-lower": "bearer ", "raw": "Bearer ", "basic": "Basic "}[style]
            value = prefix + value
        headers.append((name.lower().encode(), value.encode("latin-1", "replace")))
    if draw(st.integers(0, 4)) == 0:  # a second Authorization, often not even ASCII
        second = draw(odd_values)
        headers.append((b"authorization", second if isinstance(second, bytes) else second.encode()))
    if draw(st.booleans()):
        headers.append((b"content-type", draw(content_types)))
    if draw(st.integers(0, 3)) == 0:
        headers += [(b"content-length", v) for v in draw(content_lengths(size))]
    for header, values in ((b"idempotency-key", idempotency_keys), (b"prefer", prefers)):
        if draw(st.integers(0, 3)) == 0:
            drawn = draw(values)
            headers.append((header, drawn if isinstance(drawn, bytes) else drawn.encode("latin-1", "replace")))
    for other, drawn in draw(other_headers).items():
        headers.append((other.encode(), drawn.encode()))
    for other in draw(st.lists(st.sampled_from(ODD_HEADERS), max_size=2)):
        drawn = draw(odd_values)
        headers.append((other.encode(), drawn if isinstance(drawn, bytes) else drawn.encode()))
    return headers


#: The routes drawn from (a route listed twice is drawn twice as often).
ROUTES = [
    "chat",
    "chat",
    "chat",
    "messages",
    "messages",
    "responses",
    "jobs_post",
    "jobs_post",
    "completions",
    "embeddings",
    "jobs_get",
    "models",
    "health",
    "ping",
    "metrics",
    "unknown",
]
ANY_METHOD = st.sampled_from(
    ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "CONNECT", "get", "FOO"]
)
unknown_paths = st.one_of(
    st.sampled_from(
        [
            "/",
            "/v1",
            "/v1/",
            "/v1/chat/completions/",
            "//v1/models",
            "/v1/jobs/",
            "/v1/jobs/job_x/extra",
            "/v1/completions",
            "/v1/embeddings",
            "/v1/configs/routing.json",
            "/v1/%2e%2e/health",
            "/../../etc/passwd",
            "/v1/models%00",
            "/%ff%fe",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=60).map(lambda t: "/" + t),
    st.integers(min_value=100, max_value=5000).map(lambda n: "/v1/" + "a" * n),
)
job_ids = st.one_of(
    st.just("known"),
    st.just("known"),
    st.text(alphabet="0123456789abcdef", min_size=0, max_size=32).map(lambda t: "job_" + t),
    st.text(
        alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="/?#"), min_size=1, max_size=40
    ),
    st.integers(min_value=1000, max_value=4000).map(lambda n: "job_" + "a" * n),  # over DynamoDB's 2048-byte key
    st.sampled_from(["job_%00", "job_%ff", "%2e%2e", "job_%2Fx"]),
)


@st.composite
def requests_(draw: st.DrawFn) -> tuple[str, str, bytes, list[tuple[bytes, bytes]], bool]:
    """(route label, method, raw path with query, body, headers, chunked)."""
    route = draw(st.sampled_from(ROUTES))
    body = b""
    if route == "chat":
        method, path, body = "POST", "/v1/chat/completions", draw(chat_bodies_any())
    elif route == "messages":
        method, path, body = "POST", "/v1/messages", draw(messages_bodies)
    elif route == "responses":
        method, path, body = "POST", "/v1/responses", draw(responses_bodies)
    elif route == "jobs_post":
        method, path, body = "POST", "/v1/jobs", draw(job_bodies)
    elif route == "completions":
        method, path, body = "POST", "/v1/completions", draw(completion_bodies)
    elif route == "embeddings":
        method, path, body = "POST", "/v1/embeddings", draw(embedding_bodies)
    elif route == "jobs_get":
        method, path = "GET", "/v1/jobs/" + draw(job_ids)
    elif route == "unknown":
        method, path = draw(ANY_METHOD), draw(unknown_paths)
    else:
        method, path = "GET", "/" + route if route != "models" else "/v1/models"
    if route != "unknown" and draw(st.integers(0, 5)) == 0:  # any method on a known path
        method = draw(ANY_METHOD)
        if method not in ("GET", "HEAD") and not body:
            body = draw(st.one_of(st.just(b""), raw_bodies, good_bodies.map(encode)))
    if draw(st.integers(0, 7)) == 0:
        path += "?" + draw(st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30))
    return route, method, path, body, draw(header_lists(len(body))), draw(st.booleans())


# --- the run ---


class CountingUpstream:
    """Answers every call with a valid completion (an SSE stream when asked), or ``[]`` models for
    a health probe, and checks what it got."""

    def __init__(self) -> None:
        self.calls = 0
        self.probes = 0
        self.problems: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path == "/v1/models":
            self.probes += 1
            return httpx.Response(200, json={"object": "list", "data": []})
        self.calls += 1
        body = json.loads(request.content)
        if request.url.host == "edge-a" and request.url.path == "/v1/embeddings":
            if set(body) - {"input", "model", "encoding_format", "dimensions"}:
                self.problems.append(f"embeddings fields: {sorted(body)}")
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]  # a string is one input
            data = [{"object": "embedding", "index": i, "embedding": [0.5]} for i, _ in enumerate(inputs)]
            return httpx.Response(200, json={"object": "list", "data": data, "model": "m", "usage": {}})
        if request.url.host not in ("edge-a", "r1-a") or request.url.path != "/v1/chat/completions":
            self.problems.append(f"unexpected URL {request.url}")
        extra = set(body) - FORWARDED_FIELDS
        if extra:
            self.problems.append(f"forwarded fields off the allow-list: {sorted(extra)}")
        if body.get("stream"):
            stream = sse(chunk("ok"), chunk("!", finish_reason="stop"))
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)
        return httpx.Response(200, json=completion("ok"))


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    error: str | None = None  # the exception the app let out, if any


async def serve(app: Any, method: str, target: str, headers: list[tuple[bytes, bytes]], chunks: list[bytes]) -> Answer:
    """One HTTP request through the ASGI app as uvicorn would pass it (ASGI HTTP scope, spec 2.4):
    the path percent-decoded (invalid UTF-8 replaced), the query as raw bytes, headers as given."""
    raw_path, _, query = target.encode("latin-1").partition(b"?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path.decode("ascii", "replace")),
        "raw_path": raw_path,
        "query_string": query,
        "root_path": "",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }
    incoming = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    finished = anyio.Event()
    answer = Answer(0, {}, b"")

    async def receive() -> dict[str, Any]:
        if incoming:
            return incoming.pop(0)
        await finished.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer.status = message["status"]
            answer.headers = {k.lower(): v for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            answer.body += message.get("body", b"")
            if not message.get("more_body"):
                finished.set()

    try:
        await app(scope, receive, send)
    except Exception as exc:  # noqa: BLE001 - Starlette re-raises after its 500: note where it came from
        frames = [f for f in traceback.extract_tb(exc.__traceback__) if "/r1edge/" in f.filename]
        where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
        answer.error = f"{type(exc).__name__} at {where}"
    finally:
        finished.set()
    return answer


@pytest.fixture
def quiet_logs():
    """INFO lines (one JSON line per request) cost more than the request here: WARNING and up only."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(("r1edge", "httpx", "botocore"))]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


@pytest.mark.fuzz
def test_fuzzed_requests_to_every_route_never_get_a_5xx(stack, capsys, quiet_logs):
    upstream = CountingUpstream()
    guard = memory_guard()
    add_key(guard, tenant="fuzz", rpm=10**9, tpm=10**12, key=KEY)
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), max_body_bytes=MAX_BODY)
    transport = Upstream(httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler)))
    app = create_app(cfg, transport, guard=guard, jobs=stack.service)
    by_route: dict[str, Counter[int]] = {}
    refused: set[str] = set()
    failures: list[str] = []
    known_jobs: list[str] = []
    kinds: Counter[str] = Counter()  # failures by status, exception and route
    started = time.perf_counter()

    with TestClient(app, raise_server_exceptions=False) as client:
        # one job to find by its id
        made = client.post(
            "/v1/jobs",
            json={"model": "edge", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert made.status_code == 202, made.text
        known_jobs.append(made.json()["id"])

        @settings(settings.get_profile("fuzz-router"))
        @given(requests_())
        def run(case: tuple[str, str, str, bytes, list[tuple[bytes, bytes]], bool]) -> None:
            route, method, target, body, headers, chunked = case
            target = target.replace("/v1/jobs/known", "/v1/jobs/" + known_jobs[0])
            chunks = [body[i : i + 1000] for i in range(0, len(body), 1000)] if chunked else [body]
            before = upstream.calls
            raised = sys.getrecursionlimit()
            sys.setrecursionlimit(RECURSION_LIMIT)
            try:
                answer = client.portal.call(serve, app, method, target, headers, chunks or [b""])
            finally:
                sys.setrecursionlimit(raised)
            made = upstream.calls - before
            label = f"{method} {route}"
            by_route.setdefault(label, Counter())[answer.status] += 1
            if answer.status >= 500 or answer.error:
                where = f" [{answer.error}]" if answer.error else ""
                failures.append(f"{answer.status}{where} {method} {target[:80]} {body[:160]!r} {headers[:6]}")
                kinds[f"{answer.status}{where} {method} {route}"] += 1
                return
            posted = route in ("chat", "completions", "embeddings", "messages", "responses") and method == "POST"
            if made and not posted:
                failures.append(f"{made} upstream calls for {method} {target[:80]}")
            if answer.status >= 400:
                if method != "HEAD" and route == "messages":  # Anthropic's error shape
                    assert set(json.loads(answer.body)) == {"type", "error"}, answer.body
                    assert set(json.loads(answer.body)["error"]) == {"type", "message"}, answer.body
                elif method != "HEAD":
                    error = json.loads(answer.body)["error"]
                    assert set(error) == {"message", "type", "param", "code"}, answer.body
                if answer.status == 405:
                    assert b"allow" in answer.headers, answer.headers
                if made:
                    failures.append(f"{made} upstream calls for refused input {body[:200]!r}")
                refused.add(hashlib.sha256(repr(case).encode()).hexdigest())
            elif posted:
                assert answer.status == 200, answer.status
                # an accepted request goes upstream, unless an identical one's answer is cached
                assert made >= 1 or answer.headers.get(b"x-cache") == b"HIT", answer.headers

        run()

    seconds = time.perf_counter() - started
    statuses: Counter[int] = sum(by_route.values(), Counter())
    tally = {
        "examples": sum(statuses.values()),
        "distinct_refused_inputs": len(refused),
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "status_counts_by_route": {
            label: {str(k): v for k, v in sorted(counts.items())} for label, counts in sorted(by_route.items())
        },
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "failure_kinds": dict(kinds.most_common()),
        "first_failures": failures[:20],
        "upstream_calls": upstream.calls,
        "health_probes": upstream.probes,
        "seconds": round(seconds, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(tally, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nfuzz_router: {json.dumps({k: v for k, v in tally.items() if k != 'status_counts_by_route'})}")
    assert upstream.problems == []
    assert failures == [], "\n".join(failures[:20])
    assert tally["server_errors"] == 0
    assert len(refused) >= EXAMPLES // 4  # the generators really produce bad input
    assert statuses[200] >= EXAMPLES // 10  # ... and valid input
    assert statuses[202] >= EXAMPLES // 1000  # ... jobs too
    assert {400, 401, 404, 405, 413} <= set(statuses)
