"""Access: API keys, per-key rate limits (GCRA in DynamoDB), usage records, the auth middleware
and the key CLI (``python -m r1edge.access.keys``).

- :mod:`~r1edge.access.keys`, :mod:`~r1edge.access.ratelimit`, :mod:`~r1edge.access.usage` — the
  three stores and their rules (DynamoDB through :class:`r1edge.aws.ddb.Table`).
- :mod:`~r1edge.access.guard` — :class:`~r1edge.access.guard.Guard`, wired from the environment.
- :mod:`~r1edge.access.context` — the per-request :class:`~r1edge.access.context.AccessContext`.
- :mod:`~r1edge.access.charging` — token charging by the handlers, settling after the answer.
- :mod:`~r1edge.access.metering` — usage and text of an answer as it goes out.
- :mod:`~r1edge.access.middleware` — :class:`~r1edge.access.middleware.ApiKeyMiddleware`.

Entry point: :class:`~r1edge.access.guard.Guard` (built from the environment by the wiring).
"""
