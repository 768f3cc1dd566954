"""A Schedule trigger's cron expression, compiled: the slot after or before any instant.

Slots are computed on the wall clock of the trigger's ``timezone`` and returned as aware UTC
datetimes, because the scheduler orders and compares them across triggers of every zone.

Time zones and DST. ``timezone`` None means UTC (Kestra uses the server's zone; UTC makes a flow
mean the same thing on every host). croniter 5 mis-steps around DST transitions when handed
zone-aware datetimes (it skips or shifts a day after the autumn change), so croniter only ever
sees naive wall-clock times here and the mapping to UTC is done with :mod:`zoneinfo`:

- a wall time that does not exist (spring forward, 02:30 in Europe/Paris) fires at the same
  distance after the jump (03:30 local), as Java's ``ZonedDateTime`` resolves it in Kestra;
  seen from after the gap, the slot before is the last one before it (:meth:`Cron._gap_start`);
- a wall time that happens twice (fall back) fires once, at its first occurrence: seen from
  inside the second pass, the slot before is the first pass's last and the slot after is the
  first one past the repeat (:meth:`Cron._repeat_end`).

A :class:`Cron` is shared by every trigger with the same expression and zone (see
:func:`compile_cron`), and remembers its last answers: at a minute boundary thousands of due
triggers share a handful of expressions, so their next slots cost one croniter step each, not
one per trigger. It is not thread-safe; the scheduler runs on one thread.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import NamedTuple
from zoneinfo import ZoneInfo

from croniter import croniter

from kestream.models.flow import ScheduleTrigger

__all__ = ["Cron", "SlotView", "compile_cron", "cron_for"]

_SECOND = timedelta(seconds=1)
#: Answers remembered per Cron; a tick asks about a few instants, many times each.
_MEMO_SIZE = 64
#: Candidate wall times skipped (ambiguous or shifted) before giving up: a cron that only
#: matches inside DST gaps or repeats would otherwise loop.
_MAX_STEPS = 1000


class SlotView(NamedTuple):
    """What a fire needs to know about its slot, computed once per slot for every trigger."""

    following: datetime | None  #: the next slot after this one
    utc_text: str  #: the slot in UTC, ISO-8601 (part of the execution id)
    date: str  #: the slot on the trigger's clock, ISO-8601 with its offset
    next: str | None  #: ``following`` on the trigger's clock
    previous: str | None  #: the slot before, on the trigger's clock


class Cron:
    """A compiled schedule: ``next_after`` and ``previous_before`` any aware datetime."""

    __slots__ = (
        "_iter",
        "_memo_next",
        "_memo_prev",
        "_memo_view",
        "expression",
        "timezone",
        "with_seconds",
        "zone",
    )

    def __init__(self, expression: str, *, timezone: str | None = None, with_seconds: bool = False):
        self.expression = expression.strip()
        self.timezone = timezone
        self.with_seconds = with_seconds
        self.zone = ZoneInfo(timezone) if timezone else UTC
        text = self.expression.lower() if self.expression.startswith("@") else self.expression
        start = datetime(2000, 1, 1)
        self._iter = croniter(text, start, second_at_beginning=with_seconds)
        self._memo_next: dict[datetime, datetime | None] = {}
        self._memo_prev: dict[datetime, datetime | None] = {}
        self._memo_view: dict[datetime, SlotView] = {}

    def __repr__(self) -> str:
        return f"Cron({self.expression!r}, timezone={self.timezone!r})"

    @property
    def key(self) -> tuple[str, str | None, bool]:
        """What identifies the schedule: a trigger whose key changes is rescheduled."""
        return (self.expression, self.timezone, self.with_seconds)

    def next_after(self, moment: datetime) -> datetime | None:
        """The first slot strictly after ``moment`` (aware), in UTC; None if there is none."""
        instant = _second_floor(moment.astimezone(UTC))
        memo = self._memo_next
        if instant in memo:
            return memo[instant]
        found = self._step(instant, forward=True)
        _remember(memo, instant, found)
        return found

    def previous_before(self, moment: datetime) -> datetime | None:
        """The last slot strictly before ``moment`` (aware), in UTC; None if there is none."""
        instant = _second_ceil(moment.astimezone(UTC))
        memo = self._memo_prev
        if instant in memo:
            return memo[instant]
        found = self._step(instant, forward=False)
        _remember(memo, instant, found)
        return found

    def latest_at_or_before(self, moment: datetime) -> datetime | None:
        """The last slot at or before ``moment``: the one a trigger owes at ``moment``."""
        return self.previous_before(moment + _SECOND)

    def view(self, slot: datetime) -> SlotView:
        """The slot's neighbours and texts (``trigger.date``, ``.next``, ``.previous``)."""
        found = self._memo_view.get(slot)
        if found is None:
            following, previous = self.next_after(slot), self.previous_before(slot)
            found = SlotView(
                following,
                slot.astimezone(UTC).isoformat(),
                self.local(slot).isoformat(),
                None if following is None else self.local(following).isoformat(),
                None if previous is None else self.local(previous).isoformat(),
            )
            if len(self._memo_view) >= _MEMO_SIZE:
                self._memo_view.clear()
            self._memo_view[slot] = found
        return found

    def local(self, slot: datetime) -> datetime:
        """A slot on the trigger's own clock (what its ``trigger.date`` variables show)."""
        return slot.astimezone(self.zone)

    def _step(self, instant: datetime, *, forward: bool) -> datetime | None:
        local = instant.astimezone(self.zone)
        wall = local.replace(tzinfo=None)
        if local.fold:
            # The second pass of a repeated hour, whose wall times all fired on the first pass:
            # both neighbours lie on either side of the whole repeat. From the wall time itself,
            # every candidate up to the repeat's end maps to its first pass (before ``instant``):
            # a seconds cron skipped up to 3 600 of them, gave up, and its trigger had no next
            # slot until its flow was deployed again.
            end = self._repeat_end(instant)
            wall = end - _SECOND if forward else end
        it = self._iter
        it.set_current(wall, force=True)
        for _ in range(_MAX_STEPS):
            try:
                candidate = it.get_next(datetime) if forward else it.get_prev(datetime)
            except (StopIteration, ValueError, OverflowError):
                return None
            # fold=0: a repeated wall time means its first occurrence, a missing one is pushed
            # past the gap by its length (PEP 495); see the module's note on DST.
            slot = candidate.replace(tzinfo=self.zone, fold=0).astimezone(UTC)
            if (slot > instant) if forward else (slot < instant):
                return slot
            if not forward and self._missing(candidate):
                # Backwards into a spring gap: its wall times all map past it (at or after
                # ``instant``); the slot before is the last one before the gap.
                it.set_current(self._gap_start(candidate), force=True)
        return None

    def _missing(self, wall: datetime) -> bool:
        """Whether the wall time does not exist (it is in a spring gap)."""
        there = wall.replace(tzinfo=self.zone).astimezone(UTC).astimezone(self.zone)
        return there.replace(tzinfo=None) != wall

    def _repeat_end(self, instant: datetime) -> datetime:
        """The first wall time after the repeated hour whose second pass ``instant`` is in:
        where the wall clock passes the reading it had before it fell back."""
        local = instant.astimezone(self.zone)
        length = local.replace(fold=0).utcoffset() - local.utcoffset()  # type: ignore[operator]
        end = self._first_second(instant, instant + length, lambda u: not self.local(u).fold)
        return self.local(end).replace(tzinfo=None)

    def _gap_start(self, wall: datetime) -> datetime:
        """The wall time the spring gap ``wall`` is in begins at (the clock's reading as it
        jumps). A missing wall time read with the offset before the change (``fold=0``) is at
        or after the change, read with the offset after it (``fold=1``) before it (PEP 495)."""
        before = wall.replace(tzinfo=self.zone, fold=0)
        after = wall.replace(tzinfo=self.zone, fold=1)
        offset = after.utcoffset()
        change = self._first_second(
            after.astimezone(UTC),
            before.astimezone(UTC),
            lambda u: self.local(u).utcoffset() == offset,
        )
        return change.replace(tzinfo=None) + before.utcoffset()  # type: ignore[operator]

    def _first_second(
        self, low: datetime, high: datetime, past: Callable[[datetime], bool]
    ) -> datetime:
        """The first UTC second in ``(low, high]`` for which ``past`` holds, ``past`` being
        false at ``low``, true at ``high`` and changing once between: the moment a clock
        change takes effect, bisected (``zoneinfo`` tells no transition times)."""
        lo, hi = 0, int((high - low).total_seconds())
        while hi - lo > 1:
            middle = (lo + hi) // 2
            if past(low + timedelta(seconds=middle)):
                hi = middle
            else:
                lo = middle
        return low + timedelta(seconds=hi)


def _second_floor(moment: datetime) -> datetime:
    return moment.replace(microsecond=0)


def _second_ceil(moment: datetime) -> datetime:
    if moment.microsecond:
        return moment.replace(microsecond=0) + _SECOND
    return moment


def _remember(memo: dict[datetime, datetime | None], key: datetime, value: datetime | None) -> None:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = value


@lru_cache(maxsize=4096)
def compile_cron(expression: str, timezone: str | None = None, with_seconds: bool = False) -> Cron:
    """The shared :class:`Cron` for an expression and zone (100 000 triggers, few expressions)."""
    return Cron(expression, timezone=timezone, with_seconds=with_seconds)


def cron_for(trigger: ScheduleTrigger) -> Cron:
    """The compiled schedule of a Schedule trigger."""
    return compile_cron(trigger.cron.strip(), trigger.timezone, trigger.withSeconds)
