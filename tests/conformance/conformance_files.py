"""The second corpus's file fields, for the entries that move stored files (ForEachItem).

- ``inputFiles``: the entry's FILE inputs, stored under the execution's inputs folder before it
  starts (as an API upload is), their URIs given as the inputs' values;
- ``taskRuns[].outputsAbsent`` and ``taskRuns[].storedFileLineCount``;
- ``children[].count`` and ``children[].expect.inputsRegex``.

:func:`split_checks` takes these out of an entry's ``expect`` and ``children`` so the main
suite's checker sees only the fields it knows; :func:`check_files` and :func:`check_child_counts`
check them.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance_checks import Failures, filter_task_runs

from kestream.models.execution import Execution
from kestream.storage import Storage, get_storage, parse_uri
from kestream.storage.uploads import store_input_file


def input_files(corpus: Path) -> dict[int, dict[str, str]]:
    """``inputFiles`` by entry index."""
    raw = json.loads((corpus / "expected.json").read_text(encoding="utf-8"))
    return {index: item["inputFiles"] for index, item in enumerate(raw) if "inputFiles" in item}


def store_inputs(
    storage: Storage,
    corpus: Path,
    files: Mapping[str, str],
    execution: tuple[str, str, str],
) -> dict[str, str]:
    """Store each FILE input of ``execution`` (namespace, flow id, id); its URI by input id."""
    namespace, flow_id, execution_id = execution
    uris = {}
    for input_id, relative in files.items():
        path = corpus / relative
        uris[input_id] = store_input_file(
            storage, namespace, flow_id, execution_id, input_id, path.name, path.read_bytes()
        )
    return uris


@dataclass
class FileChecks:
    """The file fields taken out of an entry (see the module doc)."""

    task_runs: list[dict[str, Any]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)


def split_checks(
    expect: Mapping[str, Any], children: Sequence[Mapping[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]], FileChecks]:
    """``expect`` and ``children`` without the file fields, and those fields."""
    expect = copy.deepcopy(dict(expect))
    specs = copy.deepcopy([dict(spec) for spec in children])
    checks = FileChecks()
    for run in expect.get("taskRuns", []):
        taken = {k: run.pop(k) for k in ("outputsAbsent", "storedFileLineCount") if k in run}
        if taken:
            checks.task_runs.append({"taskId": run["taskId"], "index": run.get("index"), **taken})
    for spec in specs:
        inner = spec.get("expect", {})
        taken = {"count": spec.pop("count", None), "inputsRegex": inner.pop("inputsRegex", {})}
        checks.children.append({"flow": spec["flow"], **taken})
    return expect, specs, checks


def check_files(checks: FileChecks, execution: Execution) -> Failures:
    failures: Failures = []
    for check in checks.task_runs:
        selector = {"taskId": check["taskId"]}
        if check["index"] is not None:
            selector["index"] = check["index"]
        runs = filter_task_runs(execution, selector)
        if not runs:
            failures.append(f"{check['taskId']}: no task run at index {check['index']}")
            continue
        (_, run), *_ = runs
        if check.get("outputsAbsent") and run.outputs:
            failures.append(f"{run.taskId}: outputsAbsent, got {run.outputs}")
        lines = check.get("storedFileLineCount")
        if lines is not None:
            uri = (run.outputs or {}).get(lines["output"])
            if not isinstance(uri, str):
                failures.append(f"{run.taskId}: no stored file at outputs.{lines['output']}")
                continue
            count = len(get_storage().get(parse_uri(uri)).decode().splitlines())
            if count != lines["lines"]:
                failures.append(f"{run.taskId}: {uri} has {count} lines, not {lines['lines']}")
    return failures


def check_child_counts(checks: FileChecks, children: Sequence[Execution]) -> Failures:
    """``count`` children of each flow, each one's inputs matching ``inputsRegex``."""
    failures: Failures = []
    for check in checks.children:
        namespace, flow_id = check["flow"].rsplit(".", 1)
        mine = [c for c in children if c.namespace == namespace and c.flowId == flow_id]
        if check["count"] is not None and len(mine) != check["count"]:
            failures.append(f"children {check['flow']}: {len(mine)}, not {check['count']}")
        for name, pattern in check["inputsRegex"].items():
            failures += [
                f"children {check['flow']} ({child.id}): inputs.{name} "
                f"{(child.inputs or {}).get(name)!r} does not match {pattern!r}"
                for child in mine
                if not re.fullmatch(pattern, str((child.inputs or {}).get(name)))
            ]
    return failures
