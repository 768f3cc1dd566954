"""The conformance corpus run through a real broker: executor, worker and client as processes use
them. Every entry without phases runs here (phases, children and the executions a retry creates
are covered through the broker-free driver in ``tests/conformance``); its ``expect`` is checked
with the same checker, minus ``executionStates``, which needs a listing of executions.

Entries of the second corpus (``conformance-next``) for the flow blocks and flowables built so far
(``THROUGH_BROKER_NEXT``) run here the same way, checked as ``test_conformance_next`` checks them.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "conformance"))

from broker_scenarios import BrokerBackend, UpdatesFollower
from conformance_checks import Observed, check_expect, dump_execution
from conformance_corpus import Entry, load_entries
from conformance_files import check_files, split_checks, store_inputs
from conformance_scenarios import run_scenario
from executor_harness import running_roles
from test_conformance import portable_expect
from test_conformance_next import CORPUS, INPUT_FILES, check_next, entries_for, entry_variables

from kestream.client import Client
from kestream.executor.instance_variables import set_instance_variables
from kestream.models.execution import Execution, LogEntry
from kestream.models.ids import new_id
from kestream.models.state import StateType
from kestream.storage import Storage, get_storage, using_storage

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="module")]

ENTRIES = [e for e in load_entries() if not e.phases]
#: conformance-next features whose entries without phases run through the broker too.
THROUGH_BROKER_NEXT = frozenset(
    {"finally", "afterExecution", "LoopUntil", "Dag", "inputs.dependsOn", "render()"}
    | {"sla", "subflow"}
    | {"concurrency"}
    | {"ForEachItem"}
)
NEXT_ENTRIES = [e for e in entries_for(THROUGH_BROKER_NEXT) if not e.phases]
NOT_THROUGH_BROKER = {"executionStates"}  # needs a listing of every execution of a flow
MAX_AUTO_WAITS = 5


@pytest.fixture(scope="module")
def stored_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Storage]:
    """The internal storage the roles (in this process) and the file checks share."""
    with using_storage(Storage.local(tmp_path_factory.mktemp("storage"))) as storage:
        yield storage


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def runtime(
    broker: Any, stored_files: Storage, request: pytest.FixtureRequest
) -> AsyncIterator[Client]:
    prefix = f"conf-{broker.backend}-{request.node.name[:8]}-{id(request)}."
    async with running_roles(broker.bootstrap, prefix) as client:
        yield client


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.case_id()) for e in ENTRIES])
async def test_conformance_through_the_broker(entry: Entry, runtime: Client) -> None:
    execution, logs = await _run(entry, runtime)
    expect = {
        k: v
        for k, v in portable_expect(entry.expect, entry.flow_id).items()
        if k not in NOT_THROUGH_BROKER
    }
    failures = check_expect(expect, Observed(execution=execution, logs=logs))
    if failures:
        pytest.fail(
            "\n".join([f"entry {entry.case_id()}", *failures, dump_execution(execution, logs)]),
            pytrace=False,
        )


@pytest.mark.parametrize("entry", [pytest.param(e, id=e.case_id()) for e in NEXT_ENTRIES])
async def test_conformance_next_through_the_broker(entry: Entry, runtime: Client) -> None:
    # the executor runs in this process: it sees the entry's envs and globals
    previous = set_instance_variables(entry_variables(entry))
    try:
        if entry.scenario:
            await _scenario(entry, runtime)
            return
        execution, logs = await _run(entry, runtime)
    finally:
        set_instance_variables(previous)
    expect, _, file_checks = split_checks(entry.expect, entry.children)
    failures = check_next(expect, execution, logs) + check_files(file_checks, execution)
    if failures:
        pytest.fail(
            "\n".join([f"entry {entry.case_id()}", *failures, dump_execution(execution, logs)]),
            pytrace=False,
        )


async def _scenario(entry: Entry, runtime: Client) -> None:
    """A multi-execution entry (flow concurrency), step by step, through the broker."""
    for text in [*entry.required_texts(), entry.flow_text()]:
        await runtime.deploy(text)
    async with UpdatesFollower(runtime) as follower:
        failures = await run_scenario(entry, BrokerBackend(runtime, follower), check_next)
    if failures:
        pytest.fail("\n".join([f"entry {entry.case_id()}", *failures]), pytrace=False)


async def _run(entry: Entry, runtime: Client) -> tuple[Execution, list[LogEntry]]:
    """Deploy the entry's flows, run it to its end (through pauses that end by themselves)."""
    for text in entry.required_texts():
        await runtime.deploy(text)
    flow = await runtime.deploy(entry.flow_text())
    execution_id = new_id()
    files = INPUT_FILES.get(entry.index, {})
    uris = store_inputs(get_storage(), CORPUS, files, (flow.namespace, flow.id, execution_id))
    execution_id = await runtime.submit(
        flow.namespace,
        flow.id,
        {**entry.inputs, **uris},
        labels=dict(entry.labels or {}),
        validate_inputs=entry.inputs_validated,
        execution_id=execution_id,
    )
    execution = await runtime.wait(execution_id, timeout=60)
    expected_state = entry.expect.get("state")
    waits = 0
    while (
        execution.state.current is StateType.PAUSED
        and expected_state != "PAUSED"
        and waits < MAX_AUTO_WAITS
    ):
        waits += 1
        execution = await runtime.wait(execution_id, timeout=60, until_paused=False)
    return execution, list(await runtime.logs(execution_id))
