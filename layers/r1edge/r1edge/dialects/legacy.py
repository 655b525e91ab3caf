"""OpenAI's legacy Completions API and the Embeddings API on the router.

``POST /v1/completions`` (OpenAI API reference, "Completions (Legacy)"): the prompt becomes one
user message of a chat request, answered by the one chat pipeline — through the model's chat
template, since every tier behind r1edge is a chat model — and the chat answer is written back as
a ``text_completion`` object, or ``text_completion`` chunks then ``data: [DONE]`` when streamed.
Refused with a 400 naming the field, before any upstream call: a prompt that is not one string
(several prompts, token arrays), ``suffix`` (no fill-in-the-middle), ``echo: true``, ``logprobs``,
``best_of`` other than 1. ``max_tokens`` defaults to 16 (the API reference's default). Reasoning
text (``reasoning_content``) has no place in a text completion and is left out.

``POST /v1/embeddings`` (OpenAI API reference, "Embeddings"): checked
(:func:`r1edge.protocol.embeddings.validate_embeddings_request`), charged like a chat request
with no completion, and forwarded to the edge tier's ``{url}/embeddings`` (the edge server
embeds with its GGUF model), endpoints tried in priority order until one answers. Relayed as
JSON with ``x-r1edge-route: edge`` and ``x-r1edge-upstream``. Not done for embeddings: the
response cache, the breaker and health accounting, retries on one endpoint with backoff.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from r1edge.access import charging
from r1edge.dialects.chatstream import chat_events
from r1edge.dialects.pipeline import pipeline_of
from r1edge.headers import CONTENT_TYPE, X_R1EDGE_ROUTE, X_R1EDGE_UPSTREAM, X_REQUEST_ID
from r1edge.protocol import web
from r1edge.protocol.embeddings import validate_embeddings_request
from r1edge.protocol.errors import InvalidRequest, ModelNotFound, UpstreamError
from r1edge.protocol.sse import DONE, SSE_HEADERS, sse_data, truncated_event
from r1edge.protocol.validation import parse_json_body, validate_chat_request
from r1edge.routing.attempts import upstream_request_id
from r1edge.routing.config import Endpoint
from r1edge.routing.upstream import read_limited

#: ``max_tokens`` when a completions request sets none (OpenAI API reference, Completions: "Defaults to 16").
DEFAULT_MAX_TOKENS = 16
#: Request fields of a completions request that mean the same in a chat request and pass on as they are.
CHAT_FIELDS = (
    "model",
    "max_tokens",
    "temperature",
    "top_p",
    "n",
    "stop",
    "stream",
    "stream_options",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
)
#: A text completion's ``finish_reason`` values (OpenAI SDK, ``CompletionChoice``); any other
#: chat reason (``tool_calls``, ``function_call``) becomes ``stop``.
FINISH_REASONS = frozenset({"stop", "length", "content_filter"})
#: Seconds between ``: keep-alive`` comments while a stream sends no text (reasoning tokens).
KEEP_ALIVE_SECONDS = 5.0
#: Model names an embeddings request may name: the edge tier answers them all.
EMBEDDING_MODELS = frozenset({"auto", "edge"})
#: Upstream statuses that are the client's fault: relayed at once, no other endpoint tried.
CLIENT_STATUSES = frozenset({400, 413, 422})


def chat_body(body: Any) -> dict[str, Any]:
    """A completions request body as the chat request that answers it.

    Returns:
        ``{"messages": [{"role": "user", "content": prompt}], "max_tokens": 16, ...}`` with the
        fields of :data:`CHAT_FIELDS` that were sent.

    Raises:
        InvalidRequest: the body is not an object; ``prompt`` missing, or not a string or an
            array of one string; ``suffix`` set (not ``null`` or ``""``); ``echo`` not ``false``;
            ``logprobs`` set; ``best_of`` other than 1.
    """
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    prompt = body.get("prompt")
    if prompt is None:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt", code="missing_required_parameter")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        several = isinstance(prompt, list) and len(prompt) > 1 and all(isinstance(p, str) for p in prompt)
        raise InvalidRequest(
            "'prompt' must be a string or an array of one string: send one request per prompt."
            if several
            else "'prompt' must be a string or an array of one string (token arrays are not supported).",
            param="prompt",
            code="unsupported_value" if several else "invalid_type",
        )
    if body.get("suffix") not in (None, ""):
        raise InvalidRequest(
            "'suffix' is not supported: the models behind this endpoint are chat models without fill-in-the-middle.",
            param="suffix",
            code="unsupported_parameter",
        )
    if body.get("echo") not in (None, False):
        raise InvalidRequest("'echo' is not supported; it must be false.", param="echo", code="unsupported_parameter")
    if body.get("logprobs") is not None:
        raise InvalidRequest("'logprobs' is not supported.", param="logprobs", code="unsupported_parameter")
    if body.get("best_of") not in (None, 1):
        raise InvalidRequest(
            "'best_of' is not supported; it must be 1 (use 'n' for several completions).",
            param="best_of",
            code="unsupported_parameter",
        )
    chat = {name: body[name] for name in CHAT_FIELDS if body.get(name) is not None}
    chat.setdefault("max_tokens", DEFAULT_MAX_TOKENS)
    chat["messages"] = [{"role": "user", "content": prompt}]
    return chat


def _finish(reason: Any) -> str | None:
    if reason is None:
        return None
    return reason if reason in FINISH_REASONS else "stop"


def _id(chat_id: Any) -> str:
    text = str(chat_id or "")
    return "cmpl-" + text.removeprefix("chatcmpl-") if text else "cmpl-r1edge"


def text_completion(completion: dict[str, Any]) -> dict[str, Any]:
    """A chat completion as a ``text_completion`` object (OpenAI API reference, "The completion
    object"): ``{"id", "object": "text_completion", "created", "model", "choices": [{"text",
    "index", "logprobs": null, "finish_reason"}], "usage"}``; each choice's text is its message's
    ``content`` (reasoning left out)."""
    choices = []
    for i, choice in enumerate(completion.get("choices") or []):
        message = choice.get("message") or {}
        choices.append(
            {
                "text": message.get("content") or "",
                "index": choice.get("index", i),
                "logprobs": None,
                "finish_reason": _finish(choice.get("finish_reason")) or "stop",
            }
        )
    out = {
        "id": _id(completion.get("id")),
        "object": "text_completion",
        "created": completion.get("created") or int(time.time()),
        "model": completion.get("model") or "",
        "choices": choices,
    }
    if completion.get("system_fingerprint"):
        out["system_fingerprint"] = completion["system_fingerprint"]
    if completion.get("usage") is not None:
        out["usage"] = completion["usage"]
    return out


def text_chunk(chunk: dict[str, Any]) -> dict[str, Any] | None:
    """A chat completion chunk as a ``text_completion`` chunk (the same shape as the object,
    ``finish_reason`` ``null`` until the last), or ``None`` when it carries nothing to say (a role
    delta, reasoning text). A usage chunk (``choices: []``, ``stream_options.include_usage``)
    stays one."""
    choices = []
    for i, choice in enumerate(chunk.get("choices") or []):
        delta = choice.get("delta") or {}
        text = delta.get("content")
        reason = _finish(choice.get("finish_reason"))
        if (isinstance(text, str) and text) or reason is not None:
            choices.append(
                {
                    "text": text if isinstance(text, str) else "",
                    "index": choice.get("index", i),
                    "logprobs": None,
                    "finish_reason": reason,
                }
            )
    if not choices and chunk.get("usage") is None:
        return None
    out = {
        "id": _id(chunk.get("id")),
        "object": "text_completion",
        "created": chunk.get("created") or int(time.time()),
        "model": chunk.get("model") or "",
        "choices": choices,
    }
    if chunk.get("usage") is not None:
        out["usage"] = chunk["usage"]
    return out


async def text_stream(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """SSE chat completion chunks (the pipeline's stream) as SSE ``text_completion`` chunks,
    ending in ``data: [DONE]`` exactly when the chat stream did. The chat stream's error event
    (``upstream_stream_truncated``) is passed on as it is, with no ``[DONE]``; a chat stream that
    stops with neither gets one. ``: keep-alive`` comments are passed on, and sent every
    :data:`KEEP_ALIVE_SECONDS` while only reasoning arrives."""
    quiet_since = time.monotonic()
    async with chat_events(chunks) as events:
        async for event in events:
            if event.kind == "keep-alive":
                yield b": keep-alive\n\n"
                quiet_since = time.monotonic()
            elif event.kind == "done":
                yield DONE
                return
            elif event.kind == "error":
                yield sse_data(event.data or {})
                return
            elif event.kind == "chunk":
                out = text_chunk(event.data or {})
                if out is not None:
                    yield sse_data(out)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since >= KEEP_ALIVE_SECONDS:
                    yield b": keep-alive\n\n"
                    quiet_since = time.monotonic()
            elif event.kind == "ended":
                yield truncated_event("The answer ended before it was complete.")
            # "unreadable": the pipeline never sends one; skipped, as before


async def completions(request: Request) -> Response:
    """``POST /v1/completions``: see the module docstring."""
    pipeline = pipeline_of(request)
    gateway = await pipeline.gateway(request)
    raw = await web.read_body(request, gateway.config.max_body_bytes)
    body = chat_body(parse_json_body(raw, gateway.config.max_json_depth))
    try:
        chat = validate_chat_request(body)
    except InvalidRequest as exc:
        if exc.param and exc.param.startswith("messages"):  # the prompt, as the chat rules saw it
            exc.param = "prompt"
            exc.message = exc.message.replace("messages[0].content", "prompt")
        raise
    routed = await pipeline.answer(request, chat)
    if isinstance(routed, Response):
        return routed
    if routed.stream is not None:
        return web.ClosingStreamingResponse(
            text_stream(routed.stream), media_type="text/event-stream", headers={**routed.headers(), **SSE_HEADERS}
        )
    return JSONResponse(text_completion(routed.completion), headers=routed.headers())


async def _post_embeddings(upstream: Any, endpoint: Endpoint, body: dict[str, Any]) -> tuple[int, bytes]:
    """POST ``{url}/embeddings`` with the headers the upstream client sends for chat (request id
    as a UUID, as :func:`~r1edge.routing.attempts.upstream_request_id` makes it for chat,
    the endpoint's auth, SigV4 when configured); the status and the body (at most the endpoint's
    ``max_response_bytes``)."""
    url = f"{endpoint.url}/embeddings"
    content = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
    headers = {
        X_REQUEST_ID: upstream_request_id(web.request_id()),
        "accept": "application/json",
        CONTENT_TYPE: "application/json",
    }
    headers.update(upstream.auth_headers(endpoint))
    if endpoint.auth.type == "sigv4":
        headers.update(upstream.sigv4_headers(endpoint, "POST", url, content))
    sent = upstream.client.build_request(
        "POST", url, content=content, headers=headers, timeout=upstream.timeout(endpoint)
    )
    response = await upstream.client.send(sent, stream=True)
    try:
        return response.status_code, await read_limited(response, endpoint.max_response_bytes)
    finally:
        await response.aclose()


async def embeddings(request: Request) -> Response:
    """``POST /v1/embeddings``: see the module docstring. ``model`` may be absent, ``auto`` or
    ``edge`` (``deepseek-r1``: 400, the cluster does not embed; any other name: 404)."""
    gateway = await pipeline_of(request).gateway(request)
    raw = await web.read_body(request, gateway.config.max_body_bytes)
    ask = validate_embeddings_request(parse_json_body(raw, gateway.config.max_json_depth))
    model = ask.model or "edge"
    if model not in EMBEDDING_MODELS:
        if model in gateway.config.served_models():
            raise InvalidRequest(
                f"Embeddings are served by the edge model only; use model 'edge', not {model!r}.",
                param="model",
                code="unsupported_value",
            )
        raise ModelNotFound(f"The model {model[:200]!r} does not exist or you do not have access to it.", param="model")
    endpoints = gateway.config.tier_endpoints("edge")
    if not endpoints:
        raise ModelNotFound(
            "Embeddings are served by the edge tier, and no edge endpoint is configured.", param="model"
        )
    messages = [{"role": "user", "content": text} for text in ask.inputs]
    await charging.admit_chat(request, messages, 0, gateway.config.classifier)
    failures = []
    for endpoint in endpoints:
        body: dict[str, Any] = {
            "input": ask.inputs,
            "model": endpoint.upstream_model,
            "encoding_format": ask.encoding_format,
        }
        if ask.dimensions is not None:
            body["dimensions"] = ask.dimensions
        try:
            status, content = await _post_embeddings(gateway.upstream, endpoint, body)
        except (httpx.HTTPError, ValueError, UpstreamError) as exc:
            failures.append(f"{endpoint.name}: {type(exc).__name__}")
            continue
        route = {X_R1EDGE_ROUTE: "edge", X_R1EDGE_UPSTREAM: endpoint.name}
        if status in CLIENT_STATUSES:  # the client's: relayed with the edge's own message
            try:
                error = json.loads(content)
            except ValueError:
                error = None
            if isinstance(error, dict) and isinstance(error.get("error"), dict):
                return JSONResponse(error, status_code=status, headers=route)
            raise InvalidRequest(f"The edge refused the request (HTTP {status}).", param="input")
        if status != 200:
            failures.append(f"{endpoint.name}: HTTP {status}")
            continue
        try:
            answer = json.loads(content)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("data"), list):
            failures.append(f"{endpoint.name}: not an embeddings answer")
            continue
        return Response(content, media_type="application/json", headers=route)
    raise UpstreamError("No edge endpoint answered the embeddings request (" + "; ".join(failures) + ").")


def routes() -> list[Route]:
    """``POST /v1/completions`` and ``POST /v1/embeddings``."""
    return [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
    ]
