"""What aiokafka's transactional producer keeps only privately, read and used in one place: its
background sender's task, and its transaction manager's way to add a partition to the open
transaction without a record.

The executor's transactions tell a dead producer from a fenced one by how the sender's task
ended (:func:`sender_failure`), and close a transaction left without its markers with an empty
one that adds the partition (:func:`add_partitions`, :mod:`kestream.runtime.txn_markers`).
aiokafka 0.13 and 0.14 keep these on ``producer._sender`` and ``producer._txn_manager``;
tests/unit/runtime/test_aiokafka_internals.py checks them against the installed aiokafka.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from aiokafka import TopicPartition

__all__ = ["add_partitions", "sender_failure"]


def sender_failure(producer: Any) -> BaseException | None:
    """What ``producer``'s background sender died of, if it died (aiokafka's
    ``AIOKafkaProducer._sender.sender_task``, done with an exception); None while it runs, or
    for a producer without one. A dead sender's producer fails every call after (its
    transaction state is fatal): its commit's failure is not the transaction's, and an abort
    through it is refused or, under ``python -O``, waits for ever."""
    task = getattr(getattr(producer, "_sender", None), "sender_task", None)
    if not isinstance(task, asyncio.Future) or not task.done() or task.cancelled():
        return None
    return task.exception()


def add_partitions(producer: Any, partitions: Iterable[TopicPartition]) -> None:
    """Add ``partitions`` to ``producer``'s open transaction without sending a record: its
    sender sends ``AddPartitionsToTxn`` for them before the transaction's ``EndTxn``, and the
    coordinator then writes the transaction's marker to each (aiokafka's
    ``_txn_manager.maybe_add_partition_to_txn``, what a send calls for its partition). Raises
    where this aiokafka keeps no such method: a transaction that silently adds nothing would
    commit nothing and close nothing."""
    add = getattr(getattr(producer, "_txn_manager", None), "maybe_add_partition_to_txn", None)
    if not callable(add):
        raise RuntimeError(
            "this aiokafka's producer keeps no transaction manager that adds a partition "
            "(producer._txn_manager.maybe_add_partition_to_txn): a transaction left without "
            "its markers cannot be closed"
        )
    for tp in sorted(partitions):
        add(TopicPartition(tp.topic, tp.partition))
