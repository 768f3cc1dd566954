"""Files across machines: two worker processes that share only the broker and an S3 endpoint.

``kestream standalone`` (executor, API, a default worker) and a second ``kestream worker --group
files`` process run with their own data directories; the internal storage is a bucket of a real
S3-compatible server on loopback (moto's server mode, started by this test). A FILE input is
uploaded through the API (multipart, as Kestra's clients send it); the default worker's script
reads it and exports a file; a script in the other worker process reads that file and exports
its own; the executor's ``read()`` sees both; the API downloads, previews and describes the
files, refuses paths outside the execution, and deletes them with the execution.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from api_stack import Stack, start_stack

from kestream.runtime.embedded_broker import free_port
from tests.s3_server import S3Endpoint, s3_server

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[S3Endpoint, str]]:
    with s3_server() as endpoint:
        yield endpoint, endpoint.create_bucket()


@pytest.fixture(scope="module")
def stack(
    broker: Any, s3: tuple[S3Endpoint, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Stack, S3Endpoint, str]]:
    endpoint, bucket = s3
    prefix = f"it.files.{uuid.uuid4().hex[:10]}."
    storage_env = {**endpoint.env(bucket, "kestream"), "KESTREAM_DOCKER_RUNNER": "process"}
    root = tmp_path_factory.mktemp("files")
    (root / "main").mkdir()
    other = _second_worker(broker.bootstrap, prefix, root / "other", storage_env)
    try:
        for stack in start_stack(broker.bootstrap, prefix, root / "main", storage_env):
            assert other.poll() is None, (root / "other" / "worker.log").read_text()
            yield stack, endpoint, bucket
    finally:
        other.send_signal(signal.SIGINT)
        try:
            other.wait(30)
        except subprocess.TimeoutExpired:
            other.kill()
            other.wait()


def _second_worker(
    bootstrap: str, prefix: str, workdir: Path, extra: dict[str, str]
) -> subprocess.Popen[bytes]:
    """``kestream worker --group files`` with a data directory of its own."""
    workdir.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("KESTREAM_")}
    env.update(
        KESTREAM_BROKER=bootstrap,
        KESTREAM_TOPIC_PREFIX=prefix,
        KESTREAM_DATA_DIR=str(workdir / "data"),
        KESTREAM_WEB_PORT=str(free_port()),
        **extra,
    )
    with (workdir / "worker.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "kestream.cli", "worker", "--group", "files"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _flow(ns: str) -> str:
    return f"""
id: cross_workers
namespace: {ns}
inputs:
  - id: data
    type: FILE
tasks:
  - id: first
    type: io.kestra.plugin.scripts.shell.Commands
    outputFiles: [first.txt]
    commands:
      - cat {{{{ inputs.data }}}} > first.txt
      - echo "written by the first worker" >> first.txt
  - id: second
    type: io.kestra.plugin.scripts.shell.Commands
    workerGroup:
      key: files
    inputFiles:
      in.txt: "{{{{ outputs.first.outputFiles['first.txt'] }}}}"
    outputFiles: [second.txt]
    commands:
      - tr a-z A-Z < in.txt > second.txt
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ read(outputs.second.outputFiles['second.txt']) }}}}"
"""


def _upload(stack: Stack, path: str, name: str, filename: str, content: bytes) -> Any:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: text/plain\r\n\r\n'
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return stack.request(
        "POST", path, body, content_type=f"multipart/form-data; boundary={boundary}"
    )


def test_a_file_crosses_worker_processes_through_s3_and_the_api_serves_it(
    stack: tuple[Stack, S3Endpoint, str],
) -> None:
    api, endpoint, bucket = stack
    ns = f"it.files.n{uuid.uuid4().hex[:8]}"
    assert api.post_yaml("/flows", _flow(ns)).status == 200
    created = _upload(api, f"/executions/{ns}/cross_workers", "data", "orders.csv", b"a,b\n1,2\n")
    assert created.status == 200, created.body
    execution_id = created.json()["id"]
    uploaded = created.json()["inputs"]["data"]
    folder = f"kestra:///{ns.replace('.', '/')}/cross-workers/executions/{execution_id}/"
    assert uploaded == f"{folder}inputs/data/orders.csv"
    done = api.wait_state(execution_id, {"SUCCESS", "FAILED", "WARNING", "KILLED"}, timeout=120)
    assert done["state"]["current"] == "SUCCESS", api.log_tail()
    runs = {run["taskId"]: run for run in done["taskRunList"]}
    second_uri = runs["second"]["outputs"]["outputFiles"]["second.txt"]
    assert second_uri.startswith(f"{folder}tasks/second/{runs['second']['id']}/")
    expected = "A,B\n1,2\nWRITTEN BY THE FIRST WORKER\n"
    assert runs["show"]["outputs"]["value"] == expected

    # The bucket holds the files, under the configured prefix, where any machine finds them.
    stored = endpoint.storage(bucket, "kestream")
    assert stored.get(second_uri.removeprefix("kestra:///")).decode() == expected

    base = f"/executions/{execution_id}/file"
    download = api.get(f"{base}?path={quote(second_uri)}")
    assert download.status == 200 and download.body.decode() == expected
    assert 'filename="second.txt"' in download.headers["Content-Disposition"]
    metas = api.get(f"{base}/metas?path={quote(second_uri)}")
    assert metas.status == 200 and metas.json() == {"size": len(expected)}
    preview = api.get(f"{base}/preview?path={quote(second_uri)}&maxRows=2")
    assert preview.status == 200
    assert preview.json() == {
        "extension": "txt", "type": "TEXT", "content": "A,B\n1,2\n", "truncated": True,
    }  # fmt: skip

    other = api.post_form(f"/executions/{ns}/cross_workers", {"data": "kestra:///x"}).json()
    refused = [
        f"{folder}../{other['id']}/inputs/data/orders.csv",
        f"{folder}%2e%2e/{other['id']}/x",
        uploaded.replace(execution_id, other["id"]),
        "file:///etc/passwd",
        "kestra:///etc/passwd",
    ]
    for path in refused:
        answer = api.get(f"{base}?path={quote(path)}")
        assert answer.status == 404, (path, answer.body)
    assert api.get(f"{base}?path={quote(folder + 'nothing.txt')}").status == 404
    assert api.get(f"/executions/{other['id']}/file?path={quote(second_uri)}").status == 404

    # Deleting the execution deletes its files (the uploaded input among them).
    key_folder = folder.removeprefix("kestra:///")
    assert len(stored.list(key_folder)) == 3
    api.wait_state(other["id"], {"SUCCESS", "FAILED", "WARNING", "KILLED"}, timeout=120)
    assert api.request("DELETE", f"/executions/{execution_id}").status == 204
    assert stored.list(key_folder) == []


def _counted(ns: str) -> str:
    return f"""
id: counted
namespace: {ns}
inputs:
  - id: doc
    type: FILE
  - id: count
    type: INT
tasks:
  - id: show
    type: io.kestra.plugin.core.debug.Return
    format: "{{{{ inputs.count }}}}"
"""


def _upload_with(stack: Stack, path: str, content: bytes, count: str | None) -> Any:
    """``doc`` uploaded, and ``count`` as a field when given."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="doc"; filename="doc.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode() + content
    if count is not None:
        body += (
            f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="count"\r\n\r\n{count}'
        ).encode()
    body += f"\r\n--{boundary}--\r\n".encode()
    return stack.request(
        "POST", path, body, content_type=f"multipart/form-data; boundary={boundary}"
    )


def test_uploads_of_a_refused_execution_or_replay_are_not_left_behind(
    stack: tuple[Stack, S3Endpoint, str],
) -> None:
    api, endpoint, bucket = stack
    ns = f"it.files.r{uuid.uuid4().hex[:8]}"
    assert api.post_yaml("/flows", _counted(ns)).status == 200
    stored = endpoint.storage(bucket, "kestream")
    executions = f"{ns.replace('.', '/')}/counted/executions/"
    # A creation whose inputs are refused (count missing) keeps none of its uploads.
    refused = _upload_with(api, f"/executions/{ns}/counted", b"first", None)
    assert refused.status == 422, refused.body
    assert stored.list(executions) == []
    created = _upload_with(api, f"/executions/{ns}/counted", b"second", "2")
    assert created.status == 200, created.body
    execution_id = created.json()["id"]
    api.wait_state(execution_id, {"SUCCESS", "FAILED", "WARNING", "KILLED"}, timeout=120)
    kept = stored.list(executions)
    assert len(kept) == 1 and execution_id in kept[0]
    # A replay with inputs that are refused: the same.
    replay = _upload_with(api, f"/executions/{execution_id}/replay-with-inputs", b"third", "x")
    assert replay.status == 422, replay.body
    assert stored.list(executions) == kept
