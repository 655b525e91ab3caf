"""Queued jobs: ``POST /v1/jobs`` (and ``Prefer: respond-async``) onto SQS, a DynamoDB job table,
S3 for large bodies and results, and the worker's runner with its retry policy.

Entry points: :class:`~r1edge.jobs.service.JobService` (submission and reads),
:class:`~r1edge.jobs.service.JobRunner` (one SQS record), :mod:`~r1edge.jobs.api` (the routes).
"""
