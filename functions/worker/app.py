"""Worker function: runs queued jobs (SQS event source, ``ReportBatchItemFailures``); answers
``{"batchItemFailures": [...]}`` so SQS keeps only the messages whose job must run again. All
logic is in :mod:`r1edge.apps.worker` (:func:`~r1edge.apps.worker.lambda_handler`); environment:
``R1EDGE_CONFIG`` and the ``JOBS_*`` variables (:data:`r1edge.jobs.settings.ENV`).
"""

from typing import Any

from r1edge.apps import worker
from r1edge.apps.worker import runner_from_env  # the process's job runner (tests replace it)


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return worker.lambda_handler(event, context, runner=runner_from_env)
