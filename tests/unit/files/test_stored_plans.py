"""A ForEach's values past the inline threshold: its plan record (every lane's value) is stored
in the task run's folder and the changelog carries a reference, which recovery reads back. On
the local and the S3 storage."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition

from kestream.executor import codec
from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.state import ExecutionState
from kestream.executor.step import Executor, StepResult
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.changelog_restorer import ChangelogRestorer, PartitionRead, RecoveryFailed
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService, Outbox, _Rebalance
from kestream.runtime.metrics import Metrics
from kestream.runtime.pending_rebuilds import RebuildFailed
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from kestream.storage import Storage, execution_prefix, offload, parse_uri, using_storage
from kestream.storage.offload import REF_KEY, StorageUnavailable, is_reference
from kestream.testing import Driver

S = StateType
THRESHOLD = 1024
LANES = 2000  # ~30 kB of plan, past the threshold and past the 8 kB record budget below
BUDGET = 8 * 1024

EACH = """
id: each
namespace: acme.team
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(1, %d) }}"
    concurrencyLimit: 0
    tasks:
      - id: say
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
"""


def _step(lanes: int, threshold: int) -> tuple[Any, StepResult]:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(EACH % lanes))
    created = ev.ExecutionCreated("x-1", flow.namespace, flow.id, flow.revision)
    executor = Executor(
        flows, inline_tasks=False, max_output_bytes=BUDGET, inline_max_bytes=threshold
    )
    result = executor.step(None, created)
    assert result.state is not None
    return flow, result


def _changelog(st: ExecutionState, result: StepResult) -> dict[str, Any]:
    """The changelog records of the step, decoded as a new owner reads them."""
    out: dict[str, Any] = {}
    for command in result.commands:
        if isinstance(command, cmd.ExecutionChanged):
            changed = command.changed_task_runs + command.counters_changed
            for key, value in codec.encode_changes(
                st, changed, created=command.created, new_groups=command.planned
            ):
                out[key] = None if value is None else orjson.loads(records.dumps(value))
    return {key: value for key, value in out.items() if value is not None}


def _each_run(st: ExecutionState) -> Any:
    (run,) = [tr for tr in st.task_runs.values() if tr.task.id == "each"]
    return run


def test_a_plan_past_the_threshold_is_stored_and_recovery_reads_it_back(
    storage: Storage,
) -> None:
    flow, result = _step(LANES, THRESHOLD)
    st = result.state
    assert st is not None and st.state.current is S.RUNNING
    each = _each_run(st)
    assert each.state.current is S.RUNNING  # before, over the record budget: FAILED
    assert each.group is not None and is_reference(each.group.stored)
    key = parse_uri(each.group.stored[REF_KEY])
    assert key.startswith(
        execution_prefix("acme.team", "each", "x-1") + f"tasks/each/{each.id}/_plan/"
    )
    changelog = _changelog(st, result)
    plan = changelog[codec.task_run_key(st.id, each.id, codec.PLAN)]
    assert plan == {"stored": each.group.stored}  # the record carries the reference only
    assert max(len(orjson.dumps(value)) for value in changelog.values()) < BUDGET
    assert len(orjson.loads(storage.get(key))["lanes"]) == LANES

    rebuilt = codec.rebuild(st.id, changelog, flow)
    again = rebuilt.task_runs[each.id].group
    assert again is not None and again.stored == each.group.stored
    assert [[(t.id, v) for t, v in lane] for lane in again.lanes] == [
        [("say", str(n))] for n in range(1, LANES + 1)
    ]
    # recovered, the plan is not written again: the record stays the reference
    assert codec.encode_plan(again) == plan


def test_a_plan_within_the_threshold_or_with_offloading_off_stays_in_its_record(
    storage: Storage,
) -> None:
    _, small = _step(20, THRESHOLD)
    assert small.state is not None
    group = _each_run(small.state).group
    assert group is not None and group.stored is None
    assert "lanes" in codec.encode_plan(group)
    _, off = _step(LANES, 0)  # offloading off: the record limit applies, as before
    assert off.state is not None and _each_run(off.state).state.current is S.FAILED
    assert storage.list(execution_prefix("acme.team", "each", "x-1")) == []


def test_a_missing_stored_plan_is_a_bad_record_and_an_unavailable_storage_is_not(
    storage: Storage,
) -> None:
    flow, result = _step(LANES, THRESHOLD)
    st = result.state
    assert st is not None
    ref = _each_run(st).group.stored
    changelog = _changelog(st, result)

    with pytest.raises(StorageUnavailable, match="does not answer"):
        offload.fetch_plan(ref, st.id, _Flaky(storage, failures=1))
    with pytest.raises(offload.SnapshotError, match="not a stored plan of execution"):
        offload.fetch_plan(ref, "another", storage)
    storage.delete(parse_uri(ref[REF_KEY]))
    with pytest.raises(codec.CodecError, match="missing"):
        codec.rebuild(st.id, changelog, flow)


class _Flaky(Storage):
    """``storage`` whose reads fail the first ``failures`` times, as an endpoint that does not
    answer; records the threads the reads ran on."""

    def __init__(self, storage: Storage, failures: int) -> None:
        super().__init__(storage._store, "flaky", storage.local_root)
        self.failures = failures
        self.threads: list[threading.Thread] = []

    def get(self, key: str) -> bytes:
        self.threads.append(threading.current_thread())
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("the endpoint does not answer")
        return super().get(key)


def _recovering_service(
    storage: Storage, failures: int
) -> tuple[ExecutorService, _Flaky, ExecutionState]:
    """An executor processor (no broker) whose partition 0's changelog holds a ForEach whose
    plan is stored, read back through a storage that fails ``failures`` times first."""
    settings = Settings(broker="unused:9092", executor_inline_tasks=False)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    service = ExecutorService(ctx, FlowRegistry(), metrics=Metrics())
    flow, result = _step(LANES, THRESHOLD)
    service.registry.put(parse_flow(EACH % LANES))
    st = result.state
    assert st is not None and flow is not None
    changelog = _changelog(st, result)
    service.recovery.restorer = ChangelogRestorer(ctx, service.registry, attempts=3, backoff_s=0)

    async def read(partitions: set[int], start: dict[int, int]) -> Any:
        reads = {p: PartitionRead({st.id: dict(changelog)} if p == 0 else {}) for p in partitions}
        return reads, dict.fromkeys(partitions, 1)

    async def no_slots(topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    service.recovery.restorer._read = read  # type: ignore[method-assign]
    service.recovery.restorer._read_table = no_slots  # type: ignore[method-assign]
    flaky = _Flaky(storage, failures)
    return service, flaky, st


def test_a_recovery_reads_stored_plans_in_threads_and_tries_them_again(storage: Storage) -> None:
    service, flaky, st = _recovering_service(storage, failures=2)
    with using_storage(flaky):
        asyncio.run(service.assigned({0}))
    assert service.failure is None and service.owned == {0}
    rebuilt = service.states[st.id]
    each = _each_run(rebuilt)
    assert each.group is not None and len(each.group.lanes) == LANES
    assert len(flaky.threads) == 3  # two failures, then the read that gave it
    assert threading.main_thread() not in flaky.threads  # never on the event loop's thread


def test_a_parked_partition_taken_back_reads_stored_plans_in_threads_too(
    storage: Storage,
) -> None:
    """A partition that comes back to this processor is rebuilt from its parked state and what
    its changelog got since: the executions touched are rebuilt, their stored plans read as a
    cold recovery reads them."""
    service, flaky, st = _recovering_service(storage, failures=0)

    async def scenario() -> None:  # one loop: the processor's events and locks live on it
        await service.assigned({0})
        await service.revoked({0})
        assert st.id not in service.states
        flaky.failures = 1
        with using_storage(flaky):
            await service.assigned({0})

    asyncio.run(scenario())
    assert service.failure is None and service.owned == {0}
    each = _each_run(service.states[st.id])
    assert each.group is not None and len(each.group.lanes) == LANES
    assert len(flaky.threads) == 2 and threading.main_thread() not in flaky.threads


def test_a_stored_plan_gone_leaves_its_execution_out_and_counts_a_dead_letter(
    storage: Storage,
) -> None:
    """A missing plan is a bad record: the recovery goes on without that execution, logged and
    counted, and the processor owns the partition."""
    service, _, st = _recovering_service(storage, failures=0)
    (key,) = [
        k for k in storage.list(execution_prefix("acme.team", "each", st.id)) if "/_plan/" in k
    ]
    storage.delete(key)
    asyncio.run(service.assigned({0}))
    assert service.failure is None and service.owned == {0} and st.id not in service.states
    counted = service.metrics.registry.get_sample_value(
        "kestream_dead_letter_count_total", {"source": "executor"}
    )
    assert counted == 1


def test_a_stored_plan_the_storage_keeps_refusing_stops_the_processor_loudly(
    storage: Storage,
) -> None:
    """Not swallowed by the rebalance callback: the processor fails (its process stops), it
    does not go on without the partition's executions."""
    service, flaky, st = _recovering_service(storage, failures=100)
    failures: list[BaseException] = []
    service.on_failure = failures.append
    tps = [TopicPartition(service.topics.executions, 0)]
    with using_storage(flaky):
        asyncio.run(_Rebalance(service).on_partitions_assigned(tps))  # never raises into aiokafka
    assert len(flaky.threads) == 3  # tried as a changelog read is
    (failure,) = failures
    assert isinstance(failure, RecoveryFailed) and "does not answer" in str(failure)
    assert service.failure is failure and service._fatal is failure
    assert service.owned == set() and st.id not in service.states and not service.ready.is_set()


def _fail_half_applied(service: ExecutorService, *, drop_groups: bool = False) -> None:
    """The service's steps apply the event, then raise (an engine bug); with ``drop_groups``
    they have dropped the groups of the task runs first (as a restart's step would)."""
    real_step = service.executor.step

    def half_applied(state: Any, event: ev.Event) -> Any:
        real_step(state, event)
        if drop_groups:
            for tr in state.task_runs.values():
                tr.group = None
        raise RuntimeError("engine bug")

    service.executor.step = half_applied  # type: ignore[method-assign]


def test_a_roll_back_takes_the_stored_plans_from_memory_and_the_cycles_update_stands(
    storage: Storage,
) -> None:
    """A step that failed half-way is rolled back from the records the changelog holds, the
    plans they name in the storage taken from the state in memory: a storage that does not
    answer (nor is read, on the event loop) cannot take the execution out of the table, and
    the update of the execution's earlier step in the cycle is still written."""
    service, flaky, st = _recovering_service(storage, failures=0)
    asyncio.run(service.assigned({0}))
    first, second = [tr.id for tr in st.task_runs.values() if tr.task.id == "say"][:2]
    out = Outbox()
    done = ev.WorkerResult(st.id, first, 1, S.SUCCESS, outputs={"value": "1"})
    service._apply(0, done, out, ("results", 7))
    assert st.id in out.partial_updates
    _fail_half_applied(service)
    flaky.failures = 1
    with using_storage(flaky):
        service._apply(0, ev.WorkerResult(st.id, second, 1, S.SUCCESS), out, ("results", 8))
    assert st.id in service.states and flaky.threads == []  # the storage was not read
    rebuilt = service.states[st.id]
    assert rebuilt.task_runs[first].state.current is S.SUCCESS
    assert rebuilt.task_runs[second].state.current is S.RUNNING  # the failed step's undone
    each = _each_run(rebuilt)
    assert each.group is not None and len(each.group.lanes) == LANES
    service.writer.coalesce(out)
    updates = [v for t, k, v, _ in out.commands if t == service.topics.updates and k == st.id]
    (update,) = updates
    runs = {run["id"]: run["state"]["current"] for run in records.loads(update)["taskRuns"]}
    assert runs[first] == "SUCCESS" and second not in runs


def test_a_roll_back_takes_from_memory_only_the_stored_plans_its_records_name(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stored plan can be MBs: only those the records rebuilt name are encoded from memory,
    and one that memory cannot give is read from the storage, never raised out of the roll
    back (it runs on a failed step's error path)."""
    _, result = _step(LANES, THRESHOLD)
    st = result.state
    assert st is not None
    each = _each_run(st)
    assert each.group is not None and is_reference(each.group.stored)
    recs = _changelog(st, result)
    named = codec.stored_plans(st.id, recs)
    assert named == [each.group.stored]
    assert codec.held_plans(st, []) == {}
    (plan,) = codec.held_plans(st, named).values()
    assert len(plan["lanes"]) == LANES

    def broken(st: Any, refs: Any) -> Any:
        raise ValueError("no plan")

    monkeypatch.setattr(codec, "held_plans", broken)
    assert ExecutorService._held_plans(st, st.id, recs) is None


def _wait_for_rebuild(
    service: ExecutorService, flaky: _Flaky, st: ExecutionState, out: Outbox
) -> tuple[str, str]:
    """A step of ``st`` that fails half-way after an earlier step of the cycle (the first
    lane's result), rolled back while neither memory (the step dropped its groups) nor the
    storage (``flaky`` fails once) gives its stored plan: it waits for its rebuild. Returns
    the first two lanes' task runs."""
    first, second = [tr.id for tr in st.task_runs.values() if tr.task.id == "say"][:2]
    service._apply(0, ev.WorkerResult(st.id, first, 1, S.SUCCESS), out, ("results", 6))
    real_step = service.executor.step
    _fail_half_applied(service, drop_groups=True)
    flaky.failures = 1
    with using_storage(flaky):
        service._apply(0, ev.Kill(st.id), out, ("executions", 7))
    service.executor.step = real_step  # type: ignore[method-assign]
    assert st.id not in service.states and st.id in service.rebuilds
    assert service.failure is None
    return first, second


def test_a_roll_back_the_storage_cannot_serve_waits_for_the_next_cycles_rebuild(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """The execution is not taken out of the table for good (its changelog keeps it): its
    later events are held, and the next cycle rebuilds it as a recovery does, its stored plan
    read in a thread; its held events then step, and the update of its step before the failed
    one, which the cycle could not make, is made."""
    service, flaky, st = _recovering_service(storage, failures=0)
    out, later = Outbox(), Outbox()

    async def scenario() -> tuple[str, str]:  # one loop: the processor's events live on it
        await service.assigned({0})
        first, second = _wait_for_rebuild(service, flaky, st, out)
        service._apply(0, ev.WorkerResult(st.id, second, 1, S.SUCCESS), out, ("results", 8))
        assert st.id in service.held  # behind its rebuild
        service.writer.coalesce(out)
        with using_storage(flaky):
            await service.rebuilds.rebuild(later)
        return first, second

    first, second = asyncio.run(scenario())
    assert f"execution {st.id} cannot be rolled back now" in caplog.text
    assert [k for t, k, _, _ in out.commands if t == service.topics.updates] == []
    assert flaky.threads[-1] is not threading.main_thread()  # read off the event loop
    rebuilt = service.states[st.id]
    each = _each_run(rebuilt)
    assert each.group is not None and len(each.group.lanes) == LANES
    assert rebuilt.task_runs[first].state.current is S.SUCCESS
    service._release_held(service.clock(), later)
    assert st.id not in service.held
    assert service.states[st.id].task_runs[second].state.current is S.SUCCESS
    service.writer.coalesce(later)
    (update,) = [v for t, k, v, _ in later.commands if t == service.topics.updates and k == st.id]
    runs = {run["id"]: run["state"]["current"] for run in records.loads(update)["taskRuns"]}
    assert runs[first] == runs[second] == "SUCCESS"


def test_a_rolled_back_execution_the_storage_keeps_refusing_stops_the_processor(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    """The next cycle's rebuild reads the stored plan as a recovery does, tried again, and then
    stops the processor loudly, naming the execution: its partition's next owner recovers it
    from the changelog."""
    service, flaky, st = _recovering_service(storage, failures=0)

    async def scenario() -> None:
        await service.assigned({0})
        _wait_for_rebuild(service, flaky, st, Outbox())
        flaky.threads.clear()
        flaky.failures = 100
        with using_storage(flaky):
            await service.rebuilds.rebuild(Outbox())

    with pytest.raises(RebuildFailed, match=f"execution {st.id} cannot be rebuilt"):
        asyncio.run(scenario())
    assert len(flaky.threads) == 3  # tried as a changelog read is
    assert f"execution {st.id} cannot be rebuilt from its changelog records" in caplog.text


def test_a_for_each_over_values_past_the_threshold_runs_to_its_end(storage: Storage) -> None:
    """Through the driver: the values come from a stored output (a reference), the plan is
    stored, every iteration runs with its value."""
    flow = """id: wide
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{{ range(1, 1500) | join(',') }}"
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ outputs.make.value | split(',') }}"
    tasks:
      - id: say
        type: io.kestra.plugin.core.debug.Return
        format: "v{{ taskrun.value }}"
  - id: count
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.say | length }} {{ outputs.say['1500'].value }}"
"""
    driver = Driver(inline_tasks=True)
    driver.executor.inline_max_bytes = THRESHOLD
    driver.executor.max_output_bytes = BUDGET
    with driver:
        driver.deploy(flow)
        done = driver.start("acme.team", "wide")
    assert done.state.current is S.SUCCESS
    (count,) = [run for run in done.taskRunList if run.taskId == "count"]
    assert count.outputs == {"value": "1500 v1500"}
    (each,) = [run for run in done.taskRunList if run.taskId == "each"]
    stored = storage.list(execution_prefix("acme.team", "wide", done.id) + "tasks/each/")
    assert [key for key in stored if f"/{each.id}/_plan/" in key]
