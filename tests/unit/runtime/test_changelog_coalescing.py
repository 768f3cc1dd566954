"""A cycle's changelog records, coalesced (:meth:`Outbox.coalesce`): each key's last record
only, where a kill anywhere in the write leaves what it left before; and its execution updates,
built once per execution at the write (:meth:`Outbox.build_updates`): fewer records that leave
a reader where an update per step would.

The cycles here step every event the worker answered so far together (a ForEach of two
concurrent lanes: several steps of one execution per cycle), as the processor's loop does with a
fetched batch; the kill test kills after every record of every coalesced cycle, and the next
owner, recovering through the real recovery code, replays the whole cycle (none of its offsets
were committed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.execution_updates import MergedExecution, merge_update
from kestream.runtime.executor_outbox import CommandRecord, Outbox
from kestream.runtime.flows_table import FlowsTable
from kestream.runtime.scheduler_service import SchedulerService
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from tests.unit.runtime.test_torn_changelog import (
    FLOW,
    Changelog,
    _jobs,
    _next_owner,
    _no_admission_slots,  # noqa: F401 (an autouse fixture)
    _processor,
    _read,
)

DYN, END = codec.header_key("x", codec.DYNAMIC), codec.header_key("x", codec.ENDED)


def _keys(out: Outbox) -> list[tuple[str, bytes | None]]:
    return [(k, v) for k, v, _ in out.changelog]


def test_each_key_keeps_its_last_record_up_to_the_last_commit_mark() -> None:
    out = Outbox()
    out.log("x/a", {"v": 1}, 0)
    out.log(DYN, {"d": 1}, 0)  # step 1's mark
    out.log("x/a", {"v": 2}, 0)
    out.log("x/b", {"v": 1}, 0)
    out.log(DYN, {"d": 2}, 0)  # step 2's mark
    out.log("y/a", {"v": 1}, 0)  # another execution's records are its own
    assert out.coalesce() == 2
    assert _keys(out) == [("x/a", b'{"v":2}'), ("x/b", b'{"v":1}'), (DYN, b'{"d":2}'),
                          ("y/a", b'{"v":1}')]  # fmt: skip


def test_a_commit_mark_kept_bounds_what_goes_before_it() -> None:
    # An end, then a restart from the snapshot in the same cycle: the restart's first record
    # is the marker's tombstone, a commit mark; the header before it must stay (a kill right
    # after the tombstone would otherwise fold the end's other tombstones without the header's).
    out = Outbox()
    out.log("x", None, 0)
    out.log("x/a", None, 0)
    out.log(END, {"state": "FAILED"}, 0)
    out.log(END, None, 0)
    out.log("x", {"h": 2}, 0)
    out.log(DYN, {"d": 1}, 0)
    assert out.coalesce() == 1  # the marker its tombstone replaces, nothing else
    assert _keys(out) == [("x", None), ("x/a", None), (END, None), ("x", b'{"h":2}'),
                          (DYN, b'{"d":1}')]  # fmt: skip


RESTARTED = """
id: restarted
namespace: test.torn
tasks:
  - id: first
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
  - id: fail
    type: io.kestra.plugin.core.execution.Fail
"""

QUICK = """
id: quick
namespace: test.torn
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
"""

#: Two ForEach executions stepped in the same cycles (t1, t2), one that fails and is restarted
#: in the cycle it ends in (r1: the ended marker, then its tombstone), and one begun and ended
#: in a cycle that drops records of the others (q1).
STARTS = [ev.ExecutionCreated(e, "test.torn", f) for e, f in
          (("t1", "torn"), ("r1", "restarted"), ("t2", "torn"))]  # fmt: skip
LATER = {2: [ev.ExecutionCreated("q1", "test.torn", "quick")]}
EXECUTIONS = {"t1", "t2", "r1", "q1"}


@dataclass
class _Run:
    #: Each execution's last ended JSON.
    final: dict[str, Any] = field(default_factory=dict)
    #: Each cycle's number of changelog records dropped by coalescing, and kept.
    dropped: list[int] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    changelog: Changelog = field(default_factory=list)
    #: Records of the next owner's repairs that coalescing dropped (a later record replaced).
    repairs_dropped: int = 0
    #: Each cycle's updates: as an update per step would make them, and as written.
    updates: list[tuple[list[CommandRecord], list[CommandRecord]]] = field(default_factory=list)


FLOWS = (FLOW, RESTARTED, QUICK)


def _processor_of_all() -> Any:
    service = _processor(*FLOWS)
    service.owned = {0}
    return service


def _step_cycle(service: Any, cycle: list[ev.Event], out: Outbox, offset: int, *,
                first: bool, per_step: list[CommandRecord] | None = None) -> None:  # fmt: skip
    """Apply the cycle's events; the first time, r1's first end is followed by its restart in
    the same cycle (added to ``cycle``, which a replay applies again). ``per_step`` gets the
    update records each event would make if its update were built right after it."""
    i = 0
    while i < len(cycle):
        staged = Outbox()
        service._apply(0, cycle[i], staged, ("executions", offset + i))
        if per_step is not None:
            alone = Outbox()
            alone.extend(staged)
            alone.build_updates(service.topics.updates, service.writer.partial_update)
            per_step += [r for r in alone.commands if r[0] == service.topics.updates]
        out.extend(staged)
        i += 1
        restarted = any(isinstance(e, ev.Restart) for e in cycle)
        if first and not restarted and (ended := _ended(service, out).get("r1")) is not None:
            cycle.insert(i, ev.Restart("r1", ended))


def _ended(service: Any, out: Outbox) -> dict[str, Any]:
    """The executions that ended in ``out``, by id: their last ended JSON."""
    ended = {}
    for topic, key, value, _ in out.commands:
        if topic == service.topics.updates and value is not None:
            body = records.loads(value)
            if body["terminal"]:
                ended[key] = body["execution"]
    return ended


def _cycles(kill: tuple[int, int] | None = None) -> _Run:
    """Run the executions to their end, a cycle stepping every event answered so far;
    ``kill=(cycle, k)``: the processor dies once ``k`` of that cycle's coalesced changelog
    records are written, and the next owner replays the cycle."""
    service = _processor_of_all()
    run = _Run()
    pending: list[ev.Event] = list(STARTS)
    answered: set[tuple[str, int]] = set()
    offset = 0
    while pending:
        cycle, pending = pending, []
        out = Outbox()
        before: list[CommandRecord] = []
        _step_cycle(service, cycle, out, offset, first=True, per_step=before)
        offset += len(cycle)
        run.dropped.append(out.coalesce())
        run.sizes.append(len(out.changelog))
        jobs = _jobs(service, out)
        service.writer.coalesce(out)
        run.updates.append((before, [r for r in out.commands if r[0] == service.topics.updates]))
        if kill is not None and kill[0] == len(run.dropped) - 1:
            run.changelog.extend(_keys(out)[: kill[1]])
            run.final.update(_ended(service, out))
            service = _next_owner(run.changelog, *FLOWS)
            out = Outbox()
            service.recovery.take_repairs(out)
            repairs = list(out.changelog)
            _step_cycle(service, cycle, out, offset - len(cycle), first=False)
            out.coalesce()
            run.repairs_dropped += sum(all(r is not k for k in out.changelog) for r in repairs)
            jobs += _jobs(service, out)
        run.changelog.extend(_keys(out))
        run.final.update(_ended(service, out))
        for execution_id, run_id, attempt in jobs:
            if (run_id, attempt) not in answered:
                answered.add((run_id, attempt))
                pending.append(ev.WorkerResult(execution_id, run_id, attempt, StateType.SUCCESS))
        pending += LATER.get(len(run.dropped) - 1, [])
    assert set(run.final) == EXECUTIONS, f"an execution did not end (killed: {kill})"
    return run


def test_a_kill_anywhere_in_a_coalesced_cycle_ends_as_a_run_without_it() -> None:
    reference = _cycles()
    assert {e: x["state"]["current"] for e, x in reference.final.items()} == {
        "t1": "SUCCESS", "t2": "SUCCESS", "q1": "SUCCESS", "r1": "FAILED"}  # fmt: skip
    assert reference.final["r1"]["metadata"]["attemptNumber"] == 2  # restarted, failed again
    assert len(reference.final["t1"]["taskRunList"]) == 1 + 1 + 3 * 2 + 1
    assert sum(reference.dropped) > 0  # some cycle stepped an execution more than once
    repairs_dropped = 0
    for cycle, records_written in enumerate(reference.sizes):
        for k in range(records_written + 1):
            killed = _cycles((cycle, k))
            where = f"killed after {k} of {records_written} records of cycle {cycle}"
            assert killed.final == reference.final, where
            done = _read(killed.changelog)
            assert done.torn == {}, where
            assert set(done.latest) == EXECUTIONS, where
            for execution_id, keys in done.latest.items():
                assert set(keys) == {codec.header_key(execution_id, codec.ENDED)}, where
            repairs_dropped += killed.repairs_dropped
    assert repairs_dropped > 0  # some torn write's repair went for a later record of its key


# -- execution updates ------------------------------------------------------------------------


def _merged(values: list[bytes], current: MergedExecution | None) -> MergedExecution | None:
    for value in values:
        current = merge_update(current, records.loads(value))
    return current


def _stops(values: list[bytes]) -> list[tuple[str, bool]]:
    """The full updates' states (the pauses and ends readers act on), in order."""
    bodies = [records.loads(value) for value in values]
    return [(b["execution"]["state"]["current"], b["terminal"]) for b in bodies if b["full"]]


def _settled(value: Any) -> Any:
    """``value`` without the durations of states still running: the time since they began,
    as of when the update was built (at each step, or once at the write)."""
    if isinstance(value, list):
        return [_settled(item) for item in value]
    if not isinstance(value, dict):
        return value
    running = "endDate" in value and value["endDate"] is None
    return {k: _settled(v) for k, v in value.items() if not (running and k == "duration")}


def test_a_cycles_updates_coalesced_leave_a_reader_where_each_steps_would() -> None:
    """Per execution (two interleaved, one ended and restarted in one cycle), a reader of the
    coalesced updates knows after each cycle what a reader of every update knows, and sees
    every full update (each end of r1, both attempts)."""
    one_by_one: dict[str, MergedExecution | None] = {}
    coalesced: dict[str, MergedExecution | None] = {}
    stops: dict[str, list[tuple[str, bool]]] = {}
    sent = kept = 0
    for before, after in _cycles().updates:
        sent, kept = sent + len(before), kept + len(after)
        for key in {key for _, key, _, _ in before}:
            sent_values = [v for _, k, v, _ in before if k == key and v is not None]
            kept_values = [v for _, k, v, _ in after if k == key and v is not None]
            assert _stops(kept_values) == _stops(sent_values)
            stops[key] = stops.get(key, []) + _stops(kept_values)
            one_by_one[key] = _merged(sent_values, one_by_one.get(key))
            coalesced[key] = _merged(kept_values, coalesced.get(key))
            mine, theirs = coalesced[key], one_by_one[key]
            assert mine is not None and theirs is not None
            assert _settled(mine.json()) == _settled(theirs.json())
            assert (mine.terminal, mine.complete) == (theirs.terminal, True)
    assert all(merged is not None and merged.terminal for merged in coalesced.values())
    assert stops["r1"] == [("FAILED", True), ("FAILED", True)]
    assert kept < sent


def test_partial_updates_are_built_once_per_execution_at_the_write() -> None:
    out = Outbox()
    out.partial_update("x", ["r1"])
    out.send("jobs", "x", b"job")
    out.partial_update("y", [])
    out.partial_update("x", ["r2", "r1"])
    built: list[tuple[str, list[str]]] = []

    def build(execution_id: str, changed: list[str]) -> list[bytes]:
        built.append((execution_id, changed))
        return [] if execution_id == "y" else [b"x-update"]  # y left the table

    assert out.build_updates("updates", build) == 1
    assert built == [("x", ["r1", "r2"]), ("y", [])]
    assert out.commands == [("jobs", "x", b"job", None), ("updates", "x", b"x-update", None)]
    assert out.partial_updates == {} and out.build_updates("updates", build) == 0


def test_a_full_update_replaces_the_partial_updates_noted_before_it_every_full_stays() -> None:
    out = Outbox()
    out.partial_update("x", ["r1"])
    out.full_update("updates", "x", [b"paused"])
    out.partial_update("x", ["r2"])
    staged = Outbox()  # an event's records, staged apart, then taken
    staged.partial_update("x", ["r3"])
    staged.full_update("updates", "x", [b"ended-1", b"ended-2"])  # a split full update
    out.extend(staged)
    assert out.partial_updates == {} and not out.empty()
    restarted = Outbox()
    restarted.partial_update("x", ["r4"])
    out.extend(restarted)
    out.build_updates("updates", lambda execution_id, changed: [repr(changed).encode()])
    assert [value for _, _, value, _ in out.commands] == [
        b"paused",
        b"ended-1",
        b"ended-2",
        b"['r4']",
    ]


PAUSED_THEN_LOG = """
id: paused
namespace: test.torn
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    delay: PT0S
  - id: done
    type: io.kestra.plugin.core.log.Log
    message: hi
"""

LISTENER = """
id: downstream
namespace: test.torn
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
  - id: on-paused
    type: io.kestra.plugin.core.trigger.Flow
    states: [PAUSED]
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: test.torn
        flowId: paused
  - id: on-any
    type: io.kestra.plugin.core.trigger.Flow
    conditions:
      - type: io.kestra.plugin.core.condition.ExecutionFlow
        namespace: test.torn
        flowId: paused
"""


def test_a_pause_passed_within_the_cycle_still_fires_the_flow_triggers_on_paused() -> None:
    """A pause whose delay has already passed is resumed in the cycle that paused the
    execution: its full PAUSED update and its end's are written together, and both must
    reach the scheduler (which reads only full updates), so a Flow trigger listening to
    PAUSED starts its execution, as does one listening to the default states for each."""
    service = _processor(PAUSED_THEN_LOG)
    service.owned = {0}
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("p1", "test.torn", "paused"), out, ("executions", 0))
    service._step_time(out)
    service.writer.coalesce(out)
    updates = _updates_of(service, out)
    assert _stops(updates) == [("PAUSED", False), ("SUCCESS", True)]

    settings = Settings(broker="localhost:1")
    ctx = BrokerContext(settings, "localhost:1", "kafka", Topics.of(settings))
    scheduler = SchedulerService(ctx, cast(FlowsTable, None))
    scheduler.flow_triggers.sync_flow(parse_flow(LISTENER))
    fired = [
        (event.trigger or {}).get("id")
        for offset, value in enumerate(updates)
        for event in scheduler._on_update(cast(Any, SimpleNamespace(value=value, offset=offset)))
    ]
    assert fired == ["on-paused", "on-any", "on-any"]


def _updates_of(service: Any, out: Outbox) -> list[bytes]:
    return [v for t, _, v, _ in out.commands if t == service.topics.updates and v is not None]


def test_no_partial_update_for_an_execution_gone_a_dead_letter_for_one_not_encodable(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An update that cannot be built is dead-lettered with the reason, as the event of a
    full update that cannot be is: its steps' changelog is written all the same."""
    service = _processor()
    service.owned = {0}
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("t1", "test.torn", "torn"), out, ("executions", 0))
    assert list(out.partial_updates) == ["t1"] and _updates_of(service, out) == []  # waits
    assert service._partial_update("gone", ["r1"]) == []
    (update,) = service._partial_update("t1", [])
    assert records.loads(update)["execution"]["id"] == "t1"

    def unencodable(st: Any, changed: list[str]) -> list[bytes]:
        raise ValueError("no JSON for this")

    monkeypatch.setattr(service.router, "partial_update", unencodable)
    service.writer.coalesce(out)
    assert _updates_of(service, out) == [] and out.changelog  # the steps' changelog goes
    (letter,) = [v for t, _, v, _ in out.commands if t == service.topics.dead_letter]
    body = records.loads(letter)
    assert (body["topic"], body["key"]) == (service.topics.updates, "t1")
    assert body["reason"] == (
        "the execution update of the cycle cannot be made: ValueError('no JSON for this')"
    )
    assert "t1: its update of this cycle cannot be made" in caplog.text


def test_an_update_that_cannot_be_encoded_is_dead_lettered_once_until_one_is_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every cycle that touches an execution whose state no update can encode would add a dead
    letter: it is dead-lettered once, and again only after an update of it was made (a full
    one, or a partial one again)."""
    service = _processor()
    encodable = False

    def partial_update(st: Any, changed: list[str]) -> list[bytes]:
        if not encodable:
            raise ValueError("no JSON for this")
        return [b"update"]

    monkeypatch.setattr(service.router, "partial_update", partial_update)
    service._apply(0, ev.ExecutionCreated("t1", "test.torn", "torn"), Outbox(), ("executions", 0))

    def letters_of_a_cycle(full: bool = False) -> int:
        out = Outbox()
        if full:
            out.full_update(service.topics.updates, "t1", [b"full"])
        out.partial_update("t1", ["r1"])
        service.writer.coalesce(out)
        return len([v for t, _, v, _ in out.commands if t == service.topics.dead_letter])

    assert [letters_of_a_cycle() for _ in range(3)] == [1, 0, 0]
    assert letters_of_a_cycle(full=True) == 1  # its full update said all: a new lag
    encodable = True
    assert letters_of_a_cycle() == 0
    encodable = False
    assert [letters_of_a_cycle() for _ in range(2)] == [1, 0]


def test_a_full_update_built_and_written_replaces_no_later_note() -> None:
    written = Outbox()
    written.full_update("updates", "x", [b"ended"])
    written.build_updates("updates", lambda execution_id, changed: [])
    later = Outbox()
    later.partial_update("x", ["r1"])
    later.extend(written)
    assert later.partial_updates == {"x": {"r1": None}}
