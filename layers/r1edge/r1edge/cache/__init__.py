"""The response cache: exact-match answers for deterministic requests, L1 on disk, L2 in DynamoDB,
with coalescing of identical requests in flight.

Entry point: :meth:`ResponseCache.complete <r1edge.cache.response.ResponseCache.complete>`, which
wraps the gateway. Imports :mod:`r1edge.routing` (config types), :mod:`r1edge.aws` and
:mod:`r1edge.protocol`.
"""
