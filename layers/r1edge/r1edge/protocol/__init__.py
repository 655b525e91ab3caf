"""The OpenAI wire protocol, shared by every app: what a request may be and how answers look.

- :mod:`~r1edge.protocol.errors` — the OpenAI error shape and one exception class per HTTP status.
- :mod:`~r1edge.protocol.validation` — chat request validation (:func:`validate_chat_request`).
- :mod:`~r1edge.protocol.embeddings` — embeddings request validation and base64 vectors.
- :mod:`~r1edge.protocol.sse` — the one SSE/JSON codec: :class:`SSEDecoder` for every reader of
  a stream, ``sse_data``/``DONE`` for every writer, upstream chunk and completion parsing.
- :mod:`~r1edge.protocol.reasoning` — splitting ``<think>`` text into ``reasoning_content``.
- :mod:`~r1edge.protocol.tokens` — token estimates from text (no tokenizer).
- :mod:`~r1edge.protocol.web` — Starlette glue: request ids, tenants, error responses.
- :mod:`~r1edge.protocol.server` — the HTTP/1.1 server protocol (uvicorn's h11 one) with time
  limits on clients: idle connections, request heads.

Entry points: :func:`~r1edge.protocol.validation.validate_chat_request`,
:class:`~r1edge.protocol.errors.OpenAIError`. Imports nothing else from r1edge but the constants
modules (:mod:`r1edge.env`, :mod:`r1edge.headers`).
"""
