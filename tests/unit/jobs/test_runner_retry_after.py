"""The runner's reading of the gateway's ``Retry-After`` (through
:func:`r1edge.resilience.retry.parse_retry_after`): only a 503/429 counts, header names in any
case, the whole seconds the gateway sends taken as they are."""

from __future__ import annotations

import email.utils

from r1edge.jobs.runner import upstream_retry_after
from r1edge.protocol.errors import OpenAIError, Overloaded, RateLimited

NOW = 1_800_000_000.0


def test_a_busy_gateways_retry_after_is_the_floor_of_the_jobs_backoff():
    assert upstream_retry_after(Overloaded("busy", headers={"Retry-After": "120"}), NOW) == 120.0
    assert upstream_retry_after(RateLimited("slow down", headers={"retry-after": "7"}), NOW) == 7.0
    assert upstream_retry_after(OpenAIError("busy", status=503, headers={"Retry-After": "3"}), NOW) == 3.0
    assert upstream_retry_after(Overloaded("busy"), NOW) is None
    assert upstream_retry_after(Overloaded("busy", headers={"Retry-After": "soon"}), NOW) is None
    date = email.utils.formatdate(NOW + 30, usegmt=True)
    assert upstream_retry_after(Overloaded("busy", headers={"Retry-After": date}), NOW) == 30.0


def test_other_errors_carry_no_wait():
    assert upstream_retry_after(OpenAIError("boom", status=500, headers={"Retry-After": "9"}), NOW) is None
    assert upstream_retry_after(OpenAIError("slow", status=408, headers={"Retry-After": "9"}), NOW) is None
