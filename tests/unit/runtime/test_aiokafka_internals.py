"""The aiokafka internals kestream relies on, checked against the installed aiokafka (CI runs
the lowest versions pyproject allows too: scripts/test_lowest.sh).

fetch_pacing wraps the fetcher's private ``_proc_fetch_request(assignment, node_id, request)``;
another signature would raise inside aiokafka's fetcher routine and kill the consumer, so
pyproject bounds aiokafka below the next minor, and this test says when a bound raised or
lowered no longer fits. The scheduler and the executor take a refused commit as a rebalance
by catching ``CommitFailedError``, which aiokafka raises for the group errors below. The
membership readers of :mod:`kestream.runtime.group_coordinator` read the coordinator's fields,
and :mod:`kestream.runtime.producer_internals` the producer's sender and transaction manager.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.consumer.fetcher import Fetcher
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.producer.sender import Sender
from aiokafka.producer.transaction_manager import TransactionManager

PYPROJECT = Path(__file__).resolve().parents[3] / "pyproject.toml"


def test_the_fetch_method_fetch_pacing_wraps_has_its_signature() -> None:
    parameters = list(inspect.signature(Fetcher._proc_fetch_request).parameters)
    assert parameters == ["self", "assignment", "node_id", "request"]
    assert inspect.iscoroutinefunction(Fetcher._proc_fetch_request)


def test_aiokafka_is_bounded_below_its_next_minor() -> None:
    (spec,) = re.findall(r'"aiokafka([<>=!~][^"]*)"', PYPROJECT.read_text())
    assert re.search(r"<\d+\.\d+", spec), spec


def test_a_commit_refused_by_the_group_is_a_commit_failed_error() -> None:
    source = inspect.getsource(GroupCoordinator.commit_offsets)
    for error in ("UnknownMemberIdError", "IllegalGenerationError", "RebalanceInProgressError"):
        assert error in source
    assert "raise Errors.CommitFailedError" in source


def test_the_coordinator_keeps_what_group_coordinator_reads() -> None:
    """kestream.runtime.group_coordinator reads the generation, the member id and the
    coordination task off aiokafka's coordinator; the fence and the lease rest on them."""
    source = inspect.getsource(GroupCoordinator)
    for field in ("generation", "member_id", "_coordination_task"):
        assert re.search(rf"self\.{field}\s*[:=]", source), field


def test_the_producer_keeps_what_producer_internals_reads() -> None:
    """kestream.runtime.producer_internals reads the sender's task (a dead producer told from a
    fenced one) and adds a partition to a transaction through the transaction manager (a
    transaction left without its markers closed)."""
    source = inspect.getsource(AIOKafkaProducer.__init__)
    for field in ("_sender", "_txn_manager"):
        assert re.search(rf"self\.{field}\s*=", source), field
    assert isinstance(Sender.sender_task, property)
    parameters = list(inspect.signature(TransactionManager.maybe_add_partition_to_txn).parameters)
    assert parameters == ["self", "tp"]
