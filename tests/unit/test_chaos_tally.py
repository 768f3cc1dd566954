"""The chaos suite's counting (tests/integration/chaos_harness.py) on made-up observations:
what the broker tests assert to be zero must be counted when it happens."""

from __future__ import annotations

from typing import Any

import orjson

from kestream.settings import Settings
from tests.integration.chaos_harness import (
    Kill,
    Tally,
    UpdatesWatch,
    partition_of,
    render_table,
    tally_executions,
)

PARTITIONS = 4


def _watch() -> UpdatesWatch:
    return UpdatesWatch(Settings(topic_prefix="t."), "tansu")


def _asked(watch: UpdatesWatch, execution_id: str, at: float) -> None:
    """The ``created`` record of ``execution_id`` on the executions topic, at ``at``."""
    watch._note_asked(orjson.dumps({"type": "created", "id": execution_id}), at)


def _update(watch: UpdatesWatch, execution_id: str, state: str, at: float, *, end: bool) -> None:
    body = {"terminal": end, "execution": {"id": execution_id, "state": {"current": state}}}
    watch._note(orjson.dumps(body), at)


def _effect(execution_id: str, attempt: int = 1) -> dict[str, Any]:
    return {"execution": execution_id, "taskRun": f"{execution_id}-run", "attempt": attempt}


def test_a_clean_run_counts_nothing_and_measures_recovery() -> None:
    watch = _watch()
    submitted = {"a": 100.0, "b": 100.0}
    for execution_id, end in (("a", 101.0), ("b", 112.5)):
        _update(watch, execution_id, "RUNNING", 100.1, end=False)
        _update(watch, execution_id, "SUCCESS", end, end=True)
    _update(watch, "a", "SUCCESS", 130.0, end=True)  # the same end again (a replay): one end
    kill = Kill(110.0, "executor-0", 1, {partition_of("b", PARTITIONS)}, "executor")
    tally = tally_executions(
        "t", "tansu", submitted, watch, [_effect("a"), _effect("b")], [kill],
        partitions=PARTITIONS, bound_s=30.0,
    )  # fmt: skip
    assert (tally.lost, tally.doubled, tally.stuck, tally.failed) == (0, 0, 0, 0)
    assert tally.recoveries == [2.5]
    tally.assert_clean()


def test_lost_doubled_stuck_and_failed_are_each_counted() -> None:
    watch = _watch()
    submitted = {"never": 0.0, "twice": 0.0, "two-ends": 0.0, "late": 0.0, "failed": 0.0}
    _update(watch, "twice", "SUCCESS", 1.0, end=True)
    _update(watch, "two-ends", "SUCCESS", 1.0, end=True)
    _update(watch, "two-ends", "FAILED", 2.0, end=True)
    _update(watch, "late", "SUCCESS", 99.0, end=True)
    _update(watch, "failed", "FAILED", 1.0, end=True)
    effects = [_effect("twice"), _effect("twice"), _effect("two-ends"), _effect("late")]
    effects.append(_effect("failed"))
    tally = tally_executions(
        "t", "apache", submitted, watch, effects, [], partitions=PARTITIONS, bound_s=30.0
    )
    assert tally.lost == 1  # "never"
    assert tally.doubled == 2  # two effects of one attempt; two different end states
    assert tally.stuck == 1  # "late"
    assert tally.failed == 2  # "two-ends" (it has a FAILED end) and "failed"
    text = render_table([tally.row()])
    assert "| t | apache | 5 | 0 | 1 | 2 | 1 | 2 | - | - |" in text


def test_an_execution_that_ended_without_its_effect_is_lost() -> None:
    watch = _watch()
    _update(watch, "a", "SUCCESS", 1.0, end=True)
    tally = tally_executions("t", "tansu", {"a": 0.0}, watch, [], [], partitions=4, bound_s=30.0)
    assert tally.lost == 1


def test_a_scheduler_kill_recovers_at_the_first_execution_created_after_it() -> None:
    watch = _watch()
    created = {"before": 9.0, "after": 14.0}
    _update(watch, "before", "SUCCESS", 10.5, end=True)
    _update(watch, "after", "SUCCESS", 14.2, end=True)
    kill = Kill(10.0, "scheduler-0", 1, set(), "scheduler")
    tally = tally_executions(
        "t", "tansu", created, watch, [_effect("before"), _effect("after")], [kill],
        partitions=4, bound_s=30.0,
    )  # fmt: skip
    assert [round(r, 2) for r in tally.recoveries] == [4.2]


def _on(partition: int, prefix: str) -> str:
    """An execution id whose records go to ``partition``."""
    return next(
        f"{prefix}{n}"
        for n in range(10_000)
        if partition_of(f"{prefix}{n}", PARTITIONS) == partition
    )


def test_a_kill_recovers_when_its_slowest_partition_is_served_again() -> None:
    watch = _watch()
    fast, slow, other = _on(0, "fast"), _on(1, "slow"), _on(2, "other")
    submitted = {fast: 100.0, slow: 100.0, other: 100.0}
    _update(watch, fast, "SUCCESS", 111.0, end=True)
    _update(watch, slow, "SUCCESS", 170.0, end=True)
    _update(watch, other, "SUCCESS", 200.0, end=True)  # not the killed process's partition
    kill = Kill(110.0, "executor-0", 1, {0, 1, 3}, "executor")  # 3: no submission, left out
    effects = [_effect(fast), _effect(slow), _effect(other)]
    tally = tally_executions(
        "t", "apache", submitted, watch, effects, [kill], partitions=PARTITIONS, bound_s=300.0
    )
    assert tally.recoveries == [60.0]


def test_a_second_effect_under_a_new_attempt_or_task_run_id_is_doubled() -> None:
    watch = _watch()
    submitted = {"new-attempt": 0.0, "new-run-id": 0.0, "two-tasks": 0.0}
    for execution_id in submitted:
        _update(watch, execution_id, "SUCCESS", 1.0, end=True)
    effects = [
        _effect("new-attempt", 1),
        _effect("new-attempt", 2),
        _effect("new-run-id"),
        {**_effect("new-run-id"), "taskRun": "derived-again"},
        {**_effect("two-tasks"), "task": "first"},
        {**_effect("two-tasks"), "task": "second", "taskRun": "two-tasks-second"},
    ]
    tally = tally_executions(
        "t", "tansu", submitted, watch, effects, [], partitions=PARTITIONS, bound_s=30.0
    )
    assert tally.doubled == 2  # "two-tasks" ran each of its two tasks once
    assert [line.split(":")[0] for line in tally.details] == [
        "doubled effect ('new-attempt', '')",
        "doubled effect ('new-run-id', '')",
    ]


def _start(execution_id: str, at: float, pid: int) -> dict[str, Any]:
    return {**_effect(execution_id), "at": at, "pid": pid}


def test_a_worker_kill_is_taken_over_when_its_task_runs_start_again_elsewhere() -> None:
    watch = _watch()
    slow, quick = _on(0, "slow"), _on(1, "quick")
    submitted = {slow: 100.0, quick: 100.0}
    _update(watch, quick, "SUCCESS", 117.0, end=True)
    _update(watch, slow, "SUCCESS", 121.0, end=True)
    starts = [
        _start(slow, 101.0, pid=7),  # before the kill, on the killed worker
        _start(slow, 106.0, pid=7),  # after the kill, by the killed process: not a takeover
        _start(quick, 109.0, pid=8),
        _start(slow, 113.0, pid=8),  # the slowest partition's first start again
        _start(slow, 115.0, pid=9),
    ]
    kill = Kill(105.0, "worker-0", 7, {0, 1}, "worker")
    tally = tally_executions(
        "t", "apache", submitted, watch, [_effect(slow), _effect(quick)], [kill],
        partitions=PARTITIONS, bound_s=60.0, starts=starts,
    )  # fmt: skip
    assert tally.takeovers == [8.0]  # the Sleep's own run again is not in it
    assert tally.recoveries == [16.0]
    without = tally_executions(
        "t", "apache", submitted, watch, [_effect(slow), _effect(quick)], [kill],
        partitions=PARTITIONS, bound_s=60.0,
    )  # fmt: skip
    assert (without.takeovers, without.recoveries) == ([], [16.0])  # no start lines: no figure


def test_an_executor_kill_is_taken_over_at_the_first_update_of_each_partition() -> None:
    watch = _watch()
    first, second = _on(0, "first"), _on(1, "second")
    submitted = {first: 100.0, second: 100.0}
    _update(watch, first, "RUNNING", 104.0, end=False)  # before the kill
    _update(watch, first, "RUNNING", 112.0, end=False)
    _update(watch, second, "RUNNING", 114.0, end=False)
    _update(watch, first, "SUCCESS", 113.0, end=True)
    _update(watch, second, "SUCCESS", 118.0, end=True)
    kill = Kill(105.0, "executor-1", 3, {0, 1}, "executor")
    effects = [_effect(first), _effect(second)]
    tally = tally_executions(
        "t", "tansu", submitted, watch, effects, [kill], partitions=PARTITIONS, bound_s=60.0
    )
    assert (tally.takeovers, tally.recoveries) == ([9.0], [13.0])


def test_a_scheduler_kill_is_taken_over_at_its_first_ask_after_it() -> None:
    watch = _watch()
    # "late" was asked for before the kill and created by the executor after it: the
    # scheduler had not served again yet.
    for execution_id, asked, created, end in (
        ("late", 9.9, 10.1, 10.3),
        ("next", 13.0, 13.1, 13.4),
    ):
        _asked(watch, execution_id, asked)
        _update(watch, execution_id, "RUNNING", created, end=False)
        _update(watch, execution_id, "SUCCESS", end, end=True)
    kill = Kill(10.0, "scheduler-0", 1, set(), "scheduler")
    tally = tally_executions(
        "t", "tansu", dict(watch.created), watch, [_effect("late"), _effect("next")], [kill],
        partitions=PARTITIONS, bound_s=30.0,
    )  # fmt: skip
    assert [round(t, 2) for t in tally.takeovers] == [3.0]
    assert [round(r, 2) for r in tally.recoveries] == [0.3]  # "late" ended first


def test_a_broker_restart_is_taken_over_at_its_time_to_end() -> None:
    watch = _watch()
    _update(watch, "a", "RUNNING", 103.0, end=False)  # produced during the outage
    _update(watch, "a", "SUCCESS", 109.0, end=True)
    kill = Kill(101.0, "broker (SIGTERM)", 5, set(range(PARTITIONS)), "broker")
    tally = tally_executions(
        "t", "apache", {"a": 100.0}, watch, [_effect("a")], [kill],
        partitions=PARTITIONS, bound_s=30.0,
    )  # fmt: skip
    assert tally.takeovers == tally.recoveries == [8.0]


def test_the_table_prints_both_times_and_the_takeover_past_its_target() -> None:
    tally = Tally("t", "apache", kills=2, takeovers=[4.0, 15.5], recoveries=[12.25, 19.9])
    text = tally.table()
    assert "worst takeover (target 15 s) | worst to end |" in text
    assert text.endswith("| 15.50 s (over) | 19.90 s |")
    tally.takeovers = [14.0]
    assert tally.table().endswith("| 14.00 s | 19.90 s |")
