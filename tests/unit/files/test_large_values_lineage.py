"""Stored values across executions and runs: replays and retries get copies of their own,
a job run twice writes apart, storage work stays off the event loop, transient storage
errors are tried again, reads are bounded.

Through the broker-free driver (the executor step and the task runner a deployment runs) and
the record functions the executor service calls, on the local and the S3 storage.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from kestream.executor import events as ev
from kestream.executor.references import (
    DECODED_FACTOR,
    LOADER,
    ReferenceLoader,
    encoded,
    offload,
    outputs_keys,
)
from kestream.expressions import RenderError
from kestream.models.state import StateType
from kestream.runtime import event_offload, records
from kestream.runtime.event_offload import fit_event, needs_storage, prepare
from kestream.storage import Storage, execution_prefix, parse_uri, using_storage
from kestream.storage.access import ExecutionFiles
from kestream.storage.keys import TaskRunFiles
from kestream.storage.offload import REF_KEY, StorageUnavailable, holds_references, is_reference
from kestream.testing import Driver

S = StateType
THRESHOLD = 1024
BIG = "abcdefghij" * 3000

REPLAYED = """id: rp
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

RETRIED = """id: takes
namespace: acme.team
inputs:
  - id: doc
    type: STRING
retry:
  type: constant
  interval: PT1S
  maxAttempt: 3
  behavior: CREATE_NEW_EXECUTION
tasks:
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{ inputs.doc | length }} {{ execution.id == execution.originalId ? ko : 'ok' }}"
"""


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    LOADER.clear()
    yield
    LOADER.clear()


def _driver() -> Driver:
    driver = Driver(inline_tasks=False)
    driver.executor.inline_max_bytes = THRESHOLD
    driver.runner.inline_max_bytes = THRESHOLD
    return driver


def _outputs(execution: Any, task_id: str) -> Any:
    (run,) = [run for run in execution.taskRunList if run.taskId == task_id]
    return run.outputs


def _created_with_big_input(storage: Storage) -> ev.ExecutionCreated:
    created = ev.ExecutionCreated(
        "in-1", "acme.team", "takes", 1, {"doc": BIG}, validate_inputs=False
    )
    _, record = fit_event(created, records.encode_event(created), THRESHOLD, storage)
    decoded = records.decode_event(record)
    assert isinstance(decoded, ev.ExecutionCreated)
    return decoded


# -- replays and CREATE_NEW_EXECUTION retries ------------------------------------------------


def test_a_replay_reads_the_replayed_executions_stored_outputs_from_copies_of_its_own(
    storage: Storage,
) -> None:
    with _driver() as driver:
        driver.deploy(REPLAYED)
        failed = driver.start("acme.team", "rp")
        assert failed.state.current is S.FAILED
        (flaky,) = [run for run in failed.taskRunList if run.taskId == "flaky"]
        LOADER.clear()
        replay = driver.wait(driver.replay(failed.id, task_run_id=flaky.id).id)
        assert replay.state.current is S.SUCCESS
        assert _outputs(replay, "use") == {"value": str(len(BIG))}
        ref = _outputs(replay, "make")["value"]
        own = execution_prefix("acme.team", "rp", replay.id)
        assert is_reference(ref) and parse_uri(ref[REF_KEY]).startswith(own)
        # purging the replayed execution leaves the replay's values
        assert storage.delete_prefix(execution_prefix("acme.team", "rp", failed.id)) > 0
        assert orjson.loads(storage.get(parse_uri(ref[REF_KEY]))) == BIG


def test_a_replay_plans_a_for_each_again_over_values_it_reads_from_its_own_copies(
    storage: Storage,
) -> None:
    """The replayed execution's flowables are planned again while its state is rebuilt; a
    ForEach whose values come from a stored output reads the replay's copy, as the replay."""
    flow = """id: again
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{{ range(1, 400) | join(',') }}"
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ outputs.make.value | split(',') }}"
    concurrencyLimit: 0
    tasks:
      - id: say
        type: io.kestra.plugin.core.debug.Return
        format: "{{ taskrun.value }}"
  - id: last
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.say | length }}"
"""
    with _driver() as driver:
        driver.deploy(flow)
        done = driver.start("acme.team", "again")
        assert done.state.current is S.SUCCESS
        assert is_reference(_outputs(done, "make")["value"])
        (last,) = [run for run in done.taskRunList if run.taskId == "last"]
        LOADER.clear()
        replay = driver.wait(driver.replay(done.id, task_run_id=last.id).id)
        logs = [line.message for line in driver.logs(replay.id)]
    assert replay.state.current is S.SUCCESS, logs
    assert _outputs(replay, "last") == {"value": "400"}


def test_a_retry_as_a_new_execution_reads_its_stored_inputs_from_copies_of_its_own(
    storage: Storage,
) -> None:
    with _driver() as driver:
        driver.deploy(RETRIED)
        first = driver.submit(_created_with_big_input(storage))
        assert first.state.current is S.RETRIED
        driver.settle(timeout=30)
        retried = [e for e in driver.executions() if e.id != first.id]
        assert len(retried) == 1 and retried[0].state.current is S.SUCCESS
        (again,) = retried
        assert _outputs(again, "use") == {"value": f"{len(BIG)} ok"}
        ref = (again.inputs or {})["doc"]
        assert parse_uri(ref[REF_KEY]).startswith(
            execution_prefix("acme.team", "takes", again.id) + "inputs/doc/"
        )
        storage.delete_prefix(execution_prefix("acme.team", "takes", first.id))
        assert orjson.loads(storage.get(parse_uri(ref[REF_KEY]))) == BIG


def test_a_retrys_creation_record_names_its_predecessor_and_is_prepared_with_copies(
    storage: Storage,
) -> None:
    source = _created_with_big_input(storage)
    retry = ev.ExecutionCreated(
        "in-1-r2", "acme.team", "takes", 1, source.inputs, validate_inputs=False,
        original_id="in-1", attempt_number=2, retry_of="in-1",
    )  # fmt: skip
    record = records.encode_event(retry)
    assert needs_storage(record)
    prepared = asyncio.run(prepare(record))
    assert isinstance(prepared, ev.ExecutionCreated) and prepared.retry_of == "in-1"
    key = parse_uri((prepared.inputs or {})["doc"][REF_KEY])
    assert key.startswith(execution_prefix("acme.team", "takes", "in-1-r2"))
    assert orjson.loads(storage.get(key)) == BIG


def test_references_outside_the_predecessors_folder_are_not_copied(storage: Storage) -> None:
    foreign = "acme/team/takes/executions/victim/inputs/doc/_value.json"
    storage.put(foreign, orjson.dumps(BIG))
    ref = {REF_KEY: f"kestra:///{foreign}", "size": len(BIG) + 2}
    crafted = ev.ExecutionCreated(
        "new", "acme.team", "takes", 1, {"doc": ref}, validate_inputs=False, retry_of="in-1"
    )
    prepared = asyncio.run(prepare(records.encode_event(crafted)))
    assert isinstance(prepared, ev.ExecutionCreated) and prepared.inputs == {"doc": ref}
    assert storage.list(execution_prefix("acme.team", "takes", "new")) == []
    with pytest.raises(RenderError, match="didn't belong"):
        LOADER.load(ref, ExecutionFiles("acme.team", "takes", "new"), "input 'doc'")


def test_only_records_needing_the_storage_are_prepared_off_the_loop() -> None:
    result = ev.WorkerResult("e", "r", 1, S.SUCCESS, {"v": {REF_KEY: "kestra:///a", "size": 1}})
    plain = ev.ExecutionCreated("e", "acme.team", "f", 1, {"v": {REF_KEY: "kestra:///a"}})
    assert not needs_storage(records.encode_event(result))
    assert not needs_storage(records.encode_event(plain))


# -- off the event loop, transient errors -----------------------------------------------------


class _Flaky(Storage):
    """The test's storage, failing its first ``failures`` reads as an unavailable store does,
    and noting the threads that read and write."""

    def __init__(self, inner: Storage, failures: int = 0, missing: bool = False) -> None:
        super().__init__(inner._store, inner.description, inner.local_root)
        self.failures = failures
        self.missing = missing
        self.reads = 0
        self.threads: set[int] = set()

    def get(self, key: str) -> bytes:
        self.reads += 1
        self.threads.add(threading.get_ident())
        if self.missing:
            raise FileNotFoundError(key)
        if self.reads <= self.failures:
            raise RuntimeError("503 Slow Down")
        return super().get(key)

    def put(self, key: str, data: Any) -> int:
        self.threads.add(threading.get_ident())
        return super().put(key, data)


def _restart_record(storage: Storage) -> bytes:
    snapshot = {
        "id": "r-1",
        "namespace": "acme.team",
        "flowId": "wide",
        "metadata": {"attemptNumber": 1},
        "state": {"current": "FAILED", "histories": []},
        "taskRunList": [{"id": f"run-{i}", "taskId": "step", "value": str(i)} for i in range(400)],
    }
    restart = ev.Restart("r-1", snapshot)
    return fit_event(restart, records.encode_event(restart), THRESHOLD, storage)[1]


def test_a_restarts_snapshot_is_read_in_a_thread_and_tried_again_while_unavailable(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_offload, "PREPARE_BACKOFF_S", 0.001)
    record = _restart_record(storage)
    flaky = _Flaky(storage, failures=2)
    with using_storage(flaky):
        event = asyncio.run(prepare(record))
    assert isinstance(event, ev.Restart) and event.snapshot is not None
    assert event.snapshot["id"] == "r-1" and flaky.reads == 3
    assert threading.get_ident() not in flaky.threads


def test_a_missing_snapshot_is_refused_at_once_and_a_lasting_outage_stops_the_processor(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(event_offload, "PREPARE_BACKOFF_S", 0.001)
    record = _restart_record(storage)
    missing = _Flaky(storage, missing=True)
    with using_storage(missing):
        refused = asyncio.run(prepare(record))
    assert isinstance(refused, records.RecordError) and missing.reads == 1
    down = _Flaky(storage, failures=10**6)
    with using_storage(down), pytest.raises(StorageUnavailable, match="503"):
        asyncio.run(prepare(record))
    assert down.reads == event_offload.PREPARE_TRIES


def test_a_restart_snapshot_of_another_execution_is_refused(storage: Storage) -> None:
    storage.put("a/f/executions/r-3/_snapshots/x.json", orjson.dumps({"id": "other"}))
    body = {
        "type": "restart",
        "id": "r-3",
        "snapshotUri": "kestra:///a/f/executions/r-3/_snapshots/x.json",
    }
    with pytest.raises(records.RecordError, match="not one of execution r-3"):
        records.decode_event(orjson.dumps(body))


def test_the_worker_stores_large_outputs_off_the_event_loop(storage: Storage) -> None:
    flaky = _Flaky(storage)
    with using_storage(flaky), _driver() as driver:
        driver.deploy(REPLAYED)
        done = driver.start("acme.team", "rp")
        assert is_reference(_outputs(done, "make")["value"])
    assert flaky.threads and threading.get_ident() not in flaky.threads


# -- one run, one folder; one write; bounded reads --------------------------------------------


def test_two_runs_of_one_job_store_their_outputs_apart(storage: Storage) -> None:
    files = TaskRunFiles("acme.team", "f", "e", "t", "r")
    first = offload({"v": BIG}, len(encoded({"v": BIG})), THRESHOLD, outputs_keys(files, 1))
    second = offload({"v": BIG + "x"}, len(encoded({"v": BIG})), THRESHOLD, outputs_keys(files, 1))
    assert first is not None and second is not None
    assert first["v"][REF_KEY] != second["v"][REF_KEY]
    assert orjson.loads(storage.get(parse_uri(first["v"][REF_KEY]))) == BIG


def test_a_map_kept_large_by_small_entries_is_written_once_whole(storage: Storage) -> None:
    values: dict[str, Any] = {"big": BIG, **{f"k{i}": "v" * 40 for i in range(100)}}
    written: list[str] = []

    def key_for(index: int | None, name: str) -> str:
        key = f"acme/f/executions/e/tasks/t/r/_outputs/1/{index}-{name}.json"
        written.append(key)
        return key

    out = offload(values, len(encoded(values)), THRESHOLD, key_for, storage)
    assert out is not None and is_reference(out)
    assert storage.list("acme/f/executions/e") == [parse_uri(out[REF_KEY])]
    assert orjson.loads(storage.get(parse_uri(out[REF_KEY]))) == values


def test_a_stored_value_past_the_read_limit_fails_the_render_and_the_cache_counts_decoded(
    storage: Storage,
) -> None:
    key = "acme/team/f/executions/e1/tasks/t/r/_outputs/1/0-v.json"
    data = orjson.dumps([{"n": i} for i in range(200)])
    storage.put(key, data)
    ref = {REF_KEY: f"kestra:///{key}", "size": len(data)}
    files = ExecutionFiles("acme.team", "f", "e1")
    with pytest.raises(RenderError, match="more than the 100 an expression may read"):
        ReferenceLoader(read_max_bytes=100).load(ref, files, "task 't'")
    loader = ReferenceLoader(max_bytes=len(data) * DECODED_FACTOR - 1)
    assert loader.load(ref, files, "task 't'")[3] == {"n": 3}
    assert loader.load(ref, files, "task 't'") and loader.fetched == 2  # too large to keep


def test_a_literal_ref_key_does_not_hide_the_other_entries() -> None:
    ref = {REF_KEY: "kestra:///a/b", "size": 3}
    assert holds_references({REF_KEY: 1, "x": ref})
    assert not holds_references({REF_KEY: 1, "x": 2})


def test_a_secret_text_on_the_worker_reads_stored_values_of_the_triggering_execution(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker applies the executor's rule: a subflow's job may read its parent's folder."""
    import base64

    from kestream.executor.commands import RunTask
    from kestream.secrets.deferred import SECRETS_KEY
    from kestream.tasks.simple import Return
    from kestream.worker.runner import TaskRunner

    monkeypatch.setenv("SECRET_TOKEN", base64.b64encode(b"s3cret").decode())
    key = "acme/team/parent/executions/p1/tasks/make/r/_outputs/1/x/0-value.json"
    storage.put(key, orjson.dumps(BIG))
    ref = {REF_KEY: f"kestra:///{key}", "size": len(BIG) + 2}
    template = "{{ secret('TOKEN') | length }} {{ inputs.doc | length }}"
    props = {
        "format": None,
        SECRETS_KEY: [{"path": ["format"], "template": template, "vars": {"inputs": {"doc": ref}}}],
    }
    task = Return(id="use", type=Return.type_name, format=template)
    job = RunTask(
        "c1", "tr", 1, "acme.team", "child", 1, task, props, source=("acme.team", "parent", "p1")
    )

    async def run() -> Any:
        runner = TaskRunner(threads=1)
        try:
            return (await runner.run(job))[0]
        finally:
            runner.close()

    result = asyncio.run(run())
    assert result.state is S.SUCCESS, result.error
    assert result.outputs == {"value": f"6 {len(BIG)}"}
