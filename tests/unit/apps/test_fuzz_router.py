"""Property-based fuzzing of the router (hypothesis): generated JSON bodies (chat requests that are
valid, nearly valid and not at all), raw bytes, oversized and chunked bodies, and random API-key
and other headers, sent to the router app with API keys on and a counting fake upstream.

Properties: no answer is ever a 5xx; an answer that refuses the input (4xx) made no upstream
call; an answer of 200 made at least one; every upstream call went to a configured endpoint with
only allow-listed fields. The run counts the distinct inputs that were refused and writes the
tally to ``tests/bench/results/fuzz_router.json`` (and prints it), for the closing note.

``R1EDGE_FUZZ_EXAMPLES`` sets the number of examples (default 2000, under a minute on one loaded core).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from fakes import add_key, chunk, completion, config, endpoint, memory_guard, sse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from r1edge.apps.router import create_app
from r1edge.protocol.validation import FORWARDED_FIELDS
from r1edge.routing.upstream import Upstream

EXAMPLES = int(os.environ.get("R1EDGE_FUZZ_EXAMPLES", "2000"))
MAX_BODY = 8192
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "fuzz_router.json"
KEY = "r1e-fuzz-valid-key-0123456789"

settings.register_profile(
    "fuzz-router",
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
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
    st.tuples(st.just("raw"), st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)),
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


@st.composite
def cases(draw: st.DrawFn) -> tuple[bytes, dict[str, str], bool]:
    kind = draw(st.sampled_from(["chat", "chat", "good", "good", "raw", "big"]))
    if kind in ("raw", "big"):
        body = draw(raw_bodies if kind == "raw" else big_bodies)
    else:
        body = encode(draw(good_bodies if kind == "good" else chat_bodies))
    headers = draw(other_headers)
    style, value = draw(credentials)
    name = draw(header_names)
    if style != "none":
        if name.lower() == "authorization":
            prefix = {"bearer": "Bearer ", "bearer-lower": "bearer ", "raw": "Bearer ", "basic": "Basic "}[style]
            headers[name] = prefix + value
        else:
            headers[name] = value
    chunked = draw(st.booleans())
    return body, headers, chunked


# --- the run ---


class CountingUpstream:
    """Answers every call with a valid completion (an SSE stream when asked) and checks what it got."""

    def __init__(self) -> None:
        self.calls = 0
        self.problems: list[str] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if request.url.host not in ("edge-a", "r1-a") or request.url.path != "/v1/chat/completions":
            self.problems.append(f"unexpected URL {request.url}")
        body = json.loads(request.content)
        extra = set(body) - FORWARDED_FIELDS
        if extra:
            self.problems.append(f"forwarded fields off the allow-list: {sorted(extra)}")
        if body.get("stream"):
            stream = sse(chunk("ok"), chunk("!", finish_reason="stop"))
            return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=stream)
        return httpx.Response(200, json=completion("ok"))


@pytest.fixture
def quiet_logs():
    """INFO lines (one JSON line per request) cost more than the request here: WARNING and up only."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(("r1edge", "httpx"))]
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    yield
    for logger, level in zip(loggers, levels, strict=True):
        logger.setLevel(level)


def test_fuzzed_requests_never_get_a_5xx_and_invalid_ones_never_reach_an_upstream(capsys, quiet_logs):
    upstream = CountingUpstream()
    guard = memory_guard()
    add_key(guard, tenant="fuzz", rpm=10**9, tpm=10**12, key=KEY)
    cfg = config(endpoint("edge-a", "edge"), endpoint("r1-a", "cluster"), max_body_bytes=MAX_BODY)
    app = create_app(cfg, Upstream(httpx.AsyncClient(transport=httpx.MockTransport(upstream.handler))), guard=guard)
    statuses: Counter[int] = Counter()
    refused: set[str] = set()
    failures: list[str] = []
    started = time.perf_counter()

    with TestClient(app, raise_server_exceptions=False) as client:

        @settings(settings.get_profile("fuzz-router"))
        @given(cases())
        def run(case: tuple[bytes, dict[str, str], bool]) -> None:
            body, headers, chunked = case
            before = upstream.calls
            content: Any = iter([body[i : i + 1000] for i in range(0, len(body), 1000)] or [b""]) if chunked else body
            response = client.post("/v1/chat/completions", content=content, headers=headers)
            text = response.text  # a stream is read to its end
            made = upstream.calls - before
            statuses[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{response.status_code} for {body[:200]!r} {headers}: {text[:300]}")
            assert response.status_code < 500, text
            if response.status_code >= 400:
                error = response.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert made == 0, f"{made} upstream calls for refused input {body[:200]!r}"
                digest = hashlib.sha256(body + json.dumps(sorted(headers.items())).encode()).hexdigest()
                refused.add(digest)
            else:
                assert response.status_code == 200
                # an accepted request goes upstream, unless an identical one's answer is cached
                assert made >= 1 or response.headers.get("x-cache") == "HIT", response.headers

        run()

    seconds = time.perf_counter() - started
    tally = {
        "examples": sum(statuses.values()),
        "distinct_refused_inputs": len(refused),
        "answered_200": statuses[200],
        "status_counts": {str(k): v for k, v in sorted(statuses.items())},
        "server_errors": sum(v for k, v in statuses.items() if k >= 500),
        "upstream_calls": upstream.calls,
        "seconds": round(seconds, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(tally, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nfuzz_router: {json.dumps(tally)}")
    assert upstream.problems == []
    assert failures == []
    assert tally["server_errors"] == 0
    assert len(refused) >= EXAMPLES // 4  # the generators really produce bad input
    assert statuses[200] >= EXAMPLES // 10  # ... and valid input
    assert {400, 401, 413} <= set(statuses)
