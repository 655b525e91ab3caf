"""The API view of a job: the object ``GET /v1/jobs/{id}`` and ``POST /v1/jobs`` answer, built
from a job item of :class:`r1edge.jobs.store.JobStore` (times as integer epoch seconds, as OpenAI
shows them).
"""

from __future__ import annotations

import json
from typing import Any

from r1edge.jobs.settings import FAILED, SUCCEEDED, TERMINAL


def job_view(job: dict[str, Any]) -> dict[str, Any]:
    """The API object of a job item: ``{"id", "object": "job", "status", "model", "attempts",
    "created_at", "started_at", "completed_at", "response", "error", "last_error"}`` (times as
    integer epoch seconds or ``null``; ``response`` is the chat completion, ``error`` an OpenAI
    error object ``{"message", "type", "param", "code"}``)."""

    def when(name: str) -> int | None:
        value = job.get(name)
        return int(value) if value is not None else None

    def loads(name: str) -> Any:
        value = job.get(name)
        return json.loads(value) if isinstance(value, str) else None

    return {
        "id": job["id"],
        "object": "job",
        "status": job["status"],
        "model": job.get("model"),
        "attempts": int(job.get("attempts") or 0),
        "created_at": when("created_at"),
        "started_at": when("started_at"),
        "completed_at": when("completed_at"),
        "response": loads("response") if job["status"] == SUCCEEDED else None,
        "error": loads("error") if job["status"] == FAILED else None,
        "last_error": loads("last_error") if job["status"] not in TERMINAL else None,
    }
