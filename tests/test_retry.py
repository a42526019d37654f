"""The one retry policy both platform clients use, on a fake clock (nothing really sleeps)."""

from __future__ import annotations

import random

import pytest

from audiences.core.errors import ConnectorError
from connectors.meta import RetryPolicy as MetaRetryPolicy
from connectors.meta.errors import MetaRateLimited
from connectors.retry import RetryPolicy


class FakeClock:
    """A clock that only moves when the code under test sleeps (or a call takes time)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


class Flaky:
    """Fails with ``errors`` in turn, then returns ``"done"``; each call takes ``cost_s``."""

    def __init__(self, clock: FakeClock, *errors: ConnectorError, cost_s: float = 0.0) -> None:
        self.clock = clock
        self.errors = list(errors)
        self.cost_s = cost_s
        self.attempts: list[int] = []

    def __call__(self, attempt: int) -> str:
        self.attempts.append(attempt)
        self.clock.now += self.cost_s
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def transient(what: str = "busy") -> ConnectorError:
    return ConnectorError(what, transient=True)


def run(policy: RetryPolicy, attempt: Flaky, **options: object) -> str:
    clock = attempt.clock
    return policy.call(
        attempt,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(3),
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_transient_errors_are_retried_then_succeed(clock: FakeClock) -> None:
    policy = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=10.0)
    retried: list[tuple[str, int, float]] = []
    attempt = Flaky(clock, transient("one"), transient("two"))
    result = run(policy, attempt, on_retry=lambda e, n, d: retried.append((e.what, n, d)))
    assert result == "done"
    assert attempt.attempts == [1, 2, 3]
    assert [(what, n) for what, n, _ in retried] == [("one", 1), ("two", 2)]
    assert [d for *_, d in retried] == clock.sleeps
    assert 0.5 <= clock.sleeps[0] <= 1.0 and 1.0 <= clock.sleeps[1] <= 2.0  # exponential, jittered


def test_a_terminal_error_is_raised_at_once(clock: FakeClock) -> None:
    refused = ConnectorError("bad token", "set the token")
    attempt = Flaky(clock, refused)
    with pytest.raises(ConnectorError) as caught:
        run(RetryPolicy(), attempt, on_give_up=pytest.fail)
    assert caught.value is refused
    assert attempt.attempts == [1]
    assert clock.sleeps == []


def test_attempts_are_bounded(clock: FakeClock) -> None:
    policy = RetryPolicy(max_attempts=3, base_delay_s=1.0)
    gave_up: list[tuple[int, str]] = []

    def give_up(error: ConnectorError, attempts: int, why: str) -> ConnectorError:
        gave_up.append((attempts, why))
        return ConnectorError(f"{error.what} after {attempts} attempts", transient=True)

    attempt = Flaky(clock, *(transient() for _ in range(10)))
    with pytest.raises(ConnectorError, match="busy after 3 attempts"):
        run(policy, attempt, on_give_up=give_up)
    assert attempt.attempts == [1, 2, 3]
    assert len(clock.sleeps) == 2
    assert gave_up == [(3, "after 3 attempts")]


def test_total_time_is_bounded(clock: FakeClock) -> None:
    # Each attempt takes 20 s; pauses are 1, 2, 4 ... s: the third pause would end past 60 s.
    policy = RetryPolicy(max_attempts=50, base_delay_s=1.0, jitter=0, max_total_s=60.0)
    reasons: list[str] = []
    attempt = Flaky(clock, *(transient() for _ in range(50)), cost_s=20.0)
    started = clock.now
    with pytest.raises(ConnectorError, match="busy"):
        run(policy, attempt, on_give_up=lambda e, n, why: reasons.append(why) or e)
    assert attempt.attempts == [1, 2, 3]
    assert clock.sleeps == [1.0, 2.0]
    assert clock.now - started <= 60.0 + 20.0
    assert reasons == ["after 3 attempts: the next would start past the 60 s retry time limit"]


def test_the_platforms_retry_after_is_honoured(clock: FakeClock) -> None:
    throttled = MetaRateLimited("rate-limited", transient=True, code=80004)
    throttled.retry_after_s = 300.0
    attempt = Flaky(clock, throttled)
    assert run(RetryPolicy(base_delay_s=0.01, max_delay_s=600.0), attempt) == "done"
    assert clock.sleeps == [300.0]


def test_a_retry_after_over_the_delay_limit_stops_at_once(clock: FakeClock) -> None:
    throttled = MetaRateLimited("rate-limited", transient=True, code=80004)
    throttled.retry_after_s = 300.0
    reasons: list[str] = []
    attempt = Flaky(clock, throttled)
    with pytest.raises(MetaRateLimited) as caught:
        run(RetryPolicy(), attempt, on_give_up=lambda e, n, why: reasons.append(why) or e)
    assert caught.value is throttled
    assert clock.sleeps == []
    assert reasons == ["the platform asks to wait 300 s, longer than the 120 s retry limit"]


def test_a_shorter_retry_after_does_not_shorten_the_backoff(clock: FakeClock) -> None:
    throttled = ConnectorError("slow down", transient=True)
    throttled.retry_after_s = 0.5  # type: ignore[attr-defined]
    attempt = Flaky(clock, throttled)
    run(RetryPolicy(base_delay_s=4.0, jitter=0), attempt)
    assert clock.sleeps == [4.0]


def test_the_policy_checks_its_bounds() -> None:
    assert MetaRetryPolicy is RetryPolicy  # connectors.meta keeps exporting the name
    with pytest.raises(ValueError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=1.5)
    with pytest.raises(ValueError, match="max_total_s"):
        RetryPolicy(max_total_s=-1)
