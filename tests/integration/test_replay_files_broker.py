"""Replays of an execution with files, through the HTTP API on a running standalone.

A FILE input is uploaded (multipart, as Kestra's clients send it); a task writes a file from it
and a later one reads both. A replay from the start and a replay from a later task run read the
copies made in their own folders (an execution may read only its own files), and once the
original is deleted, with its files, a replay of the replay from its last task still runs.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from api_stack import Stack, start_stack

pytestmark = pytest.mark.integration

DONE = {"SUCCESS", "FAILED", "KILLED", "WARNING", "CANCELLED"}
CONTENT = b"a,b\n1,2\n"
EXPECTED = "a,b\n1,2|a,b\n1,2 written"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("replay-files")


@pytest.fixture(scope="module")
def stack(broker: Any, workdir: Path) -> Iterator[Stack]:
    prefix = f"it.rfiles.{uuid.uuid4().hex[:10]}."
    yield from start_stack(broker.bootstrap, prefix, workdir)


def _flow(ns: str) -> str:
    return f"""
id: files_again
namespace: {ns}
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


def _upload(stack: Stack, path: str) -> Any:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="data"; '
            f'filename="orders.csv"\r\nContent-Type: text/csv\r\n\r\n'
        ).encode()
        + CONTENT
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return stack.request(
        "POST", path, body, content_type=f"multipart/form-data; boundary={boundary}"
    )


def _run(execution: dict[str, Any], task_id: str) -> dict[str, Any]:
    (run,) = [run for run in execution["taskRunList"] if run["taskId"] == task_id]
    return run


def _wait_until(check: Callable[[], bool], what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"never true: {what}")
        time.sleep(0.2)


def _ended(stack: Stack, execution_id: str) -> dict[str, Any]:
    """The execution once it has ended and its last task run is indexed."""
    done = stack.wait_state(execution_id, DONE, timeout=180)
    if done["state"]["current"] != "SUCCESS":
        return done
    found: dict[str, Any] = {}

    def used() -> bool:
        found.update(stack.get(f"/executions/{execution_id}").json())
        return any(r["taskId"] == "use" and r.get("outputs") for r in found["taskRunList"])

    _wait_until(used, f"the last task run of {execution_id} indexed")
    return found


def _replayed(stack: Stack, execution_id: str, task_run_id: str | None = None) -> dict[str, Any]:
    query = f"?taskRunId={task_run_id}" if task_run_id else ""
    reply = stack.request("POST", f"/executions/{execution_id}/replay{query}")
    assert reply.status == 200, reply.body
    return _ended(stack, reply.json()["id"])


def _files_of(workdir: Path, execution_id: str) -> list[Path]:
    return [p for p in (workdir / "data" / "storage").rglob("*") if execution_id in str(p)]


def _own(ns: str, execution_id: str) -> str:
    return f"kestra:///{ns.replace('.', '/')}/files-again/executions/{execution_id}/"


def test_replays_read_copies_of_the_uploaded_file_and_kept_outputs(
    stack: Stack, workdir: Path
) -> None:
    ns = f"it.rfiles.n{uuid.uuid4().hex[:8]}"
    assert stack.post_yaml("/flows", _flow(ns)).status == 200
    created = _upload(stack, f"/executions/{ns}/files_again")
    assert created.status == 200, created.body
    original = _ended(stack, created.json()["id"])
    assert original["state"]["current"] == "FAILED", stack.log_tail()
    assert original["inputs"]["data"].startswith(_own(ns, original["id"]) + "inputs/data/")

    # a plain replay: every task runs again, reading the upload's copy
    whole = _replayed(stack, original["id"])
    assert whole["state"]["current"] == "SUCCESS", stack.log_tail()
    assert _run(whole, "use")["outputs"] == {"value": EXPECTED}
    assert whole["inputs"]["data"].startswith(_own(ns, whole["id"]) + "inputs/data/")

    # a replay from a later task: `write` is kept, its file copied with the upload
    later = _replayed(stack, original["id"], _run(original, "flaky")["id"])
    assert later["state"]["current"] == "SUCCESS", stack.log_tail()
    assert _run(later, "use")["outputs"] == {"value": EXPECTED}
    kept = _run(later, "write")["outputs"]["uri"]
    assert kept.startswith(_own(ns, later["id"]) + "tasks/write/")

    # the original deleted with its files: the replay's copies stay, and replaying it works
    assert stack.request("DELETE", f"/executions/{original['id']}").status == 204
    _wait_until(lambda: not _files_of(workdir, original["id"]), "the original's files removed")
    download = stack.get(f"/executions/{later['id']}/file?path={quote(kept, safe='')}")
    assert download.status == 200 and download.body == b"a,b\n1,2 written"
    again = _replayed(stack, later["id"], _run(later, "use")["id"])
    assert again["state"]["current"] == "SUCCESS", stack.log_tail()
    assert _run(again, "use")["outputs"] == {"value": EXPECTED}
    assert _run(again, "write")["outputs"]["uri"].startswith(_own(ns, again["id"]))
