"""Records sized by bytes, on a real broker: an executor, a worker and a Client in this process,
with a 64 KiB record limit so that a few hundred kilobytes of outputs and logs already need
many records.

- Outputs and logs that add up to several times the limit arrive whole: the execution ends
  SUCCESS and the client's merged view has every task run, output and log line.
- A task whose single output is over the limit fails with a message naming it and the size,
  its errors branch runs, and the next execution on the same processes runs to SUCCESS; a Log
  whose rendered message is over the limit is cut (inline) or refused as a job (on a worker).
- No processor stopped: no record was refused by the producer or the broker.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from kestream.client import Client
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.sizes import encoded_size, human_size
from kestream.models.execution import Execution
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.context import BrokerContext, connect
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.metrics import Metrics
from kestream.runtime.record_limit import RecordLimit, RecordTooLarge
from kestream.runtime.worker_service import WorkerService
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
WAIT_S = 60.0

#: 50 iterations, each with ~4.9 kB of outputs and a ~4.9 kB log line: ~245 kB of outputs and
#: as much of logs, about 3.7 times the limit each, all produced by one step when inline.
MANY = """
id: many
namespace: test.sizes
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(1, 50) }}"
    concurrencyLimit: 0
    tasks:
      - id: out
        type: io.kestra.plugin.core.output.OutputValues
        values:
          text: "{{ taskrun.value }}:{{ range(1, 1200) | join(',') }}"
      - id: say
        type: io.kestra.plugin.core.log.Log
        message: "line {{ taskrun.value }}:{{ range(1, 1200) | join(',') }}"
"""

#: One output of ~109 kB: over the limit on its own.
HUGE_OUTPUT = """
id: huge-output
namespace: test.sizes
tasks:
  - id: huge
    type: io.kestra.plugin.core.debug.Return
    format: "{{ range(1, 20000) | join(',') }}"
errors:
  - id: handler
    type: io.kestra.plugin.core.log.Log
    message: "handled"
"""

#: An output of ~52 kB: over the outputs' budget (48.4 kB at this limit), yet its rendered
#: property still fits a job, so it runs (on the worker when not inline) and its outputs are
#: refused there, with the same message either way.
MEDIUM_OUTPUT = """
id: medium-output
namespace: test.sizes
tasks:
  - id: medium
    type: io.kestra.plugin.core.debug.Return
    format: "{{ range(1, 10500) | join(',') }}"
"""

#: One log message of ~109 kB.
HUGE_LOG = """
id: huge-log
namespace: test.sizes
tasks:
  - id: shout
    type: io.kestra.plugin.core.log.Log
    message: "{{ range(1, 20000) | join(',') }}"
"""

#: A subflow whose inputs no record can hold.
CHILD = """
id: child
namespace: test.sizes
inputs:
  - id: blob
    type: STRING
tasks:
  - id: took
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.blob | length }}"
"""
PARENT = """
id: parent
namespace: test.sizes
tasks:
  - id: call
    type: io.kestra.plugin.core.flow.Subflow
    namespace: test.sizes
    flowId: child
    inputs:
      blob: "{{ range(1, 20000) | join(',') }}"
errors:
  - id: handler
    type: io.kestra.plugin.core.log.Log
    message: "handled"
"""

#: A ForEach of 5000 lanes: a plan of ~75 kB, over the outputs budget (48.4 kB at this limit)
#: and over the limit itself. Its errors branch pauses, so the execution stays in the
#: executor's state across a restart.
WIDE_PLAN = """
id: wide-plan
namespace: test.sizes
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(1, 5000) }}"
    tasks:
      - id: say
        type: io.kestra.plugin.core.log.Log
        message: "{{ taskrun.value }}"
errors:
  - id: hold
    type: io.kestra.plugin.core.flow.Pause
"""

SMALL = """
id: small
namespace: test.sizes
tasks:
  - id: hello
    type: io.kestra.plugin.core.debug.Return
    format: "hello {{ execution.id }}"
"""


@dataclass
class Stack:
    ctx: BrokerContext
    registry: FlowRegistry
    executor: ExecutorService
    worker: WorkerService
    client: Client

    async def run(self, flow_yaml: str) -> Execution:
        flow = await self.client.deploy(flow_yaml)
        self.registry.put(flow)
        started = time.monotonic()
        execution_id = await self.client.submit(flow.namespace, flow.id)
        done = await self.client.wait(execution_id, timeout=WAIT_S)
        print(f"{flow.id}: {done.state.current.value} in {time.monotonic() - started:.2f} s")
        return done

    def assert_alive(self) -> None:
        assert self.executor.is_live and self.executor.failure is None
        assert self.worker.is_live


@pytest.fixture(params=[True, False], ids=["inline", "on-worker"])
async def stack(
    request: pytest.FixtureRequest, broker: BrokerHandle, topic_prefix: str
) -> AsyncIterator[Stack]:
    settings = Settings(
        broker=broker.bootstrap,
        topic_prefix=topic_prefix,
        partitions=2,
        max_record_bytes=LIMIT,
        executor_inline_tasks=request.param,
        # The record limit itself is under test: large outputs and inputs stay in the records
        # (with offloading on they go to storage: tests/unit/files, test_large_values_broker).
        output_inline_max_bytes=0,
    )
    ctx = await connect(settings)
    assert ctx.record_limit.max_bytes == LIMIT
    print(f"record limit: {ctx.record_limit.max_bytes} bytes ({ctx.record_limit.source})")
    registry = FlowRegistry()
    executor = ExecutorService(ctx, registry, own_all_partitions=True)
    worker = WorkerService(ctx, registry, own_all_partitions=True, threads=2)
    client = Client(ctx)
    stack_of: Stack | None = None
    await executor.start()
    try:
        await worker.start()
        try:
            await client.start()
            try:
                stack_of = Stack(ctx, registry, executor, worker, client)
                yield stack_of
            finally:
                await client.close()
        finally:
            await worker.stop(drain_timeout=1.0)
    finally:
        await executor.stop()
        if stack_of is not None and stack_of.executor is not executor:  # a test restarted it
            await stack_of.executor.stop()


async def test_outputs_and_logs_several_times_the_limit_arrive_whole(stack: Stack) -> None:
    done = await stack.run(MANY)
    assert done.state.current is StateType.SUCCESS
    runs = [run for run in done.taskRunList if run.taskId == "out"]
    assert sorted(run.value for run in runs) == sorted(str(i) for i in range(1, 51))
    assert len(done.taskRunList) == 1 + 2 * 50
    total = 0
    for run in runs:
        text = run.outputs["values"]["text"]
        assert text == f"{run.value}:" + ",".join(str(i) for i in range(1, 1201))
        total += len(text)
    logs = await stack.client.logs(done.id)
    said = [entry.message for entry in logs if entry.taskId == "say"]
    assert sorted(said) == sorted(
        f"line {i}:" + ",".join(str(n) for n in range(1, 1201)) for i in range(1, 51)
    )
    print(f"outputs {total} bytes and log messages {sum(map(len, said))} bytes, limit {LIMIT}")
    assert total > 3 * LIMIT
    stack.assert_alive()


async def test_oversized_values_fail_their_task_run_and_the_processes_go_on(
    stack: Stack,
) -> None:
    huge = await stack.run(HUGE_OUTPUT)
    states = {run.taskId: run.state.current for run in huge.taskRunList}
    assert huge.state.current is StateType.FAILED
    assert states == {"huge": StateType.FAILED, "handler": StateType.SUCCESS}
    errors = [e.message for e in await stack.client.logs(huge.id) if e.level == "ERROR"]
    limit = stack.ctx.record_limit
    if stack.ctx.settings.executor_inline_tasks:  # the step refuses the outputs
        size = encoded_size({"value": ",".join(str(i) for i in range(1, 20001))})
        assert (
            f"outputs of task 'huge' are {human_size(size)}, over the "
            f"{human_size(limit.output_bytes)} record limit for outputs"
        ) in errors
    else:  # its rendered format, as large as the output, makes a job too large to send
        assert any(
            message.startswith("the rendered properties of task 'huge' are 109 kB, over the")
            for message in errors
        ), errors

    medium = await stack.run(MEDIUM_OUTPUT)
    assert medium.state.current is StateType.FAILED
    errors = [e.message for e in await stack.client.logs(medium.id) if e.level == "ERROR"]
    size = encoded_size({"value": ",".join(str(i) for i in range(1, 10501))})
    assert errors == [
        f"outputs of task 'medium' are {human_size(size)}, over the "
        f"{human_size(limit.output_bytes)} record limit for outputs"
    ]

    shout = await stack.run(HUGE_LOG)
    lines = [e.message for e in await stack.client.logs(shout.id) if e.taskId == "shout"]
    if stack.ctx.settings.executor_inline_tasks:  # the line is logged, cut to fit a record
        assert shout.state.current is StateType.SUCCESS
        assert len(lines) == 1 and lines[0].startswith("1,2,3,")
        assert "[... cut: the line was" in lines[0] and len(lines[0]) < LIMIT
    else:  # the rendered message makes a job no worker could receive: the task run fails
        assert shout.state.current is StateType.FAILED
        assert any(
            line.startswith("the rendered properties of task 'shout' are") and "limit" in line
            for line in lines
        ), lines

    child = await stack.client.deploy(CHILD)
    stack.registry.put(child)
    parent = await stack.run(PARENT)
    states = {run.taskId: run.state.current for run in parent.taskRunList}
    assert parent.state.current is StateType.FAILED
    assert states == {"call": StateType.FAILED, "handler": StateType.SUCCESS}
    errors = [e.message for e in await stack.client.logs(parent.id) if e.level == "ERROR"]
    assert any(
        m.startswith("the subflow execution of test.sizes.child is") and "record limit" in m
        for m in errors
    ), errors

    small = await stack.run(SMALL)
    assert small.state.current is StateType.SUCCESS
    assert small.taskRunList[0].outputs == {"value": f"hello {small.id}"}
    stack.assert_alive()


async def test_a_plan_over_the_limit_fails_its_task_and_survives_an_executor_restart(
    stack: Stack,
) -> None:
    """The plan record was dead-lettered before, and the execution lost on the next recovery
    ("lost its plan"). Now the ForEach fails with the size, nothing is dead-lettered, and a new
    executor recovers the paused execution from the changelog and ends it on resume."""
    letters = "kestream_dead_letter_count_total"
    before = stack.executor.metrics.value(letters, {"source": "executor"}) or 0.0
    flow = await stack.client.deploy(WIDE_PLAN)
    stack.registry.put(flow)
    execution_id = await stack.client.submit(flow.namespace, flow.id)
    paused = await stack.client.wait(execution_id, timeout=WAIT_S)
    assert paused.state.current is StateType.PAUSED
    states = {run.taskId: run.state.current for run in paused.taskRunList}
    assert states == {"each": StateType.FAILED, "hold": StateType.PAUSED}
    errors = [e.message for e in await stack.client.logs(execution_id) if e.level == "ERROR"]
    plan = {"lanes": [[["say", str(i)]] for i in range(1, 5001)]}
    size = len(records.dumps(plan))
    budget = stack.ctx.record_limit.output_bytes
    print(f"plan {size} bytes, outputs budget {budget} bytes: {errors}")
    assert size > stack.ctx.record_limit.value_bytes
    assert errors == [
        f"the 5000 lanes planned by task 'each' are {human_size(size)}, over the "
        f"{human_size(budget)} record limit"
    ]
    assert (stack.executor.metrics.value(letters, {"source": "executor"}) or 0.0) == before

    await stack.executor.stop()  # a new owner recovers the partitions from the changelog
    metrics = Metrics()
    stack.executor = ExecutorService(
        stack.ctx, stack.registry, own_all_partitions=True, metrics=metrics
    )
    await stack.executor.start()
    assert execution_id in stack.executor.states
    await stack.client.resume(execution_id)
    done = await stack.client.wait(execution_id, timeout=WAIT_S)
    assert done.state.current is StateType.FAILED
    states = {run.taskId: run.state.current for run in done.taskRunList}
    assert states == {"each": StateType.FAILED, "hold": StateType.SUCCESS}
    assert metrics.value(letters, {"source": "executor"}) is None  # nothing dead-lettered
    small = await stack.run(SMALL)
    assert small.state.current is StateType.SUCCESS
    stack.assert_alive()


async def test_requests_over_the_limit_are_refused_before_anything_is_produced(
    stack: Stack,
) -> None:
    flow = await stack.client.deploy(SMALL.replace("id: small", "id: door"))
    stack.registry.put(flow)
    limit = stack.ctx.record_limit
    for size in (LIMIT, limit.header_bytes + 1_000):  # the second: under the limit itself
        with pytest.raises(RecordTooLarge, match=r"record limit for a new execution$"):
            await stack.client.submit(
                flow.namespace, flow.id, {"x": "y" * size}, validate_inputs=False
            )
    with pytest.raises(RecordTooLarge, match=r"the request's record is .* record limit$"):
        await stack.client.resume("some-execution", {"x": "y" * LIMIT})
    with pytest.raises(RecordTooLarge, match=r"the flow's record is .* record limit"):
        await stack.client.deploy(SMALL + "description: " + "z" * LIMIT + "\n")
    after = await stack.run(SMALL)  # and the installation carries on
    assert after.state.current is StateType.SUCCESS
    stack.assert_alive()


async def test_the_limit_is_read_from_the_topics(broker: BrokerHandle, topic_prefix: str) -> None:
    settings = Settings(broker=broker.bootstrap, topic_prefix=topic_prefix, partitions=2)
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    try:  # someone created one topic before kestream, with a lower limit
        config = {"max.message.bytes": "40000"}
        await admin.create_topics([NewTopic(settings.topic("logs"), 2, 1, topic_configs=config)])
    finally:
        await admin.close()
    limit = (await connect(settings)).record_limit
    print(f"{broker.kind}: record limit {limit.max_bytes} bytes ({limit.source})")
    if broker.kind == "kafka":
        assert limit == RecordLimit(40_000, "the topics' max.message.bytes")
    else:  # Tansu neither reports nor enforces it: the setting stands
        assert limit == RecordLimit(1024 * 1024, "KESTREAM_MAX_RECORD_BYTES")
