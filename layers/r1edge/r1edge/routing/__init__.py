"""The routing core: from a validated chat request to an answer from the right tier.

- :mod:`~r1edge.routing.config` — the routing config schema (pydantic) and its loading; the one
  map of public model names to tiers (``MODEL_TIERS``).
- :mod:`~r1edge.routing.classifier` — ``model: auto``: simple or heavy.
- :mod:`~r1edge.routing.gateway` — :class:`Gateway`, the facade: decide, answer, fall back.
- :mod:`~r1edge.routing.decide` — the tier decision, and which fallbacks between tiers a
  request may take.
- :mod:`~r1edge.routing.cascade` — the edge→cluster cascade of ``auto``, and the cluster→edge
  degrade.
- :mod:`~r1edge.routing.answer` — one tier's answer: a JSON completion, or a stream.
- :mod:`~r1edge.routing.attempts` — the one retry loop: attempt, failover, backoff, giving up.
- :mod:`~r1edge.routing.streaming` — streams: holding for content, keep-alive, relaying,
  truncation.
- :mod:`~r1edge.routing.upstream_errors` — an upstream's 400/413/422 body as the client's error.
- :mod:`~r1edge.routing.routed` — :class:`~r1edge.routing.routed.Routed` (the answer) and its
  ``x-r1edge-*`` response headers.
- :mod:`~r1edge.routing.signals` — the health table and ``/metrics`` load merged into the
  endpoints' states.
- :mod:`~r1edge.routing.upstream` — the HTTP transport to the endpoints (httpx).
- :mod:`~r1edge.routing.reload` — re-reading an S3 routing config.
- :mod:`~r1edge.routing.ports` — what the gateway needs from above (metrics, health), as
  ``Protocol`` classes.

Within the package, imports run one way (import-linter's acyclic_siblings): gateway → decide,
cascade, signals; cascade → answer → streaming → attempts → routed, upstream_errors; below them
all: config, classifier, ports, upstream.

Entry point: :meth:`Gateway.complete <r1edge.routing.gateway.Gateway.complete>`. Imports
:mod:`r1edge.resilience`, :mod:`r1edge.aws` and :mod:`r1edge.protocol`; never metrics or the
health table (those come in through the ports).
"""
