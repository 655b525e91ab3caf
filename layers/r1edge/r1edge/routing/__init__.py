"""The routing core: from a validated chat request to an answer from the right tier.

- :mod:`~r1edge.routing.config` — the routing config schema (pydantic) and its loading.
- :mod:`~r1edge.routing.classifier` — ``model: auto``: simple or heavy.
- :mod:`~r1edge.routing.gateway` — :class:`Gateway`: the tier decision, the edge→cluster
  cascade, the one retry loop, streaming.
- :mod:`~r1edge.routing.upstream` — the HTTP transport to the endpoints (httpx).
- :mod:`~r1edge.routing.reload` — re-reading an S3 routing config.
- :mod:`~r1edge.routing.ports` — what the gateway needs from above (metrics, health), as
  ``Protocol`` classes.

Entry point: :meth:`Gateway.complete <r1edge.routing.gateway.Gateway.complete>`. Imports
:mod:`r1edge.resilience`, :mod:`r1edge.aws` and :mod:`r1edge.protocol`; never metrics or the
health table (those come in through the ports).
"""
