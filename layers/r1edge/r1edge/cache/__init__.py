"""The response cache: exact-match answers for deterministic requests, L1 on disk, L2 in DynamoDB,
with coalescing of identical requests in flight.

- :mod:`~r1edge.cache.key` — the cache key, its canonical JSON, and what is cached (policy).
- :mod:`~r1edge.cache.stores` — :class:`~r1edge.cache.stores.DiskStore` (L1) and
  :class:`~r1edge.cache.stores.DynamoStore` (L2, through :class:`r1edge.aws.ddb.Table`).
- :mod:`~r1edge.cache.coalesce` — identical requests in flight share one upstream call.
- :mod:`~r1edge.cache.replay` — a stream assembled into a completion, a completion replayed as SSE.
- :mod:`~r1edge.cache.ports` — the gateway the cache wraps, as a Protocol.
- :mod:`~r1edge.cache.response` — :class:`~r1edge.cache.response.ResponseCache`, which ties them.

Entry point: :meth:`ResponseCache.complete <r1edge.cache.response.ResponseCache.complete>`, which
wraps the gateway (never imported: :mod:`~r1edge.cache.ports`). Imports :mod:`r1edge.routing.config`
(config types), :mod:`r1edge.aws` and :mod:`r1edge.protocol`.
"""
