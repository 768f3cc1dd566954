"""Kestra's own test flows run on kestream: one case per entry of the corpus's ``expected.json``.

Each case gets a fresh :class:`kestream.testing.Driver`, deploys the entry's ``requires`` flows and
the flow itself, starts it, checks ``expect`` at the first stop, then runs each phase (resume,
restart, wait) and checks its ``expect``, then the ``children``. Every difference is reported at
once, with a dump of the task runs and logs. The corpus and its format: ``README.md`` next to
``expected.json`` (see ``conformance_corpus.corpus_dir``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
from conformance_checks import (
    Failures,
    Observed,
    check_children,
    check_expect,
    dump_execution,
    show,
    state_name,
)
from conformance_corpus import Entry, load_entries

from kestream.models.execution import Execution, LogEntry

if TYPE_CHECKING:
    from kestream.testing import Driver

# Loaded at collection: a missing or empty corpus is a collection error that says why.
ENTRIES = load_entries()

# Log messages that Kestra formats with Java's List/Map toString. The entry's notes quote the
# portable part, which is what we check instead: flow id -> {asserted `contains` -> portable part}.
PORTABLE_LOG_TEXT: dict[str, dict[str, str]] = {
    "each-null": {
        "Found '1' null values on Each, with values=[1, null, {key=my-key, value=my-value}]": (
            "Found '1' null values on Each"
        ),
    },
}

# A flow whose pauses resume by themselves may stop in PAUSED more than once on its way to the end.
MAX_AUTO_WAITS = 5

T = TypeVar("T")


def _params() -> list[Any]:
    return [
        pytest.param(
            entry,
            id=entry.case_id(),
            marks=[pytest.mark.slow] if entry.needs_real_time() else [],
        )
        for entry in ENTRIES
    ]


@pytest.fixture
def driver() -> Iterator[Driver]:
    # Imported here so that the suite still collects (and fails per case) without the driver.
    from kestream.testing import Driver

    with Driver() as instance:
        yield instance


@pytest.mark.parametrize("entry", _params())
def test_conformance(entry: Entry, driver: Driver) -> None:
    case = CaseRun(entry, driver)
    case.run()
    if case.failed:
        pytest.fail(case.report(), pytrace=False)


def portable_expect(expect: Mapping[str, Any], flow_id: str) -> dict[str, Any]:
    """``expect`` with Java-formatted log texts replaced by their portable part."""
    table = PORTABLE_LOG_TEXT.get(flow_id, {})
    adapted = copy.deepcopy(dict(expect))
    for spec in adapted.get("logs", []):
        if spec.get("contains") in table:
            spec["contains"] = table[spec["contains"]]
    return adapted


@dataclass
class Stage:
    """One checkpoint of a case: what was expected, what was seen, what differs."""

    name: str
    failures: Failures
    note: str = ""
    dumps: list[str] = field(default_factory=list)


class CaseRun:
    """Drives one corpus entry through a Driver and collects the differences."""

    def __init__(self, entry: Entry, driver: Driver) -> None:
        self.entry = entry
        self.driver = driver
        self.stages: list[Stage] = []

    @property
    def failed(self) -> bool:
        return any(stage.failures for stage in self.stages)

    def run(self) -> None:
        self._step("deploy", self._deploy)
        execution = self._step("start", self._first_stop)
        self._check("first stop", self.entry.expect, execution)
        for position, phase in enumerate(self.entry.phases):
            name = f"phases[{position}] {phase.get('action')}"
            execution = self._step(name, lambda phase=phase, ex=execution: self._act(phase, ex))
            self._check(name, phase.get("expect", {}), execution, note=phase.get("note", ""))
        if self.entry.children:
            self._check_children(execution.id)

    # --- driving ---------------------------------------------------------------------------

    def _step(self, name: str, action: Callable[[], T]) -> T:
        try:
            return action()
        except Exception as exc:
            exc.add_note(f"conformance entry {self.entry.case_id()}: during {name}")
            if self.failed:
                exc.add_note(self.report())
            raise

    def _deploy(self) -> None:
        for text in self.entry.required_texts():
            self.driver.deploy(text)
        self.driver.deploy(self.entry.flow_text())

    def _first_stop(self) -> Execution:
        entry = self.entry
        execution = self.driver.start(
            entry.namespace,
            entry.flow_id,
            entry.inputs,
            validate_inputs=entry.inputs_validated,
            labels=entry.labels,
        )
        if entry.phases or entry.expect.get("state") == "PAUSED":
            return execution
        for _ in range(MAX_AUTO_WAITS):
            if state_name(execution.state.current) != "PAUSED":
                break
            execution = self.driver.wait(execution.id)
        return execution

    def _act(self, phase: Mapping[str, Any], execution: Execution) -> Execution:
        action = phase.get("action")
        if action == "resume":
            return self.driver.resume(execution.id, phase.get("resumeInputs"))
        if action == "restart":
            return self.driver.restart(execution.id)
        if action == "wait":
            return self.driver.wait(execution.id)
        raise ValueError(f"unknown phase action {action!r}")

    # --- checking --------------------------------------------------------------------------

    def _observe(self, execution: Execution, expect: Mapping[str, Any]) -> Observed:
        logs = self.driver.logs(execution.id)
        flow_executions = None
        if "executionStates" in expect:
            self.driver.settle()
            flow_executions = [
                other
                for other in self.driver.executions()
                if (other.namespace, other.flowId) == (self.entry.namespace, self.entry.flow_id)
            ]
        return Observed(execution=execution, logs=logs, flow_executions=flow_executions)

    def _check(
        self, name: str, expect: Mapping[str, Any], execution: Execution, note: str = ""
    ) -> None:
        obs = self._observe(execution, expect)
        failures = check_expect(portable_expect(expect, self.entry.flow_id), obs)
        stage = Stage(name, failures, note=" ".join(filter(None, [note, expect.get("notes")])))
        if failures:
            stage.dumps.append(dump_execution(execution, obs.logs))
            if obs.flow_executions is not None:
                stage.dumps += [summary(other) for other in obs.flow_executions]
        self.stages.append(stage)

    def _check_children(self, subject_id: str) -> None:
        children = self.driver.children(subject_id)
        child_logs: dict[str, list[LogEntry]] = {c.id: self.driver.logs(c.id) for c in children}
        failures = check_children(self.entry.children, children, child_logs, subject_id)
        stage = Stage("children", failures)
        if failures:
            stage.dumps += [dump_execution(child, child_logs[child.id]) for child in children]
        self.stages.append(stage)

    # --- reporting -------------------------------------------------------------------------

    def report(self) -> str:
        entry = self.entry
        lines = [
            f"conformance entry {entry.case_id()} ({entry.flow}, {entry.file})",
            f"source: {entry.source}",
            f"inputs: {show(entry.inputs)} (validated: {entry.inputs_validated})"
            + (f" labels: {show(entry.labels)}" if entry.labels else ""),
            f"notes: {entry.expect.get('notes', '')}",
        ]
        for stage in self.stages:
            status = f"{len(stage.failures)} failure(s)" if stage.failures else "ok"
            lines.append(f"--- {stage.name}: {status}")
            lines += [f"  - {failure}" for failure in stage.failures]
            if stage.failures and stage.note and stage.name != "first stop":
                lines.append(f"  note: {stage.note}")
            lines += stage.dumps
        return "\n".join(lines)


def summary(execution: Execution) -> str:
    return (
        f"execution {execution.id} {execution.namespace}.{execution.flowId}: "
        f"state={state_name(execution.state.current)} task runs={len(execution.taskRunList)}"
    )
