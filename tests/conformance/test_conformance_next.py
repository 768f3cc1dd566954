"""Kestra's own test flows for the execution tasks (Labels, Assert, Exit) run on kestream.

The entries come from the second corpus (``<repo>/../shared/conformance-next``, or
``$KESTREAM_CONFORMANCE_NEXT_DIR``), which holds Kestra's tests for features built one by one.
Only the entries whose features are all built here run; their ``expect`` is checked by the same
checker as the main suite, plus the corpus's ``labelsExact`` and its label placeholders
(``<execution id>``, ``<taskrun id:TASK_ID>``).
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from conformance_checks import (
    Failures,
    Observed,
    check_children,
    check_expect,
    dump_execution,
    substitute,
)
from conformance_corpus import REPO_ROOT, Entry, load_entries
from conformance_files import (
    check_child_counts,
    check_files,
    input_files,
    split_checks,
    store_inputs,
)
from conformance_scenarios import DriverBackend, run_scenario

from kestream.executor import events as ev
from kestream.executor.instance_variables import InstanceVariables, set_instance_variables
from kestream.kv.values import KVEntry, infer_value
from kestream.models.clock import utc_now
from kestream.models.execution import Execution, LogEntry
from kestream.models.ids import new_id
from kestream.models.state import StateType
from kestream.secrets.masking import MASK
from kestream.storage import Storage, get_storage, using_storage
from kestream.testing import Driver

ENV_VAR = "KESTREAM_CONFORMANCE_NEXT_DIR"
#: The corpus features this module covers; an entry needing any other one is not run here.
BUILT = frozenset(
    {"Labels", "Assert", "Exit", "inputs.dependsOn", "render()"}
    | {"finally", "afterExecution", "LoopUntil", "Dag", "restart"}
    | {"kv()", "kv tasks", "secret()"}
    | {"sla", "subflow"}
    | {"concurrency"}
    | {"ForEachItem"}
)


def _corpus() -> Path:
    configured = os.environ.get(ENV_VAR)
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "conformance-next"


def _features() -> dict[int, set[str]]:
    import json

    raw = json.loads((_corpus() / "expected.json").read_text(encoding="utf-8"))
    return {index: set(item.get("features", ())) for index, item in enumerate(raw)}


def entries_for(built: frozenset[str]) -> list[Entry]:
    """The entries whose features are all in ``built`` (an entry with none is never chosen)."""
    features = _features()
    chosen = [
        entry
        for entry in load_entries(_corpus())
        if features[entry.index] and features[entry.index] <= built
    ]
    if not chosen:
        raise RuntimeError(f"no entries for {sorted(built)} in {_corpus()}")
    return chosen


ENTRIES = entries_for(BUILT)
FEATURES = _features()


def _runtimes() -> dict[int, dict[str, Any]]:
    import json

    raw = json.loads((_corpus() / "expected.json").read_text(encoding="utf-8"))
    return {index: item["runtime"] for index, item in enumerate(raw) if "runtime" in item}


RUNTIMES = _runtimes()


def _kv_seeds() -> dict[int, list[dict[str, Any]]]:
    import json

    raw = json.loads((_corpus() / "expected.json").read_text(encoding="utf-8"))
    return {index: item["kvSeed"] for index, item in enumerate(raw) if "kvSeed" in item}


#: ``kvSeed`` per entry: written to the driver's KV store before the run (its store starts
#: empty, which is every entry's ``kvReset``).
KV_SEEDS = _kv_seeds()
#: The prefix of the environment variables Kestra's test configuration reads as ``envs``.
KESTRA_TEST_ENV_PREFIX = "KESTRA_"


def entry_variables(entry: Entry) -> InstanceVariables:
    """The entry's ``runtime``: its ``KESTRA_`` variables as ``envs``, its ``globals``."""
    runtime = RUNTIMES.get(entry.index, {})
    return InstanceVariables.from_environ(
        runtime.get("env", {}), KESTRA_TEST_ENV_PREFIX, runtime.get("globals")
    )


@pytest.fixture(autouse=True)
def runtime(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run each entry with the ``envs`` and ``globals`` of its ``runtime``, and its
    ``SECRET_`` variables in the environment (where ``secret()`` reads them)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is None:  # a test that runs no entry
        yield
        return
    entry = callspec.params["entry"]
    for name, value in RUNTIMES.get(entry.index, {}).get("env", {}).items():
        if name.startswith("SECRET_"):
            monkeypatch.setenv(name, value)
    previous = set_instance_variables(entry_variables(entry))
    yield
    set_instance_variables(previous)


CORPUS = _corpus()
#: ``inputFiles`` per entry: stored as the execution's FILE inputs (:mod:`conformance_files`).
INPUT_FILES = input_files(CORPUS)


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Driver]:
    with using_storage(Storage.local(tmp_path / "storage")), Driver() as instance:
        yield instance


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.case_id()) for e in ENTRIES])
def test_conformance_next(entry: Entry, driver: Driver) -> None:
    if entry.scenario:
        _scenario(entry, driver)
        return
    for seed in KV_SEEDS.get(entry.index, []):
        seed_kv(driver, seed["namespace"], seed["key"], seed["value"])
    for text in entry.required_texts():
        driver.deploy(text)
    driver.deploy(entry.flow_text())
    execution = start(entry, driver)
    if execution.state.current is StateType.PAUSED and entry.expect.get("state") != "PAUSED":
        execution = driver.wait(execution.id)  # a Pause that times out or resumes by itself
    expect, child_specs, file_checks = split_checks(adapted_expect(entry), entry.children)
    failures = check_next(expect, execution, driver.logs(execution.id))
    failures += check_files(file_checks, execution)
    if entry.children:
        children = driver.children(execution.id)
        child_logs = {child.id: driver.logs(child.id) for child in children}
        failures += check_children(child_specs, children, child_logs, execution.id)
        failures += check_child_counts(file_checks, children)
    for position, phase in enumerate(entry.phases):
        if phase.get("action") != "restart":
            raise ValueError(f"{entry.case_id()}: phase action {phase.get('action')!r}")
        execution = driver.restart(execution.id)
        logs = driver.logs(execution.id)
        failures += [
            f"phases[{position}] restart: {line}"
            for line in check_next(phase.get("expect", {}), execution, logs)
        ]
    if failures:
        report = "\n".join([f"{entry.case_id()} ({entry.source})", *failures])
        logs = driver.logs(execution.id)
        pytest.fail(report + "\n" + dump_execution(execution, logs), pytrace=False)


def start(entry: Entry, driver: Driver) -> Execution:
    """Start the entry's execution, its ``inputFiles`` stored first under its inputs folder."""
    files = INPUT_FILES.get(entry.index)
    if not files:
        return driver.start(
            entry.namespace,
            entry.flow_id,
            entry.inputs,
            validate_inputs=entry.inputs_validated,
            labels=entry.labels,
        )
    execution_id = new_id()
    uris = store_inputs(
        get_storage(), CORPUS, files, (entry.namespace, entry.flow_id, execution_id)
    )
    created = ev.ExecutionCreated(
        execution_id=execution_id,
        namespace=entry.namespace,
        flow_id=entry.flow_id,
        inputs={**entry.inputs, **uris},
        validate_inputs=entry.inputs_validated,
        labels={str(k): str(v) for k, v in (entry.labels or {}).items()},
    )
    return driver.submit(created)


def _scenario(entry: Entry, driver: Driver) -> None:
    """A multi-execution entry (flow concurrency), step by step (:mod:`conformance_scenarios`)."""
    for text in [*entry.required_texts(), entry.flow_text()]:
        driver.deploy(text)
    failures = driver.drive(run_scenario(entry, DriverBackend(driver), check_next))
    if failures:
        pytest.fail("\n".join([f"{entry.case_id()} ({entry.source})", *failures]), pytrace=False)


def adapted_expect(entry: Entry) -> dict[str, Any]:
    """The entry's ``expect`` with kestream's one documented departure: a task output that holds
    a secret's value is masked (``******``; :mod:`kestream.secrets.masking`), because outputs
    travel through Kafka and secret values never do. Kestra's OSS tests read them back."""
    expect = copy.deepcopy(entry.expect)
    if "secret()" in FEATURES[entry.index]:
        for run in expect.get("taskRuns", []):
            if "outputs" in run:
                run["outputs"] = dict.fromkeys(run["outputs"], MASK)
    return expect


def seed_kv(driver: Driver, namespace: str, key: str, value: Any) -> None:
    """One ``kvSeed`` entry, typed as the API types a value (JSON data keeps its type)."""
    kv_type, typed = infer_value(value)
    now = utc_now()
    entry = KVEntry(
        namespace=namespace, key=key, type=kv_type, value=typed, creationDate=now, updateDate=now
    )
    asyncio.run(driver.kv.aput(entry))


def check_next(
    expect: Mapping[str, Any], execution: Execution, logs: Sequence[LogEntry]
) -> list[str]:
    """``expect`` with the second corpus's own fields (``labelsExact``, ``sequence``,
    ``allTaskRunsStateIn``) checked here, the rest by the main suite's checker."""
    expect = dict(expect)
    exact = expect.pop("labelsExact", None)
    prefix = expect.pop("executionHistoryPrefix", None)
    excluded = expect.pop("executionHistoryExcludes", None)
    sequence = expect.pop("sequence", None)
    states = expect.pop("allTaskRunsStateIn", None)
    all_terminated = expect.pop("allTaskRunsTerminated", None)
    placeholders = _placeholders(execution)
    obs = Observed(execution=execution, logs=logs, placeholders=placeholders)
    failures = check_expect(expect, obs)
    if exact is not None:
        failures += _labels_exact(substitute(dict(exact), placeholders), execution)
    if sequence is not None:
        failures += _sequence(sequence, execution)
    if states is not None:
        failures += [
            f"allTaskRunsStateIn: {run.taskId} is {run.state.current}, not one of {states}"
            for run in execution.taskRunList
            if run.state.current.value not in states
        ]
    if all_terminated:
        failures += _all_terminated(execution)
    history = [item.state.value for item in execution.state.histories]
    if prefix is not None and history[: len(prefix)] != prefix:
        failures.append(f"executionHistoryPrefix: expected {prefix}, history {history}")
    if excluded is not None and set(excluded) & set(history):
        failures.append(f"executionHistoryExcludes: {excluded}, history {history}")
    return failures


def _all_terminated(execution: Execution) -> list[str]:
    """Every task run, and its last attempt, in an end state."""
    failures = []
    for run in execution.taskRunList:
        attempts = run.attempts or []
        last = attempts[-1].state.current if attempts else None
        if not run.state.current.is_terminal or (last is not None and not last.is_terminal):
            failures.append(
                f"allTaskRunsTerminated: {run.taskId} is {run.state.current}, last attempt {last}"
            )
    return failures


def _sequence(pairs: list[list[str]], execution: Execution) -> list[str]:
    """Each ``[later, earlier]``: ``later`` starts no earlier than ``earlier`` ends."""
    runs = {run.taskId: run for run in execution.taskRunList}
    failures = []
    for later, earlier in pairs:
        if later not in runs or earlier not in runs:
            failures.append(f"sequence: no task run of {later!r} or {earlier!r}")
            continue
        start = runs[later].state.histories[0].date
        end = runs[earlier].state.histories[-1].date
        if start < end:
            failures.append(
                f"sequence: {later!r} started at {start}, before {earlier!r} ended ({end})"
            )
    return failures


def _placeholders(execution: Execution) -> dict[str, str]:
    values = {"<execution id>": execution.id}
    for run in execution.taskRunList:
        values[f"<taskrun id:{run.taskId}>"] = run.id
    return values


def _labels_exact(expected: Mapping[str, Any], execution: Execution) -> Failures:
    actual = execution.label_map()
    if actual == expected:
        return []
    return [f"labelsExact: expected {dict(expected)}, got {actual}"]


def test_the_masked_outputs_departure_touches_only_secret_entries() -> None:
    """Entries without ``secret()`` are checked exactly as the corpus states them; in the
    ``secret()`` ones only the expected output values change, to the mask."""
    secret_entries = [e for e in ENTRIES if "secret()" in FEATURES[e.index]]
    assert secret_entries
    for entry in ENTRIES:
        adapted = adapted_expect(entry)
        if entry not in secret_entries:
            assert adapted == entry.expect
            continue
        runs = zip(adapted["taskRuns"], entry.expect["taskRuns"], strict=True)
        for mine, theirs in runs:
            assert {k: v for k, v in mine.items() if k != "outputs"} == {
                k: v for k, v in theirs.items() if k != "outputs"
            }
            if "outputs" in theirs:
                assert mine["outputs"] == dict.fromkeys(theirs["outputs"], MASK)
