"""Files a replay or a new-execution retry carries over: a FILE input's upload, the files the
task runs it keeps wrote, and the URIs inside their stored outputs. The new execution may read
only its own folder, so each becomes a copy there, and a purge of the original leaves them.

Through the broker-free driver (the executor step and the task runner a deployment runs) and
the record functions the executor service calls, on the local and the S3 storage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from kestream.executor import events as ev
from kestream.executor.references import LOADER, adopted
from kestream.models.state import StateType
from kestream.runtime import records
from kestream.runtime.event_offload import needs_storage, prepare
from kestream.storage import Storage, execution_prefix, parse_uri
from kestream.storage.offload import REF_KEY, store
from kestream.storage.uploads import store_input_file
from kestream.testing import Driver

S = StateType
NS, FLOW = "acme.team", "files_again"
CONTENT = b"a,b\n1,2\n"

REPLAYED = f"""id: {FLOW}
namespace: {NS}
inputs:
  - id: data
    type: FILE
tasks:
  - id: write
    type: io.kestra.plugin.core.storage.Write
    content: "{{{{ read(inputs.data) | trim }}}} written"
  - id: flaky
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ execution.id == execution.originalId ? ko : 'ok' }}}}"
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ read(inputs.data) | trim }}}}|{{{{ read(outputs.write.uri) }}}}"
"""

RETRIED = f"""id: {FLOW}
namespace: {NS}
inputs:
  - id: data
    type: FILE
retry:
  type: constant
  interval: PT1S
  maxAttempt: 2
  behavior: CREATE_NEW_EXECUTION
tasks:
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: >-
      {{{{ read(inputs.data) | trim }}}} {{{{ execution.id == execution.originalId ? ko : 'ok' }}}}
"""


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    LOADER.clear()
    yield
    LOADER.clear()


def _run(execution: Any, task_id: str) -> Any:
    (run,) = [run for run in execution.taskRunList if run.taskId == task_id]
    return run


def _started(driver: Driver, storage: Storage, execution_id: str = "orig-1") -> Any:
    """An execution of the flow with ``CONTENT`` uploaded as its FILE input, as the API does."""
    uri = store_input_file(storage, NS, FLOW, execution_id, "data", "orders.csv", CONTENT)
    created = ev.ExecutionCreated(execution_id, NS, FLOW, 1, {"data": uri})
    return driver.submit(created)


def _own(execution_id: str) -> str:
    return execution_prefix(NS, FLOW, execution_id)


def test_a_plain_replay_reads_a_copy_of_the_file_input_and_outlives_the_original(
    storage: Storage,
) -> None:
    with Driver(inline_tasks=False) as driver:
        driver.deploy(REPLAYED)
        failed = _started(driver, storage)
        assert failed.state.current is S.FAILED
        replay = driver.wait(driver.replay(failed.id).id)
        assert replay.state.current is S.SUCCESS, replay
        assert _run(replay, "use").outputs == {"value": "a,b\n1,2|a,b\n1,2 written"}
        uri = (replay.inputs or {})["data"]
        assert parse_uri(uri).startswith(_own(replay.id) + "inputs/data/")
        assert storage.delete_prefix(_own(failed.id)) > 0
        assert storage.get(parse_uri(uri)) == CONTENT


def test_a_replay_from_a_later_task_run_keeps_working_once_the_original_is_purged(
    storage: Storage,
) -> None:
    with Driver(inline_tasks=False) as driver:
        driver.deploy(REPLAYED)
        failed = _started(driver, storage)
        flaky = _run(failed, "flaky")
        replay = driver.wait(driver.replay(failed.id, task_run_id=flaky.id).id)
        assert replay.state.current is S.SUCCESS, replay
        assert _run(replay, "use").outputs == {"value": "a,b\n1,2|a,b\n1,2 written"}
        kept = _run(replay, "write").outputs["uri"]
        assert parse_uri(kept).startswith(_own(replay.id) + "tasks/write/")
        assert parse_uri((replay.inputs or {})["data"]).startswith(_own(replay.id))
        # purging the original leaves the replay's files, and a replay of the replay reads them
        assert storage.delete_prefix(_own(failed.id)) > 0
        assert storage.get(parse_uri(kept)) == b"a,b\n1,2 written"
        use = _run(replay, "use")
        again = driver.wait(driver.replay(replay.id, task_run_id=use.id).id)
        assert again.state.current is S.SUCCESS, again
        assert _run(again, "use").outputs == {"value": "a,b\n1,2|a,b\n1,2 written"}


def test_a_retry_as_a_new_execution_reads_a_copy_of_the_file_input(storage: Storage) -> None:
    with Driver(inline_tasks=False) as driver:
        driver.deploy(RETRIED)
        first = _started(driver, storage)
        assert first.state.current is S.RETRIED
        driver.settle(timeout=30)
        (again,) = [e for e in driver.executions() if e.id != first.id]
        assert again.state.current is S.SUCCESS, again
        assert _run(again, "use").outputs == {"value": "a,b\n1,2 ok"}
        assert parse_uri((again.inputs or {})["data"]).startswith(_own(again.id) + "inputs/")


def _replay_of(source: str, new: str, snapshot: dict[str, Any] | None, inputs: Any) -> Any:
    return ev.ExecutionCreated(
        new, NS, FLOW, 1, inputs, validate_inputs=False, parent_id=source,
        replay=ev.ReplayFrom(snapshot, "tr") if snapshot is not None else None,
    )  # fmt: skip


def test_the_copy_is_idempotent_and_rewrites_uris_nested_anywhere(storage: Storage) -> None:
    upload = store_input_file(storage, NS, FLOW, "src", "data", "orders.csv", CONTENT)
    made = f"kestra:///{_own('src')}tasks/script/tr1/out.txt"
    storage.put(parse_uri(made), b"made")
    foreign = f"kestra:///{_own('other')}inputs/data/orders.csv"
    storage.put(parse_uri(foreign), b"not ours")
    snapshot = {
        "id": "src",
        "inputs": {"data": upload},
        "taskRunList": [{"outputs": {"outputFiles": {"out.txt": made}, "list": [made, 3]}}],
        "note": foreign,
    }
    created = _replay_of("src", "new", snapshot, {"data": upload})
    record = records.encode_event(created)
    assert needs_storage(record)
    first = asyncio.run(prepare(record))
    assert isinstance(first, ev.ExecutionCreated) and first.replay is not None
    copied = first.replay.snapshot
    own = _own("new")
    new_made = copied["taskRunList"][0]["outputs"]["outputFiles"]["out.txt"]
    assert new_made == f"kestra:///{own}tasks/script/tr1/out.txt"
    assert copied["taskRunList"][0]["outputs"]["list"] == [new_made, 3]
    new_upload = upload.replace("/src/", "/new/")
    assert (first.inputs or {})["data"] == copied["inputs"]["data"] == new_upload
    assert copied["note"] == foreign  # outside the replayed execution's folder: left as is
    assert storage.get(parse_uri(new_made)) == b"made"
    keys = storage.list(own)
    again = adopted(created)  # a second run (a record read again) writes the same keys
    assert again.replay is not None and again.replay.snapshot == copied
    assert storage.list(own) == keys == sorted([parse_uri(new_made), parse_uri(new_upload)])


def test_a_creation_without_a_source_or_file_uri_needs_no_storage() -> None:
    plain = ev.ExecutionCreated("e", NS, FLOW, 1, {"data": f"kestra:///{_own('e')}x"})
    assert not needs_storage(records.encode_event(plain))
    replay = _replay_of("src", "new", None, {"n": 1})
    assert not needs_storage(records.encode_event(replay))


def test_uris_inside_a_stored_value_are_copied_and_rewritten_in_its_copy(
    storage: Storage,
) -> None:
    made = f"kestra:///{_own('src')}tasks/script/tr1/out.txt"
    storage.put(parse_uri(made), b"made")
    stored = store(storage, _own("src") + "tasks/script/tr1/_outputs/1/outputs.json",
                   orjson.dumps({"outputFiles": {"out.txt": made}}))  # fmt: skip
    created = _replay_of("src", "new", {"id": "src", "taskRunList": [{"outputs": stored}]}, {})
    adopted_once = adopted(created)
    assert adopted_once.replay is not None
    ref = adopted_once.replay.snapshot["taskRunList"][0]["outputs"]
    assert parse_uri(ref[REF_KEY]).startswith(_own("new"))
    copied = orjson.loads(storage.get(parse_uri(ref[REF_KEY])))
    assert copied == {"outputFiles": {"out.txt": made.replace("/src/", "/new/")}}
    storage.delete_prefix(_own("src"))
    assert storage.get(parse_uri(made.replace("/src/", "/new/"))) == b"made"


def test_a_copy_streams_and_a_missing_source_leaves_no_target(storage: Storage) -> None:
    storage.put("a/one.bin", b"x" * 3_000_000)
    storage.copy("a/one.bin", "b/one.bin")
    assert storage.get("b/one.bin") == b"x" * 3_000_000
    with pytest.raises(FileNotFoundError):
        storage.copy("a/none.bin", "b/none.bin")
    assert not storage.exists("b/none.bin")
