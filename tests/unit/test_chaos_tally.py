"""The chaos suite's counting (tests/integration/chaos_harness.py) on made-up observations:
what the broker tests assert to be zero must be counted when it happens."""

from __future__ import annotations

from typing import Any

import orjson

from kestream.settings import Settings
from tests.integration.chaos_harness import (
    Kill,
    UpdatesWatch,
    partition_of,
    render_table,
    tally_executions,
)

PARTITIONS = 4


def _watch() -> UpdatesWatch:
    return UpdatesWatch(Settings(topic_prefix="t."), "tansu")


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
    kill = Kill(110.0, "executor-0", 1, {partition_of("b", PARTITIONS)})
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
    assert "| t | apache | 5 | 0 | 1 | 2 | 1 | 2 | - |" in text


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
    kill = Kill(10.0, "scheduler-0", 1, set())
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
    kill = Kill(110.0, "executor-0", 1, {0, 1, 3})  # partition 3: no submission, left out
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
