"""Large values leave Kafka, through the HTTP API on a running standalone.

The record limit is set low (64 KiB) and the inline threshold lower (8 KiB), so a flow of
ordinary size reaches both: a task's output of 100 kB (over the record limit: before
offloading its task run failed), and a ForEach whose execution JSON is several times the record
limit. Restarting that execution through the API used to answer 413 (the restart record carries
the whole execution); its snapshot now goes through the internal storage, and the restarted
execution reads the stored output as a value.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_stack import Stack, start_stack

from kestream.storage.offload import REF_KEY, is_reference

pytestmark = pytest.mark.integration

DONE = {"SUCCESS", "FAILED", "KILLED", "WARNING", "CANCELLED"}
RECORD_BYTES = 64 * 1024
INLINE_BYTES = 8 * 1024
VALUES = 300
BIG_CHARS = 100_000
WIDE = 250  # ForEach values of ~300 bytes: a plan past the record limit
ROWS = 64  # ForEachItem children of ~310 bytes of outputs: a gathered list that spills twice


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("large-values")


@pytest.fixture(scope="module")
def stack(broker: Any, workdir: Path) -> Iterator[Stack]:
    prefix = f"it.large.{uuid.uuid4().hex[:10]}."
    env = {
        "KESTREAM_MAX_RECORD_BYTES": str(RECORD_BYTES),
        "KESTREAM_OUTPUT_INLINE_MAX_BYTES": str(INLINE_BYTES),
    }
    yield from start_stack(broker.bootstrap, prefix, workdir, env)


def _flow(ns: str) -> str:
    values = list(range(VALUES))
    last = VALUES - 1
    return f"""
id: wide
namespace: {ns}
tasks:
  - id: big
    type: io.kestra.plugin.core.debug.Return
    format: "{{% for i in range(1, {BIG_CHARS // 10}) %}}abcdefghij{{% endfor %}}"
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: {values}
    concurrencyLimit: 0
    tasks:
      - id: step
        type: io.kestra.plugin.core.log.Log
        message: "{{{{ taskrun.value == '{last}' and taskrun.attemptsCount == 0 ? ko : 'ok' }}}}"
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.big.value | length }}}} {{{{ outputs.big.value | slice(0, 4) }}}}"
"""


def _run(execution: dict[str, Any], task_id: str) -> dict[str, Any]:
    (run,) = [run for run in execution["taskRunList"] if run["taskId"] == task_id]
    return run


def test_restart_of_an_execution_over_the_record_limit_through_the_api(
    stack: Stack, workdir: Path
) -> None:
    ns = f"it.large.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns)).status == 200
    started = stack.post_form(f"/executions/{ns}/wide", {})
    assert started.status == 200, started.body
    execution_id = started.json()["id"]
    failed = _wait_attempt(stack, execution_id, 1)
    assert failed["state"]["current"] == "FAILED", stack.log_tail()
    # the end state can reach the index before the last of the update records that carry the
    # task runs: wait for all of them (the restart sends the index's JSON)
    _wait_until(lambda: len(_steps(stack, execution_id)) == VALUES, "every task run indexed")
    failed = stack.get(f"/executions/{execution_id}").json()
    snapshot = stack.get(f"/executions/{failed['id']}")
    assert len(snapshot.body) > RECORD_BYTES  # the restart could not carry it in a record

    # the 100 kB output is over the record limit: it is stored, the execution shows where
    big = _run(failed, "big")
    assert big["state"]["current"] == "SUCCESS"
    ref = big["outputs"]["value"]
    assert is_reference(ref) and ref["size"] == BIG_CHARS + 2  # the JSON text's quotes
    download = stack.get(f"/executions/{failed['id']}/file?path={ref[REF_KEY]}")
    assert download.status == 200
    assert download.body == f'"{"abcdefghij" * (BIG_CHARS // 10)}"'.encode()

    reply = stack.request("POST", f"/executions/{failed['id']}/restart")
    assert reply.status == 200, reply.body
    done = _wait_attempt(stack, failed["id"], 2)
    assert done["state"]["current"] == "SUCCESS", stack.log_tail()
    _wait_until(lambda: _ran(stack, execution_id, "use"), "the last task run indexed")
    done = stack.get(f"/executions/{execution_id}").json()
    assert _run(done, "use")["outputs"] == {"value": f"{BIG_CHARS} abcd"}
    assert len(_steps(stack, execution_id)) == VALUES
    stored = list((workdir / "data" / "storage").rglob("_snapshots/restart-1.json"))
    assert len(stored) == 1 and failed["id"] in str(stored[0])

    # deleting the execution removes what was offloaded with its other files
    assert stack.request("DELETE", f"/executions/{failed['id']}").status == 204
    _wait_until(lambda: not _files_of(workdir, failed["id"]), "the execution's files removed")
    assert not stored[0].exists()


def test_a_replay_reads_copies_of_the_stored_outputs_it_keeps(stack: Stack, workdir: Path) -> None:
    ns = f"it.large.r{uuid.uuid4().hex[:8]}"
    flow = f"""
id: again
namespace: {ns}
tasks:
  - id: big
    type: io.kestra.plugin.core.debug.Return
    format: "{{% for i in range(1, {BIG_CHARS // 10}) %}}abcdefghij{{% endfor %}}"
  - id: flaky
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ execution.id == execution.originalId ? ko : 'ok' }}}}"
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.big.value | length }}}}"
"""
    assert stack.post_yaml("/flows", flow).status == 200
    started = stack.post_form(f"/executions/{ns}/again", {})
    assert started.status == 200, started.body
    failed = _wait_attempt(stack, started.json()["id"], 1)
    assert failed["state"]["current"] == "FAILED", stack.log_tail()
    flaky = _run(failed, "flaky")
    reply = stack.request("POST", f"/executions/{failed['id']}/replay?taskRunId={flaky['id']}")
    assert reply.status == 200, reply.body
    replay_id = reply.json()["id"]
    done = _wait_attempt(stack, replay_id, 2)
    assert done["state"]["current"] == "SUCCESS", stack.log_tail()
    _wait_until(lambda: _ran(stack, replay_id, "use"), "the last task run indexed")
    done = stack.get(f"/executions/{replay_id}").json()
    assert _run(done, "use")["outputs"] == {"value": str(BIG_CHARS)}
    ref = _run(done, "big")["outputs"]["value"]
    assert is_reference(ref) and f"/executions/{replay_id}/" in ref[REF_KEY]

    # deleting the replayed execution leaves the replay's copy
    assert stack.request("DELETE", f"/executions/{failed['id']}").status == 204
    _wait_until(lambda: not _files_of(workdir, failed["id"]), "the execution's files removed")
    download = stack.get(f"/executions/{replay_id}/file?path={ref[REF_KEY]}")
    assert download.status == 200 and len(download.body) == BIG_CHARS + 2


def test_a_subflows_large_outputs_reach_the_parent_through_its_own_folder(
    stack: Stack, workdir: Path
) -> None:
    """A child returning 200 kB (over the record limit) hands its outputs to the parent task run
    as a reference into the parent's folder; a ForEachItem's gathered outputs spill there too,
    and a ForEach's plan of values over the record limit is stored. Deleting the children
    leaves what the parent reads."""
    ns = f"it.large.s{uuid.uuid4().hex[:8]}"
    child = f"""
id: child
namespace: {ns}
inputs:
  - id: items
    type: STRING
    defaults: ""
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{{% for i in range(1, {2 * BIG_CHARS // 10}) %}}abcdefghij{{% endfor %}}"
outputs:
  - id: big
    type: STRING
    value: "{{{{ outputs.make.value }}}}"
"""
    rows = (
        child.replace("id: child", "id: rows").split("tasks:")[0]
        + """tasks:
  - id: read
    type: io.kestra.plugin.core.debug.Return
    format: "{{ read(inputs.items) | trim }}"
outputs:
  - id: row
    type: STRING
    value: "{{ outputs.read.value }}"
"""
    )
    lines = "\\n".join(f"{n:03d}-" + "r" * 300 for n in range(ROWS))  # spills twice
    # a ForEach whose plan (its values, ~300 bytes each) is past the record limit: stored
    pad, comma = "w" * 296, "{% if not loop.last %},{% endif %}"
    parent = f"""
id: parent
namespace: {ns}
tasks:
  - id: sub
    type: io.kestra.plugin.core.flow.Subflow
    namespace: {ns}
    flowId: child
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ outputs.sub.outputs.big | length }}}}"
  - id: write
    type: io.kestra.plugin.core.storage.Write
    content: "{lines}\\n"
  - id: each
    type: io.kestra.plugin.core.flow.ForEachItem
    items: "{{{{ outputs.write.uri }}}}"
    namespace: {ns}
    flowId: rows
    inputs:
      items: "{{{{ taskrun.items }}}}"
  - id: values
    type: io.kestra.plugin.core.debug.Return
    format: "{{% for i in range(1, {WIDE}) %}}{{{{ i }}}}-{pad}{comma}{{% endfor %}}"
  - id: wide
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{{{ outputs.values.value | split(',') }}}}"
    concurrencyLimit: 0
    tasks:
      - id: echo
        type: io.kestra.plugin.core.debug.Return
        format: "{{{{ taskrun.value | length }}}}"
"""
    for flow in (child, rows, parent):
        assert stack.post_yaml("/flows", flow).status == 200
    started = stack.post_form(f"/executions/{ns}/parent", {})
    assert started.status == 200, started.body
    execution_id = started.json()["id"]
    done = _wait_attempt(stack, execution_id, 1)
    assert done["state"]["current"] == "SUCCESS", stack.log_tail()
    _wait_until(lambda: _ran(stack, execution_id, "each_merge"), "the merge task run indexed")
    done = stack.get(f"/executions/{execution_id}").json()
    assert _run(done, "use")["outputs"] == {"value": str(2 * BIG_CHARS)}
    handed = _run(done, "sub")["outputs"]["outputs"]
    assert is_reference(handed) and f"/executions/{execution_id}/tasks/sub/" in handed[REF_KEY]
    echoes = [run for run in done["taskRunList"] if run["taskId"] == "echo"]
    assert sorted(int(r["outputs"]["value"]) for r in echoes) == sorted(
        len(f"{n}-") + 296 for n in range(1, WIDE + 1)
    )
    assert list((workdir / "data" / "storage").rglob(f"*{execution_id}/tasks/wide/*/_plan/*/*"))
    gathered = _run(done, "each_items")["outputs"]["outputs"]
    assert any(is_reference(entry) for entry in gathered)
    assert _merged_rows(stack, done) == [f"{n:03d}" for n in range(ROWS)]  # every row, once

    # the children go, with their files; the parent's copies stay and download whole
    children = stack.get(f"/executions/search?namespace={ns}&size=100").json()["results"]
    for execution in children:
        if execution["flowId"] != "parent":
            assert stack.request("DELETE", f"/executions/{execution['id']}").status == 204
    for execution in children:
        if execution["flowId"] != "parent":
            _wait_until(lambda e=execution: not _files_of(workdir, e["id"]), "child files gone")
    download = stack.get(f"/executions/{execution_id}/file?path={handed[REF_KEY]}")
    assert download.status == 200 and len(download.body) > 2 * BIG_CHARS
    # the merge runs again once the children are gone (a replay from it, reading copies of
    # the parent's spills): every row is still there
    merge = _run(done, "each_merge")
    reply = stack.request("POST", f"/executions/{execution_id}/replay?taskRunId={merge['id']}")
    assert reply.status == 200, reply.body
    replay_id = reply.json()["id"]
    again = _wait_attempt(stack, replay_id, 2)
    assert again["state"]["current"] == "SUCCESS", stack.log_tail()
    _wait_until(lambda: _ran(stack, replay_id, "each_merge"), "the replayed merge indexed")
    again = stack.get(f"/executions/{replay_id}").json()
    assert _merged_rows(stack, again) == [f"{n:03d}" for n in range(ROWS)]


def _merged_rows(stack: Stack, execution: dict[str, Any]) -> list[str]:
    """The first characters of each row of the execution's ``{id}_merge`` file, sorted."""
    merged = _run(execution, "each_merge")["outputs"]["subflowOutputs"]
    body = stack.get(f"/executions/{execution['id']}/file?path={merged}").body
    return sorted(json.loads(line)["row"][:3] for line in body.decode().splitlines())


def _steps(stack: Stack, execution_id: str) -> list[dict[str, Any]]:
    execution = stack.get(f"/executions/{execution_id}").json()
    return [run for run in execution["taskRunList"] if run["taskId"] == "step"]


def _ran(stack: Stack, execution_id: str, task_id: str) -> bool:
    execution = stack.get(f"/executions/{execution_id}").json()
    return any(run["taskId"] == task_id for run in execution["taskRunList"])


def _files_of(workdir: Path, execution_id: str) -> list[Path]:
    return [p for p in (workdir / "data" / "storage").rglob("*") if execution_id in str(p)]


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never true: {what}")
        time.sleep(0.2)


def _wait_attempt(stack: Stack, execution_id: str, attempt: int) -> dict[str, Any]:
    """The execution once its attempt ``attempt`` has ended."""
    found: dict[str, Any] = {}

    def ended() -> bool:
        reply = stack.get(f"/executions/{execution_id}")
        if reply.status != 200:
            return False
        found.update(reply.json())
        return found["metadata"]["attemptNumber"] == attempt and found["state"]["current"] in DONE

    _wait_until(ended, f"attempt {attempt} of {execution_id} ended", timeout=180)
    return found
