"""EachSequential and EachParallel against ForEach, through the broker-free driver.

The same values and child tasks go through each loop; the assertions hold what Kestra's docs
say of each task: the values may be a list or a JSON text of strings or of maps (a map's
``taskrun.value`` is its JSON text); a child's outputs are keyed by value; ``parent.taskrun.value``
reaches the outer loop's value; EachSequential runs value by value, EachParallel runs every
(value, task) pair as its own branch ("all 6 tasks ... in parallel"), ForEach runs the tasks of
one value in order with ``concurrencyLimit`` values at once and numbers its iterations with
``taskrun.iteration`` from 0 (a variable the deprecated tasks' docs do not offer).
"""

from __future__ import annotations

from datetime import timedelta

import orjson
import pytest

from kestream.models.clock import ManualClock
from kestream.models.state import StateType
from kestream.testing import Driver, run

S = StateType

#: name -> (type, values property, extra properties)
LOOPS: dict[str, tuple[str, str, str]] = {
    "EachSequential": ("io.kestra.plugin.core.flow.EachSequential", "value", ""),
    "EachParallel-0": ("io.kestra.plugin.core.flow.EachParallel", "value", "concurrent: 0"),
    "EachParallel-2": ("io.kestra.plugin.core.flow.EachParallel", "value", "concurrent: 2"),
    "ForEach-1": ("io.kestra.plugin.core.flow.ForEach", "values", "concurrencyLimit: 1"),
    "ForEach-0": ("io.kestra.plugin.core.flow.ForEach", "values", "concurrencyLimit: 0"),
    "ForEach-2": ("io.kestra.plugin.core.flow.ForEach", "values", "concurrencyLimit: 2"),
}
FOR_EACH = tuple(kind for kind in LOOPS if kind.startswith("ForEach"))


def loop_task(kind: str, task_id: str, values: str, children: str, indent: int) -> str:
    type_name, prop, extra = LOOPS[kind]
    pad = " " * indent
    lines = [f"- id: {task_id}", f"  type: {type_name}", f"  {prop}: {values}"]
    if extra:
        lines.append(f"  {extra}")
    lines.append("  tasks:")
    body = "\n".join(pad + line for line in lines)
    return body + "\n" + children


def flow(kind: str, values: str, children: str, tail: str = "") -> str:
    head = "id: parity\nnamespace: test.each\ntasks:\n"
    return head + loop_task(kind, "loop", values, children, 2) + tail


TWO_RETURNS = """\
      - id: first
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
      - id: second
        type: io.kestra.plugin.core.debug.Return
        format: "{{ outputs.first[taskrun.value].value }}!"
"""

AFTER = """\
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.second | json }}"
"""

VALUE_FORMS = {
    "list": ("['a', 'b', 'c']", ["a", "b", "c"]),
    "json text": ('\'["a", "b", "c"]\'', ["a", "b", "c"]),
    "list of maps": ('\'[{"k": 1}, {"k": 2}]\'', ['{"k":1}', '{"k":2}']),
    "duplicates and numbers": ("[1, 'x', 1, 2]", ["1", "x", "2"]),
}


@pytest.mark.parametrize("kind", LOOPS)
@pytest.mark.parametrize("form", VALUE_FORMS)
def test_values_and_outputs_keyed_by_value(kind: str, form: str) -> None:
    raw, expected = VALUE_FORMS[form]
    execution = run(flow(kind, raw, TWO_RETURNS, AFTER))
    assert execution.state.current is S.SUCCESS
    children = [t for t in execution.taskRunList if t.taskId in ("first", "second")]
    assert sorted((t.taskId, t.value) for t in children) == sorted(
        (task, value) for task in ("first", "second") for value in expected
    )
    for t in children:
        suffix = "!" if t.taskId == "second" else ""
        assert t.outputs == {"value": f"{t.value}{suffix}"}
        assert t.state.current is S.SUCCESS
    loop = next(t for t in execution.taskRunList if t.taskId == "loop")
    assert {t.parentTaskRunId for t in children} == {loop.id}
    assert loop.value is None
    after = next(t for t in execution.taskRunList if t.taskId == "after")
    assert orjson.loads((after.outputs or {})["value"]) == {v: {"value": f"{v}!"} for v in expected}


def creation_order(kind: str) -> list[tuple[str, str | None]]:
    execution = run(flow(kind, "['a', 'b']", TWO_RETURNS))
    return [(t.taskId, t.value) for t in execution.taskRunList if t.taskId != "loop"]


VALUE_BY_VALUE = [("first", "a"), ("second", "a"), ("first", "b"), ("second", "b")]


@pytest.mark.parametrize("kind", ["EachSequential", "ForEach-1"])
def test_one_value_after_the_other(kind: str) -> None:
    assert creation_order(kind) == VALUE_BY_VALUE


def test_for_each_without_limit_starts_every_value_then_goes_on_in_each() -> None:
    assert creation_order("ForEach-0") == [
        ("first", "a"), ("first", "b"), ("second", "a"), ("second", "b"),
    ]  # fmt: skip


def test_each_parallel_starts_every_pair_at_once() -> None:
    # every (value, task) pair is a branch of its own: `second` does not wait for `first`
    assert creation_order("EachParallel-0") == VALUE_BY_VALUE


ITERATION = """\
      - id: it
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}:{{ taskrun.iteration ?? 'none' }}"
"""


@pytest.mark.parametrize("kind", LOOPS)
def test_taskrun_iteration(kind: str) -> None:
    execution = run(flow(kind, "['a', 'b', 'a', 'c']", ITERATION))
    got = sorted((t.outputs or {})["value"] for t in execution.taskRunList if t.taskId == "it")
    if kind in FOR_EACH:  # numbered from 0 over the values once duplicates are dropped
        assert got == ["a:0", "b:1", "c:2"]
    else:
        assert got == ["a:none", "b:none", "c:none"]


@pytest.mark.parametrize("outer", LOOPS)
@pytest.mark.parametrize("inner", LOOPS)
def test_nested_loops_read_the_parent_value(outer: str, inner: str) -> None:
    leaf = """\
          - id: leaf
            type: io.kestra.plugin.core.debug.Return
            format: "{{ parent.taskrun.value }}/{{ taskrun.value }}"
"""
    inner_loop = loop_task(inner, "inner", "[1, 2]", leaf, 6)
    execution = run(flow(outer, "['x', 'y']", inner_loop))
    assert execution.state.current is S.SUCCESS
    leaves = sorted((t.outputs or {})["value"] for t in execution.taskRunList if t.taskId == "leaf")
    assert leaves == ["x/1", "x/2", "y/1", "y/2"]
    inner_runs = {t.value for t in execution.taskRunList if t.taskId == "inner"}
    assert inner_runs == {"x", "y"}


FAIL_ON_B = """\
      - id: check
        type: io.kestra.plugin.core.execution.Fail
        condition: "{{ taskrun.value == 'b' }}"
      - id: next
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
"""


def failing(kind: str) -> tuple[S, dict[tuple[str, str | None], S]]:
    execution = run(flow(kind, "['a', 'b', 'c']", FAIL_ON_B))
    states = {(t.taskId, t.value): t.state.current for t in execution.taskRunList}
    return execution.state.current, states


def test_each_sequential_stops_at_the_failed_iteration() -> None:
    state, runs = failing("EachSequential")
    assert state is S.FAILED
    assert runs == {
        ("loop", None): S.FAILED,
        ("check", "a"): S.SUCCESS, ("next", "a"): S.SUCCESS,
        ("check", "b"): S.FAILED,
    }  # fmt: skip


def test_for_each_one_at_a_time_stops_at_the_failed_iteration() -> None:
    state, runs = failing("ForEach-1")
    assert state is S.FAILED
    assert runs == {
        ("loop", None): S.FAILED,
        ("check", "a"): S.SUCCESS, ("next", "a"): S.SUCCESS,
        ("check", "b"): S.FAILED,
    }  # fmt: skip


def test_for_each_without_limit_ends_the_other_iterations() -> None:
    state, runs = failing("ForEach-0")
    assert state is S.FAILED
    assert runs[("loop", None)] is S.FAILED
    assert runs[("check", "b")] is S.FAILED
    assert ("next", "b") not in runs  # a value's tasks run in order
    assert runs[("next", "a")] is S.SUCCESS
    # whether `next` of "c" starts depends on whether "c" ended before "b" failed (a race in
    # Kestra too, undocumented): not asserted


def test_each_parallel_runs_the_other_tasks_of_the_failed_value() -> None:
    state, runs = failing("EachParallel-0")
    assert state is S.FAILED
    assert runs[("loop", None)] is S.FAILED
    assert runs[("check", "b")] is S.FAILED
    # the pairs are independent branches: `next` of the failed value was started with it
    assert runs[("next", "b")] is S.SUCCESS
    assert {runs[("check", v)] for v in "ac"} == {S.SUCCESS}


PAUSED_BRANCH = """\
      - id: hold
        type: io.kestra.plugin.core.flow.Pause
        delay: PT10S
"""


@pytest.mark.parametrize(
    ("kind", "at_once"),
    [("EachParallel-2", 2), ("ForEach-2", 2), ("EachParallel-0", 5), ("ForEach-0", 5),
     ("EachSequential", 1), ("ForEach-1", 1)],
)  # fmt: skip
def test_concurrency_limit_holds_the_other_values_back(kind: str, at_once: int) -> None:
    """Five values whose branch pauses 10 s: the limit says how many pause at once, and each
    pause that ends lets the next value in, in the order of the values."""
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        deployed = driver.deploy(flow(kind, "[1, 2, 3, 4, 5]", PAUSED_BRANCH))
        execution = driver.start(deployed.namespace, deployed.id)
        seen: list[list[str | None]] = []
        while execution.state.current is not S.SUCCESS and len(seen) < 10:
            holds = [t for t in execution.taskRunList if t.taskId == "hold"]
            seen.append([t.value for t in holds if t.state.current is S.PAUSED])
            driver.advance(timedelta(seconds=10))
            execution = driver.get(execution.id)
    assert execution.state.current is S.SUCCESS
    values = ["1", "2", "3", "4", "5"]
    assert seen == [values[i : i + at_once] for i in range(0, 5, at_once)]
