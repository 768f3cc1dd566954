"""The schedules book: the scheduler's pure core for Schedule triggers.

The runtime feeds it flows (:meth:`ScheduleBook.sync_flow`, :meth:`ScheduleBook.remove_flow`),
the trigger records of the compacted triggers topic at start (:meth:`ScheduleBook.load_state`)
and ended executions (:meth:`ScheduleBook.on_execution_end`, for ``stopAfter``), and calls
:meth:`ScheduleBook.tick` about once a second. A tick returns :class:`Fire` s: the execution to
create and the trigger record to write *after* it. It touches only the due triggers (see
:mod:`kestream.scheduler.due_index`), so an idle tick costs the same with 10 or 100 000 triggers.

Exactly once per slot, in two halves:

- the book never returns a slot twice: a trigger's record holds the last slot fired (``date``)
  and every slot it returns is later than that, also after :meth:`~ScheduleBook.load_state`;
- the runtime writes the execution, then the record. A crash between the two fires the slot
  again after restart, with the same execution id (derived from the slot), which the executor
  recognises as a repeat (DESIGN.md section 3).

Missed slots (the scheduler was down) follow the trigger's ``recoverMissedSchedules``, decided
once when a stored record is taken up: ``ALL`` (Kestra's default) fires every missed slot, at most
``recovery_cap`` of them (the latest; a warning says how many were dropped), ``LAST`` only the
most recent one, ``NONE`` none. A trigger the book has never seen starts at its next slot after
now: no backfill. While running, a tick that comes late (a slow loop) fires every slot it owes,
whatever the policy: those were not missed, only delayed. So do the slots that fell due within
``handover`` before a record is taken up: a standby taking over from a killed scheduler finds
them owed because the lease was moving, not because no scheduler ran. ``lateMaximumDelay``
skips a slot owed for longer than that delay. A slot whose ``conditions`` (DayWeek,
PublicHoliday, ...) do not hold is skipped: no execution, and the trigger moves on to its next
slot.

Backfills (:mod:`kestream.scheduler.backfill`) run beside the schedule, paced: a tick fires at
most ``backfill_slots`` slots of one backfill, then the backfill is due again ``backfill_interval``
later. Its record's ``currentDate`` moves past each slot fired, and the runtime writes the record
after the executions, so a crash re-fires at most the last batch, with the same execution ids.
Commands from the triggers API (disable, enable, backfill, pause, unpause, delete, unlock) reach
the book through :meth:`ScheduleBook.apply_command`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from kestream.executor.events import ExecutionCreated
from kestream.expressions import RenderError, render
from kestream.models.clock import Clock, utc_now
from kestream.models.durations import DurationError, parse_duration
from kestream.models.flow import Flow, ScheduleTrigger
from kestream.models.ids import derived_id
from kestream.models.state import StateType
from kestream.scheduler.backfill import Backfill, backfill_execution_id
from kestream.scheduler.commands import CommandError, TriggerCommand, apply_to_state
from kestream.scheduler.conditions import ConditionError, condition_context, conditions_hold
from kestream.scheduler.cron import Cron, SlotView, cron_for
from kestream.scheduler.due_index import DueIndex
from kestream.scheduler.executions import trigger_execution
from kestream.scheduler.trigger_state import TriggerState, trigger_key

__all__ = ["DEFAULT_RECOVERY_CAP", "Fire", "Recovery", "ScheduleBook", "SyncResult"]

log = logging.getLogger(__name__)

Recovery = Literal["ALL", "LAST", "NONE"]
#: At most this many missed slots of one trigger fire after downtime (``ALL``).
DEFAULT_RECOVERY_CAP = 1000
#: At most this many slots of one backfill fire per tick (``KESTREAM_SCHEDULER_BACKFILL_SLOTS``).
DEFAULT_BACKFILL_SLOTS = 10
_SECOND = timedelta(seconds=1)


@dataclass(frozen=True, slots=True)
class Fire:
    """One slot of one trigger: emit ``event``, then write ``state`` to the triggers topic."""

    key: str
    slot: datetime
    event: ExecutionCreated
    state: TriggerState
    #: Set on the first fire of a catch-up that dropped slots (more than the recovery cap).
    warning: str | None = None
    #: A backfill's slot (its delay says nothing about the scheduler's lateness).
    backfill: bool = False


@dataclass(slots=True)
class SyncResult:
    """What a flow change means for the triggers topic: records to write, keys to delete."""

    states: list[TriggerState] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Entry:
    """One Schedule trigger of a deployed flow, with its compiled cron and current record."""

    flow: Flow
    trigger: ScheduleTrigger
    cron: Cron
    state: TriggerState
    active: bool
    late_delay: timedelta | None
    schedule: str = ""
    #: When the backfill may fire its next batch (None: at its next slot).
    backfill_wait: datetime | None = None

    def __post_init__(self) -> None:
        self.schedule = _schedule_text(self.cron)

    def set_cron(self, cron: Cron) -> None:
        self.cron = cron
        self.schedule = _schedule_text(cron)


def _schedule_text(cron: Cron) -> str:
    expression, zone, seconds = cron.key
    return f"{expression}|{zone or 'UTC'}|{'s' if seconds else 'm'}"


class ScheduleBook:
    """Every Schedule trigger of every deployed flow, and what each one owes next.

    Args:
        clock: the time used when flows and records arrive (a new trigger's first slot, the
            recovery of missed slots); ``tick`` takes its own ``now``.
        default_recovery: ``recoverMissedSchedules`` for triggers that do not set it (Kestra's
            global plugin default is ALL).
        recovery_cap: the most missed slots one trigger fires after downtime.
        backfill_slots: the most slots one backfill fires per tick.
        backfill_interval: how long a backfill with slots left waits before its next batch.
        handover: slots owed for less than this when a record is taken up are delayed, not
            missed: they fire whatever ``recoverMissedSchedules`` says (the time the lease can
            take to move from a killed scheduler to a standby).
    """

    def __init__(
        self,
        clock: Clock = utc_now,
        *,
        default_recovery: Recovery = "ALL",
        recovery_cap: int = DEFAULT_RECOVERY_CAP,
        backfill_slots: int = DEFAULT_BACKFILL_SLOTS,
        backfill_interval: timedelta = _SECOND,
        handover: timedelta = timedelta(0),
    ) -> None:
        self._clock = clock
        self._handover = handover
        self._backfill_slots = max(1, backfill_slots)
        self._backfill_interval = backfill_interval
        self._default_recovery: Recovery = default_recovery
        self._cap = max(1, recovery_cap)
        self._entries: dict[str, _Entry] = {}
        self._by_flow: dict[str, list[str]] = {}
        self._stored: dict[str, TriggerState] = {}
        self.index = DueIndex()

    # -- what is known ----------------------------------------------------------------------

    def __len__(self) -> int:
        """How many Schedule triggers are known (active or not)."""
        return len(self._entries)

    def state(self, key: str) -> TriggerState | None:
        entry = self._entries.get(key)
        return entry.state if entry is not None else self._stored.get(key)

    def states(self) -> Iterator[TriggerState]:
        """Every known trigger's current record (O(n): for monitoring and tests, not ticks)."""
        for entry in self._entries.values():
            yield entry.state

    def next_due(self) -> datetime | None:
        """When the next slot is owed: how long the scheduler loop may sleep."""
        return self.index.next_due()

    def orphan_keys(self) -> list[str]:
        """Stored records whose flow or trigger is gone: the runtime may delete them."""
        return sorted(self._stored)

    def drop_orphans(self) -> list[str]:
        """Forget the stored records no deployed flow claimed; returns their keys to delete.

        Called once the flows are synced at start: the record of a trigger whose flow was
        deleted while the scheduler was down must not survive, or deploying that flow again
        later would take it up and recover every slot since.
        """
        keys = sorted(self._stored)
        self._stored.clear()
        return keys

    # -- flows ------------------------------------------------------------------------------

    def sync_flow(self, flow: Flow) -> SyncResult:
        """Add, change or drop the flow's Schedule triggers after a deploy, update or delete."""
        if flow.deleted:
            return self.remove_flow(flow.namespace, flow.id)
        now = self._clock()
        result = SyncResult()
        wanted = {t.id: t for t in flow.triggers if isinstance(t, ScheduleTrigger)}
        uid = flow.uid
        for key in self._by_flow.get(uid, []):
            if self._entries[key].trigger.id not in wanted:
                self._drop(key)
                result.removed.append(key)
        keys = []
        for trigger in wanted.values():
            key = trigger_key(flow.namespace, flow.id, trigger.id)
            keys.append(key)
            changed = self._sync_trigger(key, flow, trigger, now)
            if changed is not None:
                result.states.append(changed)
        if keys:
            self._by_flow[uid] = keys
        else:
            self._by_flow.pop(uid, None)
        return result

    def remove_flow(self, namespace: str, flow_id: str) -> SyncResult:
        """Forget a deleted flow's triggers; their records should be deleted (``removed``)."""
        keys = self._by_flow.pop(f"{namespace}/{flow_id}", [])
        for key in keys:
            self._drop(key)
        return SyncResult(removed=list(keys))

    def _drop(self, key: str) -> None:
        self._entries.pop(key, None)
        self._stored.pop(key, None)
        self.index.remove(key)

    def _sync_trigger(
        self, key: str, flow: Flow, trigger: ScheduleTrigger, now: datetime
    ) -> TriggerState | None:
        cron = cron_for(trigger)
        active = not (trigger.disabled or flow.disabled)
        entry = self._entries.get(key)
        if entry is None:
            blank = TriggerState(flow.namespace, flow.id, trigger.id, flow_revision=flow.revision)
            entry = _Entry(flow, trigger, cron, blank, False, _late_delay(trigger, key))
            self._entries[key] = entry
            stored = self._stored.pop(key, None)
            if stored is not None and active:
                entry.active = True
                self._adopt(entry, stored, now)
                return None
            if stored is not None:
                entry.state = stored
            return self._activate(entry, now) if active else None
        was_active, old_schedule = entry.active, entry.schedule
        entry.flow, entry.trigger = flow, trigger
        entry.set_cron(cron)
        entry.late_delay = _late_delay(trigger, key)
        if not active:
            entry.active = False
            self.index.remove(key)
            return None
        if was_active and entry.schedule == old_schedule:
            return None  # same slots: inputs or revision may change, the plan does not
        return self._activate(entry, now)

    def _activate(self, entry: _Entry, now: datetime) -> TriggerState | None:
        """(Re)start a trigger from now: its next slot after now, no backfill."""
        entry.active = True
        if entry.state.disabled:
            self.index.remove(entry.state.key)
            return None
        self._plan(entry, _later(now, entry.state.date))
        return entry.state

    def _plan(self, entry: _Entry, after: datetime) -> None:
        next_slot = entry.cron.next_after(after)
        entry.state = entry.state.evolve(
            next_execution_date=next_slot,
            flow_revision=entry.flow.revision,
            schedule=entry.schedule,
        )
        self._index(entry)

    def _index(self, entry: _Entry) -> None:
        state = entry.state
        dues = []
        if entry.active and not state.disabled:
            if state.next_execution_date is not None:
                dues.append(state.next_execution_date)
            backfill_due = self._backfill_due(entry)
            if backfill_due is not None:
                dues.append(backfill_due)
        if dues:
            self.index.update(state.key, min(dues))
        else:
            self.index.remove(state.key)

    def _backfill_due(self, entry: _Entry) -> datetime | None:
        backfill = entry.state.backfill
        if backfill is None or backfill.paused:
            return None
        slot = backfill.next_slot(entry.cron)
        if slot is None:
            return None
        wait = entry.backfill_wait
        return slot if wait is None or wait < slot else wait

    # -- stored records -----------------------------------------------------------------------

    def load_state(self, state: TriggerState) -> None:
        """Take up a record read from the triggers topic (at start, before or after the flows).

        The record's last slot is never fired again. When its next slot is already past, the
        trigger's ``recoverMissedSchedules`` decides what is fired for the missed slots.
        """
        key = state.key
        entry = self._entries.get(key)
        if entry is None:
            self._stored[key] = state
            return
        if _is_older(state, entry.state):
            return  # this process has already moved past the stored record
        if not entry.active:
            entry.state = state
            return
        self._adopt(entry, state, self._clock())

    def _adopt(
        self,
        entry: _Entry,
        stored: TriggerState,
        now: datetime,
        *,
        handover: timedelta | None = None,
    ) -> None:
        """Take up ``stored``: its owed slot, the missed ones as ``recoverMissedSchedules``
        says; ``handover`` (default: the book's) counts recent slots as delayed, not missed."""
        entry.state = stored.evolve(flow_revision=entry.flow.revision)
        if stored.disabled:
            self._index(entry)
            return
        owed = stored.next_execution_date
        last = stored.date
        if stored.schedule != entry.schedule or owed is None or (last and owed <= last):
            # The cron changed while the scheduler was away (or the record is unusable):
            # the old slots mean nothing for the new schedule, start again from now.
            self._plan(entry, _later(now, last))
            return
        # later slots were delayed by a handover
        missed_until = now - (self._handover if handover is None else handover)
        if owed <= missed_until:
            policy = entry.trigger.recoverMissedSchedules or self._default_recovery
            if policy == "NONE":
                self._plan(entry, _later(missed_until, last))
                return
            if policy == "LAST":
                latest = entry.cron.latest_at_or_before(missed_until)
                if latest is not None and (last is None or latest > last):
                    owed = latest
        entry.state = entry.state.evolve(next_execution_date=owed, schedule=entry.schedule)
        self._index(entry)

    # -- ticks --------------------------------------------------------------------------------

    def tick(self, now: datetime | None = None) -> list[Fire]:
        """The fires owed at ``now`` (default: the clock), in due order; O(k log n) for k due."""
        moment = self._clock() if now is None else now
        fires: list[Fire] = []
        for key in self.index.pop_due(moment):
            entry = self._entries.get(key)
            if entry is None or not entry.active or entry.state.disabled:
                continue
            fires.extend(self._fire(entry, moment))
            if entry.state.backfill is not None:
                fires.extend(self._fire_backfill(entry, moment))
            self._index(entry)
        return fires

    def _fire(self, entry: _Entry, now: datetime) -> list[Fire]:
        slots, upcoming, warning = self._owed_slots(entry, now)
        fires: list[Fire] = []
        state = entry.state
        cron, flow, trigger_id = entry.cron, entry.flow, entry.trigger.id
        for slot in slots:
            if entry.late_delay is not None and slot + entry.late_delay < now:
                continue  # owed for longer than lateMaximumDelay: skipped, as in Kestra
            view = cron.view(slot)
            if entry.trigger.conditions and not _slot_passes(entry, view):
                continue  # its conditions say no: this slot is skipped, as in Kestra
            event = self._event(entry, slot, view)
            # Built directly, not with dataclasses.replace: this is the hot path at a boundary.
            state = TriggerState(
                flow.namespace,
                flow.id,
                trigger_id,
                slot,
                view.following,
                False,
                flow.revision,
                event.execution_id,
                entry.schedule,
                state.backfill,
                state.command_offset,
            )
            fires.append(Fire(state.key, slot, event, state, warning if not fires else None))
        if warning is not None:
            log.warning(warning)
        if state.next_execution_date != upcoming:
            state = state.evolve(next_execution_date=upcoming)
        entry.state = state
        return fires

    def _owed_slots(
        self, entry: _Entry, now: datetime
    ) -> tuple[list[datetime], datetime | None, str | None]:
        """The slots owed up to ``now`` (at most ``recovery_cap``), the next one, and a warning."""
        state, cron, cap = entry.state, entry.cron, self._cap
        slot = state.next_execution_date
        last = state.date
        slots: list[datetime] = []
        while slot is not None and slot <= now and len(slots) <= cap:
            if last is None or slot > last:  # the book's promise: never a slot twice
                slots.append(slot)
            slot = cron.next_after(slot)
        if len(slots) <= cap:
            return slots, slot, None
        latest = [s for s in _latest_slots(cron, now, cap) if last is None or s > last]
        warning = (
            f"trigger {state.key}: more than {cap} schedules missed since"
            f" {slots[0].isoformat()}; only the latest {cap} are recovered"
        )
        return latest, cron.next_after(now), warning

    def _event(self, entry: _Entry, slot: datetime, view: SlotView) -> ExecutionCreated:
        flow, trigger = entry.flow, entry.trigger
        execution_id = derived_id("schedule", flow.namespace, flow.id, trigger.id, view.utc_text)
        return trigger_execution(flow, trigger, execution_id, _variables(view), schedule_date=slot)

    # -- backfills ----------------------------------------------------------------------------

    def _fire_backfill(self, entry: _Entry, now: datetime) -> list[Fire]:
        """The next batch of the trigger's backfill owed at ``now`` (none while paused)."""
        backfill = entry.state.backfill
        if backfill is None or backfill.paused:
            return []
        wait = entry.backfill_wait
        if wait is not None and wait > now:
            return []
        fires: list[Fire] = []
        slot = backfill.next_slot(entry.cron)
        while slot is not None and slot <= now and len(fires) < self._backfill_slots:
            view = entry.cron.view(slot)
            backfill = backfill.after(slot)
            if not entry.trigger.conditions or _slot_passes(entry, view):
                event = self._backfill_event(entry, backfill, slot, view)
                entry.state = entry.state.evolve(backfill=backfill)
                fires.append(Fire(entry.state.key, slot, event, entry.state, backfill=True))
            slot = backfill.next_slot(entry.cron)
        if slot is None:
            log.info("trigger %s: backfill %s done", entry.state.key, backfill.id)
            entry.state = entry.state.evolve(backfill=None)
            entry.backfill_wait = None
        else:
            entry.state = entry.state.evolve(backfill=backfill)
            entry.backfill_wait = now + self._backfill_interval if fires else None
        return fires

    def _backfill_event(
        self, entry: _Entry, backfill: Backfill, slot: datetime, view: SlotView
    ) -> ExecutionCreated:
        flow, trigger = entry.flow, entry.trigger
        execution_id = backfill_execution_id(
            flow.namespace, flow.id, trigger.id, backfill.id, view.utc_text
        )
        variables = _variables(view)
        return trigger_execution(
            flow, trigger, execution_id, variables,
            inputs={**trigger.inputs, **backfill.inputs},
            labels=_backfill_labels(entry, backfill, variables),
            schedule_date=slot,
        )  # fmt: skip

    # -- commands from the triggers API --------------------------------------------------------

    def apply_command(self, command: TriggerCommand, offset: int) -> TriggerState | None:
        """Apply a trigger command read at ``offset``; returns the record to write (with the
        command's offset, also when the command does not apply: logged), or None for an
        unknown trigger and a command already in the record."""
        entry = self._entries.get(command.key)
        if entry is None:
            log.warning("trigger command %s for unknown trigger %s ignored", command.action,
                        command.key)  # fmt: skip
            return None
        applied = entry.state.command_offset
        if applied is not None and offset <= applied:
            return None  # read again after a restart: already in the record
        try:
            changed = apply_to_state(entry.state, command)
        except CommandError as exc:  # recorded all the same: its sender learns it was read
            log.info("trigger command %s on %s: %s", command.action, command.key, exc)
            entry.state = entry.state.evolve(command_offset=offset)
            return entry.state
        if command.action == "enable" and entry.state.disabled:
            entry.state = entry.state.evolve(command_offset=offset)
            self.set_disabled(command.key, False, recover=command.recover)
            return entry.state
        entry.state = changed.evolve(command_offset=offset)
        if command.action in ("set-backfill", "delete"):
            entry.backfill_wait = None
        if command.action == "delete" and entry.active:
            self._plan(entry, self._clock())  # recreated from the flow: its next slot from now
            return entry.state
        self._index(entry)
        return entry.state

    # -- ended executions -----------------------------------------------------------------------

    def on_execution_end(
        self, key: str, execution_id: str, state: StateType
    ) -> TriggerState | None:
        """Apply ``stopAfter``: disable the trigger when its execution ended in a listed state.

        Returns the record to write, or None when nothing changed. ``execution_id`` is the
        ended execution (kept in the log line; any execution of the trigger counts, as in Kestra).
        """
        entry = self._entries.get(key)
        if entry is None or entry.state.disabled:
            return None
        stop_after = entry.trigger.stopAfter or []
        if state not in stop_after:
            return None
        log.info("trigger %s disabled: execution %s ended %s (stopAfter)", key, execution_id, state)
        entry.state = entry.state.evolve(disabled=True, next_execution_date=None)
        self.index.remove(key)
        return entry.state

    def set_disabled(
        self, key: str, disabled: bool, *, recover: bool = False
    ) -> TriggerState | None:
        """Disable or re-enable a trigger by hand; re-enabled, it restarts from now (Kestra's
        default for the API), or with ``recover`` from the slot after the last one it fired,
        the missed slots then fired as its ``recoverMissedSchedules`` says, as after a
        scheduler's downtime (a trigger that never fired has nothing to recover)."""
        entry = self._entries.get(key)
        if entry is None or entry.state.disabled == disabled:
            return None
        entry.state = entry.state.evolve(disabled=disabled, next_execution_date=None)
        if disabled:
            self.index.remove(key)
            return entry.state
        if not entry.active:
            return entry.state
        last, now = entry.state.date, self._clock()
        if recover and last is not None:
            owed = entry.cron.next_after(last)
            stored = entry.state.evolve(next_execution_date=owed)
            self._adopt(entry, stored, now, handover=timedelta(0))  # no lease moved here
        else:
            self._plan(entry, _later(now, last))
        return entry.state


def _variables(view: SlotView) -> dict[str, str | None]:
    """A slot's ``trigger.*`` variables."""
    return {"date": view.date, "next": view.next, "previous": view.previous}


def _backfill_labels(
    entry: _Entry, backfill: Backfill, variables: dict[str, str | None]
) -> dict[str, str]:
    """The backfill's labels with their values rendered for the slot (``{{ trigger.date }}``,
    ``{{ flow.id }}``), as Kestra renders them; a value that cannot be rendered is kept as
    written, with a warning naming the trigger, so the slot still fires."""
    ctx = condition_context(entry.flow, variables)
    labels: dict[str, str] = {}
    for key, value in backfill.labels.items():
        try:
            labels[key] = render(value, ctx)
        except RenderError as exc:
            log.warning("trigger %s: backfill label %r not rendered: %s", entry.state.key, key, exc)
            labels[key] = value
    return labels


def _slot_passes(entry: _Entry, view: SlotView) -> bool:
    """Whether the trigger's conditions hold for the slot; one that cannot be evaluated
    skips the slot, with a warning naming the trigger."""
    ctx = condition_context(entry.flow, _variables(view))
    try:
        return conditions_hold(entry.trigger.condition_models, ctx)
    except ConditionError as exc:
        log.warning("trigger %s: slot %s skipped: %s", entry.state.key, view.date, exc)
        return False


def _later(now: datetime, last: datetime | None) -> datetime:
    return now if last is None or last < now else last


def _is_older(stored: TriggerState, current: TriggerState) -> bool:
    return current.date is not None and (stored.date is None or stored.date < current.date)


def _latest_slots(cron: Cron, now: datetime, count: int) -> list[datetime]:
    """The ``count`` latest slots at or before ``now``, oldest first."""
    found: list[datetime] = []
    slot = cron.latest_at_or_before(now)
    while slot is not None and len(found) < count:
        found.append(slot)
        slot = cron.previous_before(slot)
    found.reverse()
    return found


def _late_delay(trigger: ScheduleTrigger, key: str) -> timedelta | None:
    if trigger.lateMaximumDelay is None:
        return None
    try:
        return parse_duration(trigger.lateMaximumDelay)
    except DurationError:
        # An expression: the scheduler does not render templates, so the delay is not applied.
        log.warning(
            "trigger %s: lateMaximumDelay %r is not a duration, ignored",
            key,
            trigger.lateMaximumDelay,
        )
        return None
