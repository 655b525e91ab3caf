"""Resilience policy, pure: no I/O, no clock, no unseeded randomness (all passed in).

- :mod:`~r1edge.resilience.retry` — which outcomes retry, exponential backoff with full jitter,
  the one ``Retry-After`` parser (RFC 9110 §10.2.3).
- :mod:`~r1edge.resilience.breaker` — the circuit breaker and its settings.
- :mod:`~r1edge.resilience.balancer` — endpoint state and selection within a tier (:class:`Pool`).
- :mod:`~r1edge.resilience.load` — engine load from vLLM/SGLang ``/metrics`` text.

Entry point: :meth:`~r1edge.resilience.balancer.Pool.choose`. Imports only :mod:`r1edge.protocol`
and the constants modules; import-linter forbids httpx, boto3 and starlette here.
"""
