"""Worker function: runs queued jobs (SQS event source, ``ReportBatchItemFailures``).

Powertools' ``AsyncBatchProcessor`` runs the records of a batch concurrently through
:func:`r1edge.apps.worker.handle_record` (all logic in :mod:`r1edge.jobs.runner`) and answers
``{"batchItemFailures": [...]}``: a record whose job must run again (or whose message is not a
job) is listed, so SQS keeps that message and deletes the others. Environment: ``R1EDGE_CONFIG``
and the ``JOBS_*`` variables (:data:`r1edge.jobs.settings.ENV`).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import AsyncBatchProcessor, EventType, async_process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from r1edge.apps.worker import handle_record, report_queue_depth, runner_from_env

logger = Logger(service="r1edge-worker")
# A batch whose every record failed is still a normal answer listing them all (not an error).
processor = AsyncBatchProcessor(event_type=EventType.SQS, raise_on_entire_batch_failure=False)


async def record_handler(record: SQSRecord, lambda_context: Any = None) -> Any:
    return await handle_record(runner_from_env(), record, lambda_context)


@logger.inject_lambda_context
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    try:
        return async_process_partial_response(
            event=event, record_handler=record_handler, processor=processor, context=context
        )
    finally:
        report_queue_depth(runner_from_env())  # job outcomes and queue depth, flushed as EMF
