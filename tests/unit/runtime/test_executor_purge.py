"""A purge goes through the executor, in order with restarts of the same execution: it deletes an
execution only while it is still the attempt the API's index saw ended, and a restart from that
attempt's snapshot arriving after it runs nothing (:mod:`kestream.runtime.purge_fence`). The
processor runs here without a broker: events go straight to its step."""

from __future__ import annotations

from typing import Any

import pytest

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.changelog_restorer import ChangelogRestorer
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService, Outbox
from kestream.runtime.metrics import Metrics
from kestream.runtime.purge_fence import PURGED, REFUSAL
from kestream.runtime.topics import Topics
from kestream.settings import Settings

FAILS = """
id: fails
namespace: test.purge
tasks:
  - id: boom
    type: io.kestra.plugin.core.execution.Fail
"""

RECORD = {"purge": {"execution": True, "logs": "all"}}


@pytest.fixture(autouse=True)
def _no_admission_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    async def empty(self: ChangelogRestorer, topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    monkeypatch.setattr(ChangelogRestorer, "_read_table", empty)


@pytest.fixture
def service() -> ExecutorService:
    settings = Settings(broker="unused:9092", executor_inline_tasks=False)  # a worker runs it
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    registry.put(parse_flow(FAILS))
    executor = ExecutorService(ctx, registry, metrics=Metrics())
    executor.owned = {0, 1}
    return executor


def _apply(service: ExecutorService, event: ev.Event) -> Outbox:
    out = Outbox()
    service._apply(0, event, out, ("executions", 0))
    return out


def _fail_on_worker(service: ExecutorService, out: Outbox) -> Outbox:
    """Answer the job ``out`` sent to a worker: the task run failed."""
    jobs = [records.loads(v) for t, _, v, _ in out.commands if t == service.topics.worker_tasks]
    (job,) = jobs
    return _apply(service, ev.WorkerResult("e1", job["run"], job["attempt"], StateType.FAILED))


def _failed(service: ExecutorService) -> dict[str, Any]:
    """Run ``e1`` to FAILED; its last snapshot (what the index holds and a restart carries)."""
    out = _fail_on_worker(
        service, _apply(service, ev.ExecutionCreated("e1", "test.purge", "fails"))
    )
    assert "e1" not in service.states and service.ended.get("e1") is not None
    ends = [records.loads(v) for t, _, v, _ in out.commands if t == service.topics.updates]
    snapshot: dict[str, Any] = ends[-1]["execution"]
    assert snapshot["state"]["current"] == "FAILED"
    return snapshot


def _purge_records(service: ExecutorService, out: Outbox) -> list[Any]:
    return [records.loads(v) for t, _, v, _ in out.commands if t == service.topics.logs]


def test_a_purge_of_the_attempt_that_ended_deletes_it_and_fences_its_restart(
    service: ExecutorService,
) -> None:
    snapshot = _failed(service)
    out = _apply(service, ev.Purge("e1", 1, RECORD))
    assert _purge_records(service, out) == [RECORD]
    assert [records.loads(v)["state"] for _, v, _ in out.changelog if v] == [PURGED]
    # The restart the index let through before it saw the purge arrives after it: ignored.
    out = _apply(service, ev.Restart("e1", snapshot))
    assert "e1" not in service.states and out.commands == []


def test_a_purge_arriving_after_a_restart_is_refused(service: ExecutorService) -> None:
    snapshot = _failed(service)
    _apply(service, ev.Restart("e1", snapshot))
    assert "e1" in service.states  # running again
    out = _apply(service, ev.Purge("e1", 1, RECORD))
    assert _purge_records(service, out) == [REFUSAL] and out.changelog == []
    assert "e1" in service.states


def test_a_purge_of_an_attempt_overtaken_by_a_later_end_is_refused(
    service: ExecutorService,
) -> None:
    snapshot = _failed(service)
    _fail_on_worker(service, _apply(service, ev.Restart("e1", snapshot)))  # attempt 2 ends
    marker = service.ended.get("e1")
    assert "e1" not in service.states and marker is not None and marker.attempt == 2
    out = _apply(service, ev.Purge("e1", 1, RECORD))
    assert _purge_records(service, out) == [REFUSAL]
    assert _purge_records(service, _apply(service, ev.Purge("e1", 2, RECORD))) == [RECORD]


def test_a_purge_event_travels_whole() -> None:
    event = records.decode_event(records.encode_event(ev.Purge("e1", 3, RECORD)))
    assert event == ev.Purge("e1", 3, RECORD)
