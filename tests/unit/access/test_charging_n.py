"""A request for ``n`` choices is charged ``n`` completions: the key's token bucket takes the
prompt estimate plus ``n × max_tokens`` (``max_tokens`` or, when absent, the default completion
budget for chat and the job cap for jobs), on ``POST /v1/chat/completions`` and ``POST /v1/jobs``
alike. The charge shows in ``x-ratelimit-remaining-tokens`` (read before settling) and, for a
job paid up front, in the tenant's ``queue`` usage."""

from __future__ import annotations

import pytest
from fakes import FakeUpstream, add_key, completion, config, endpoint, json_reply, memory_guard
from starlette.testclient import TestClient

from r1edge.apps.router import create_app

MSG = [{"role": "user", "content": "hi"}]  # 5 prompt tokens: ceil(2 chars / 4) + 4 per message
PROMPT = 5
TPM = 1_000_000
DAY = 1_767_000_000.0  # 2025-12-29


def choices(n: int) -> dict:
    answer = completion("ok")
    answer["choices"] = [{**answer["choices"][0], "index": i} for i in range(n)]
    return answer


@pytest.mark.parametrize(
    ("extra", "completion_charge"),
    [
        ({"n": 3, "max_tokens": 100}, 3 * 100),
        ({"n": 4, "max_completion_tokens": 50}, 4 * 50),
        ({"n": 2}, 2 * 256),  # classifier.default_completion_tokens per choice
        ({"n": None, "max_tokens": 100}, 100),  # null is absent: one choice
        ({"max_tokens": 100}, 100),
    ],
    ids=["n3-max_tokens", "n4-max_completion_tokens", "n2-default-budget", "n-null", "no-n"],
)
def test_chat_is_charged_n_times_max_tokens(extra, completion_charge):
    guard = memory_guard(lambda: DAY)
    key = add_key(guard, tenant="acme", tpm=TPM)
    fake = FakeUpstream({"r1-a": [json_reply(choices(extra.get("n") or 1))]})
    app = create_app(config(endpoint("r1-a", "cluster")), fake.upstream(), guard=guard)
    with TestClient(app) as client:
        response = client.post(
            "/v1/chat/completions",
            json={"model": "deepseek-r1", "messages": MSG, **extra},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert response.status_code == 200, response.text
    assert response.headers["x-ratelimit-remaining-tokens"] == str(TPM - (PROMPT + completion_charge))


@pytest.mark.parametrize(
    ("body", "prompt", "completion_charge"),
    [
        ({"model": "deepseek-r1", "messages": MSG, "n": 3, "max_tokens": 100}, PROMPT, 3 * 100),
        ({"model": "deepseek-r1", "messages": MSG, "n": 2}, PROMPT, 2 * 32_768),  # the job cap per choice
        (
            {
                "requests": [
                    {"model": "deepseek-r1", "messages": MSG, "n": 2, "max_tokens": 50},
                    {"model": "deepseek-r1", "messages": MSG, "max_tokens": 10},
                ]
            },
            2 * PROMPT,
            2 * 50 + 10,
        ),
    ],
    ids=["n3-max_tokens", "n2-job-cap", "batch"],
)
def test_a_job_is_charged_and_recorded_as_n_times_max_tokens(stack, body, prompt, completion_charge):
    assert stack.service.settings.max_tokens == 32_768  # JOBS_MAX_TOKENS' default
    guard = memory_guard(lambda: DAY)
    key = add_key(guard, tenant="acme", tpm=TPM)
    app = create_app(stack.gateway.config, stack.upstream.upstream(), jobs=stack.service, guard=guard)
    with TestClient(app) as client:
        response = client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text
    assert response.headers["x-ratelimit-remaining-tokens"] == str(TPM - (prompt + completion_charge))
    assert guard.usage.store.items == {("acme", "2025-12-29#queue"): [1, prompt, completion_charge]}


def test_the_meter_keeps_a_bounded_text_and_still_counts_every_character(monkeypatch):
    import json as jsonlib

    from r1edge.access import metering

    monkeypatch.setattr(metering, "MAX_METERED_TEXT", 10)
    meter = metering.Meter()
    meter.start({"status": 200, "headers": [(b"content-type", b"text/event-stream"), (b"x-r1edge-route", b"edge")]})
    for _ in range(100):
        event = {"choices": [{"index": 0, "delta": {"content": "abcd"}}]}
        meter.feed(b"data: " + jsonlib.dumps(event).encode() + b"\n\n")
    usage, text = meter.result(prompt_estimate=5, chars_per_token=4)
    assert text == "abcdabcdab"  # 10 characters kept of 400
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 100)  # 400 characters / 4
