"""Kestra's storage tasks and file functions in flows, through the driver, on both backends."""

from __future__ import annotations

from typing import Any

import pytest

from kestream.models.state import StateType
from kestream.storage import Storage, parse_uri
from kestream.testing import Driver

S = StateType
HEAD = "id: files_flow\nnamespace: company.team\n"


def _run(body: str, inputs: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any], list[str]]:
    with Driver() as driver:
        flow = driver.deploy(HEAD + body)
        execution = driver.start(flow.namespace, flow.id, inputs)
        logs = [line.message for line in driver.logs(execution.id)]
    runs = {t.taskId: t for t in execution.taskRunList}
    return execution, runs, logs


def test_write_then_read_size_and_checks(storage: Storage) -> None:
    execution, runs, logs = _run(
        """tasks:
  - id: write
    type: io.kestra.plugin.core.storage.Write
    content: "Hello {{ flow.id }}"
    extension: .txt
  - id: size
    type: io.kestra.plugin.core.storage.Size
    uri: "{{ outputs.write.uri }}"
  - id: show
    type: io.kestra.plugin.core.log.Log
    message: "{{ read(outputs.write.uri) }}|{{ fileSize(outputs.write.uri) }}|\\
      {{ fileExists(outputs.write.uri) }}|{{ isFileEmpty(outputs.write.uri) }}"
"""
    )
    assert execution.state.current is S.SUCCESS
    uri = runs["write"].outputs["uri"]
    assert uri.startswith(
        f"kestra:///company/team/files-flow/executions/{execution.id}/tasks/write/"
        f"{runs['write'].id}/"
    )
    assert uri.endswith(".txt")
    assert storage.get(parse_uri(uri)) == b"Hello files_flow"
    assert runs["size"].outputs == {"size": 16}
    assert "Hello files_flow|16|true|false" in logs


def test_concat_split_delete(storage: Storage) -> None:
    execution, runs, logs = _run(
        """tasks:
  - id: a
    type: io.kestra.plugin.core.storage.Write
    content: "1\\n2\\n3"
  - id: b
    type: io.kestra.plugin.core.storage.Write
    content: "4\\n5"
  - id: concat
    type: io.kestra.plugin.core.storage.Concat
    files: ["{{ outputs.a.uri }}", "{{ outputs.b.uri }}"]
    separator: "\\n"
    extension: .csv
  - id: rows
    type: io.kestra.plugin.core.storage.Split
    from: "{{ outputs.concat.uri }}"
    rows: 2
  - id: parts
    type: io.kestra.plugin.core.storage.Split
    from: "{{ outputs.concat.uri }}"
    partitions: 2
  - id: small
    type: io.kestra.plugin.core.storage.Split
    from: "{{ outputs.concat.uri }}"
    bytes: 4
  - id: delete
    type: io.kestra.plugin.core.storage.Delete
    uri: "{{ outputs.a.uri }}"
  - id: again
    type: io.kestra.plugin.core.storage.Delete
    uri: "{{ outputs.a.uri }}"
  - id: gone
    type: io.kestra.plugin.core.log.Log
    message: "exists={{ fileExists(outputs.a.uri) }}"
"""
    )
    assert execution.state.current is S.SUCCESS, logs

    def contents(task: str) -> list[bytes]:
        return [storage.get(parse_uri(u)) for u in runs[task].outputs["uris"]]

    assert storage.get(parse_uri(runs["concat"].outputs["uri"])) == b"1\n2\n3\n4\n5"
    assert contents("rows") == [b"1\n2\n", b"3\n4\n", b"5\n"]
    assert contents("parts") == [b"1\n3\n5\n", b"2\n4\n"]
    assert contents("small") == [b"1\n2\n", b"3\n4\n", b"5\n"]
    assert all(u.endswith(".csv") for u in runs["rows"].outputs["uris"])
    assert runs["delete"].outputs["deleted"] is True
    assert runs["again"].outputs["deleted"] is False
    assert "exists=false" in logs


def test_split_by_pattern(storage: Storage) -> None:
    execution, runs, _ = _run(
        """tasks:
  - id: logs
    type: io.kestra.plugin.core.storage.Write
    content: "[INFO] a\\n[ERROR] b\\n[INFO] c\\n"
  - id: split
    type: io.kestra.plugin.core.storage.Split
    from: "{{ outputs.logs.uri }}"
    regexPattern: "\\\\[(\\\\w+)\\\\]"
"""
    )
    assert execution.state.current is S.SUCCESS
    files = [storage.get(parse_uri(u)) for u in runs["split"].outputs["uris"]]
    assert files == [b"[INFO] a\n[INFO] c\n", b"[ERROR] b\n"]


def test_delete_error_on_missing_fails(storage: Storage) -> None:
    execution, runs, logs = _run(
        """tasks:
  - id: w
    type: io.kestra.plugin.core.storage.Write
    content: x
  - id: d1
    type: io.kestra.plugin.core.storage.Delete
    uri: "{{ outputs.w.uri }}"
  - id: d2
    type: io.kestra.plugin.core.storage.Delete
    uri: "{{ outputs.w.uri }}"
    errorOnMissing: true
"""
    )
    assert execution.state.current is S.FAILED
    assert runs["d2"].state.current is S.FAILED
    assert any("Unable to find file" in line for line in logs)


@pytest.mark.parametrize(
    "path",
    [
        "kestra:///company/team/files-flow/executions/OTHER/tasks/t/r/secret.txt",
        "kestra:///company/team/files-flow/executions/{{ execution.id }}/../OTHER/x.txt",
        "kestra:///company/team/files-flow/executions/{{ execution.id }}/%2e%2e/OTHER/x.txt",
        "kestra:///other/ns/flow/executions/{{ execution.id }}/x.txt",
        "kestra://host/company/team/files-flow/executions/{{ execution.id }}/x.txt",
        "file:///etc/passwd",
        "/etc/passwd",
        "../../../etc/passwd",
    ],
)
def test_read_refuses_files_outside_the_execution(storage: Storage, path: str) -> None:
    storage.put("company/team/files-flow/executions/OTHER/tasks/t/r/secret.txt", b"SECRET")
    storage.put("company/team/files-flow/executions/OTHER/x.txt", b"SECRET")
    execution, runs, logs = _run(
        f"""tasks:
  - id: leak
    type: io.kestra.plugin.core.log.Log
    message: "{{{{ read('{path}') }}}}"
"""
    )
    assert execution.state.current is S.FAILED
    assert not any("SECRET" in line for line in logs)
    assert runs["leak"].state.current is S.FAILED


def test_tasks_refuse_files_of_another_execution(storage: Storage) -> None:
    other = "company/team/files-flow/executions/OTHER/tasks/t/r/keep.txt"
    storage.put(other, b"keep")
    execution, _, logs = _run(
        f"""tasks:
  - id: delete
    type: io.kestra.plugin.core.storage.Delete
    uri: "kestra:///{other}"
"""
    )
    assert execution.state.current is S.FAILED
    assert any("didn't belong to the current execution" in line for line in logs)
    assert storage.get(other) == b"keep"


def test_namespace_files_by_path(storage: Storage) -> None:
    storage.put("company/team/_files/sql/q.sql", b"select 1")
    execution, _, logs = _run(
        """tasks:
  - id: show
    type: io.kestra.plugin.core.log.Log
    message: "{{ read('/sql/q.sql') }}|{{ fileURI('sql/q.sql') }}|{{ fileExists('sql/none.sql') }}"
"""
    )
    assert execution.state.current is S.SUCCESS
    assert "select 1|kestra:///company/team/_files/sql/q.sql|false" in logs


def test_kestras_size_documentation_example_runs_unchanged(storage: Storage) -> None:
    with Driver() as driver:
        flow = driver.deploy(
            """id: get_file_size
namespace: company.team

tasks:
  - id: generate_file
    type: io.kestra.plugin.scripts.shell.Commands
    commands:
      - echo "Hello John" > name.txt
    outputFiles:
      - "name.txt"

  - id: get_size
    type: io.kestra.plugin.core.storage.Size
    uri: "{{ outputs.generate_file.outputFiles['name.txt'] }}"

  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ outputs.get_size.size }} bytes"
"""
        )
        execution = driver.start(flow.namespace, flow.id)
        logs = [line.message for line in driver.logs(execution.id)]
    assert execution.state.current is S.SUCCESS, logs
    assert "11 bytes" in logs


def test_kestras_write_documentation_example_runs_unchanged(storage: Storage) -> None:
    execution, runs, _ = _run(
        """tasks:
  - id: write
    type: io.kestra.plugin.core.storage.Write
    content: Hello World
    extension: .txt
"""
    )
    assert execution.state.current is S.SUCCESS
    assert storage.get(parse_uri(runs["write"].outputs["uri"])) == b"Hello World"
