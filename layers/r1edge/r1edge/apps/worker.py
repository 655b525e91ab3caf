"""The worker's runtime: one :class:`~r1edge.jobs.runner.JobRunner` per process, with the routing core
(:class:`~r1edge.routing.gateway.Gateway`) built from ``R1EDGE_CONFIG`` and the job settings from the
environment (:data:`r1edge.jobs.settings.ENV`), and the record handler that Powertools'
``AsyncBatchProcessor`` calls for each SQS record (functions/worker/app.py).

Records of one batch run concurrently (they wait on upstreams), each with the invocation's time
left minus ``JOBS_DEADLINE_MARGIN`` as its deadline. The HTTP client's connections belong to an
event loop: Lambda keeps one loop per container (Powertools reuses it), while outside Lambda each
batch runs in a fresh loop, so the transport is rebuilt when the loop changes.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from r1edge.jobs.runner import JobRunner, Outcome
from r1edge.jobs.settings import JobSettings
from r1edge.observe import metrics
from r1edge.routing.config import config_from_env
from r1edge.routing.gateway import Gateway
from r1edge.routing.upstream import Upstream

#: Time left assumed when no Lambda context is given (seconds): the worker function's timeout.
DEFAULT_TIME_LEFT = 900.0


class LoopBoundGateway:
    """A :class:`Gateway` whose HTTP transport is rebuilt when the running event loop changes;
    breaker and latency state carry over."""

    def __init__(self, gateway: Gateway, upstream_factory: Callable[[], Upstream] = Upstream) -> None:
        self.gateway = gateway
        self.upstream_factory = upstream_factory
        self._loop: asyncio.AbstractEventLoop | None = None

    async def complete(self, *args: Any, **kwargs: Any) -> Any:
        """:meth:`Gateway.complete` on a transport of the running loop. The first call's loop
        adopts the transport the gateway was built with (it holds no connection yet); when the
        loop changes, a new one is made and the one it replaces is closed
        (:meth:`Upstream.aclose`), so its pool and sockets are released."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            old = self.gateway.upstream
            self.gateway.upstream = self.upstream_factory()
            self._loop = loop
            await old.aclose()
        return await self.gateway.complete(*args, **kwargs)


@cache
def runner_from_env() -> JobRunner:
    """The process's runner (built once): settings from :data:`r1edge.jobs.settings.ENV`, routing config
    from ``R1EDGE_CONFIG``.

    Raises:
        ConfigError: ``R1EDGE_CONFIG`` is missing or invalid.
        ValueError: ``JOBS_QUEUE_URL``/``JOBS_TABLE`` unset, or a numeric variable malformed.
    """
    return build_runner(os.environ)


def build_runner(environ: Mapping[str, str], upstream_factory: Callable[[], Upstream] = Upstream) -> JobRunner:
    """A runner from an environment (see :func:`runner_from_env`)."""
    settings = JobSettings.from_env(environ)
    if settings is None:
        raise ValueError("the worker needs JOBS_QUEUE_URL and JOBS_TABLE")
    config = config_from_env(dict(environ))
    # One recorder for the gateway's metrics (retries, fallbacks, breakers, tokens) and the job
    # outcomes, flushed once per batch by :func:`report_queue_depth`.
    recorder = metrics.default("worker")
    gateway = Gateway(config, upstream_factory(), recorder=recorder)
    return JobRunner(settings, LoopBoundGateway(gateway, upstream_factory), recorder=recorder)


def time_left(lambda_context: Any, clock: Callable[[], float] = time.time) -> float:
    """Seconds left in this invocation (``get_remaining_time_in_millis``), or
    :data:`DEFAULT_TIME_LEFT` without a Lambda context."""
    remaining = getattr(lambda_context, "get_remaining_time_in_millis", None)
    return remaining() / 1000.0 if callable(remaining) else DEFAULT_TIME_LEFT


async def handle_record(runner: JobRunner, record: SQSRecord, lambda_context: Any = None) -> Outcome:
    """Run one SQS record's job; raising marks the record as a partial batch failure (Powertools
    then lists it in ``batchItemFailures``). See :meth:`JobRunner.run`."""
    receive_count = int(record.attributes.approximate_receive_count or 1)
    return await runner.run(record.body, record.receipt_handle, receive_count, time_left(lambda_context))


def report_queue_depth(runner: JobRunner) -> None:
    """Record the queue's depth (``r1edge_queue_depth``, EMF ``QueueDepth``) and flush the
    batch's metrics as EMF; called once per batch, after its records."""
    depth = runner.queue.depth()
    if depth is not None:
        runner.recorder.queue_depth(depth)
    runner.recorder.flush()


# The worker function's handler (functions/worker/app.py). Its imports stay here, beside it, so
# this section is one addition at the end of the module.
from aws_lambda_powertools import Logger  # noqa: E402
from aws_lambda_powertools.utilities.batch import (  # noqa: E402
    AsyncBatchProcessor,
    EventType,
    async_process_partial_response,
)

logger = Logger(service="r1edge-worker")
# A batch whose every record failed is still a normal answer listing them all (not an error).
processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


@logger.inject_lambda_context
def lambda_handler(
    event: dict[str, Any], context: Any, runner: Callable[[], JobRunner] = runner_from_env
) -> dict[str, Any]:
    """Run an SQS batch: Powertools' ``AsyncBatchProcessor`` runs its records concurrently
    through :func:`handle_record`, then :func:`report_queue_depth` records the queue's depth and
    flushes the batch's metrics as EMF (also when the batch failed).

    Args:
        event: the SQS event (``Records``).
        context: the Lambda context (its time left bounds each record's deadline).
        runner: ``() -> JobRunner``, called per record and once after the batch (default
            :func:`runner_from_env`; the function passes its own, so tests can replace it).

    Returns:
        ``{"batchItemFailures": [{"itemIdentifier": message id}, ...]}``: the records whose job
        must run again (or whose message is not a job), so SQS keeps those messages and deletes
        the others (``ReportBatchItemFailures``).
    """

    async def record_handler(record: SQSRecord, lambda_context: Any = None) -> Outcome:
        return await handle_record(runner(), record, lambda_context)

    try:
        return async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    finally:
        report_queue_depth(runner())  # job outcomes and queue depth, flushed as EMF
