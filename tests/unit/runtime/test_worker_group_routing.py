"""Worker groups: the workerGroup property, the members' groups, routing and fallbacks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import check_flow, parse_flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService, Outbox
from kestream.runtime.members import STALE_AFTER_S, MemberStatus, Roster
from kestream.runtime.metrics import Metrics
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from kestream.tasks.worker_group import WorkerGroup, WorkerGroupFallback, no_worker_outcome


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _flow(group: str) -> str:
    return f"""
id: grouped
namespace: test.groups
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
{group}
"""


def _worker(pid: int, ts: float, group: str | None, *, live: bool = True) -> MemberStatus:
    return MemberStatus(
        "worker", "host-a", pid, None, True, live, 900.0, ts, (), group, ("a.B", "c.D")
    )


# -- the property --------------------------------------------------------------------------


def test_the_worker_group_property_parses_with_wait_by_default() -> None:
    flow = parse_flow(_flow("    workerGroup:\n      key: gpu"))
    assert flow.tasks[0].workerGroup == WorkerGroup(key="gpu", fallback=WorkerGroupFallback.WAIT)
    flow = parse_flow(_flow("    workerGroup: {key: gpu-2, fallback: CANCEL}"))
    assert flow.tasks[0].workerGroup == WorkerGroup(
        key="gpu-2", fallback=WorkerGroupFallback.CANCEL
    )
    assert parse_flow(_flow("")).tasks[0].workerGroup is None


@pytest.mark.parametrize(
    ("group", "path"),
    [
        ('{key: "{{ inputs.group }}"}', "tasks[0].workerGroup.key"),  # a plain string, no template
        ("{key: a.b}", "tasks[0].workerGroup.key"),  # not a topic-safe name
        ("{key: gpu, fallback: RETRY}", "tasks[0].workerGroup.fallback"),
        ("{key: gpu, size: 2}", "tasks[0].workerGroup.size"),
        ("{fallback: FAIL}", "tasks[0].workerGroup.key"),
    ],
)
def test_a_bad_worker_group_is_refused_at_deploy(group: str, path: str) -> None:
    problems = check_flow(_flow(f"    workerGroup: {group}"))
    assert [p.path for p in problems if p.severity == "error"] == [path]


def test_the_fallback_decides_how_a_task_run_ends_without_a_worker() -> None:
    assert no_worker_outcome(WorkerGroup(key="gpu")) is None
    assert no_worker_outcome(WorkerGroup(key="gpu", fallback=WorkerGroupFallback.FAIL)) == (
        StateType.FAILED,
        "no worker of worker group 'gpu' is alive (workerGroup.fallback: FAIL)",
    )
    assert no_worker_outcome(WorkerGroup(key="gpu", fallback=WorkerGroupFallback.CANCEL)) == (
        StateType.KILLED,
        "cancelled: no worker of worker group 'gpu' is alive (workerGroup.fallback: CANCEL)",
    )


def test_the_worker_group_setting_is_a_topic_safe_key() -> None:
    assert Settings(worker_group="gpu").worker_group == "gpu"
    with pytest.raises(ValidationError):
        Settings(worker_group="gpu/../x")


# -- members --------------------------------------------------------------------------------


def test_a_worker_member_record_carries_its_group_and_task_types() -> None:
    status = _worker(3, 1_000.0, "gpu")
    assert MemberStatus.decode(status.encode()) == status
    older = records.dumps({k: v for k, v in records.loads(status.encode()).items()
                           if k not in ("group", "task_types")})  # fmt: skip
    assert MemberStatus.decode(older).group is None  # records of earlier versions still read


def test_a_group_is_alive_while_one_of_its_live_workers_beats() -> None:
    clock = FakeClock(1_000.0)
    roster = Roster(clock=clock)
    assert not roster.group_alive("gpu") and not roster.group_alive(None)

    first, second = _worker(1, 1_000.0, "gpu"), _worker(2, 1_000.0, None)
    roster.apply(first.key, first.encode())
    roster.apply(second.key, second.encode())
    assert roster.group_alive("gpu") and roster.group_alive(None)
    assert not roster.group_alive("cpu")  # another group's worker is no worker of this one
    executor = MemberStatus("executor", "host-a", 9, None, True, True, 900.0, 1_000.0, (), "cpu")
    roster.put(executor)
    assert not roster.group_alive("cpu")  # only workers serve groups

    clock.now += STALE_AFTER_S + 0.1  # silent since: gone
    assert not roster.group_alive("gpu")
    roster.put(_worker(1, clock.now, "gpu"))  # it beats again
    assert roster.group_alive("gpu")

    roster.put(_worker(1, clock.now, "gpu", live=False))  # its loop died
    assert not roster.group_alive("gpu")
    roster.put(_worker(1, clock.now, "gpu"))
    roster.apply(first.key, None)  # a clean stop
    assert not roster.group_alive("gpu")

    roster.put(_worker(4, clock.now, "gpu"))
    roster.put(_worker(4, clock.now, "cpu"))  # the same process, now serving another group
    assert roster.group_alive("cpu") and not roster.group_alive("gpu")


# -- the executor's routing ------------------------------------------------------------------


def _executor(yaml_text: str, *, routed: bool = True) -> tuple[ExecutorService, Roster, Topics]:
    settings = Settings(broker="unused:9092", executor_inline_tasks=True)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow(yaml_text))
    service = ExecutorService(ctx, registry, metrics=Metrics(), route_worker_groups=routed)
    return service, service.groups.board.roster, ctx.topics


def _start(service: ExecutorService) -> Outbox:
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("ex-1", "test.groups", "grouped"), out, None)
    return out


def _jobs(out: Outbox) -> list[tuple[str, str]]:
    """(topic, job type) of the worker jobs among the step's commands."""
    jobs = []
    for topic, _, value, _ in out.commands:
        body = records.loads(value) if value is not None else None
        if isinstance(body, dict) and body.get("type") in ("run", "kill"):
            jobs.append((topic, body["type"]))
    return jobs


def _task_state(service: ExecutorService, out: Outbox) -> tuple[str, str | None]:
    updates = [records.loads(v) for t, _, v, _ in out.commands if t == service.topics.updates]
    run = updates[-1]["execution"]["taskRunList"][0]
    return run["state"]["current"], updates[-1]["execution"]["state"]["current"]


def test_a_task_without_a_group_goes_to_the_default_workers() -> None:
    service, _, topics = _executor(
        _flow("").replace("log.Log\n    message: hi", "flow.Sleep\n    duration: PT1S")
    )
    out = _start(service)
    assert _jobs(out) == [(topics.worker_tasks, "run")]
    assert service.groups._to_create == set()


def test_a_grouped_task_goes_to_its_group_topic_even_if_it_could_run_inline() -> None:
    service, _, topics = _executor(_flow("    workerGroup: {key: gpu}"))
    out = _start(service)  # WAIT: sent whether or not a worker of the group is up
    assert _jobs(out) == [(topics.group_tasks("gpu"), "run")]
    assert topics.group_tasks("gpu") == f"{topics.worker_tasks}-gpu"
    assert service.groups._to_create == {topics.group_tasks("gpu")}  # created before the send


@pytest.mark.parametrize(
    ("fallback", "state", "error"),
    [
        ("FAIL", "FAILED", "no worker of worker group 'gpu' is alive (workerGroup.fallback: FAIL)"),
        ("CANCEL", "KILLED", "cancelled: no worker of worker group 'gpu' is alive"),
    ],
)
def test_a_group_without_a_live_worker_applies_the_fallback(
    fallback: str, state: str, error: str
) -> None:
    service, roster, topics = _executor(
        _flow(f"    workerGroup: {{key: gpu, fallback: {fallback}}}")
    )
    roster.put(_worker(1, roster.clock(), None))  # a default worker is no gpu worker
    out = _start(service)
    # No job is sent (CANCEL kills the execution, whose kill of the task run goes, harmlessly,
    # where a job of that group would have gone).
    assert [topic for topic, kind in _jobs(out) if kind == "run"] == []
    assert _task_state(service, out) == (state, state)
    logs = [records.loads(v) for t, _, v, _ in out.commands if t == topics.logs]
    assert any(error in line["message"] for body in logs for line in body)


@pytest.mark.parametrize("fallback", ["FAIL", "CANCEL"])
def test_a_group_with_a_live_worker_gets_the_job(fallback: str) -> None:
    service, roster, topics = _executor(
        _flow(f"    workerGroup: {{key: gpu, fallback: {fallback}}}")
    )
    roster.put(_worker(1, roster.clock(), "gpu"))
    out = _start(service)
    assert _jobs(out) == [(topics.group_tasks("gpu"), "run")]


def test_kestream_run_on_its_own_broker_sends_every_job_to_its_one_worker() -> None:
    flow = _flow("    workerGroup: {key: gpu, fallback: FAIL}")
    service, _, topics = _executor(flow, routed=False)  # no gpu worker, and no fallback either
    out = _start(service)
    assert _jobs(out) == [(topics.worker_tasks, "run")]
    assert service.groups._to_create == set()


def test_kestream_worker_refuses_a_group_that_is_no_topic_name() -> None:
    from typer.testing import CliRunner

    from kestream.cli import EXIT_UNUSABLE, app

    result = CliRunner().invoke(app, ["worker", "--group", "gpu/a"])
    assert result.exit_code == EXIT_UNUSABLE
    assert "--group 'gpu/a': a worker group key must match" in result.output
