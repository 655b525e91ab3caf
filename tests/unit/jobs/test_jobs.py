"""Queued jobs end to end on moto: ``POST /v1/jobs`` on the router, the SQS queue and its
dead-letter queue, the worker function's handler fed by the local worker loop, the jobs table.
SQS's clock is the test's (``jobstack.SqsClock``): visibility timeouts pass without waiting."""

from __future__ import annotations

import json

import httpx
import pytest
from fakes import completion, json_reply
from jobstack import chat, tenant_app
from starlette.testclient import TestClient

from r1edge.apps.router import create_app


@pytest.fixture
def client(stack):
    app = create_app(stack.gateway.config, stack.upstream.upstream(), jobs=stack.service, **stack.fake_clock.options())
    with TestClient(tenant_app(app), raise_server_exceptions=False) as c:
        yield c


def test_submit_then_the_worker_answers_it(stack, client):
    stack.upstream.script["r1"] = [json_reply(completion("forty-two"))]
    submitted = client.post("/v1/jobs", json=chat("what is six times seven?"))
    assert submitted.status_code == 202
    job = submitted.json()
    assert job["object"] == "job"
    assert job["status"] == "queued"
    assert job["id"].startswith("job_")
    assert submitted.headers["location"] == f"/v1/jobs/{job['id']}"
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "queued"

    assert stack.poll() == 1
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded"
    assert done["attempts"] == 1
    assert done["response"]["choices"][0]["message"]["content"] == "forty-two"
    assert done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["completed_at"]
    # the message is gone (deleted after the handler reported no failure), nothing dead-lettered
    assert stack.messages(stack.queue_url) == []
    assert stack.messages(stack.dlq_url) == []
    [sent] = stack.upstream.bodies()
    assert sent["messages"][0]["content"] == "what is six times seven?"
    assert sent["max_tokens"] == stack.settings.max_tokens  # absent: the per-job cap is sent
    assert stack.job_item(job["id"])["expires_at"]  # TTL attribute


def test_a_list_of_requests_becomes_a_list_of_jobs(stack, client):
    stack.upstream.script["r1"] = [json_reply(completion("a"))]
    response = client.post("/v1/jobs", json={"requests": [chat("one"), chat("two"), chat("three")]})
    assert response.status_code == 202
    body = response.json()
    assert body["object"] == "list"
    assert [j["status"] for j in body["data"]] == ["queued"] * 3
    assert len({j["id"] for j in body["data"]}) == 3
    assert "location" not in response.headers
    stack.drain()
    for job in body["data"]:
        assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "succeeded"
    assert sorted(b["messages"][0]["content"] for b in stack.upstream.bodies()) == ["one", "three", "two"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"requests": [chat("ok"), {"model": "deepseek-r1"}]}, "requests[1].messages", "missing_required_parameter"),
        ({"requests": [chat("x")] * 101}, "requests", "too_many_requests"),
        ({"requests": []}, "requests", "invalid_type"),
        (chat("x", stream=True), "stream", "invalid_value"),
        (chat("x", max_tokens=40_000), "max_tokens", "invalid_value"),
        (chat("x", max_completion_tokens=40_000), "max_completion_tokens", "invalid_value"),
    ],
)
def test_bad_submissions_are_openai_shaped_400s_and_queue_nothing(stack, client, body, param, code):
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert stack.messages(stack.queue_url) == []


def test_unknown_and_malformed_job_ids_are_404(client):
    for job_id in ("job_0123456789abcdef0123456789abcdef", "nope"):
        response = client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "job_not_found"


def test_without_a_queue_the_jobs_routes_say_so(monkeypatch):
    monkeypatch.delenv("JOBS_QUEUE_URL", raising=False)
    from fakes import FakeUpstream, config, endpoint

    app = create_app(config(endpoint("r1", "cluster")), FakeUpstream().upstream())
    with TestClient(app) as c:
        response = c.post("/v1/jobs", json=chat())
    assert response.status_code == 404
    assert "JOBS_QUEUE_URL" in response.json()["error"]["message"]


def test_an_upstream_4xx_fails_the_job_at_once_and_deletes_the_message(stack, client):
    error = {
        "error": {"message": "This model's maximum context length is 8192 tokens.", "type": "invalid_request_error"}
    }
    stack.upstream.script["r1"] = [json_reply(error, status=400)]
    job = client.post("/v1/jobs", json=chat()).json()
    assert stack.poll() == 1
    failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    assert failed["response"] is None
    assert failed["error"]["message"] == "This model's maximum context length is 8192 tokens."
    assert failed["error"]["type"] == "invalid_request_error"
    assert len(stack.upstream.calls) == 1
    assert stack.messages(stack.queue_url) == []
    assert stack.messages(stack.dlq_url) == []


def test_a_retryable_failure_keeps_the_message_and_stretches_its_visibility(stack, client):
    stack.upstream.script["r1"] = [json_reply({"error": {"message": "busy"}}, status=503), json_reply(completion("ok"))]
    job = client.post("/v1/jobs", json=chat()).json()
    assert stack.poll() == 1
    record = client.get(f"/v1/jobs/{job['id']}").json()
    assert record["status"] == "queued"
    assert record["attempts"] == 1
    assert "503" in record["last_error"]["message"] or "busy" in record["last_error"]["message"]
    # full jitter: the first retry waits up to backoff_base (2 s), rounded up to whole seconds
    assert stack.poll() == 0  # still invisible at once ...
    stack.clock.advance(stack.settings.backoff_base + 0.01)
    assert stack.poll() == 1  # ... and back within the backoff
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert (done["status"], done["attempts"], done["last_error"]) == ("succeeded", 2, None)


def test_a_job_failing_five_times_goes_to_the_dlq_and_is_failed_with_the_last_error(stack, client):
    busy = json_reply({"error": {"message": "engine busy"}}, status=503)
    stack.upstream.script["r1"] = [
        busy,
        busy,
        busy,
        busy,
        json_reply({"error": {"message": "bad gateway"}}, status=502),
    ]
    job = client.post("/v1/jobs", json=chat()).json()
    for receive in range(1, 6):
        assert stack.poll() == 1, f"receive {receive}"
        status = client.get(f"/v1/jobs/{job['id']}").json()["status"]
        assert status == ("failed" if receive == 5 else "queued")
        stack.clock.advance(stack.settings.backoff_cap + 1)
    assert stack.poll() == 0  # the sixth receive finds it over maxReceiveCount: SQS moves it
    assert stack.messages(stack.queue_url) == []
    [dead] = stack.messages(stack.dlq_url)
    assert json.loads(dead["body"])["job_id"] == job["id"]
    failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["attempts"] == 5
    assert failed["error"]["type"] == "server_error"
    assert "HTTP 502" in failed["error"]["message"]  # the last attempt's error, not an earlier one
    assert len(stack.upstream.calls) == 5


def test_a_poison_message_reaches_the_dlq_instead_of_looping(stack):
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody="this is not JSON")
    stack.sqs.send_message(QueueUrl=stack.queue_url, MessageBody=json.dumps({"job": "no id"}))
    for _ in range(10):
        stack.poll()
        stack.clock.advance(0.01)  # made visible again at once: no visibility timeout to wait out
    assert stack.messages(stack.queue_url) == []
    assert sorted(m["body"] for m in stack.messages(stack.dlq_url)) == ["this is not JSON", '{"job": "no id"}']
    assert stack.upstream.calls == []


def test_a_worker_that_dies_mid_job_leaves_the_message_which_completes_exactly_once(stack, client):
    class WorkerDied(BaseException):
        """The process ends mid-job (not an exception the batch processor can catch)."""

    def die(request: httpx.Request) -> httpx.Response:
        raise WorkerDied

    stack.upstream.script["r1"] = [die, json_reply(completion("second time lucky"))]
    job = client.post("/v1/jobs", json=chat()).json()
    with pytest.raises(WorkerDied):
        stack.poll()
    running = client.get(f"/v1/jobs/{job['id']}").json()
    assert (running["status"], running["attempts"]) == ("running", 1)
    assert stack.poll() == 0  # in flight: invisible until the visibility timeout passes
    stack.clock.advance(60.01)
    assert stack.poll() == 1
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert (done["status"], done["attempts"]) == ("succeeded", 2)
    assert done["response"]["choices"][0]["message"]["content"] == "second time lucky"
    assert stack.messages(stack.queue_url) == []
    # a stray redelivery (SQS is at-least-once) of the same message changes nothing
    stack.sqs.send_message(
        QueueUrl=stack.queue_url,
        MessageBody=json.dumps({"job_id": job["id"], "tenant": "anonymous", "request": chat()}),
    )
    assert stack.poll() == 1
    again = client.get(f"/v1/jobs/{job['id']}").json()
    assert again["response"] == done["response"]
    assert again["completed_at"] == done["completed_at"]
    assert len(stack.upstream.calls) == 2


def test_the_first_result_recorded_is_the_only_one(stack):
    job = stack.service.submit("t1", chat(), "req-1")
    assert stack.runner.store.start(job["id"], "t1")
    assert stack.runner.store.succeed(job["id"], completion("first")) is True
    assert stack.runner.store.succeed(job["id"], completion("second")) is False
    assert stack.runner.store.fail(job["id"], {"message": "late failure"}) is False
    stored = stack.service.get("t1", job["id"])
    assert stored["response"]["choices"][0]["message"]["content"] == "first"
    assert stored["status"] == "succeeded"
    # a big second result lost the race too, and its S3 object was removed
    assert stack.runner.store.succeed(job["id"], completion("x" * 400_000)) is False
    assert stack.s3.list_objects_v2(Bucket=stack.settings.bucket).get("KeyCount", 0) == 0


def test_an_oversized_body_travels_through_s3_and_a_large_result_is_stored_there(stack, client):
    long_prompt = "word " * 60_000  # 300,000 bytes: over the 262,144-byte message limit
    stack.upstream.script["r1"] = [json_reply(completion("y" * 350_000))]
    job = client.post("/v1/jobs", json=chat(long_prompt)).json()
    [message] = stack.messages(stack.queue_url)
    pointer = json.loads(message["body"])
    assert "request" not in pointer
    assert pointer["request_s3"] == f"requests/{job['id']}.json"
    assert len(message["body"]) < 200
    stack.poll()
    [sent] = stack.upstream.bodies()
    assert sent["messages"][0]["content"] == long_prompt
    done = client.get(f"/v1/jobs/{job['id']}").json()
    assert done["status"] == "succeeded"
    assert done["response"]["choices"][0]["message"]["content"] == "y" * 350_000
    item = stack.job_item(job["id"])
    assert "response" not in item
    assert item["response_s3"].startswith(f"results/{job['id']}/")


def test_prefer_respond_async_queues_a_request_the_cluster_cannot_take(stack, client):
    stack.upstream.script["r1"] = [json_reply({"error": {"message": "busy"}}, status=503, headers={"Retry-After": "3"})]
    plain = client.post("/v1/chat/completions", json=chat())
    assert plain.status_code == 503  # no preference: the usual answer
    assert stack.messages(stack.queue_url) == []

    queued = client.post("/v1/chat/completions", json=chat(stream=True), headers={"Prefer": "wait=10, respond-async"})
    assert queued.status_code == 202
    assert queued.headers["preference-applied"] == "respond-async"
    assert queued.headers["x-r1edge-route"] == "queue"
    job = queued.json()
    assert job["status"] == "queued"
    assert queued.headers["location"] == f"/v1/jobs/{job['id']}"
    [message] = stack.messages(stack.queue_url)
    assert "stream" not in json.loads(message["body"])["request"]  # answered whole, later

    stack.upstream.script["r1"] = [json_reply(completion("later"))]
    stack.poll()
    assert client.get(f"/v1/jobs/{job['id']}").json()["response"]["choices"][0]["message"]["content"] == "later"


def test_a_request_that_succeeds_ignores_prefer_respond_async(stack, client):
    stack.upstream.script["r1"] = [json_reply(completion("now"))]
    response = client.post("/v1/chat/completions", json=chat(), headers={"Prefer": "respond-async"})
    assert response.status_code == 200
    assert "preference-applied" not in response.headers
    assert stack.messages(stack.queue_url) == []


def test_a_tenant_cannot_read_another_tenants_job(stack, client):
    job = client.post("/v1/jobs", json=chat(), headers={"x-test-tenant": "acme"}).json()
    assert client.get(f"/v1/jobs/{job['id']}", headers={"x-test-tenant": "acme"}).status_code == 200
    other = client.get(f"/v1/jobs/{job['id']}", headers={"x-test-tenant": "globex"})
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "job_not_found"
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 404  # nor can anonymous callers
    # nor can a forged message make the worker run it for another tenant
    stack.sqs.purge_queue(QueueUrl=stack.queue_url)
    stack.sqs.send_message(
        QueueUrl=stack.queue_url, MessageBody=json.dumps({"job_id": job["id"], "tenant": "globex", "request": chat()})
    )
    stack.poll()
    assert stack.upstream.calls == []
    assert stack.job_item(job["id"])["status"] == "queued"


def test_a_job_whose_stored_body_is_gone_fails_at_once(stack, client):
    job = client.post("/v1/jobs", json=chat("word " * 60_000)).json()
    stack.s3.delete_object(Bucket=stack.settings.bucket, Key=f"requests/{job['id']}.json")
    assert stack.poll() == 1
    failed = client.get(f"/v1/jobs/{job['id']}").json()
    assert failed["status"] == "failed"
    assert failed["error"]["code"] == "invalid_job_message"
    assert stack.upstream.calls == []
    assert stack.messages(stack.queue_url) == []


def test_jobs_are_charged_to_the_keys_token_bucket_and_recorded_as_queue_usage(stack):
    from fakes import add_key, memory_guard

    guard = memory_guard()
    key = add_key(guard, "acme", tpm=100_000)
    app = create_app(
        stack.gateway.config, stack.upstream.upstream(), jobs=stack.service, guard=guard, **stack.fake_clock.options()
    )
    auth = {"x-api-key": key}
    with TestClient(app, raise_server_exceptions=False) as c:
        first = c.post("/v1/jobs", json={"requests": [chat(str(i), max_tokens=30_000) for i in range(3)]}, headers=auth)
        assert first.status_code == 202
        assert int(first.headers["x-ratelimit-remaining-tokens"]) < 100_000 - 90_000
        again = c.post("/v1/jobs", json=chat("more", max_tokens=30_000), headers=auth)
        assert (again.status_code, again.json()["error"]["type"]) == (429, "tokens")  # the bucket paid for the 3
    [(tenant, period)] = guard.usage.store.items
    assert (tenant, period.split("#")[1]) == ("acme", "queue")
    requests, prompt, completion_tokens = guard.usage.store.items[(tenant, period)]
    assert (requests, completion_tokens) == (1, 90_000)
    assert prompt > 0


def test_a_job_for_an_unknown_model_is_refused_at_submission(stack, client):
    response = client.post("/v1/jobs", json=chat(model="no-such-model"))
    assert response.status_code == 404
    assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("model_not_found", "model")
    listed = client.post("/v1/jobs", json={"requests": [chat(), chat(model="nope")]})
    assert (listed.status_code, listed.json()["error"]["param"]) == (404, "requests[1].model")
    assert stack.messages(stack.queue_url) == []  # nothing was queued


def test_prefer_respond_async_honours_the_idempotency_key(stack, client):
    stack.upstream.script["r1"] = [json_reply({"error": {"message": "busy"}}, status=503)] * 2
    headers = {"Prefer": "respond-async", "Idempotency-Key": "retry-me"}
    first = client.post("/v1/chat/completions", json=chat(), headers=headers)
    retried = client.post("/v1/chat/completions", json=chat(), headers=headers)
    assert (first.status_code, retried.status_code) == (202, 202)
    assert retried.json()["id"] == first.json()["id"]  # the client's retry did not queue a second job
    assert len(stack.messages(stack.queue_url)) == 1
