"""Observability: metrics (CloudWatch EMF and Prometheus), the active health prober and the
health table's view that the router reads.

Entry points: :class:`~r1edge.observe.metrics.Recorder`, :class:`~r1edge.observe.health.Prober`,
:class:`~r1edge.observe.health.HealthView`. Sits above :mod:`r1edge.routing` (the prober reads the
routing config); the gateway reaches metrics and health only through :mod:`r1edge.routing.ports`.
"""
