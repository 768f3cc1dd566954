"""Engine semantics through the broker-free driver (real executor and task runner)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from kestream.executor.commands import RunTask
from kestream.models.clock import ManualClock
from kestream.models.state import StateType
from kestream.tasks.sleep import Sleep
from kestream.testing import Driver, run
from kestream.worker.runner import TaskRunner

S = StateType

RETRY = """
id: retry
namespace: test.driver
tasks:
  - id: flaky
    type: io.kestra.plugin.core.log.Log
    message: "{{ taskrun.attemptsCount == 2 ? 'ok' : boom }}"
    retry:
      type: constant
      interval: PT10S
      maxAttempt: 5
"""

PAUSE = """
id: pause
namespace: test.driver
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
    delay: PT30S
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.wait ?? 'resumed' }}"
"""


def test_retry_waits_for_the_interval_on_the_engine_clock() -> None:
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        flow = driver.deploy(RETRY)
        execution = driver.start(flow.namespace, flow.id)
        assert execution.state.current is S.RUNNING
        (run_,) = execution.taskRunList
        assert run_.state.current is S.RETRYING and len(run_.attempts or []) == 1
        driver.advance(timedelta(seconds=9))
        assert len(driver.get(execution.id).taskRunList[0].attempts or []) == 1
        driver.advance(timedelta(seconds=1))
        driver.advance(timedelta(seconds=10))
        done = driver.get(execution.id)
    assert done.state.current is S.SUCCESS
    assert [a.state.current for a in done.taskRunList[0].attempts or []] == [
        S.FAILED,
        S.FAILED,
        S.SUCCESS,
    ]


def test_pause_delay_resumes_on_time_and_not_before() -> None:
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        flow = driver.deploy(PAUSE)
        execution = driver.start(flow.namespace, flow.id)
        assert execution.state.current is S.PAUSED
        driver.advance(timedelta(seconds=29))
        assert driver.get(execution.id).state.current is S.PAUSED
        driver.advance(timedelta(seconds=1))
        done = driver.get(execution.id)
    assert done.state.current is S.SUCCESS
    assert done.taskRunList[0].state.count(S.RUNNING) == 2


def test_manual_resume_before_the_delay_cancels_the_timer() -> None:
    clock = ManualClock()
    with Driver(clock=clock) as driver:
        flow = driver.deploy(PAUSE)
        execution = driver.start(flow.namespace, flow.id)
        resumed = driver.resume(execution.id)
        assert resumed.state.current is S.SUCCESS
        driver.advance(timedelta(minutes=5))
        assert driver.get(execution.id).state.current is S.SUCCESS
        assert driver.states[execution.id].timers == {}


def test_kill_ends_a_paused_execution_and_its_task_runs() -> None:
    with Driver() as driver:
        flow = driver.deploy(PAUSE.replace("delay: PT30S", "timeout: PT1H"))
        execution = driver.start(flow.namespace, flow.id)
        assert execution.state.current is S.PAUSED
        killed = driver.kill(execution.id)
        assert driver.states[execution.id].timers == {}
    assert killed.state.current is S.KILLED
    assert [h.state for h in killed.state.histories][-2:] == [S.KILLING, S.KILLED]
    assert [t.taskId for t in killed.taskRunList] == ["wait"]
    assert killed.taskRunList[0].state.current is S.KILLED


async def test_runner_kill_cancels_a_sleep_without_waiting_for_it() -> None:
    runner = TaskRunner()
    job = RunTask(
        "e",
        "tr",
        1,
        "ns",
        "f",
        1,
        Sleep(id="nap", type=Sleep.type_name, duration="PT60S"),
        {"duration": "PT60S"},
    )
    pending = asyncio.ensure_future(runner.run(job))
    await asyncio.sleep(0.05)
    assert runner.kill("e", "tr")
    result, _ = await asyncio.wait_for(pending, timeout=2)
    assert result.state is S.KILLED
    assert runner.in_flight == 0


def test_inline_and_worker_modes_give_the_same_execution() -> None:
    flow = """
id: same
namespace: test.driver
tasks:
  - id: values
    type: io.kestra.plugin.core.output.OutputValues
    values:
      greeting: "Hello {{ inputs.name }}"
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b"]
    concurrencyLimit: 0
    tasks:
      - id: log
        type: io.kestra.plugin.core.log.Log
        message: "{{ outputs.values.values.greeting }} {{ taskrun.value }}"
inputs:
  - id: name
    type: STRING
    defaults: World
"""
    shapes = []
    for inline in (True, False):
        with Driver(inline_tasks=inline) as driver:
            deployed = driver.deploy(flow)
            execution = driver.start(deployed.namespace, deployed.id)
            logs = sorted(line.message for line in driver.logs(execution.id))
        shapes.append(
            (
                execution.state.current,
                [(t.taskId, t.value, t.state.current, t.outputs) for t in execution.taskRunList],
                logs,
            )
        )
    assert shapes[0] == shapes[1]
    assert shapes[0][2] == ["Hello World a", "Hello World b"]


def test_run_returns_the_execution_json_shape() -> None:
    execution = run(
        "id: j\nnamespace: test.driver\ntasks:\n  - id: r\n"
        "    type: io.kestra.plugin.core.debug.Return\n    format: hi\n",
        labels={"team": "data"},
    )
    body = execution.model_dump(mode="json", by_alias=True)
    assert body["state"]["current"] == "SUCCESS"
    assert isinstance(body["flowRevision"], int)
    assert body["deleted"] is False
    assert {"key": "team", "value": "data"} in body["labels"]
    assert body["metadata"]["attemptNumber"] == 1
    assert body["taskRunList"][0]["outputs"] == {"value": "hi"}
    assert body["taskRunList"][0]["attempts"][0]["state"]["current"] == "SUCCESS"
    assert body["state"]["histories"][0]["state"] == "CREATED"
    assert body["state"]["endDate"] is not None
