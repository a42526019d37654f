"""One retry policy for every platform client: jittered exponential backoff, bounded twice.

An attempt either returns or raises a :class:`~audiences.core.errors.ConnectorError`. The
error's ``transient`` flag decides: a terminal error is raised at once, a transient one is
retried until ``max_attempts`` attempts were made or the next attempt would start after
``max_total_s`` seconds. An error with a ``retry_after_s`` (the platform's own estimate of
when it accepts calls again) waits at least that long; if that is longer than
``max_delay_s`` the policy gives up at once, so that a later run resumes instead.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from audiences.core.errors import ConnectorError

T = TypeVar("T")

# (error, failed attempts, pause in seconds): called before each pause.
OnRetry = Callable[[ConnectorError, int, float], None]
# (error, failed attempts, why): returns the error to raise when a transient error stops.
OnGiveUp = Callable[[ConnectorError, int, str], ConnectorError]


def retry_after_s(error: ConnectorError) -> float | None:
    """The pause the platform asked for with this error, if it asked."""
    value = getattr(error, "retry_after_s", None)
    return float(value) if isinstance(value, int | float) else None


def _raise_as_is(error: ConnectorError, attempts: int, why: str) -> ConnectorError:
    return error


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient errors, bounded in attempts and time.

    Attempt ``n`` (1-based) that fails waits ``min(max_delay_s, base_delay_s * 2**(n-1))``
    scaled by a random factor in ``[1 - jitter, 1]``; after ``max_attempts`` attempts, or
    when the next one would start more than ``max_total_s`` after the first, the error is
    raised.
    """

    max_attempts: int = 6
    base_delay_s: float = 2.0
    max_delay_s: float = 120.0
    jitter: float = 0.5
    max_total_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay_s < 0 or self.max_delay_s < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("delays must be >= 0 and jitter within [0, 1]")
        if self.max_total_s < 0:
            raise ValueError("max_total_s must be >= 0")

    def delay_s(self, failed_attempt: int, rng: random.Random) -> float:
        """The jittered backoff after the ``failed_attempt``-th failure."""
        delay = min(self.max_delay_s, self.base_delay_s * 2 ** (failed_attempt - 1))
        return delay * (1 - self.jitter * rng.random())

    def call(
        self,
        attempt: Callable[[int], T],
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        on_retry: OnRetry | None = None,
        on_give_up: OnGiveUp = _raise_as_is,
    ) -> T:
        """``attempt(n)`` for n = 1, 2, ... until it returns or raises an error not to retry."""
        rng = rng or random.Random()
        started = clock()
        failed = 0
        while True:
            try:
                return attempt(failed + 1)
            except ConnectorError as error:
                failed += 1
                if not error.transient:
                    raise error from None
                delay, why = self._pause(error, failed, rng, clock() - started)
                if why is not None:
                    raise on_give_up(error, failed, why) from None
                retried = error
            if on_retry is not None:
                on_retry(retried, failed, delay)
            sleep(delay)

    def _pause(
        self, error: ConnectorError, failed: int, rng: random.Random, elapsed_s: float
    ) -> tuple[float, str | None]:
        """The pause before the next attempt, and why there is none (None: retry)."""
        delay = self.delay_s(failed, rng)
        asked = retry_after_s(error)
        if asked is not None:
            delay = max(delay, asked)
            if delay > self.max_delay_s:
                return delay, (
                    f"the platform asks to wait {delay:.0f} s, longer than the "
                    f"{self.max_delay_s:.0f} s retry limit"
                )
        if failed >= self.max_attempts:
            return delay, f"after {failed} attempts"
        if elapsed_s + delay > self.max_total_s:
            return delay, (
                f"after {failed} attempts: the next would start past the "
                f"{self.max_total_s:.0f} s retry time limit"
            )
        return delay, None
