"""The router's jobs API: ``POST /v1/jobs``, ``GET /v1/jobs/{id}``, and ``Prefer: respond-async``
on ``/v1/chat/completions`` (RFC 7240, section 4.1).

The service (:class:`~r1edge.jobs.service.JobService`) is ``app.state.jobs``: built from the environment
at startup when ``JOBS_QUEUE_URL`` and ``JOBS_TABLE`` are set, else ``None`` (the routes then
answer 404). Its calls block on DynamoDB/SQS/S3 (and Powertools Idempotency is synchronous), so
they run in a worker thread.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from r1edge.access import charging
from r1edge.headers import IDEMPOTENCY_KEY, LOCATION, PREFER, PREFERENCE_APPLIED, X_R1EDGE_ROUTE
from r1edge.jobs.service import JobsDisabled, JobService, parse_submission
from r1edge.jobs.settings import JobSettings
from r1edge.protocol import web
from r1edge.protocol.errors import ModelNotFound, quote
from r1edge.protocol.validation import parse_json_body


def service_from_env(environ: Mapping[str, str] | None = None) -> JobService | None:
    """A :class:`JobService` when the environment configures jobs (:data:`r1edge.jobs.settings.ENV`),
    else ``None``."""
    settings = JobSettings.from_env(os.environ if environ is None else environ)
    return JobService(settings) if settings is not None else None


def _service(request: Request) -> JobService:
    service: JobService | None = getattr(request.app.state, "jobs", None)
    if service is None:
        raise JobsDisabled("Jobs are not enabled here: set JOBS_QUEUE_URL and JOBS_TABLE.")
    return service


def job_location(request: Request, job_id: str) -> str:
    """The ``Location`` of a job: ``/v1/jobs/{id}`` (a path, as RFC 9110 section 10.2.2 allows)."""
    return f"/v1/jobs/{job_id}"


def accepted(request: Request, result: dict[str, Any], extra: dict[str, str] | None = None) -> JSONResponse:
    """202 with the job (``Location`` set) or the list of jobs."""
    headers = dict(extra or {})
    if result.get("object") == "job":
        headers[LOCATION] = job_location(request, result["id"])
    return JSONResponse(result, status_code=202, headers=headers)


async def create_jobs(request: Request) -> Response:
    service = _service(request)
    limit = request.app.state.gateway.config.max_body_bytes
    config = request.app.state.gateway.config
    body = parse_json_body(await web.read_body(request, limit), config.max_json_depth)
    requests, _ = parse_submission(body, service.settings.max_tokens)  # a 400 before any charge
    served = config.served_models()
    for i, chat in enumerate(requests):
        if chat.get("model") not in served:  # as /v1/chat/completions answers: 404, not a failed job
            raise ModelNotFound(
                f"The model {quote(chat.get('model'))} does not exist. Use one of: {', '.join(served)}.",
                param="model" if len(requests) == 1 and "requests" not in body else f"requests[{i}].model",
            )
    await charging.admit_jobs(request, requests, config.classifier)
    key = request.headers.get(IDEMPOTENCY_KEY)
    tenant = web.tenant(request)
    result = await anyio.to_thread.run_sync(lambda: service.submit(tenant, body, web.request_id(), key))
    return accepted(request, result)


async def read_job(request: Request) -> Response:
    service = _service(request)
    job_id = request.path_params["job_id"]
    tenant = web.tenant(request)
    return JSONResponse(await anyio.to_thread.run_sync(lambda: service.get(tenant, job_id)))


def routes() -> list[Route]:
    """``POST /v1/jobs`` and ``GET /v1/jobs/{job_id}``."""
    return [
        Route("/v1/jobs", create_jobs, methods=["POST"]),
        Route("/v1/jobs/{job_id}", read_job, methods=["GET"]),
    ]


def prefers_async(request: Request) -> bool:
    """Whether the request carries ``Prefer: respond-async`` (RFC 7240; preferences are
    case-insensitive tokens, several per header, comma-separated, possibly with parameters)."""
    for header in request.headers.getlist(PREFER):
        for preference in header.split(","):
            if preference.split(";", 1)[0].split("=", 1)[0].strip().lower() == "respond-async":
                return True
    return False


async def respond_async(request: Request, body: dict[str, Any]) -> Response | None:
    """Queue a chat request the gateway could not take now (503/429), when the client prefers
    ``respond-async`` and jobs are enabled: 202 with the job, ``Location`` and
    ``Preference-Applied: respond-async`` (RFC 7240, section 3). ``None`` when it does not apply
    (the caller then raises the original error). A streamed request is queued as a non-streamed
    job."""
    service: JobService | None = getattr(request.app.state, "jobs", None)
    if service is None or not prefers_async(request):
        return None
    job_body = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
    charging.keep_charge(request)  # the tokens admitted for the chat request now pay for its job
    tenant = web.tenant(request)
    key = request.headers.get(IDEMPOTENCY_KEY)  # a client's retry finds the job its first try queued
    result = await anyio.to_thread.run_sync(lambda: service.submit(tenant, job_body, web.request_id(), key))
    return accepted(request, result, {PREFERENCE_APPLIED: "respond-async", X_R1EDGE_ROUTE: "queue"})
