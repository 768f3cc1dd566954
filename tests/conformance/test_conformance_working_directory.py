"""Kestra's own WorkingDirectory tests (``WorkingDirectoryTest``) run on kestream.

The entries tagged ``WorkingDirectory`` in the second corpus (``<repo>/../shared/conformance-next``,
or ``$KESTREAM_CONFORMANCE_NEXT_DIR``) run through the driver, their ``expect`` checked by the
main suite's checker. All but one need what kestream does not have yet, and are listed in
:data:`NOT_RUN` with the reason; a test checks that list against the corpus, so an entry added
there is either run or explained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conformance_checks import Observed, check_expect, dump_execution
from conformance_corpus import REPO_ROOT, Entry, load_entries

from kestream.testing import Driver

ENV_VAR = "KESTREAM_CONFORMANCE_NEXT_DIR"
FEATURE = "WorkingDirectory"
_STORAGE = (
    "its children are LocalFiles tasks, whose exported files are internal-storage URIs "
    "(kestra://...): kestream has no internal storage yet"
)
#: Entries not run, by flow id, and why.
NOT_RUN = {
    "working-directory": _STORAGE,
    "working-directory-each": _STORAGE,
    "working-directory-inputs": _STORAGE,
    "working-directory-outputs": _STORAGE + "; WorkingDirectory outputFiles is refused too",
    "working-directory-cache": "WorkingDirectory cache needs a storage; it is refused at deploy",
}


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
def driver() -> Iterator[Driver]:
    with Driver() as instance:
        yield instance


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.case_id()) for e in ENTRIES])
def test_conformance_working_directory(entry: Entry, driver: Driver) -> None:
    driver.deploy(entry.flow_text())
    execution = driver.start(
        entry.namespace, entry.flow_id, entry.inputs, validate_inputs=entry.inputs_validated
    )
    obs = Observed(execution=execution, logs=driver.logs(execution.id))
    failures = check_expect(dict(entry.expect), obs)
    if failures:
        report = "\n".join([f"{entry.case_id()} ({entry.source})", *failures])
        pytest.fail(report + "\n" + dump_execution(execution, obs.logs), pytrace=False)


def test_every_tagged_entry_is_run_or_explained() -> None:
    assert ENTRIES, f"no runnable '{FEATURE}' entries in {_corpus()}"
    assert {entry.flow_id for entry in TAGGED} == {e.flow_id for e in ENTRIES} | set(NOT_RUN)
