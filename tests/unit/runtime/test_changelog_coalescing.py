"""A cycle's changelog records, coalesced (:meth:`Outbox.coalesce`): each key's last record
only, where a kill anywhere in the write leaves what it left before; and its execution updates
(:meth:`Outbox.coalesce_updates`): fewer records that leave a reader where all of them would.

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
from kestream.runtime import records
from kestream.runtime.execution_updates import MergedExecution, coalesce_updates, merge_update
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


# -- execution updates ------------------------------------------------------------------------


def _updates(service: Any, out: Outbox) -> list[bytes]:
    return [v for t, _, v, _ in out.commands if t == service.topics.updates and v is not None]


def _merged(values: list[bytes], current: MergedExecution | None) -> MergedExecution | None:
    for value in values:
        current = merge_update(current, records.loads(value))
    return current


def test_a_cycles_updates_coalesced_leave_a_reader_where_each_steps_would() -> None:
    service = _processor()
    service.owned = {0}
    pending: list[ev.Event] = [ev.ExecutionCreated("t1", "test.torn", "torn")]
    answered: set[tuple[str, int]] = set()
    one_by_one = coalesced = None
    sent = kept = 0
    while pending:
        cycle, pending = pending, []
        out = Outbox()
        for event in cycle:
            service._apply(0, event, out, ("executions", 0))
        before = _updates(service, out)
        service.writer.coalesce(out)
        after = _updates(service, out)
        sent, kept = sent + len(before), kept + len(after)
        one_by_one, coalesced = _merged(before, one_by_one), _merged(after, coalesced)
        assert one_by_one is not None and coalesced is not None
        assert coalesced.json() == one_by_one.json()
        assert (coalesced.terminal, coalesced.complete) == (one_by_one.terminal, True)
        for execution_id, run_id, attempt in _jobs(service, out):
            if (run_id, attempt) not in answered:
                answered.add((run_id, attempt))
                pending.append(ev.WorkerResult(execution_id, run_id, attempt, StateType.SUCCESS))
    assert coalesced is not None and coalesced.terminal
    assert kept < sent


def _update(runs: list[str], *, version: int = 0, full: bool = False, more: bool = False) -> bytes:
    listed = [{"id": r, "v": version} for r in runs]
    execution: dict[str, Any] = {"id": "x", "v": version}
    body: dict[str, Any] = {"more": more, "terminal": False}
    if full:
        body.update(execution={**execution, "taskRunList": listed}, full=True)
    else:
        body.update(execution=execution, taskRuns=listed, full=False)
    return records.dumps(body)


def test_partial_updates_merge_within_the_record_limit_and_a_full_one_replaces_them() -> None:
    a, b, c = _update(["r1"], version=1), _update(["r2", "r1"], version=2), _update(["r3"])
    (merged,) = coalesce_updates([a, b, c], 10_000)
    body = records.loads(merged)
    assert [r["id"] for r in body["taskRuns"]] == ["r1", "r2", "r3"]
    assert body["taskRuns"][0]["v"] == 2 and body["execution"]["v"] == 0
    assert coalesce_updates([a, b, c], len(a) + len(b)) == [records.dumps({**records.loads(b),
        "taskRuns": [{"id": "r1", "v": 2}, {"id": "r2", "v": 2}]}), c]  # fmt: skip
    full = _update(["r1", "r2"], version=3, full=True)
    assert coalesce_updates([a, full, c], 10_000) == [full, c]
    split = [_update(["r1"], full=True, more=True), _update(["r2"])]  # one update, two records
    assert coalesce_updates([a, *split], 10_000) == split
