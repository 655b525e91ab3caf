"""Queue benchmark: jobs through the local stack's job pipeline while workers crash.

    python tests/bench/bench_queue.py [--jobs 5000] [--workers 2] [--crash-rate 0.1] [--concurrency 8]

The parts of ``make run`` that carry jobs, each its own process: a moto server (SQS, DynamoDB,
S3) with the queue, dead-letter queue, tables and bucket of ``run.create_local_aws_resources``
(visibility timeout shortened to ``--visibility`` seconds so a crashed worker's messages come
back quickly), the router (functions/router, uvicorn), ``--workers`` job workers (the worker
function's handler fed by infra/local/worker.py's loop), and a fast fake upstream
(tests/bench/fakeupstream.py, every answer with its own completion id).

Each job is a ``POST /v1/jobs`` with an ``Idempotency-Key``. A share ``--crash-rate`` of worker
runs (one run = one handler invocation on a batch of up to 10 messages) kills its process with
``os._exit`` at the batch's first result write, just before or just after it, while the batch's
other records are in flight; the benchmark starts a new worker each time, as Lambda would.

Reported: jobs/s (accepted → all finished), jobs lost (accepted but neither succeeded nor failed
at the end; must be 0), jobs with two results (a result write that took effect twice for one job,
or a stored result that is not the first one written, from the workers' log of the writes that
took effect, which misses a write that landed just as its process died; must be 0), dead-lettered messages, and
the latency from submit to ``succeeded`` (the job record's ``created_at`` → ``completed_at``),
p50/p99. Prints one table and writes tests/bench/results/queue.json. ``QUICK=1``: 500 jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "infra" / "local")]

from run import MOTO_ENV, child_env, create_local_aws_resources, free_port, uvicorn_argv, wait_ready  # noqa: E402

QUICK = os.environ.get("QUICK", "") not in ("", "0")
API_KEY = "bench-queue-key"


class Parts:
    """The processes started here; :meth:`stop` ends each of them."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []

    def start(self, argv: list[str], env: dict[str, str], **kwargs: object) -> subprocess.Popen:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def check_alive(self) -> None:
        pass

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# --- the crashing worker (run as: bench_queue.py --worker LOG SEED RATE) ---------------------


def crashing_worker(log_path: str, seed: int, crash_rate: float) -> int:
    """The local worker loop, with a share of runs ending in ``os._exit`` at a result write."""
    import boto3
    from worker import load_handler, poll_once

    from r1edge.jobs.store import JobStore

    rng = random.Random(seed)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    lock = threading.Lock()

    class Log:
        """One ``os.write`` per line on an ``O_APPEND`` descriptor, under a lock: result writes
        run in threads, and a line must be on disk before the process may die."""

        @staticmethod
        def write(line: str) -> None:
            with lock:
                os.write(fd, line.encode())

    log = Log()
    plan: dict[str, object] = {"crash_at": None, "calls": 0, "after": False}
    original = JobStore.succeed

    def succeed(self: JobStore, job_id: str, completion: dict) -> bool:
        index = plan["calls"]
        plan["calls"] = index + 1  # type: ignore[operator]
        crash = plan["crash_at"] == index
        if crash and not plan["after"]:
            log.write(json.dumps({"event": "crash", "when": "before_write", "job": job_id}) + "\n")
            os._exit(17)
        won = original(self, job_id, completion)
        if won:
            log.write(json.dumps({"event": "won", "job": job_id, "completion": completion["id"]}) + "\n")
        if crash:
            log.write(json.dumps({"event": "crash", "when": "after_write", "job": job_id}) + "\n")
            os._exit(17)
        return won

    JobStore.succeed = succeed  # type: ignore[method-assign]
    handler = load_handler()

    def run(event: dict, context: object) -> dict:
        records = event["Records"]
        crashing = rng.random() < crash_rate
        # the run dies at its first result write (the batch's other records are in flight too)
        plan.update(crash_at=0 if crashing else None, calls=0, after=rng.random() < 0.5)
        log.write(json.dumps({"event": "run", "records": len(records)}) + "\n")
        return handler(event, context)

    sqs = boto3.client("sqs")
    queue_url = os.environ["JOBS_QUEUE_URL"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    while True:
        poll_once(sqs, queue_url, arn, run)


# --- the benchmark ---------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float:
    if not values:
        return float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def submit_all(
    url: str, count: int, concurrency: int, per_request: int, window: int, finished: Callable[[], int]
) -> tuple[list[str], int]:
    """POST ``count`` jobs as ``{"requests": [...]}`` lists of ``per_request``, each with its own
    ``Idempotency-Key``, keeping at most ``window`` jobs submitted and not yet finished
    (``finished()`` counts them); returns the accepted job ids and the number of refusals."""
    ids: list[str] = []
    refused = 0
    lists: asyncio.Queue[int] = asyncio.Queue()
    for start in range(0, count, per_request):
        lists.put_nowait(start)
    headers = {"Authorization": f"Bearer {API_KEY}"}
    async with httpx.AsyncClient(timeout=120, headers=headers) as client:

        async def submitter() -> None:
            nonlocal refused
            while not lists.empty():
                start = lists.get_nowait()
                size = min(per_request, count - start)
                while len(ids) + size - finished() > window:  # noqa: ASYNC110 - another process writes the count
                    await asyncio.sleep(0.25)
                requests = [
                    {"model": "deepseek-r1", "messages": [{"role": "user", "content": f"job {i}"}], "max_tokens": 8}
                    for i in range(start, start + size)
                ]
                key = f"bench-{start}"
                for _ in range(10):  # the same key again after a refusal: never a second set of jobs
                    response = await client.post(
                        f"{url}/v1/jobs", json={"requests": requests}, headers={"Idempotency-Key": key}
                    )
                    if response.status_code == 202:
                        ids.extend(job["id"] for job in response.json()["data"])
                        break
                    refused += 1
                    await asyncio.sleep(0.5)

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
    return ids, refused


def scan_jobs(dynamodb: object, table: str) -> dict[str, dict]:
    items: dict[str, dict] = {}
    kwargs: dict[str, object] = {"TableName": table}
    while True:
        page = dynamodb.scan(**kwargs)  # type: ignore[attr-defined]
        for item in page["Items"]:
            plain = {k: next(iter(v.values())) for k, v in item.items()}
            items[plain["id"]] = plain
        if "LastEvaluatedKey" not in page:
            return items
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=500 if QUICK else 5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--crash-rate", type=float, default=0.1)
    parser.add_argument("--concurrency", type=int, default=2, help="submissions in flight")
    parser.add_argument("--per-request", type=int, default=25, help="jobs per POST /v1/jobs")
    parser.add_argument(
        "--window", type=int, default=100, help="most jobs submitted and not yet finished (moto's SQS slows with depth)"
    )
    parser.add_argument("--visibility", type=int, default=2, help="queue visibility timeout, seconds")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up waiting after this, seconds")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker", nargs=3, metavar=("LOG", "SEED", "RATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return crashing_worker(args.worker[0], int(args.worker[1]), float(args.worker[2]))

    import boto3

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # so the finally below stops every process started here

    signal.signal(signal.SIGTERM, on_signal)
    parts = Parts()
    workdir = tempfile.TemporaryDirectory(prefix="r1edge-bench-queue-")
    log_path = Path(workdir.name) / "workers.jsonl"
    try:
        moto_port = free_port()
        moto_url = f"http://127.0.0.1:{moto_port}"
        parts.start(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)],
            child_env(**MOTO_ENV),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_ready(parts, "moto", f"{moto_url}/moto-api/")  # type: ignore[arg-type]
        jobs_env = create_local_aws_resources(moto_url, visibility_timeout=args.visibility)
        upstream = parts.start(
            [sys.executable, str(ROOT / "tests" / "bench" / "fakeupstream.py"), "--unique-ids"],
            child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        urls = json.loads(upstream.stdout.readline())["urls"]  # type: ignore[union-attr]
        config = Path(workdir.name) / "routing.json"
        config.write_text(json.dumps({"endpoints": [{"name": "fake-r1", "url": urls[0], "tier": "cluster"}]}))
        env = child_env(
            **MOTO_ENV,
            **jobs_env,
            AWS_ENDPOINT_URL_SQS=moto_url,
            AWS_ENDPOINT_URL_DYNAMODB=moto_url,
            AWS_ENDPOINT_URL_S3=moto_url,
            R1EDGE_CONFIG=str(config),
            R1EDGE_API_KEY=API_KEY,
            # retries of jobs hit by the machine's load: seconds, like the short visibility timeout
            JOBS_BACKOFF_BASE="0.5",
            JOBS_BACKOFF_CAP=str(args.visibility * 2),
            POWERTOOLS_LOG_LEVEL="ERROR",
        )
        router_port = free_port()
        parts.start(uvicorn_argv("router", "127.0.0.1", router_port), env)
        wait_ready(parts, "router", f"http://127.0.0.1:{router_port}/ping")  # type: ignore[arg-type]

        workers: list[subprocess.Popen] = []
        starts = 0

        def start_worker() -> subprocess.Popen:
            nonlocal starts
            starts += 1
            argv = [
                sys.executable,
                __file__,
                "--worker",
                str(log_path),
                str(args.seed * 1000 + starts),
                str(args.crash_rate),
            ]
            return parts.start(argv, env)

        workers = [start_worker() for _ in range(args.workers)]
        dynamodb = boto3.client(
            "dynamodb",
            endpoint_url=moto_url,
            region_name=MOTO_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
        )
        sqs = boto3.client(
            "sqs",
            endpoint_url=moto_url,
            region_name=MOTO_ENV["AWS_DEFAULT_REGION"],
            aws_access_key_id=MOTO_ENV["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=MOTO_ENV["AWS_SECRET_ACCESS_KEY"],
        )

        started = time.time()
        submitted: dict[str, list] = {}

        async def submit_and_supervise() -> tuple[list[str], int]:
            task = asyncio.ensure_future(
                submit_all(
                    f"http://127.0.0.1:{router_port}",
                    args.jobs,
                    args.concurrency,
                    args.per_request,
                    args.window,
                    finished_jobs,
                )
            )
            while not task.done():
                supervise()
                await asyncio.sleep(0.2)
            return task.result()

        crashes = 0

        seen = {"count": 0, "changed": time.monotonic(), "scanned": 0}

        def finished_jobs() -> int:
            """Jobs finished so far: the workers' ``won`` lines, cheap to read; when they stop
            growing for 3 s, the jobs table itself (a crash can end a worker after another
            record's write landed and before its line was written)."""
            try:
                count = log_path.read_text().count('"event": "won"')
            except FileNotFoundError:
                count = 0
            now = time.monotonic()
            if count != seen["count"]:
                seen.update(count=count, changed=now)
            elif now - seen["changed"] > 3:
                done = scan_jobs(dynamodb, jobs_env["JOBS_TABLE"]).values()
                seen.update(scanned=sum(1 for j in done if j["status"] in ("succeeded", "failed")), changed=now)
            return max(count, seen["scanned"])

        def supervise() -> None:
            nonlocal crashes
            for i, proc in enumerate(workers):
                if proc.poll() is not None:
                    crashes += proc.returncode == 17
                    workers[i] = start_worker()

        ids, refused = asyncio.run(submit_and_supervise())
        submitted["ids"] = ids
        submit_seconds = time.time() - started
        deadline = time.time() + args.timeout
        jobs: dict[str, dict] = {}
        while time.time() < deadline:
            supervise()
            jobs = scan_jobs(dynamodb, jobs_env["JOBS_TABLE"])
            if all(jobs.get(j, {}).get("status") in ("succeeded", "failed") for j in ids):
                break
            time.sleep(1.0)
        finished = time.time()
        for proc in workers:
            proc.terminate()
        dlq_url = sqs.get_queue_url(QueueName="r1edge-jobs-dlq")["QueueUrl"]
        dead = int(
            sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
                "ApproximateNumberOfMessages"
            ]
        )
        events = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    finally:
        parts.stop()
        workdir.cleanup()

    won: dict[str, list[str]] = {}
    for event in events:
        if event["event"] == "won":
            won.setdefault(event["job"], []).append(event["completion"])
    runs = sum(1 for e in events if e["event"] == "run")
    crash_events = [e for e in events if e["event"] == "crash"]
    succeeded = [jobs[j] for j in ids if jobs.get(j, {}).get("status") == "succeeded"]
    failed = [j for j in ids if jobs.get(j, {}).get("status") == "failed"]
    lost = len(ids) - len(succeeded) - len(failed)
    two_results = sum(1 for j in ids if len(won.get(j, [])) > 1)
    for job in succeeded:
        stored = json.loads(job["response"])["id"] if "response" in job else None
        if won.get(job["id"]) and stored != won[job["id"]][0]:
            two_results += 1  # the stored result is not the first one written
    latencies = sorted(float(j["completed_at"]) - float(j["created_at"]) for j in succeeded)
    attempts = [float(jobs[j].get("attempts", 0)) for j in ids if j in jobs]
    result = {
        "jobs": args.jobs,
        "accepted": len(ids),
        "submit_refusals": refused,
        "succeeded": len(succeeded),
        "failed": len(failed),
        "lost": lost,
        "two_results": two_results,
        "dead_lettered": dead,
        "worker_runs": runs,
        "worker_crashes": len(crash_events),
        "crash_share": round(len(crash_events) / runs, 4) if runs else 0.0,
        "crashes_after_write": sum(1 for e in crash_events if e["when"] == "after_write"),
        "worker_restarts": crashes,
        "mean_attempts": round(statistics.fmean(attempts), 3) if attempts else 0.0,
        "seconds": round(finished - started, 2),
        "submit_seconds": round(submit_seconds, 2),
        "jobs_per_second": round(len(succeeded) / (finished - started), 1),
        "latency_p50_s": round(percentile(latencies, 50), 3),
        "latency_p99_s": round(percentile(latencies, 99), 3),
        "settings": {
            "workers": args.workers,
            "crash_rate": args.crash_rate,
            "visibility_timeout_s": args.visibility,
            "retry_backoff_s": [0.5, args.visibility * 2],
            "submit_concurrency": args.concurrency,
            "jobs_per_submission": args.per_request,
            "window": args.window,
            "batch_size": 10,
        },
    }
    print(
        f"\nqueue benchmark — {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"{args.workers} workers, {args.crash_rate:.0%} of worker runs crash, visibility timeout {args.visibility} s, "
        f"lists of {args.per_request} jobs per POST, at most {args.window} jobs outstanding\n"
    )
    print(
        "| jobs | jobs/s | lost | two results | dead-lettered | worker runs (crashed) | mean attempts "
        "| submit→succeeded p50 | p99 |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| {result['accepted']:,} | {result['jobs_per_second']} | {lost} | {two_results} | {dead} | "
        f"{runs} ({len(crash_events)}, {result['crash_share']:.1%}) | {result['mean_attempts']} | "
        f"{result['latency_p50_s']:.2f} s | {result['latency_p99_s']:.2f} s |"
    )
    out = ROOT / "tests" / "bench" / "results" / "queue.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    record = {
        "benchmark": "queue",
        "quick": QUICK,
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cores": os.cpu_count(), "python": platform.python_version()},
        **result,
    }
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"\nwrote {out.relative_to(ROOT)}")
    return 0 if lost == 0 and two_results == 0 and len(ids) == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
