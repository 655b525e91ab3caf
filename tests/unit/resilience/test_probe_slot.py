"""The breaker sheds load (issue 19), as a property of the breaker and the balancer together.

A hypothesis state machine drives one :class:`~r1edge.resilience.balancer.Pool` — shared, as in
a router process, by every request — through random interleavings of requests choosing an
endpoint, attempts ending (success, failure, cancelled, a client fault, or never: an exit path
that does not run), endpoints marked down by the health table, and the clock advancing. After
every step it checks, against its own record of the attempts granted:

- no request is granted an endpoint whose breaker is open before the cooldown has ended;
- at most one probe per endpoint is out (a probe is an attempt granted while the breaker was
  not closed; it is out until its attempt ends or its lease passes);
- the breaker's probe slot is held by exactly that probe, or by none when none is out: freed
  early, a second probe could go; never freed (an outcome never recorded), the breaker would
  be wedged;
- nothing is refused that could have been granted (so the checks are not met by refusing
  everyone).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fakes import config, endpoint
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from r1edge.resilience.balancer import Pool
from r1edge.resilience.breaker import BreakerSettings, CircuitBreaker, Probe, State

NAMES = ("a", "b")
#: How an attempt ends; failures twice as likely, so breakers open often.
OUTCOMES = ["failure", "failure", "success", "cancelled", "client_fault", "lost"]


@dataclass
class Attempt:
    """One granted attempt as the test saw it granted."""

    endpoint: str
    probe: Probe | None  # the slot the attempt holds (None: admitted while closed)
    was_probe: bool  # granted while the breaker was not closed
    until: float  # the lease the test asked for, from the grant (monotonic seconds)
    lost: bool = False  # its exit path never runs: it never ends, only its lease passes


class SharedPool(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.attempts: dict[int, Attempt] = {}
        self.next_id = 0
        self.pool: Pool

    @initialize(
        threshold=st.integers(1, 2),
        cooldown=st.sampled_from([0.0, 5.0, 30.0]),
        priorities=st.lists(st.integers(0, 1), min_size=len(NAMES), max_size=len(NAMES)),
        seed=st.integers(0, 2**16),
    )
    def build(self, threshold: int, cooldown: float, priorities: list[int], seed: int) -> None:
        endpoints = [endpoint(n, "cluster", priority=p) for n, p in zip(NAMES, priorities, strict=True)]
        breakers = BreakerSettings(failure_threshold=threshold, cooldown=cooldown)
        self.pool = Pool(config(*endpoints).endpoints, breakers, rng=random.Random(seed))  # replayable

    def live_probes(self, name: str) -> list[Attempt]:
        return [a for a in self.attempts.values() if a.endpoint == name and a.was_probe and self.now < a.until]

    def grantable(self, name: str) -> bool:
        """Whether the rules allow an attempt at ``name`` now."""
        breaker = self.pool[name].breaker
        if breaker.state is State.CLOSED:
            return True
        if breaker.state is State.OPEN and breaker.cooldown_remaining(self.now) > 0:
            return False
        return not self.live_probes(name)

    @rule(
        lease=st.sampled_from([1.0, 10.0, 65.0]),
        excluded=st.just(set()) | st.sets(st.sampled_from(NAMES), max_size=1),
        tried=st.just({}) | st.dictionaries(st.sampled_from(NAMES), st.integers(1, 2), max_size=1),
    )
    def choose(self, lease: float, excluded: set[str], tried: dict[str, int]) -> None:
        before = {n: (self.pool[n].breaker.state, self.grantable(n)) for n in NAMES}
        state, probing = self.pool.choose("cluster", self.now, tried, excluded, probe_lease=lambda s: lease)
        if state is None:
            assert not any(before[n][1] for n in NAMES if n not in excluded), "refused while one was grantable"
            return
        name = state.endpoint.name
        was_state, was_grantable = before[name]
        assert name not in excluded
        assert was_grantable, f"granted {name} ({was_state.value}) against the rules"
        assert probing == (was_state is not State.CLOSED)
        probe = state.breaker.probe if probing else None
        assert (probe is not None) == probing
        self.attempts[self.next_id] = Attempt(name, probe, probing, self.now + lease)
        self.next_id += 1

    @rule(requests=st.integers(2, 6), lease=st.sampled_from([1.0, 10.0, 65.0]))
    def burst(self, requests: int, lease: float) -> None:
        """Several requests choose at the same instant (a burst after a cooldown)."""
        for _ in range(requests):
            self.choose(lease, set(), {})

    @rule(name=st.sampled_from(NAMES))
    def endpoint_fails(self, name: str) -> None:
        """Every attempt running at ``name`` fails (the endpoint went down)."""
        for key in [k for k in self.running() if self.attempts[k].endpoint == name]:
            attempt = self.attempts.pop(key)
            self.pool[name].breaker.record(self.now, True, attempt.probe)

    def running(self) -> list[int]:
        return sorted(k for k, a in self.attempts.items() if not a.lost)

    @precondition(lambda self: self.running())
    @rule(data=st.data(), outcome=st.sampled_from(OUTCOMES))
    def end(self, data: st.DataObject, outcome: str) -> None:
        key = data.draw(st.sampled_from(self.running()))
        attempt = self.attempts[key]
        breaker = self.pool[attempt.endpoint].breaker
        if outcome == "lost":  # its exit path never runs: only the lease frees the slot
            attempt.lost = True
            return
        if outcome in ("success", "failure"):
            breaker.record(self.now, outcome == "failure", attempt.probe)
        elif attempt.probe is not None:  # cancelled, or a client fault: no outcome to record
            attempt.probe.release()  # what the router does in its finally blocks
        del self.attempts[key]

    @rule(seconds=st.sampled_from([0.5, 1.0, 4.0, 10.0, 31.0, 70.0]))
    def advance(self, seconds: float) -> None:
        self.now += seconds

    @rule(name=st.sampled_from(NAMES), down=st.booleans())
    def health(self, name: str, down: bool) -> None:
        self.pool[name].health = "down" if down else None

    @invariant()
    def at_most_one_probe_per_endpoint(self) -> None:
        if not hasattr(self, "pool"):
            return
        for name in NAMES:
            assert len(self.live_probes(name)) <= 1, f"{name} has more than one probe out"

    @invariant()
    def each_breakers_slot_is_held_by_exactly_the_probe_out(self) -> None:
        # The breaker's slot holds the one probe still out, or nothing when none is: a slot
        # freed early would let a second probe go, one never freed would wedge the breaker.
        if not hasattr(self, "pool"):
            return
        for name in NAMES:
            held = self.pool[name].breaker.probe_out(self.now)
            assert [a.probe for a in self.live_probes(name)] == ([held] if held is not None else [])


SharedPool.TestCase.settings = settings(max_examples=100, stateful_step_count=40, deadline=None, derandomize=True)
test_one_probe_per_endpoint_and_none_before_the_cooldown = SharedPool.TestCase


def opened(cooldown: float = 30.0) -> CircuitBreaker:
    """A breaker opened at t=0 (threshold 1)."""
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=1, cooldown=cooldown))
    breaker.record_failure(0)
    return breaker


def test_a_probe_past_its_lease_is_deemed_lost_and_its_late_end_leaves_the_next_probe_alone():
    breaker = opened()
    assert breaker.allow(30, lease=10)
    first = breaker.probe
    assert not breaker.allow(39.9, lease=10)  # out until 40
    assert breaker.blocked_for(35) == 5
    assert breaker.allow(40, lease=10)  # the first never came back: its slot is free again
    second = breaker.probe
    assert second is not first
    assert (second.number, second.until) == (2, 50)
    first.release()  # the lost attempt's finally runs at last
    breaker.record(41, False, first)  # ... or its outcome arrives: it counts, the slot stays
    assert breaker.state is State.CLOSED
    assert breaker.probe is second


def test_a_late_failure_of_an_attempt_admitted_before_the_breaker_opened_keeps_the_probe_slot_held():
    breaker = CircuitBreaker(BreakerSettings(failure_threshold=2, cooldown=30))
    assert breaker.allow(0)  # admitted while closed: a long stream, say
    breaker.record(1, True, None)
    breaker.record(2, True, None)  # opened at 2
    assert breaker.allow(32, lease=60)
    probe = breaker.probe
    breaker.record(33, True, None)  # the old attempt times out: open again, a new cooldown
    assert breaker.state is State.OPEN
    assert breaker.probe is probe  # still out: no second probe after the new cooldown ...
    assert not breaker.allow(64, lease=60)
    assert breaker.blocked_for(64) == 28  # ... until the probe's attempt must have ended
    probe.release()
    assert breaker.allow(64, lease=60)


def test_a_probe_renewed_for_its_backoff_wait_is_not_deemed_lost_during_it():
    breaker = opened()
    assert breaker.allow(30, lease=10)
    breaker.probe.renew(30 + 25 + 10)  # a 25 s wait, then its attempt
    assert not breaker.allow(50, lease=10)
    assert breaker.blocked_for(50) == 15
