"""The client's merge of execution updates and its waiter bookkeeping, without a broker."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from kestream.client import Client, MergedExecution, merge_update
from kestream.executor import events as ev
from kestream.executor.snapshot import execution_model
from kestream.models.execution import Execution
from kestream.models.flow import parse_flow
from kestream.models.inputs import InputValidationError
from kestream.models.state import StateType
from kestream.runtime import execution_updates, records
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from kestream.testing import Driver

FLOW = """
id: three
namespace: test.client
tasks:
  - id: a
    type: io.kestra.plugin.core.debug.Return
    format: one
  - id: b
    type: io.kestra.plugin.core.debug.Return
    format: two
  - id: c
    type: io.kestra.plugin.core.debug.Return
    format: three
"""


def _wire(body: dict[str, Any]) -> dict[str, Any]:
    """What a reader gets from the topic: the value through JSON."""
    parsed: dict[str, Any] = orjson.loads(records.dumps(body))
    return parsed


def _json(execution: Execution) -> Any:
    return execution.model_dump(mode="json", by_alias=True, exclude={"state": {"duration"}})


def test_partial_updates_merge_by_id_in_order_of_first_appearance() -> None:
    with Driver() as driver:
        flow = driver.deploy(FLOW)
        done = driver.start(flow.namespace, flow.id)
        st = driver.states[done.id]
        a, b, c = (run.id for run in done.taskRunList)

        merged = merge_update(
            None, _wire(execution_updates.update_values(st, [b], terminal=False, full=False)[0])
        )
        assert list(merged.runs) == [b] and not merged.terminal
        merged = merge_update(
            merged, _wire(execution_updates.update_values(st, [a], terminal=False, full=False)[0])
        )
        merged = merge_update(
            merged,
            _wire(execution_updates.update_values(st, [b, c], terminal=False, full=False)[0]),
        )
        assert list(merged.runs) == [b, a, c]  # b first seen first; b updated in place
        model = merged.model()
        assert [run.taskId for run in model.taskRunList] == ["b", "a", "c"]
        assert model.id == done.id and model.flowRevision == flow.revision

        # A full (terminal) update replaces the picture with the executor's own order.
        final = merge_update(
            merged, _wire(execution_updates.update_values(st, [], terminal=True, full=True)[0])
        )
    assert final.terminal and final.stopped
    # Equal as JSON (instants travel with millisecond precision, as Kestra prints them).
    assert _json(final.model()) == _json(execution_model(st))
    assert [run.outputs for run in final.model().taskRunList] == [
        {"value": "one"},
        {"value": "two"},
        {"value": "three"},
    ]


def test_partial_update_keeps_known_runs_and_replaces_the_header() -> None:
    header: dict[str, Any] = {"id": "e1", "state": {"current": "RUNNING"}, "taskRunList": []}
    run1 = {"id": "r1", "state": {"current": "RUNNING"}}
    run2 = {"id": "r2", "state": {"current": "CREATED"}}
    merged = merge_update(None, {"execution": header, "taskRuns": [run1, run2], "full": False})
    paused = {**header, "state": {"current": "PAUSED"}}
    done1 = {"id": "r1", "state": {"current": "SUCCESS"}}
    again = merge_update(merged, {"execution": paused, "taskRuns": [done1], "full": False})
    assert again is merged  # merged in place: O(changed)
    assert again.runs == {"r1": done1, "r2": run2}
    assert "taskRunList" not in again.header
    assert again.paused and again.stopped and not again.terminal
    assert again.state == StateType.PAUSED.value


def test_full_update_without_earlier_state() -> None:
    body = {
        "execution": {"id": "e1", "state": {"current": "SUCCESS"}, "taskRunList": [{"id": "x"}]},
        "full": True,
        "terminal": True,
    }
    merged = merge_update(MergedExecution({"id": "old"}, {"y": {"id": "y"}}), body)
    assert list(merged.runs) == ["x"] and merged.terminal and merged.header["id"] == "e1"


# -- the client's bookkeeping, fed by hand (no broker) ----------------------------------------

INPUTS_FLOW = """
id: typed
namespace: test.client
inputs:
  - id: count
    type: INT
tasks:
  - id: a
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.count }}"
"""


class _FakeProducer:
    """Takes records as aiokafka's producer does: ``send`` may wait (a full batch draining)
    before it takes the record, and answers with the acknowledgement to await."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.inside = self.most_inside = 0

    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[None]:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            for _ in range(3):
                await asyncio.sleep(0)
            self.sent.append((topic, value, key))
            ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            ack.set_result(None)
            return ack
        finally:
            self.inside -= 1


def _client() -> tuple[Client, _FakeProducer]:
    settings = Settings(topic_prefix="unit.", broker="unused:9092")
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    client = Client(ctx, recent_max=2)
    producer = _FakeProducer()
    client._producer = producer  # type: ignore[assignment]
    return client, producer


def _update(execution_id: str, state: str, *, full: bool = False, terminal: bool = False) -> Any:
    header = {
        "id": execution_id,
        "namespace": "test.client",
        "flowId": "typed",
        "flowRevision": 1,
        "originalId": execution_id,
        "metadata": {"attemptNumber": 1, "originalCreatedDate": "2025-01-01T00:00:00.000Z"},
        "state": {"current": state, "histories": []},
        "taskRunList": [],
    }
    body: dict[str, Any] = {"execution": header, "full": full, "terminal": terminal}
    if not full:
        body["taskRuns"] = []
    return SimpleNamespace(key=execution_id.encode(), value=orjson.dumps(body), offset=0)


async def test_submit_validates_inputs_and_registers_interest() -> None:
    client, producer = _client()
    client.registry.put(parse_flow(INPUTS_FLOW))
    with pytest.raises(InputValidationError, match="count"):
        await client.submit("test.client", "typed", {"count": "many"})
    with pytest.raises(LookupError, match="deploy it first"):
        await client.submit("test.client", "nope")
    execution_id = await client.submit("test.client", "typed", {"count": "3"}, labels={"k": 1})
    ((topic, value, key),) = producer.sent
    created = records.decode_event(value)
    assert topic == client.ctx.topics.executions and key == execution_id.encode()
    assert isinstance(created, ev.ExecutionCreated)
    assert (created.revision, created.inputs, created.labels) == (1, {"count": 3}, {"k": "1"})
    assert not created.validate_inputs

    # The end arrives before anyone waits: the submitted execution keeps it for a late wait.
    client._on_update(_update(execution_id, "SUCCESS", full=True, terminal=True))
    done = await client.wait(execution_id, timeout=1)
    assert done.state.current is StateType.SUCCESS


async def test_waiters_stop_at_pause_or_end_and_followers_see_every_update() -> None:
    client, _ = _client()
    paused_waiter = asyncio.create_task(client.wait("e1", timeout=5))
    end_waiter = asyncio.create_task(client.wait("e1", timeout=5, until_paused=False))

    async def follow() -> list[str]:
        return [e.state.current.value async for e in client.follow("e1")]

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0)
    client._on_update(_update("e1", "RUNNING"))
    client._on_update(_update("e1", "PAUSED", full=True))
    assert (await paused_waiter).state.current is StateType.PAUSED
    assert not end_waiter.done()
    # After resume() the old PAUSED no longer answers a wait.
    await client.resume("e1")
    again = asyncio.create_task(client.wait("e1", timeout=5))
    await asyncio.sleep(0.01)
    assert not again.done()
    client._on_update(_update("e1", "RUNNING"))
    client._on_update(_update("e1", "FAILED", full=True, terminal=True))
    assert (await end_waiter).state.current is StateType.FAILED
    assert (await again).state.current is StateType.FAILED
    assert await follower == ["RUNNING", "PAUSED", "RUNNING", "FAILED"]
    assert "e1" not in client._watches  # ended and nobody waits: only the recent cache has it


async def test_stops_of_unwatched_executions_are_kept_briefly() -> None:
    client, _ = _client()
    client._on_update(_update("x1", "RUNNING"))  # nobody asked: not kept
    assert "x1" not in client._recent
    for name in ("x1", "x2", "x3"):
        client._on_update(_update(name, "SUCCESS", full=True, terminal=True))
    assert list(client._recent) == ["x2", "x3"]  # bounded (recent_max=2)
    assert (await client.wait("x3", timeout=1)).state.current is StateType.SUCCESS
    with pytest.raises(TimeoutError):
        await client.wait("x1", timeout=0.05)
    client._on_update(SimpleNamespace(key=b"bad", value=b"{not json", offset=7))  # logged only


def test_a_large_stop_update_is_chunked_and_stops_only_when_complete() -> None:
    from kestream.executor import events as ev
    from kestream.executor.flow_registry import FlowRegistry
    from kestream.executor.step import Executor
    from kestream.models.flow import parse_flow

    flows = FlowRegistry()
    flow = flows.put(
        parse_flow(
            "id: big\nnamespace: t\ntasks:\n  - id: each\n"
            "    type: io.kestra.plugin.core.flow.ForEach\n"
            '    values: "{{ range(1, 450) }}"\n    concurrencyLimit: 0\n    tasks:\n'
            "      - id: log\n        type: io.kestra.plugin.core.log.Log\n"
            '        message: "{{ taskrun.value }}"\n'
        )
    )
    st = Executor(flows).step(None, ev.ExecutionCreated("x", "t", "big", flow.revision)).state
    assert st is not None and st.state.current.value == "SUCCESS"
    limit = 64 * 1024
    values = execution_updates.update_records(
        st, list(st.task_runs), terminal=True, full=True, max_bytes=limit
    )
    sizes = [len(value) for value in values]
    print(f"451 task runs: records of {sizes} bytes (limit {limit})")
    assert len(values) > 2 and max(sizes) <= limit
    bodies = [orjson.loads(value) for value in values]
    assert [b["more"] for b in bodies] == [True] * (len(bodies) - 1) + [False]
    assert [b["terminal"] for b in bodies] == [False] * (len(bodies) - 1) + [True]
    merged = None
    for body in bodies:
        merged = merge_update(merged, body)
        assert merged.stopped is (body is bodies[-1])
    assert merged is not None and len(merged.model().taskRunList) == 451
    assert list(merged.runs) == list(st.task_runs)  # the executor's order, across records


async def test_concurrent_submissions_hand_their_records_over_one_at_a_time() -> None:
    """Callers waiting together in aiokafka's ``send`` for a full batch are all woken at each
    drain: the client hands records over one caller at a time, in the order they came."""
    client, producer = _client()
    client.registry.put(parse_flow(INPUTS_FLOW))
    ids = await asyncio.gather(
        *(client.submit("test.client", "typed", {"count": str(n)}) for n in range(20))
    )
    assert producer.most_inside == 1
    assert [key.decode() for _, _, key in producer.sent] == ids
