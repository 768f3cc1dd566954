"""Flow ``concurrency`` through the executor step and the driver's in-process admission stream:
QUEUED in order, kills of queued executions, restarts that ask again, answers that come too
late, and no cost for flows without a limit."""

from __future__ import annotations

from datetime import UTC, datetime

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.admission import Release
from kestream.executor.codec import encode_changes, rebuild
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.step import Executor
from kestream.models.execution import Execution
from kestream.models.flow import parse_flow
from kestream.models.state import StateType as S
from kestream.testing import Driver

PAUSED = """
id: limited
namespace: t
concurrency:
  limit: {limit}
  behavior: {behavior}
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""

UNLIMITED = """
id: limited
namespace: t
tasks:
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""

FAILING = """
id: failing
namespace: t
concurrency:
  limit: 1
inputs:
  - id: fail
    type: BOOL
    defaults: true
tasks:
  - id: maybe
    type: io.kestra.plugin.core.execution.Fail
    condition: "{{ inputs.fail }}"
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""


def history(execution: Execution) -> list[str]:
    return [item.state.value for item in execution.state.histories]


def first_date(execution: Execution, state: S) -> datetime:
    return next(item.date for item in execution.state.histories if item.state is state)


def test_queued_executions_start_in_order_as_slots_free_up() -> None:
    with Driver() as driver:
        driver.deploy(PAUSED.format(limit=2, behavior="QUEUE"))
        ids = [driver.drive(driver.acreate("t", "limited")) for _ in range(6)]
        states = [driver.get(e).state.current for e in ids]
        assert states == [S.PAUSED, S.PAUSED] + [S.QUEUED] * 4
        for execution_id in ids:  # each resume frees a slot for the head of the line
            driver.resume(execution_id)
            running = [e for e in ids if driver.get(e).state.current is S.PAUSED]
            assert len(running) <= 2
        ended = [driver.get(e) for e in ids]
        assert all(e.state.current is S.SUCCESS for e in ended)
        queued = [e for e in ended if S.QUEUED in {h.state for h in e.state.histories}]
        by_queue = sorted(queued, key=lambda e: first_date(e, S.QUEUED))
        by_start = sorted(queued, key=lambda e: first_date(e, S.RUNNING))
        assert [e.id for e in by_queue] == [e.id for e in by_start] == ids[2:]
        assert history(ended[2])[:3] == ["CREATED", "QUEUED", "RUNNING"]
        assert driver.slots.holders("t", "limited") == []


def test_a_killed_queued_execution_leaves_the_line_without_running() -> None:
    with Driver() as driver:
        driver.deploy(PAUSED.format(limit=1, behavior="QUEUE"))
        first, second, third = (driver.drive(driver.acreate("t", "limited")) for _ in range(3))
        killed = driver.kill(second)
        assert history(killed) == ["CREATED", "QUEUED", "KILLED"] and not killed.taskRunList
        assert driver.slots.queued("t", "limited") == [third]
        driver.resume(first)
        assert driver.get(third).state.current is S.PAUSED  # the slot went past the killed one
        assert driver.slots.holders("t", "limited") == [third]


def test_cancel_and_fail_end_the_execution_at_the_limit() -> None:
    with Driver() as driver:
        driver.deploy(PAUSED.format(limit=1, behavior="FAIL"))
        holder = driver.start("t", "limited")
        refused = driver.start("t", "limited")
        assert history(refused) == ["CREATED", "FAILED"]
        assert "concurrency limit" in driver.logs(refused.id)[0].message
        driver.resume(holder.id)
        assert driver.start("t", "limited").state.current is S.PAUSED  # the slot came back


def test_a_restart_asks_for_a_slot_again_and_waits_in_line() -> None:
    with Driver() as driver:
        driver.deploy(FAILING)
        failed = driver.start("t", "failing")
        assert failed.state.current is S.FAILED
        holder = driver.start("t", "failing", {"fail": False})
        assert holder.state.current is S.PAUSED
        restarted = driver.restart(failed.id)
        assert history(restarted)[-2:] == ["RESTARTED", "QUEUED"]
        assert restarted.taskRunList[0].state.current is S.FAILED  # nothing ran again yet
        driver.resume(holder.id)
        again = driver.get(failed.id)
        assert history(again)[-3:] == ["QUEUED", "RUNNING", "FAILED"]
        assert again.taskRunList[0].attempts is not None and len(again.taskRunList[0].attempts) == 2
        assert driver.slots.holders("t", "failing") == []


def test_a_kill_of_a_restart_waiting_for_its_slot_ends_it() -> None:
    with Driver() as driver:
        driver.deploy(FAILING)
        failed = driver.start("t", "failing")
        driver.start("t", "failing", {"fail": False})
        driver.restart(failed.id)
        killed = driver.kill(failed.id)
        assert history(killed)[-3:] == ["RESTARTED", "QUEUED", "KILLED"]
        assert driver.slots.queued("t", "failing") == []


def _executor(flow_yaml: str) -> Executor:
    flows = FlowRegistry()
    flows.put(parse_flow(flow_yaml))
    return Executor(flows)


def test_a_flow_without_a_limit_never_asks() -> None:
    executor = _executor(UNLIMITED)
    result = executor.step(None, ev.ExecutionCreated("e", "t", "limited", validate_inputs=False))
    assert result.state is not None and result.state.state.current is S.PAUSED
    assert not any(isinstance(c, cmd.RequestSlot) for c in result.commands)


def test_a_slot_for_an_execution_that_no_longer_waits_goes_back() -> None:
    executor = _executor(PAUSED.format(limit=1, behavior="QUEUE"))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    granted = ev.Admission("gone", "t", "limited", 1, S.RUNNING, at)
    (back,) = executor.step(None, granted).commands  # it left the state table
    assert isinstance(back, cmd.RequestSlot) and back.request == Release(
        "t", "limited", "gone", 1, 1
    )
    created = executor.step(None, ev.ExecutionCreated("e", "t", "limited", validate_inputs=False))
    st = created.state
    assert st is not None and st.state.current is S.CREATED
    running = executor.step(st, ev.Admission("e", "t", "limited", 1, S.RUNNING, at))
    assert st.state.current is S.PAUSED
    assert not any(isinstance(c, cmd.RequestSlot) for c in running.commands)
    repeated = executor.step(st, ev.Admission("e", "t", "limited", 1, S.RUNNING, at))
    assert repeated.commands == []  # a repeated grant: the slot is this attempt's already
    stale = executor.step(st, ev.Admission("e", "t", "limited", 1, S.QUEUED, at))
    assert st.state.current is S.PAUSED and stale.commands == []


def test_a_restart_from_a_snapshot_asks_for_a_slot_too() -> None:
    """An ended execution that left the state table is restarted from its last JSON; with a
    limit it waits for a slot like one restarted in place."""
    with Driver() as driver:
        driver.deploy(FAILING)
        failed = driver.start("t", "failing")
        snapshot = driver.forget(failed.id)
        holder = driver.start("t", "failing", {"fail": False})
        restarted = driver.restart(failed.id, snapshot=snapshot)
        assert history(restarted)[-2:] == ["RESTARTED", "QUEUED"]
        driver.resume(holder.id)
        assert history(driver.get(failed.id))[-3:] == ["QUEUED", "RUNNING", "FAILED"]


def _replay_of_failed(driver: Driver) -> tuple[str, Execution]:
    """A FAILED execution replayed from its failed task run (with ``fail`` false) while
    another execution holds the only slot: the holder's id and the replay."""
    driver.deploy(FAILING)
    failed = driver.start("t", "failing")
    holder = driver.start("t", "failing", {"fail": False})
    (maybe,) = [run for run in failed.taskRunList if run.taskId == "maybe"]
    replay = driver.replay(failed.id, task_run_id=maybe.id, inputs={"fail": False})
    return holder.id, replay


def test_a_replay_from_a_task_run_waits_for_a_slot() -> None:
    """A replay from a task run is a new execution of the flow: it waits for a slot as a
    restart does, and runs its chosen task run once it has one."""
    with Driver() as driver:
        holder, replay = _replay_of_failed(driver)
        assert history(replay)[-3:] == ["FAILED", "RESTARTED", "QUEUED"]
        assert [(run.taskId, run.state.current) for run in replay.taskRunList] == [
            ("maybe", S.RESTARTED)
        ]
        assert driver.slots.holders("t", "failing") == [holder]
        driver.resume(holder)
        running = driver.get(replay.id)
        assert history(running)[-3:] == ["QUEUED", "RUNNING", "PAUSED"]
        assert driver.slots.holders("t", "failing") == [replay.id]
        done = driver.resume(replay.id)
    assert done.state.current is S.SUCCESS
    assert [run.state.current for run in done.taskRunList] == [S.SUCCESS, S.SUCCESS]


def test_a_waiting_replay_keeps_its_chosen_run_in_the_changelog() -> None:
    """What a replay runs again once it has its slot is noted in its state record (not
    guessed from its RESTARTED task runs), and forgotten once it runs."""
    with Driver() as driver:
        holder, replay = _replay_of_failed(driver)
        st = driver.states[replay.id]
        (maybe,) = st.task_runs
        assert st.replay_run == maybe
        groups = {"", *(tid for tid, tr in st.task_runs.items() if tr.group is not None)}
        changes = encode_changes(st, list(st.task_runs), created=True, new_groups=groups)
        flow = driver.flows.get("t", "failing")
        assert flow is not None
        back = rebuild(replay.id, {k: v for k, v in changes if v is not None}, flow)
        assert back.replay_run == maybe
        driver.resume(holder)
        assert history(driver.get(replay.id))[-2:] == ["RUNNING", "PAUSED"]
        assert driver.states[replay.id].replay_run is None


def test_a_kill_of_a_replay_waiting_for_its_slot_ends_its_task_runs_too() -> None:
    with Driver() as driver:
        holder, replay = _replay_of_failed(driver)
        killed = driver.kill(replay.id)
        assert history(killed)[-3:] == ["RESTARTED", "QUEUED", "KILLED"]
        assert [run.state.current for run in killed.taskRunList] == [S.KILLED]
        assert driver.slots.queued("t", "failing") == []
        assert driver.slots.holders("t", "failing") == [holder]
