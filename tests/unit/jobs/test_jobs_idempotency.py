"""``Idempotency-Key`` on ``POST /v1/jobs`` (Powertools Idempotency on DynamoDB, moto): the same
key and body give the same job, a different body is 422, a repeat while the first submission is
still being recorded is 409, keys are scoped per tenant, and a key is free again once its record
expires or its in-progress record is abandoned (record timestamps set, no waiting)."""

from __future__ import annotations

import threading
import time

import pytest
from jobstack import chat, tenant_app
from starlette.testclient import TestClient

from r1edge.apps.router import create_app


@pytest.fixture
def client(stack):
    app = create_app(stack.gateway.config, stack.upstream.upstream(), jobs=stack.service)
    with TestClient(tenant_app(app), raise_server_exceptions=False) as c:
        yield c


def submit(client, body, key, tenant=None):
    headers = {"Idempotency-Key": key}
    if tenant:
        headers["x-test-tenant"] = tenant
    return client.post("/v1/jobs", json=body, headers=headers)


def idempotency_items(stack):
    return stack.dynamodb.scan(TableName=stack.settings.idempotency_table)["Items"]


def test_the_same_key_and_body_return_the_same_job_and_queue_it_once(stack, client):
    first = submit(client, chat("once"), "order-1")
    second = submit(client, chat("once"), "order-1")
    assert first.status_code == second.status_code == 202
    assert first.json()["id"] == second.json()["id"]
    assert second.headers["location"] == first.headers["location"]
    assert len(stack.messages(stack.queue_url)) == 1
    [record] = idempotency_items(stack)
    assert record["status"]["S"] == "COMPLETED"
    assert record["id"]["S"].startswith("r1edge-jobs#")  # one prefix for both router functions


def test_the_same_key_with_a_different_body_is_422(stack, client):
    assert submit(client, chat("first"), "order-2").status_code == 202
    response = submit(client, chat("second"), "order-2")
    assert response.status_code == 422
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "idempotency_key_reused",
        "Idempotency-Key",
    )
    assert len(stack.messages(stack.queue_url)) == 1


def test_a_repeat_while_the_first_submission_is_in_progress_is_409(stack, client):
    entered, release = threading.Event(), threading.Event()
    send = stack.service.queue.send

    def slow_send(body: str) -> str:
        entered.set()
        assert release.wait(10)
        return send(body)

    stack.service.queue.send = slow_send  # type: ignore[method-assign]
    results: dict[str, object] = {}
    first = threading.Thread(
        target=lambda: results.update(job=stack.service.submit("anonymous", chat("slow"), "r1", "order-3"))
    )
    first.start()
    assert entered.wait(10)
    response = submit(client, chat("slow"), "order-3")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_in_use"
    assert response.headers["retry-after"] == "1"
    release.set()
    first.join(10)
    job = results["job"]
    assert submit(client, chat("slow"), "order-3").json()["id"] == job["id"]  # type: ignore[index]
    assert len(stack.messages(stack.queue_url)) == 1


def test_keys_are_scoped_to_the_tenant(stack, client):
    acme = submit(client, chat("same"), "shared-key", tenant="acme").json()
    globex = submit(client, chat("same"), "shared-key", tenant="globex")
    assert globex.status_code == 202
    assert globex.json()["id"] != acme["id"]  # not acme's job
    # and a different body under another tenant's key is not a conflict either
    assert submit(client, chat("other"), "shared-key", tenant="initech").status_code == 202
    assert client.get(f"/v1/jobs/{acme['id']}", headers={"x-test-tenant": "globex"}).status_code == 404
    assert len(idempotency_items(stack)) == 3


def test_an_expired_key_makes_a_new_job(stack, client):
    first = submit(client, chat("again"), "order-4").json()
    [record] = idempotency_items(stack)
    expiry = int(record["expiration"]["N"])
    assert expiry - stack.settings.idempotency_seconds == pytest.approx(first["created_at"], abs=5)
    stack.dynamodb.update_item(  # the record's expiry passes (DynamoDB TTL deletes it later)
        TableName=stack.settings.idempotency_table,
        Key={"id": record["id"]},
        UpdateExpression="SET expiration = :past",
        ExpressionAttributeValues={":past": {"N": "1"}},
    )
    second = submit(client, chat("again"), "order-4").json()
    assert second["id"] != first["id"]
    assert len(stack.messages(stack.queue_url)) == 2


def test_an_abandoned_in_progress_submission_frees_its_key(stack, client):
    # A router killed mid-submission leaves an INPROGRESS record. Its in-progress expiry (written
    # as now + 30 s) bounds the 409s: once it has passed, the key works again.
    assert submit(client, chat("x"), "order-5").status_code == 202
    [record] = idempotency_items(stack)
    now = time.time()
    for in_progress_until, expected in ((now + 30, 409), (now - 1, 202)):
        stack.dynamodb.put_item(
            TableName=stack.settings.idempotency_table,
            Item={
                **{k: v for k, v in record.items() if k != "data"},  # id, expiration, validation hash
                "status": {"S": "INPROGRESS"},
                "in_progress_expiration": {"N": str(int(in_progress_until * 1000))},
            },
        )
        assert submit(client, chat("x"), "order-5").status_code == expected


def test_the_in_progress_expiry_written_is_thirty_seconds(stack, client):
    entered, release = threading.Event(), threading.Event()
    send = stack.service.queue.send

    def slow_send(body: str) -> str:
        entered.set()
        assert release.wait(10)
        return send(body)

    stack.service.queue.send = slow_send  # type: ignore[method-assign]
    worker = threading.Thread(target=lambda: stack.service.submit("anonymous", chat("y"), "r", "order-6"))
    before = time.time()  # Powertools reads the wall clock in between
    worker.start()
    assert entered.wait(10)
    after = time.time()
    [record] = idempotency_items(stack)
    release.set()
    worker.join(10)
    assert record["status"]["S"] == "INPROGRESS"
    # written in whole milliseconds, truncated
    assert before + 30 - 0.001 <= int(record["in_progress_expiration"]["N"]) / 1000 <= after + 30


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there"])
def test_a_malformed_key_is_400(client, key):
    response = client.post("/v1/jobs", json=chat(), headers={"Idempotency-Key": key})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "Idempotency-Key"
