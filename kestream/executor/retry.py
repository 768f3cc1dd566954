"""When a failed attempt may be retried, and after how long (constant, exponential, random)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from kestream.models.durations import DurationError, parse_duration
from kestream.tasks.base import Retry


def _duration(text: str | None, default: timedelta = timedelta(0)) -> timedelta:
    if not text:
        return default
    try:
        return parse_duration(text)
    except DurationError:
        return default


def retry_delay(retry: Retry, attempts_done: int, rng: random.Random) -> timedelta:
    """Delay before the next attempt, ``attempts_done`` attempts having failed so far."""
    if retry.type == "exponential":
        base = _duration(retry.interval, timedelta(seconds=1))
        factor = retry.delayFactor if retry.delayFactor is not None else 2.0
        delay = base * (factor ** max(attempts_done - 1, 0))
        cap = _duration(retry.maxInterval, delay)
        return min(delay, cap)
    if retry.type == "random":
        low = _duration(retry.minInterval)
        high = _duration(retry.maxInterval, low)
        span = max((high - low).total_seconds(), 0.0)
        return low + timedelta(seconds=rng.uniform(0.0, span))
    return _duration(retry.interval)


def next_attempt_due(
    retry: Retry, attempts_done: int, first_start: datetime, now: datetime, rng: random.Random
) -> datetime | None:
    """The due time of the next attempt, or None when ``maxAttempt`` or ``maxDuration`` forbid one.

    ``maxAttempt`` counts the first attempt. A retry is allowed only if its due time is within
    ``maxDuration`` of the first attempt's start (Kestra stops once that bound is exceeded).
    """
    if retry.maxAttempt is not None and attempts_done >= retry.maxAttempt:
        return None
    due = now + retry_delay(retry, attempts_done, rng)
    if retry.maxDuration and due - first_start > _duration(retry.maxDuration):
        return None
    return due
