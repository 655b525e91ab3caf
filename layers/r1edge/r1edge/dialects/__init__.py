"""Dialects: the other APIs clients speak, each an adapter around the one chat pipeline.

A dialect module translates its request into an OpenAI chat completion request, hands it to the
router's :class:`~r1edge.dialects.pipeline.ChatPipeline` (keys and limits, the response cache, the
gateway with its routing, cascade and retries — all unchanged), and translates the answer (a chat
completion or its SSE chunks) back into its own shapes, errors included. Each module exposes
``routes() -> list[Route]``, whose handlers reach the pipeline through
:func:`~r1edge.dialects.pipeline.pipeline_of`; :mod:`r1edge.apps.router` mounts them.

- :mod:`~r1edge.dialects.pipeline` — the port: what a dialect may ask of the router.
- :mod:`~r1edge.dialects.legacy` — OpenAI's legacy ``/v1/completions`` (through the chat pipeline)
  and ``/v1/embeddings`` (forwarded to the edge tier).
- :mod:`~r1edge.dialects.anthropic` — Anthropic's Messages API: ``POST /v1/messages`` and
  ``POST /v1/messages/count_tokens``.
- :mod:`~r1edge.dialects.responses` — ``POST /v1/responses``, the OpenAI Responses API (stateless).

Sits beside :mod:`r1edge.jobs` (one layer below the wiring); imports the layers below it.
"""
