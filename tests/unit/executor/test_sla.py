"""Flow ``sla``: MAX_DURATION timers and EXECUTION_ASSERTION checks, with their behaviors."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.admission import Release
from kestream.executor.codec import encode_changes, rebuild
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor, StepResult
from kestream.models.clock import ManualClock
from kestream.models.execution import Execution
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.models.validation import FlowValidationError
from kestream.testing import Driver

S = StateType
NS = "test.sla"


def _flow(sla: str, tasks: str, flow_id: str = "sla") -> str:
    return f"id: {flow_id}\nnamespace: {NS}\nsla:\n{sla}\ntasks:\n{tasks}"


PAUSE = """
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
  - id: after
    type: io.kestra.plugin.core.log.Log
    message: resumed
"""


def _history(execution: Execution) -> list[StateType]:
    return [h.state for h in execution.state.histories]


def _messages(driver: Driver, execution_id: str) -> list[str]:
    return [line.message for line in driver.logs(execution_id)]


# -- MAX_DURATION ---------------------------------------------------------------------------


@pytest.mark.parametrize(("behavior", "final"), [("FAIL", S.FAILED), ("CANCEL", S.CANCELLED)])
def test_max_duration_ends_a_paused_execution(behavior: str, final: StateType) -> None:
    sla = f"""
  - id: late
    type: MAX_DURATION
    duration: PT1H
    behavior: {behavior}
    labels:
      sla: miss
"""
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_flow(sla, PAUSE))
        paused = driver.start(NS, "sla")
        assert paused.state.current is S.PAUSED  # the SLA timer is no work of its own
        driver.advance(timedelta(minutes=59))
        assert driver.get(paused.id).state.current is S.PAUSED
        driver.advance(timedelta(minutes=1))
        done = driver.get(paused.id)
        messages = _messages(driver, paused.id)
    assert done.state.current is final
    assert _history(done) == [S.CREATED, S.RUNNING, S.PAUSED, final]  # never KILLING
    assert [(run.taskId, run.state.current) for run in done.taskRunList] == [("wait", S.KILLED)]
    assert done.label_map()["sla"] == "miss"
    assert "SLA 'late' violated: execution exceeded its maximum duration of PT1H" in messages


def test_max_duration_none_adds_labels_and_lets_the_execution_go_on() -> None:
    sla = """
  - id: late
    type: MAX_DURATION
    duration: PT1M
    behavior: NONE
    labels:
      sla: late
"""
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_flow(sla, PAUSE))
        paused = driver.start(NS, "sla")
        driver.advance(timedelta(minutes=2))
        still = driver.get(paused.id)
        done = driver.resume(paused.id)
    assert still.state.current is S.PAUSED
    assert still.label_map()["sla"] == "late"
    assert done.state.current is S.SUCCESS
    assert done.label_map()["sla"] == "late"


def test_max_duration_timer_is_cancelled_when_the_execution_ends_first() -> None:
    sla = "  - id: late\n    type: MAX_DURATION\n    duration: PT1M\n"
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_flow(sla, PAUSE))
        paused = driver.start(NS, "sla")
        assert paused.id in {key[0] for key in driver._timers.pending()}
        done = driver.resume(paused.id)
        assert not list(driver._timers.pending())
        driver.advance(timedelta(minutes=5))
        after = driver.get(paused.id)
    assert done.state.current is S.SUCCESS
    assert after.state.current is S.SUCCESS


def test_max_duration_kills_the_running_task_on_its_worker() -> None:
    """The step stops what runs: the worker is told to kill the task run (KillTask)."""
    flows = FlowRegistry()
    flows.put(
        parse_flow(
            _flow(
                "  - id: late\n    type: MAX_DURATION\n    duration: PT10S\n",
                "  - id: slow\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT1H\n",
            )
        )
    )
    clock = ManualClock()
    executor = Executor(flows, clock=clock, inline_tasks=False)
    created = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False))
    timers = [c for c in created.commands if isinstance(c, cmd.SetTimer)]
    assert [(t.timer_id, t.due - clock()) for t in timers] == [("sla:0", timedelta(seconds=10))]
    clock.advance(timedelta(seconds=10))
    fired = executor.step(created.state, ev.TimerFired("e1", "sla:0"))
    state = fired.state
    assert state is not None and state.state.current is S.FAILED
    (run,) = state.task_runs.values()
    assert [c.task_run_id for c in fired.commands if isinstance(c, cmd.KillTask)] == [run.id]
    assert run.state.current is S.KILLED and run.attempts[-1].current is S.KILLED
    changed = [c for c in fired.commands if isinstance(c, cmd.ExecutionChanged)]
    assert changed[-1].terminal


def test_restart_sets_the_max_duration_timer_again() -> None:
    sla = "  - id: late\n    type: MAX_DURATION\n    duration: PT1M\n"
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_flow(sla, PAUSE))
        paused = driver.start(NS, "sla")
        driver.advance(timedelta(minutes=1))
        failed = driver.get(paused.id)
        restarted = driver.restart(paused.id)
        assert restarted.state.current is S.PAUSED
        driver.advance(timedelta(seconds=59))
        assert driver.get(paused.id).state.current is S.PAUSED
        driver.advance(timedelta(seconds=1))
        again = driver.get(paused.id)
    assert failed.state.current is S.FAILED
    assert again.state.current is S.FAILED
    assert again.metadata.attemptNumber == 2


LIMITED = """
id: sla
namespace: test.sla
concurrency:
  limit: 1
sla:
  - id: late
    type: MAX_DURATION
    duration: PT1H
    labels:
      sla: miss
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def test_max_duration_counts_the_wait_for_a_concurrency_slot() -> None:
    """As in Kestra, whose SLA monitor counts from the execution's creation: the time spent
    QUEUED counts. Queued 40 minutes, the second execution has 20 left once it runs."""
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(LIMITED)
        holder = driver.start(NS, "sla")
        queued = driver.start(NS, "sla")
        assert queued.state.current is S.QUEUED
        driver.advance(timedelta(minutes=40))
        driver.resume(holder.id)
        assert driver.get(queued.id).state.current is S.PAUSED  # it holds the slot now
        driver.advance(timedelta(minutes=20))
        done = driver.get(queued.id)
    assert _history(done) == [S.CREATED, S.QUEUED, S.RUNNING, S.PAUSED, S.FAILED]
    assert done.label_map()["sla"] == "miss"


def test_max_duration_ends_an_execution_still_waiting_for_its_slot() -> None:
    """Reached while the execution waits in line, the SLA ends it there (no task run) and its
    place in line is given back."""
    flows = FlowRegistry()
    flows.put(parse_flow(LIMITED))
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    created = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False))
    timers = [
        (c.timer_id, c.due - clock()) for c in created.commands if isinstance(c, cmd.SetTimer)
    ]
    assert timers == [("sla:0", timedelta(hours=1))]
    st = created.state
    assert st is not None
    executor.step(st, ev.Admission("e1", NS, "sla", 1, S.QUEUED, clock()))
    assert st.state.current is S.QUEUED
    clock.advance(timedelta(hours=1))
    fired = executor.step(st, ev.TimerFired("e1", "sla:0"))
    assert [h[0] for h in st.state.history] == [S.CREATED, S.QUEUED, S.FAILED]
    assert not st.task_runs and st.labels["sla"] == "miss"
    releases = [c.request for c in fired.commands if isinstance(c, cmd.RequestSlot)]
    assert releases == [Release(NS, "sla", "e1", 1, 1)]


def _limited(behavior: str) -> str:
    return LIMITED.replace("    labels:", f"    behavior: {behavior}\n    labels:")


def _queued(executor: Executor, clock: ManualClock) -> ExecutionState:
    """``e1`` of the LIMITED flow, waiting in line for its slot."""
    created = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False))
    st = created.state
    assert st is not None
    executor.step(st, ev.Admission("e1", NS, "sla", 1, S.QUEUED, clock()))
    assert st.state.current is S.QUEUED
    return st


def _sla_timers(result: StepResult) -> list[tuple[str, datetime]]:
    return [(c.timer_id, c.due) for c in result.commands if isinstance(c, cmd.SetTimer)]


@pytest.mark.parametrize(("behavior", "final"), [("FAIL", S.FAILED), ("CANCEL", S.CANCELLED)])
def test_max_duration_ends_an_execution_waiting_for_its_slot_with_its_behavior(
    behavior: str, final: StateType
) -> None:
    flows = FlowRegistry()
    flows.put(parse_flow(_limited(behavior)))
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    st = _queued(executor, clock)
    clock.advance(timedelta(hours=1))
    executor.step(st, ev.TimerFired("e1", "sla:0"))
    assert [h[0] for h in st.state.history] == [S.CREATED, S.QUEUED, final]
    assert st.labels["sla"] == "miss"


def test_max_duration_none_leaves_an_execution_waiting_for_its_slot_waiting() -> None:
    """``NONE`` adds the labels and logs, and the execution keeps its place in line; once it
    runs, the SLA is not set again (it was violated already)."""
    flows = FlowRegistry()
    flows.put(parse_flow(_limited("NONE")))
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    st = _queued(executor, clock)
    clock.advance(timedelta(hours=1))
    fired = executor.step(st, ev.TimerFired("e1", "sla:0"))
    assert st.state.current is S.QUEUED and st.labels["sla"] == "miss"
    assert not any(isinstance(c, cmd.RequestSlot) for c in fired.commands)  # still in line
    emitted = [c.lines for c in fired.commands if isinstance(c, cmd.EmitLogs)]
    logged = [line.message for lines in emitted for line in lines]
    assert any("SLA 'late' violated" in message for message in logged)
    running = executor.step(st, ev.Admission("e1", NS, "sla", 1, S.RUNNING, clock()))
    assert st.state.current is S.PAUSED
    assert _sla_timers(running) == [] and "sla:0" not in st.timers


def test_an_execution_that_waited_without_its_timer_gets_it_when_it_runs() -> None:
    """One that asked for its slot before the timer was set at the ask (it was set when the
    execution ran) holds none: it gets it with its slot, from then; one it holds stays."""
    flows = FlowRegistry()
    flows.put(parse_flow(LIMITED))
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    st = _queued(executor, clock)
    del st.timers["sla:0"]  # as an older version left it
    clock.advance(timedelta(hours=2))
    running = executor.step(st, ev.Admission("e1", NS, "sla", 1, S.RUNNING, clock()))
    assert st.state.current is S.PAUSED
    assert _sla_timers(running) == [("sla:0", clock() + timedelta(hours=1))]
    clock.advance(timedelta(hours=1))
    executor.step(st, ev.TimerFired("e1", "sla:0"))
    assert st.state.current is S.FAILED


def test_max_duration_ends_a_restart_not_yet_answered_by_the_admission() -> None:
    """A restart asks for its slot and stays RESTARTED until the admission answers: the SLA
    falling due there ends it (RESTARTED to FAILED) and gives its place back."""
    flows = FlowRegistry()
    flows.put(parse_flow(LIMITED))
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    created = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False))
    st = created.state
    assert st is not None
    executor.step(st, ev.Admission("e1", NS, "sla", 1, S.RUNNING, clock()))
    executor.step(st, ev.Kill("e1"))
    assert st.state.current is S.KILLED
    clock.advance(timedelta(hours=2))
    restarted = executor.step(st, ev.Restart("e1"))
    assert st.state.current is S.RESTARTED and _sla_timers(restarted)
    clock.advance(timedelta(hours=1))
    fired = executor.step(st, ev.TimerFired("e1", "sla:0"))
    assert [h[0] for h in st.state.history][-2:] == [S.RESTARTED, S.FAILED]
    releases = [c.request for c in fired.commands if isinstance(c, cmd.RequestSlot)]
    assert releases == [Release(NS, "sla", "e1", 2, 1)]


REPLAYED = """
id: sla
namespace: test.sla
concurrency:
  limit: 1
inputs:
  - id: fail
    type: BOOL
    defaults: true
sla:
  - id: late
    type: MAX_DURATION
    duration: PT1H
tasks:
  - id: block
    type: io.kestra.plugin.core.flow.Sequential
    tasks:
      - id: maybe
        type: io.kestra.plugin.core.execution.Fail
        condition: "{{ inputs.fail }}"
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def test_max_duration_ends_a_replay_waiting_for_its_slot_and_its_task_runs() -> None:
    """A replay from a task run waits for its slot with its chosen run RESTARTED and that
    run's parents RUNNING: the SLA ends it there, and they end with it."""
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(REPLAYED)
        failed = driver.start(NS, "sla")
        driver.start(NS, "sla", {"fail": False})  # holds the slot
        (maybe,) = [run for run in failed.taskRunList if run.taskId == "maybe"]
        replay = driver.replay(failed.id, task_run_id=maybe.id, inputs={"fail": False})
        assert _history(replay)[-2:] == [S.RESTARTED, S.QUEUED]
        driver.advance(timedelta(hours=1))
        ended = driver.get(replay.id)
        assert driver.slots.queued(NS, "sla") == []
    assert _history(ended)[-3:] == [S.RESTARTED, S.QUEUED, S.FAILED]
    runs = {run.taskId: run.state.current for run in ended.taskRunList}
    assert runs == {"block": S.KILLED, "maybe": S.KILLED}


def test_a_restart_counts_its_max_duration_from_the_restart_its_wait_included() -> None:
    """Not from the creation, as Kestra's monitor does, which ends at once a restart of an
    execution older than the duration: from the restart, the wait for a slot included."""
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(LIMITED)
        first = driver.start(NS, "sla")
        driver.kill(first.id)
        driver.advance(timedelta(hours=2))
        holder = driver.start(NS, "sla")
        restarted = driver.restart(first.id)
        assert restarted.state.current is S.QUEUED
        driver.advance(timedelta(minutes=30))
        driver.resume(holder.id)  # the holder ends before its own SLA
        assert driver.get(first.id).state.current is S.PAUSED
        driver.advance(timedelta(minutes=29))
        assert driver.get(first.id).state.current is S.PAUSED
        driver.advance(timedelta(minutes=1))
        again = driver.get(first.id)
    assert _history(again)[-5:] == [S.RESTARTED, S.QUEUED, S.RUNNING, S.PAUSED, S.FAILED]


# -- EXECUTION_ASSERTION --------------------------------------------------------------------

TWO_TASKS = """
  - id: first
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.value }}"
  - id: second
    type: io.kestra.plugin.core.log.Log
    message: second
"""


def _assert_flow(
    assertion: str, behavior: str = "FAIL", labels: str = "", tasks: str | None = None
) -> str:
    sla = f"""
  - id: check
    type: EXECUTION_ASSERTION
    behavior: {behavior}
    assert: "{assertion}"
{labels}"""
    inputs = "inputs:\n  - id: value\n    type: STRING\n    defaults: ok\n"
    return inputs + _flow(sla, TWO_TASKS if tasks is None else tasks)


def test_an_assertion_is_checked_after_each_step_and_stops_the_execution() -> None:
    """Checked after each step: the step that applies ``first``'s bad value ends the execution,
    and ``second``, dispatched in that step, is killed on its worker."""
    flows = FlowRegistry()
    assertion = "{{ outputs.first is not defined or outputs.first.value == 'ok' }}"
    flows.put(parse_flow(_assert_flow(assertion)))
    executor = Executor(flows, inline_tasks=False)
    created = ev.ExecutionCreated("e1", NS, "sla", inputs={"value": "bad"}, validate_inputs=False)
    started = executor.step(None, created)
    state = started.state
    assert state is not None and state.state.current is S.RUNNING  # held before first ran
    (job,) = [c for c in started.commands if isinstance(c, cmd.RunTask)]
    result = ev.WorkerResult("e1", job.task_run_id, 1, S.SUCCESS, {"value": "bad"})
    done = executor.step(state, result)
    assert state.state.current is S.FAILED
    runs = {tr.task.id: tr for tr in state.task_runs.values()}
    assert runs["first"].state.current is S.SUCCESS
    assert runs["second"].state.current is S.KILLED
    killed = [c.task_run_id for c in done.commands if isinstance(c, cmd.KillTask)]
    assert killed == [runs["second"].id]


def test_an_assertion_holding_changes_nothing() -> None:
    with Driver() as driver:
        driver.deploy(_assert_flow("{{ inputs.value == 'ok' }}"))
        done = driver.start(NS, "sla")
        messages = _messages(driver, done.id)
    assert done.state.current is S.SUCCESS
    assert [run.taskId for run in done.taskRunList] == ["first", "second"]
    assert not [m for m in messages if "SLA" in m]


def test_an_assertion_that_cannot_be_rendered_is_a_violation() -> None:
    with Driver() as driver:
        driver.deploy(_assert_flow("{{ nope.missing.thing }}", behavior="CANCEL"))
        done = driver.start(NS, "sla")
        messages = _messages(driver, done.id)
    assert done.state.current is S.CANCELLED
    assert done.taskRunList == []  # cancelled at its first look, before any task
    assert any("could not be evaluated" in m for m in messages)


def test_none_with_labels_is_logged_once_and_only_the_first_violation_acts() -> None:
    """Two SLAs violated at once: the first (NONE) acts, the second (FAIL) is only logged."""
    sla = """
  - id: soft
    type: EXECUTION_ASSERTION
    behavior: NONE
    assert: "{{ inputs.value == 'ok' }}"
    labels:
      - key: sla
        value: soft
  - id: hard
    type: EXECUTION_ASSERTION
    behavior: FAIL
    assert: "{{ inputs.value == 'ok' }}"
"""
    flow = "inputs:\n  - id: value\n    type: STRING\n" + _flow(sla, TWO_TASKS)
    with Driver() as driver:
        driver.deploy(flow)
        done = driver.start(NS, "sla", {"value": "no"})
        messages = _messages(driver, done.id)
    assert done.state.current is S.SUCCESS
    assert done.label_map()["sla"] == "soft"
    assert sum("SLA 'soft' violated" in m for m in messages) == 1
    assert sum("SLA 'hard' violated" in m for m in messages) >= 1


# -- validation -----------------------------------------------------------------------------


def test_sla_is_validated_at_deploy() -> None:
    bad = """
  - id: late
    type: MAX_DURATION
    duration: "{{ inputs.d }}"
  - id: check
    type: EXECUTION_ASSERTION
    assert: "{{ unclosed"
  - id: nothing
    type: EXECUTION_ASSERTION
"""
    with pytest.raises(FlowValidationError) as caught:
        parse_flow(
            _flow(bad, "  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: m\n")
        )
    text = str(caught.value)
    assert "sla[0]" in text and "ISO-8601" in text
    assert "sla[1]" in text and "not a valid expression" in text
    assert "sla[2]" in text and "needs an 'assert'" in text


def test_a_flow_with_sla_round_trips() -> None:
    flow = parse_flow(_assert_flow("{{ true }}", labels="    labels:\n      sla: miss\n"))
    assert flow.sla[0].labels == {"sla": "miss"}
    assert type(flow).model_validate(flow.model_dump()) == flow


def test_the_max_duration_timer_is_kept_in_the_changelog() -> None:
    """The timer is in the execution's state record: an executor that recovers the execution
    from its changelog arms it again, with the same due time."""
    flows = FlowRegistry()
    flow = flows.put(
        parse_flow(_flow("  - id: late\n    type: MAX_DURATION\n    duration: PT1H\n", PAUSE))
    )
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    step = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False))
    state = step.state
    assert state is not None
    groups = {"", *(tid for tid, tr in state.task_runs.items() if tr.group is not None)}
    changes = encode_changes(state, list(state.task_runs), created=True, new_groups=groups)
    back = rebuild("e1", {k: v for k, v in changes if v is not None}, flow)
    timer = back.timers["sla:0"]
    assert (timer.kind, timer.due) == ("sla", clock() + timedelta(hours=1))


def test_a_lasting_violation_with_behavior_none_and_no_labels_is_logged_once() -> None:
    """A NONE violation that lasts through every step of a ForEach is one line, not one per step."""
    foreach = """
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(0, 9) }}"
    tasks:
      - id: log
        type: io.kestra.plugin.core.log.Log
        message: "{{ taskrun.value }}"
"""
    with Driver() as driver:
        driver.deploy(_assert_flow("{{ 1 == 2 }}", behavior="NONE", tasks=foreach))
        done = driver.start(NS, "sla", {})
        messages = _messages(driver, done.id)
    assert done.state.current is S.SUCCESS
    assert sum("SLA 'check' violated" in m for m in messages) == 1


def test_a_violation_that_ends_and_begins_again_is_logged_again() -> None:
    """Violated after ``a``, kept after ``b``, violated again after ``d``: two lines."""
    steps = "".join(  # each one a worker's answer: a step of its own
        f"  - id: {t}\n    type: io.kestra.plugin.scripts.shell.Commands\n"
        "    taskRunner:\n      type: io.kestra.plugin.core.runner.Process\n"
        '    commands: ["true"]\n'
        for t in "abcde"
    )
    check = "{{ (outputs.a is not defined or outputs.b is defined) and outputs.d is not defined }}"
    with Driver() as driver:
        driver.deploy(_assert_flow(check, behavior="NONE", tasks=steps))
        done = driver.start(NS, "sla", {})
        messages = _messages(driver, done.id)
    assert done.state.current is S.SUCCESS
    assert sum("SLA 'check' violated" in m for m in messages) == 2


def test_the_violated_assertions_are_kept_in_the_changelog() -> None:
    """An executor that recovers the execution from its changelog does not log again a
    violation it logged before."""
    flows = FlowRegistry()
    flow = flows.put(parse_flow(_assert_flow("{{ 1 == 2 }}", behavior="NONE", tasks=PAUSE)))
    executor = Executor(flows, clock=ManualClock())
    step = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False))
    state = step.state
    assert state is not None and list(state.sla_violated) == ["check"]
    groups = {"", *(tid for tid, tr in state.task_runs.items() if tr.group is not None)}
    changes = encode_changes(state, list(state.task_runs), created=True, new_groups=groups)
    back = rebuild("e1", {k: v for k, v in changes if v is not None}, flow)
    assert list(back.sla_violated) == ["check"]


# -- a restart is measured again ------------------------------------------------------------


def test_a_restart_logs_a_none_max_duration_its_own_attempt_misses() -> None:
    """The first attempt's NONE violation is that attempt's: the restart, waiting in line,
    misses its own duration, and that is logged too (it was taken as the one that lasted)."""
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        driver.deploy(_limited("NONE"))
        first = driver.start(NS, "sla")
        driver.advance(timedelta(hours=1))  # violated while it runs: logged, it goes on
        driver.kill(first.id)
        holder = driver.start(NS, "sla")
        assert driver.restart(first.id).state.current is S.QUEUED
        driver.advance(timedelta(hours=1))  # violated again, waiting in line
        waiting = driver.get(first.id)
        messages = _messages(driver, first.id)
        driver.kill(holder.id)
    assert waiting.state.current is S.QUEUED and waiting.metadata.attemptNumber == 2
    assert sum("SLA 'late' violated" in m for m in messages) == 2


def test_a_restart_without_its_timer_gets_it_when_it_runs_after_a_none_violation() -> None:
    """A restart that waits for its slot holding no timer (as an older version left one that
    asked before timers were set at the ask) gets it when it runs: the first attempt's NONE
    violation does not stand for the new attempt's."""
    flows = FlowRegistry()
    flows.put(parse_flow(_limited("NONE")))
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    created = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False))
    st = created.state
    assert st is not None
    executor.step(st, ev.Admission("e1", NS, "sla", 1, S.RUNNING, clock()))
    clock.advance(timedelta(hours=1))
    executor.step(st, ev.TimerFired("e1", "sla:0"))  # NONE: marked violated, it goes on
    executor.step(st, ev.Kill("e1"))
    assert st.state.current is S.KILLED
    executor.step(st, ev.Restart("e1"))
    assert st.state.current is S.RESTARTED
    del st.timers["sla:0"]  # as an older version left it
    executor.step(st, ev.Admission("e1", NS, "sla", 2, S.QUEUED, clock()))
    running = executor.step(st, ev.Admission("e1", NS, "sla", 2, S.RUNNING, clock()))
    assert st.state.current is S.PAUSED
    assert _sla_timers(running) == [("sla:0", clock() + timedelta(hours=1))]


def test_a_restart_clears_the_violations_in_the_changelog_too() -> None:
    """The restart's state record holds no violation of the attempt before, and its timer: an
    executor that recovers the restart from its changelog measures it again as well."""
    flows = FlowRegistry()
    late = "  - id: late\n    type: MAX_DURATION\n    duration: PT1H\n    behavior: NONE\n"
    flow = flows.put(parse_flow(_flow(late, PAUSE)))
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    created = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False))
    st = created.state
    assert st is not None
    clock.advance(timedelta(hours=1))
    executor.step(st, ev.TimerFired("e1", "sla:0"))
    executor.step(st, ev.Kill("e1"))
    assert list(st.sla_violated) == ["late"] and st.state.current is S.KILLED
    executor.step(st, ev.Restart("e1"))
    groups = {"", *(tid for tid, tr in st.task_runs.items() if tr.group is not None)}
    changes = encode_changes(st, list(st.task_runs), created=True, new_groups=groups)
    back = rebuild("e1", {k: v for k, v in changes if v is not None}, flow)
    assert back.sla_violated == {} and back.timers["sla:0"].due == clock() + timedelta(hours=1)


def test_an_assertion_step_keeps_a_max_duration_violation_marked() -> None:
    """The assertions a step finds violated replace the assertions marked, not the
    MAX_DURATION marks: a NONE duration violation stays the attempt's."""
    from kestream.executor.sla import timer_id

    sla = """
  - id: late
    type: MAX_DURATION
    behavior: NONE
    duration: PT1M
  - id: check
    type: EXECUTION_ASSERTION
    behavior: NONE
    assert: "{{ 1 == 2 }}"
"""
    flows = FlowRegistry()
    flows.put(parse_flow(_flow(sla, PAUSE)))
    clock = ManualClock()
    executor = Executor(flows, clock=clock)
    state = executor.step(None, ev.ExecutionCreated("e1", NS, "sla", validate_inputs=False)).state
    assert state is not None and list(state.sla_violated) == ["check"]
    clock.advance(timedelta(minutes=2))
    state = executor.step(state, ev.TimerFired("e1", timer_id(0))).state
    assert state is not None and set(state.sla_violated) == {"check", "late"}
    state = executor.step(state, ev.Resume("e1")).state
    assert state is not None and state.state.current is S.SUCCESS
    assert set(state.sla_violated) == {"check", "late"}
