"""Large outputs and inputs leave the records: stored, referenced, read back by expressions.

Through the broker-free driver (the executor step and the task runner a deployment runs), on
the local and the S3 storage. The inline threshold is set low so small texts reach it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from kestream.executor import events as ev
from kestream.executor.references import LOADER, encoded, fit_outputs, offload
from kestream.models.state import StateType
from kestream.storage import Storage, execution_prefix, parse_uri
from kestream.storage.offload import REF_KEY, Resolving, is_reference
from kestream.testing import Driver

S = StateType
THRESHOLD = 1024
BIG = "abcdefghij" * 3000  # 30 000 characters (Pebble ranges include their end)

FLOW = """id: big
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{% for i in range(1, 3000) %}abcdefghij{% endfor %}"
  - id: small
    type: io.kestra.plugin.core.debug.Return
    format: "tiny"
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: >-
      {{ outputs.make.value | length }} {{ outputs.make.value | slice(0, 3) }}
      {{ outputs.small.value }}
"""


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    LOADER.clear()
    yield
    LOADER.clear()


def _driver(*, inline_tasks: bool) -> Driver:
    driver = Driver(inline_tasks=inline_tasks)
    driver.executor.inline_max_bytes = THRESHOLD
    driver.runner.inline_max_bytes = THRESHOLD
    return driver


def _outputs(execution: Any, task_id: str) -> Any:
    (run,) = [run for run in execution.taskRunList if run.taskId == task_id]
    return run.outputs


@pytest.mark.parametrize("inline_tasks", [False, True], ids=["worker", "executor"])
def test_a_large_output_is_stored_and_read_back_by_expressions(
    storage: Storage, inline_tasks: bool
) -> None:
    with _driver(inline_tasks=inline_tasks) as driver:
        driver.deploy(FLOW)
        done = driver.start("acme.team", "big")
        assert done.state.current is S.SUCCESS
        ref = _outputs(done, "make")["value"]
        assert is_reference(ref)
        key = parse_uri(ref[REF_KEY])
        (make,) = [run for run in done.taskRunList if run.taskId == "make"]
        assert key.startswith(execution_prefix("acme.team", "big", done.id) + "tasks/make/")
        assert make.id in key
        assert orjson.loads(storage.get(key)) == BIG and ref["size"] == len(BIG) + 2
        assert _outputs(done, "small") == {"value": "tiny"}  # small outputs stay inline
        assert _outputs(done, "use") == {"value": f"{len(BIG)} abc tiny"}


def test_the_executors_record_of_an_output_holds_the_reference_not_the_value(
    storage: Storage,
) -> None:
    flow = """id: held
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{% for i in range(1, 3000) %}abcdefghij{% endfor %}"
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
"""
    with _driver(inline_tasks=False) as driver:
        driver.deploy(flow)
        paused = driver.start("acme.team", "held")
        assert paused.state.current is S.PAUSED
        state = driver.states[paused.id]  # still running: its state is there to look at
        snapshot = paused.model_dump(mode="json", by_alias=True)
        assert len(orjson.dumps(snapshot)) < len(BIG)
        assert state.references and is_reference(state.outputs["make"]["value"])


def test_a_missing_stored_value_fails_the_reading_task_run_naming_task_and_uri(
    storage: Storage,
) -> None:
    flow = """id: gone
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{% for i in range(1, 3000) %}abcdefghij{% endfor %}"
  - id: wait
    type: io.kestra.plugin.core.flow.Pause
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.make.value | length }}"
"""
    with _driver(inline_tasks=False) as driver:
        driver.deploy(flow)
        paused = driver.start("acme.team", "gone")
        assert paused.state.current is S.PAUSED
        uri = _outputs(paused, "make")["value"][REF_KEY]
        assert storage.delete(parse_uri(uri))
        done = driver.resume(paused.id)
        assert done.state.current is S.FAILED
        (use,) = [run for run in done.taskRunList if run.taskId == "use"]
        assert use.state.current is S.FAILED
        messages = [line.message for line in driver.logs(done.id) if line.taskRunId == use.id]
        assert any("task 'make'" in text and uri in text and "missing" in text for text in messages)


def test_a_secret_text_rendered_on_the_worker_reads_through_references(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", base64.b64encode(b"t0ps3cret-value").decode())
    flow = """id: secretly
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{% for i in range(1, 3000) %}abcdefghij{% endfor %}"
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{ secret('TOKEN') | length }} {{ outputs.make.value | length }}"
"""
    with _driver(inline_tasks=False) as driver:
        driver.deploy(flow)
        done = driver.start("acme.team", "secretly")
        assert done.state.current is S.SUCCESS
        assert _outputs(done, "use") == {"value": f"15 {len(BIG)}"}


def test_large_typed_inputs_are_stored_at_creation_and_read_as_values(storage: Storage) -> None:
    from kestream.runtime import records
    from kestream.runtime.event_offload import fit_event

    flow = """id: takes
namespace: acme.team
inputs:
  - id: doc
    type: STRING
  - id: note
    type: STRING
tasks:
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.doc | length }} {{ inputs.note }}"
"""
    created = ev.ExecutionCreated(
        "in-1", "acme.team", "takes", 1, {"doc": BIG, "note": "hi"}, validate_inputs=False
    )
    value = records.encode_event(created)
    sent, record = fit_event(created, value, THRESHOLD, storage)
    assert len(record) < THRESHOLD < len(value)
    assert isinstance(sent, ev.ExecutionCreated) and sent.inputs is not None
    assert is_reference(sent.inputs["doc"]) and sent.inputs["note"] == "hi"
    assert parse_uri(sent.inputs["doc"][REF_KEY]).startswith(
        execution_prefix("acme.team", "takes", "in-1") + "inputs/doc/"
    )
    with _driver(inline_tasks=False) as driver:
        driver.deploy(flow)
        decoded = records.decode_event(record)  # what the executor reads
        assert isinstance(decoded, ev.ExecutionCreated)
        done = driver.submit(decoded)
        assert done.state.current is S.SUCCESS
        assert _outputs(done, "use") == {"value": f"{len(BIG)} hi"}
        assert is_reference((done.inputs or {})["doc"])  # the execution JSON shows the reference


def test_a_validated_creation_keeps_its_inputs_inline(storage: Storage) -> None:
    from kestream.runtime import records
    from kestream.runtime.event_offload import fit_event

    created = ev.ExecutionCreated("in-2", "acme.team", "takes", 1, {"doc": BIG})
    value = records.encode_event(created)
    assert fit_event(created, value, THRESHOLD, storage) == (created, value)
    assert storage.list(execution_prefix("acme.team", "takes", "in-2")) == []


def test_a_restart_over_the_threshold_carries_the_snapshots_uri(storage: Storage) -> None:
    from kestream.runtime import records
    from kestream.runtime.event_offload import SNAPSHOT_URI, fit_event

    snapshot = {
        "id": "r-1",
        "namespace": "acme.team",
        "flowId": "wide",
        "metadata": {"attemptNumber": 1},
        "state": {"current": "FAILED", "histories": []},
        "taskRunList": [{"id": f"run-{i}", "taskId": "step", "value": str(i)} for i in range(400)],
    }
    restart = ev.Restart("r-1", snapshot)
    value = records.encode_event(restart)
    _, record = fit_event(restart, value, THRESHOLD, storage)
    body = orjson.loads(record)
    assert "snapshot" not in body and len(record) < THRESHOLD < len(value)
    assert parse_uri(body[SNAPSHOT_URI]) == (
        execution_prefix("acme.team", "wide", "r-1") + "_snapshots/restart-1.json"
    )
    decoded = records.decode_event(record)
    assert isinstance(decoded, ev.Restart) and decoded.snapshot == snapshot


def test_a_restart_naming_a_missing_or_foreign_snapshot_is_refused(storage: Storage) -> None:
    from kestream.runtime import records

    missing = {
        "type": "restart",
        "id": "r-2",
        "snapshotUri": "kestra:///a/f/executions/r-2/_snapshots/x.json",
    }
    with pytest.raises(records.RecordError, match="missing"):
        records.decode_event(orjson.dumps(missing))
    storage.put("a/f/executions/other/_snapshots/x.json", b"{}")
    foreign = {**missing, "snapshotUri": "kestra:///a/f/executions/other/_snapshots/x.json"}
    with pytest.raises(records.RecordError, match="not a snapshot of execution r-2"):
        records.decode_event(orjson.dumps(foreign))


def test_a_restart_reads_offloaded_outputs_from_its_snapshot(storage: Storage) -> None:
    flow = """id: again
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{% for i in range(1, 3000) %}abcdefghij{% endfor %}"
  - id: flaky
    type: io.kestra.plugin.core.log.Log
    message: "{{ taskrun.attemptsCount == 1 ? 'ok' : ko }}"
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.make.value | length }}"
"""
    with _driver(inline_tasks=False) as driver:
        driver.deploy(flow)
        failed = driver.start("acme.team", "again")
        assert failed.state.current is S.FAILED
        driver.states.pop(failed.id, None)  # ended: only its snapshot is left, as on a broker
        done = driver.restart(failed.id, snapshot=failed)
        assert done.state.current is S.SUCCESS
        assert _outputs(done, "use") == {"value": str(len(BIG))}


def test_offload_stores_the_largest_entries_first_then_the_whole_map(storage: Storage) -> None:
    keys: list[tuple[int | None, str]] = []

    def key_for(index: int | None, name: str) -> str:
        keys.append((index, name))
        return f"acme/f/executions/e/tasks/t/r/_outputs/1/{index}-{name}.json"

    values = {"big": BIG, "mid": "m" * 900, "small": 1}
    out = offload(values, len(encoded(values)), THRESHOLD, key_for, storage)
    assert out is not None and is_reference(out["big"]) and out["mid"] == "m" * 900
    assert keys == [(0, "big")]
    many = {f"k{i}": "v" * 40 for i in range(100)}  # no entry worth a file: the whole map
    whole = offload(many, len(encoded(many)), THRESHOLD, key_for, storage)
    assert whole is not None and is_reference(whole) and keys[-1] == (None, "")
    assert orjson.loads(storage.get(parse_uri(whole[REF_KEY]))) == many
    assert offload(many, len(encoded(many)), 0, key_for, storage) is None  # 0: off


def test_outputs_over_the_record_limit_after_offloading_still_fail_with_the_limit(
    storage: Storage,
) -> None:
    outputs, problem = fit_outputs("t", {"v": BIG}, 64, 0, lambda: pytest.fail("not asked"))
    assert outputs == {"v": BIG} and problem is not None and "outputs of task 't'" in problem
    small, none = fit_outputs("t", {"v": 1}, 10_000, THRESHOLD, lambda: pytest.fail("not asked"))
    assert (small, none) == ({"v": 1}, None)


def test_reading_a_view_loads_only_what_is_read_and_caches_it(storage: Storage) -> None:
    from kestream.executor.references import outputs_view
    from kestream.storage.access import ExecutionFiles

    key = "acme/team/f/executions/e1/tasks/t/r/_outputs/1/0-v.json"
    storage.put(key, orjson.dumps(BIG))
    outputs = {"t": {"v": {REF_KEY: f"kestra:///{key}", "size": len(BIG) + 2}, "w": 2}}
    view = outputs_view(outputs, ExecutionFiles("acme.team", "f", "e1"))
    before = LOADER.fetched
    assert isinstance(view, Resolving) and list(view) == ["t"]
    assert view["t"]["w"] == 2 and LOADER.fetched == before
    assert view["t"]["v"] == BIG and view["t"]["v"] == BIG
    assert LOADER.fetched == before + 1
    other = outputs_view(outputs, ExecutionFiles("acme.team", "f", "e2"))  # not its folder
    with pytest.raises(Exception, match="didn't belong to the current execution"):
        other["t"]["v"]


def test_a_replay_over_the_threshold_carries_the_snapshots_uri_and_runs(storage: Storage) -> None:
    from kestream.executor.replay import replay_event
    from kestream.runtime import records
    from kestream.runtime.event_offload import SNAPSHOT_URI, fit_event

    flow = """id: wide
namespace: acme.team
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(0, 59) }}"
    tasks:
      - id: step
        type: io.kestra.plugin.core.log.Log
        message: "{{ taskrun.value == '59' and taskrun.attemptsCount == 0 ? ko : 'ok' }}"
"""
    with _driver(inline_tasks=True) as driver:
        deployed = driver.deploy(flow)
        failed = driver.start("acme.team", "wide")
        assert failed.state.current is S.FAILED
        snapshot = failed.model_dump(mode="json", by_alias=True)
        (bad,) = [run for run in failed.taskRunList if run.state.current is S.FAILED and run.value]
        event = replay_event(snapshot, deployed, execution_id="re-1", task_run_id=bad.id)
        value = records.encode_event(event)
        _, record = fit_event(event, value, THRESHOLD, storage)
        body = orjson.loads(record)
        assert len(record) < THRESHOLD < len(value)
        assert set(body["replay"]) == {SNAPSHOT_URI, "taskRunId"}
        assert parse_uri(body["replay"][SNAPSHOT_URI]).startswith(
            execution_prefix("acme.team", "wide", "re-1") + "_snapshots/"
        )
        decoded = records.decode_event(record)
        assert isinstance(decoded, ev.ExecutionCreated) and decoded.replay is not None
        assert decoded.replay.snapshot == event.replay.snapshot  # type: ignore[union-attr]
        replayed = driver.submit(decoded)
        assert replayed.state.current is S.SUCCESS and replayed.parentId == failed.id
