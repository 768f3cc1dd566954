"""Kestra's own WorkingDirectory tests (``WorkingDirectoryTest``) run on kestream.

The entries tagged ``WorkingDirectory`` in the second corpus (``<repo>/../shared/conformance-next``,
or ``$KESTREAM_CONFORMANCE_NEXT_DIR``) run through the driver, their ``expect`` checked by the
main suite's checker, plus the corpus's ``storedFile`` check (the stored file's content, read
from the internal storage). Those that need what kestream does not have yet are listed in
:data:`NOT_RUN` with the reason; a test checks that list against the corpus, so an entry added
there is either run or explained.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conformance_checks import Observed, check_expect, dump_execution
from conformance_corpus import REPO_ROOT, Entry, load_entries
from conformance_scenarios import DriverBackend, run_scenario

from kestream.models.execution import Execution, LogEntry
from kestream.storage import Storage, get_storage, parse_uri, using_storage
from kestream.testing import Driver

ENV_VAR = "KESTREAM_CONFORMANCE_NEXT_DIR"
FEATURE = "WorkingDirectory"
#: Entries not run, by flow id, and why.
NOT_RUN: dict[str, str] = {}


def _corpus() -> Path:
    configured = os.environ.get(ENV_VAR)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "conformance-next"


def _tagged() -> list[Entry]:
    raw = json.loads((_corpus() / "expected.json").read_text(encoding="utf-8"))
    tagged = {index for index, item in enumerate(raw) if FEATURE in item.get("features", ())}
    return [entry for entry in load_entries(_corpus()) if entry.index in tagged]


TAGGED = _tagged()
ENTRIES = [entry for entry in TAGGED if entry.flow_id not in NOT_RUN]


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Driver]:
    with using_storage(Storage.local(tmp_path / "storage")), Driver() as instance:
        yield instance


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.case_id()) for e in ENTRIES])
def test_conformance_working_directory(entry: Entry, driver: Driver) -> None:
    driver.deploy(entry.flow_text())
    if entry.scenario:  # several executions of the flow (the cache one run, then the next)
        failures = driver.drive(run_scenario(entry, DriverBackend(driver), check_entry))
        if failures:
            pytest.fail("\n".join([f"{entry.case_id()} ({entry.source})", *failures]))
        return
    execution = driver.start(
        entry.namespace, entry.flow_id, entry.inputs, validate_inputs=entry.inputs_validated
    )
    logs = driver.logs(execution.id)
    failures = check_entry(entry.expect, execution, logs)
    if failures:
        report = "\n".join([f"{entry.case_id()} ({entry.source})", *failures])
        pytest.fail(report + "\n" + dump_execution(execution, logs), pytrace=False)


def check_entry(
    expect: Mapping[str, Any], execution: Execution, logs: Sequence[LogEntry]
) -> list[str]:
    """``expect`` with the corpus's ``storedFile`` and ``outputsHasKey`` checked here, the rest
    by the main suite's checker."""
    expect = copy.deepcopy(dict(expect))
    runs = expect.get("taskRuns", [])
    stored = [(run["taskId"], run.pop("storedFile")) for run in runs if "storedFile" in run]
    has_key = [(run["taskId"], run.pop("outputsHasKey")) for run in runs if "outputsHasKey" in run]
    failures = check_expect(expect, Observed(execution=execution, logs=logs))
    return failures + check_stored_files(stored, execution) + check_has_key(has_key, execution)


def check_has_key(checks: list[tuple[str, dict[str, str]]], execution: Execution) -> list[str]:
    """The corpus's ``outputsHasKey``: the output (a map) holds that key."""
    runs = {run.taskId: run for run in execution.taskRunList}
    return [
        f"outputsHasKey: {task_id} outputs.{output} has no key {key!r}"
        for task_id, check in checks
        for output, key in check.items()
        if key not in (((runs[task_id].outputs or {}) if task_id in runs else {}).get(output) or {})
    ]


def check_stored_files(stored: list[tuple[str, dict[str, Any]]], execution: Execution) -> list[str]:
    """The corpus's ``storedFile``: the file at ``outputs[output][key]`` holds ``content``."""
    failures = []
    runs = {run.taskId: run for run in execution.taskRunList}
    for task_id, check in stored:
        outputs = runs[task_id].outputs if task_id in runs else None
        uri = ((outputs or {}).get(check["output"]) or {}).get(check["key"])
        if not isinstance(uri, str):
            failures.append(
                f"storedFile: {task_id} has no outputs.{check['output']}[{check['key']}]"
            )
            continue
        content = get_storage().get(parse_uri(uri)).decode()
        if content != check["content"]:
            failures.append(f"storedFile: {uri} holds {content!r}, not {check['content']!r}")
    return failures


def test_every_tagged_entry_is_run_or_explained() -> None:
    assert ENTRIES, f"no runnable '{FEATURE}' entries in {_corpus()}"
    assert {entry.flow_id for entry in TAGGED} == {e.flow_id for e in ENTRIES} | set(NOT_RUN)
