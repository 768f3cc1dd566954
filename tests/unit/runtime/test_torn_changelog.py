"""A processor killed while it writes one step's changelog records leaves a prefix of them: the
next owner must come back to the execution's last whole step and, replaying the step's event,
end where a run without the kill ends.

No broker: the executor processor steps the events, its changelog records go to a list, a
simulated worker answers every job, and the next owner recovers through the real recovery code
(its changelog read answers from the list)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord

from kestream.executor import codec
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.snapshot import execution_model
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.changelog_restorer import ChangelogRestorer, PartitionRead
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.executor_service import ExecutorService
from kestream.runtime.metrics import Metrics
from kestream.runtime.topics import Topics
from kestream.settings import Settings

FLOW = """
id: torn
namespace: test.torn
tasks:
  - id: first
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: ["a", "b", "c"]
    concurrencyLimit: 2
    tasks:
      - id: inner
        type: io.kestra.plugin.core.flow.Sleep
        duration: PT1S
      - id: said
        type: io.kestra.plugin.core.log.Log
        message: "{{ taskrun.value }}"
  - id: last
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT1S
"""

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
Changelog = list[tuple[str, bytes | None]]


@pytest.fixture(autouse=True)
def _no_admission_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    async def empty(self: ChangelogRestorer, topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    monkeypatch.setattr(ChangelogRestorer, "_read_table", empty)


def _processor(*flows: str) -> ExecutorService:
    """A processor with inline tasks, ``flows`` deployed (this module's flow by default)."""
    settings = Settings(broker="unused:9092", executor_inline_tasks=True)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    for flow in flows or (FLOW,):
        registry.put(parse_flow(flow))
    return ExecutorService(ctx, registry, clock=lambda: NOW, metrics=Metrics())


def _read(changelog: Changelog) -> PartitionRead:
    read = PartitionRead()
    for offset, (key, value) in enumerate(changelog):
        read.add(ConsumerRecord("changelog", 0, offset, 0, 0, key.encode(), value, None, 0, 0, []))
    return read


def _next_owner(changelog: Changelog, *flows: str) -> ExecutorService:
    """A processor that takes partition 0 over, recovering it from ``changelog``."""
    service = _processor(*flows)

    async def read(partitions: set[int], start: dict[int, int]) -> Any:
        return {0: _read(changelog)}, {0: len(changelog)}

    service.recovery.restorer._read = read  # type: ignore[method-assign]
    asyncio.run(service.assigned({0}))
    assert service.failure is None
    return service


def _json(service: ExecutorService, execution_id: str) -> Any:
    """The execution's JSON without durations (a running state's grows with the wall clock)."""

    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "duration"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    return strip(execution_model(service.states[execution_id]).model_dump(mode="json"))


def _jobs(service: ExecutorService, out: Outbox) -> list[tuple[str, str, int]]:
    jobs = []
    for topic, _, value, _ in out.commands:
        if (job := service._job_of(topic, value)) is not None:
            jobs.append(job)
    return jobs


def _terminal(service: ExecutorService, out: Outbox) -> dict[str, Any] | None:
    for topic, _, value, _ in out.commands:
        if topic == service.topics.updates and value is not None:
            body: dict[str, Any] = records.loads(value)
            if body["terminal"]:
                execution: dict[str, Any] = body["execution"]
                return execution
    return None


def _run(kill: tuple[int, int] | None = None) -> tuple[dict[str, Any], list[int], Changelog]:
    """Run the flow to its end; ``kill=(step, k)``: the processor dies once ``k`` changelog
    records of that step are written (all its commands were), and the next owner replays the
    step's event. Returns the execution's final JSON, each step's number of changelog
    records, and the changelog."""
    service = _processor()
    service.owned = {0}
    changelog: Changelog = []
    events: list[ev.Event] = [ev.ExecutionCreated("t1", "test.torn", "torn")]
    answered: set[tuple[str, int]] = set()  # the worker runs each (task run, attempt) once
    sizes: list[int] = []
    final = None
    for step, event in enumerate(events):  # grows as the worker answers
        out = Outbox()
        service._apply(0, event, out, ("executions", step))
        sizes.append(len(out.changelog))
        if kill is not None and kill[0] == step:
            changelog.extend((k, v) for k, v, _ in out.changelog[: kill[1]])
            jobs = _jobs(service, out)  # sent before the changelog: the worker has them
            final = _terminal(service, out) or final  # and the index has the update
            service = _next_owner(changelog)
            out = Outbox()
            service.recovery.take_repairs(out)
            service._apply(0, event, out, ("executions", step))  # its offset was not committed
            jobs += _jobs(service, out)
        else:
            jobs = _jobs(service, out)
        changelog.extend((k, v) for k, v, _ in out.changelog)
        final = _terminal(service, out) or final
        for execution_id, run_id, attempt in jobs:
            if (run_id, attempt) not in answered:
                answered.add((run_id, attempt))
                events.append(ev.WorkerResult(execution_id, run_id, attempt, StateType.SUCCESS))
    assert final is not None, "the execution did not end"
    return final, sizes, changelog


#: Whole-record budgets (:data:`codec.WHOLE_MAX_BYTES`): every step apart; whole for two steps,
#: then the step that outgrows it writes every key (9 records); whole to the end (where the end
#: is the record's tombstone, then the marker).
LAYOUTS = {"apart": (0, 13), "outgrown": (2000, 13), "whole": (codec.WHOLE_MAX_BYTES, 2)}


@pytest.mark.parametrize(("whole_max", "most"), LAYOUTS.values(), ids=LAYOUTS.keys())
def test_a_kill_after_any_changelog_record_of_any_step_ends_as_a_run_without_it(
    whole_max: int, most: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(codec, "WHOLE_MAX_BYTES", whole_max)
    reference, sizes, _ = _run()
    assert reference["state"]["current"] == "SUCCESS"
    assert len(reference["taskRunList"]) == 1 + 1 + 3 * 2 + 1
    assert max(sizes) == most  # steps of several records: there is something to tear
    kills = [(step, k) for step, n in enumerate(sizes) for k in range(n + 1)]
    for step, k in kills:
        final, _, changelog = _run((step, k))
        assert final == reference, f"killed after {k} of {sizes[step]} records of step {step}"
        done = _read(changelog)
        assert done.torn == {}
        assert set(done.latest) == {"t1"}  # its end marker only: no record left behind
        assert set(done.latest["t1"]) == {codec.header_key("t1", codec.ENDED)}


def test_a_torn_step_is_left_out_repaired_and_never_counts_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(codec, "WHOLE_MAX_BYTES", 0)  # steps of several records
    service = _processor()
    service.owned = {0}
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("t1", "test.torn", "torn"), out, ("executions", 0))
    whole: Changelog = [(k, v) for k, v, _ in out.changelog]
    before = _json(service, "t1")
    (job,) = _jobs(service, out)
    out = Outbox()
    service._apply(0, ev.WorkerResult(*job, StateType.SUCCESS), out, ("executions", 1))
    step = [(k, v) for k, v, _ in out.changelog]
    assert codec.is_commit_mark(*step[-1]) and len(step) >= 3
    torn = whole + step[:-1]  # all but its commit mark

    read = _read(torn)
    assert sorted(read.torn["t1"]) == sorted(k for k, _ in step[:-1])
    owner = _next_owner(torn)
    assert _json(owner, "t1") == before
    repairs = Outbox()
    owner.recovery.take_repairs(repairs)
    committed = dict(whole)
    assert [(k, v) for k, v, _ in repairs.changelog] == [
        (k, committed.get(k)) for k, _ in step[:-1]
    ]
    assert owner.recovery.repairs == []

    # Written first by the next flush, the repairs keep the torn records from counting once a
    # later step's commit mark follows them.
    later = torn + [(k, v) for k, v, _ in repairs.changelog] + [whole[-1]]
    again = _next_owner(later)
    assert _json(again, "t1") == before


def test_the_next_task_run_number_is_past_every_task_run_record() -> None:
    service = _processor()
    service.owned = {0}
    out = Outbox()
    service._apply(0, ev.ExecutionCreated("t1", "test.torn", "torn"), out, ("executions", 0))
    recs = {k: records.loads(v) for k, v, _ in out.changelog if v is not None}
    recs = {k: v for k, v in recs.items() if k != codec.header_key("t1", codec.ENDED)}
    dynamic = codec.header_key("t1", codec.DYNAMIC)
    recs[dynamic] = {**recs[dynamic], "created": 0}  # a counter behind its task runs
    flow = service.registry.get("test.torn", "torn", None)
    assert flow is not None
    st = codec.rebuild("t1", recs, flow)
    assert st.created_runs == 1 + max(tr.number for tr in st.task_runs.values())
