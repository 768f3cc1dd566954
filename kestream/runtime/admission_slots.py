"""The admission stream's part of the executor processor (flow concurrency).

The executor's consumer reads the ``admissions`` topic (slot requests keyed by flow,
:mod:`kestream.executor.admission`) with its inputs: the same partition count and the same
assignment, so a processor owns admissions partition ``p`` when it owns the executions' ``p``.
Each owned partition's :class:`~kestream.executor.admission.SlotTable` lives in memory, backed
by the ``admission-changelog`` topic (one record per flow and execution holding or waiting for a
slot; a tombstone when it lets go). Recovery reads an assigned partition's changelog whole.

A request's answers (:class:`~kestream.executor.events.Admission` events, to the executions
topic) go out with the batch's commands, and its changelog records with the batch's changelog,
after them (DESIGN.md section 3): a crash between the two replays the requests from the last
commit on a table restored without their changes, and the table decides the same again.
Flows without a limit never write here: an idle admissions partition costs no request of its
own (the executor's one fetch covers it).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.structs import ConsumerRecord

from kestream.executor.admission import SlotTable
from kestream.models.clock import Clock
from kestream.runtime import records
from kestream.runtime.executor_outbox import Outbox
from kestream.runtime.executor_writer import DeadLetters
from kestream.runtime.topics import Topics

__all__ = ["AdmissionSlots"]

log = logging.getLogger("kestream.executor")


class AdmissionSlots:
    """The slot tables of the admissions partitions a processor owns (see the module docs)."""

    def __init__(self, topics: Topics, letters: DeadLetters, clock: Clock) -> None:
        self.topics = topics
        self.letters = letters
        self.clock = clock
        self.tables: dict[int, SlotTable] = {}

    def handle(self, partition: int, rec: ConsumerRecord[Any, Any], out: Outbox) -> None:
        """Apply one request: its answers and changelog records go to ``out``; a request that
        cannot be read goes to the dead-letter topic."""
        try:
            request = records.decode_slot_request(rec.value)
        except Exception as exc:  # RecordError, or anything a hostile record provokes
            self.letters.add(
                out, rec.topic, partition, rec.offset, rec.key, rec.value, str(exc)
            )  # fmt: skip
            return
        table = self.tables.setdefault(partition, SlotTable())
        done = table.apply(request, self.clock())
        for answer in done.answers:
            out.send(self.topics.executions, answer.execution_id, records.encode_event(answer))
        changelog = self.topics.admission_changelog
        for key, execution_id in done.changed:
            record_key, value = table.record(key, execution_id)
            encoded = records.dumps(value) if value is not None else None
            out.tables.append((changelog, record_key, encoded, partition))

    def install(self, latest: dict[int, dict[str, Any]]) -> None:
        """Rebuild the tables of the partitions recovered, from the latest record of each key
        of their changelog (:meth:`~kestream.runtime.changelog_restorer.ChangelogRestorer.
        read_table`)."""
        for partition, entries in latest.items():
            try:
                self.tables[partition] = SlotTable.restore(entries)
            except (KeyError, TypeError, ValueError) as exc:
                # Only a record no processor wrote can do this: the partition's slots start
                # empty rather than the processor stopping on it.
                log.error("admission slots of partition %d unreadable (%r); starting empty",
                          partition, exc)  # fmt: skip
                self.tables[partition] = SlotTable()
            held = len(entries)
            if held:
                log.info("admission partition %d: %d executions hold or wait for a slot",
                         partition, held)  # fmt: skip

    def leave(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.tables.pop(partition, None)
