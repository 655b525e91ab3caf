"""Queued jobs: ``POST /v1/jobs`` (and ``Prefer: respond-async``) onto SQS, a DynamoDB job table,
S3 for large bodies and results, and the worker's runner with its retry policy.

A job is one chat completion request: the router records it ``queued`` and sends a message; the
worker (functions/worker) takes the message, runs the request through
:class:`~r1edge.routing.gateway.Gateway` and writes the result with a conditional write, so a
message delivered twice never produces a second, different result.

Modules (each imports only those listed before it):

- :mod:`~r1edge.jobs.settings`: :class:`~r1edge.jobs.settings.JobSettings` from the environment
  (:data:`~r1edge.jobs.settings.ENV`), job statuses, job ids.
- :mod:`~r1edge.jobs.store`: :class:`~r1edge.jobs.store.JobStore`, the DynamoDB jobs table
  (conditional writes, TTL) and S3 for large results.
- :mod:`~r1edge.jobs.queue`: :class:`~r1edge.jobs.queue.JobQueue`, SQS with large request
  bodies offloaded to S3.
- :mod:`~r1edge.jobs.view`: :func:`~r1edge.jobs.view.job_view`, the API object of a job.
- :mod:`~r1edge.jobs.service`: :class:`~r1edge.jobs.service.JobService`, submission
  (validation, ``max_tokens`` cap, idempotency keys) and reads: the router side.
- :mod:`~r1edge.jobs.runner`: :class:`~r1edge.jobs.runner.JobRunner`, one SQS record's job and
  the retry policy: the worker side.
- :mod:`~r1edge.jobs.api`: the routes (``POST /v1/jobs``, ``GET /v1/jobs/{id}``,
  ``Prefer: respond-async``).

Entry points: :class:`~r1edge.jobs.service.JobService` (submission and reads),
:class:`~r1edge.jobs.runner.JobRunner` (one SQS record), :func:`~r1edge.jobs.api.routes` and
:func:`~r1edge.jobs.api.service_from_env` (the router's wiring).
"""
