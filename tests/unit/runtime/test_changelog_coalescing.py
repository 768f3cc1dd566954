"""A cycle's changelog records, coalesced (:meth:`Outbox.coalesce`): each key's last record
only, where a kill anywhere in the write leaves what it left before.

The cycles here step every event the worker answered so far together (a ForEach of two
concurrent lanes: several steps of one execution per cycle), as the processor's loop does with a
fetched batch; the kill test kills after every record of every coalesced cycle, and the next
owner, recovering through the real recovery code, replays the whole cycle (none of its offsets
were committed)."""

from __future__ import annotations

from typing import Any

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.models.state import StateType
from kestream.runtime.executor_outbox import Outbox
from tests.unit.runtime.test_torn_changelog import (
    Changelog,
    _jobs,
    _next_owner,
    _no_admission_slots,  # noqa: F401 (an autouse fixture)
    _processor,
    _read,
    _terminal,
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


def test_nothing_dropped_leaves_the_carried_markers_alone() -> None:
    out = Outbox()
    out.log(END, {"state": "SUCCESS"}, 0, deferrable=True)
    out.log(codec.header_key("y", codec.ENDED), {"state": "SUCCESS"}, 0, deferrable=True)
    assert out.coalesce() == 0
    assert out.deferrable == 2


def _cycles(kill: tuple[int, int] | None = None) -> tuple[dict[str, Any], list[int], Changelog]:
    """Run the flow to its end, a cycle stepping every event answered so far; ``kill=(cycle,
    k)``: the processor dies once ``k`` of that cycle's coalesced changelog records are written,
    and the next owner replays the cycle. Returns the final execution, each cycle's number of
    records dropped by coalescing, and the changelog."""
    service = _processor()
    service.owned = {0}
    changelog: Changelog = []
    pending: list[ev.Event] = [ev.ExecutionCreated("t1", "test.torn", "torn")]
    answered: set[tuple[str, int]] = set()
    dropped: list[int] = []
    final = None
    offset = 0
    while pending:
        cycle, pending = pending, []
        out = Outbox()
        for event in cycle:
            service._apply(0, event, out, ("executions", offset))
            offset += 1
        dropped.append(out.coalesce())
        jobs = _jobs(service, out)
        if kill is not None and kill[0] == len(dropped) - 1:
            changelog.extend(_keys(out)[: kill[1]])
            final = _terminal(service, out) or final
            service = _next_owner(changelog)
            out = Outbox()
            service._take_repairs(out)
            for event in cycle:
                service._apply(0, event, out, ("executions", offset))
            out.coalesce()
            jobs += _jobs(service, out)
        changelog.extend(_keys(out))
        final = _terminal(service, out) or final
        for execution_id, run_id, attempt in jobs:
            if (run_id, attempt) not in answered:
                answered.add((run_id, attempt))
                pending.append(ev.WorkerResult(execution_id, run_id, attempt, StateType.SUCCESS))
    assert final is not None, "the execution did not end"
    return final, dropped, changelog


def test_a_kill_anywhere_in_a_coalesced_cycle_ends_as_a_run_without_it() -> None:
    reference, dropped, _ = _cycles()
    assert reference["state"]["current"] == "SUCCESS"
    assert len(reference["taskRunList"]) == 1 + 1 + 3 * 2 + 1
    assert sum(dropped) > 0  # some cycle stepped the execution more than once
    for cycle, n in enumerate(_cycle_sizes()):
        for k in range(n + 1):
            final, _, changelog = _cycles((cycle, k))
            assert final == reference, f"killed after {k} of {n} records of cycle {cycle}"
            done = _read(changelog)
            assert done.torn == {}
            assert set(done.latest) == {"t1"}
            assert set(done.latest["t1"]) == {codec.header_key("t1", codec.ENDED)}


def _cycle_sizes() -> list[int]:
    """Each cycle's coalesced changelog records in a run without a kill."""
    service = _processor()
    service.owned = {0}
    pending: list[ev.Event] = [ev.ExecutionCreated("t1", "test.torn", "torn")]
    answered: set[tuple[str, int]] = set()
    sizes = []
    while pending:
        cycle, pending = pending, []
        out = Outbox()
        for event in cycle:
            service._apply(0, event, out, ("executions", 0))
        out.coalesce()
        sizes.append(len(out.changelog))
        for execution_id, run_id, attempt in _jobs(service, out):
            if (run_id, attempt) not in answered:
                answered.add((run_id, attempt))
                pending.append(ev.WorkerResult(execution_id, run_id, attempt, StateType.SUCCESS))
    return sizes
