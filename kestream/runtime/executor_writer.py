"""How one batch of the executor reaches the broker: its dead letters, and the flush.

:class:`DeadLetters` turns a record that cannot be handled into a record of the dead-letter
topic (where it was, why, as much of it as fits), logged and counted.

:class:`RecordWriter` writes a batch's :class:`~kestream.runtime.executor_outbox.Outbox` in its
order: the commands, waiting for every ack, then the changelog (each key's records that a later
one replaces dropped, :meth:`~kestream.runtime.executor_outbox.Outbox.coalesce`; an execution's
partial updates of the cycle built as one, :meth:`RecordWriter.coalesce`). The changelog records
(and the other tables') are not written at once: they are carried over later writes, then go
with a write's commands in one produce and one wait for acks (after their batches' commands were
acked, before the later batches' changelog, as the order requires): with the first write at
least :data:`CARRY_S` after the oldest carried record (so a carry may wait that and one cycle
more), with a write that has no commands of its own (an idle cycle), and before the next offset
commit, so a commit never passes a record not written. What is carried is coalesced as one
outbox's changelog is, so a short execution's records of several cycles shrink to what its last
step left (W1, tasks on workers: its two whole records, the whole record's tombstone and the
ended marker become the tombstone and the marker when its three steps fall within one carry). A
crash before they are written is a crash between a batch's commands and its changelog, which
at-least-once always allowed: the batch's offsets were not committed, and it is replayed from
the changelog's state (its commands again carry the same derived ids). A replay sends a step's
commands again, and a worker runs a job it receives again (a copy at a new offset), so the steps
whose commands act again (worker jobs, kills and releases, records of the executions topic:
:meth:`RecordWriter._acts_again`) are carried one write only: their changelog goes with the next
write whatever its age, and a kill -9 runs again the jobs of the last cycle alone, as before
there was a carry; the longer carry holds only steps that sent updates and logs, whose repeats
readers drop. Records still carried for partitions the processor lets go are dropped
(:meth:`RecordWriter.drop_carried`): written after their next owner took over, they would land
over its records. Every produce passes the write gate first
(:mod:`kestream.runtime.write_gate`), closed while the group may have handed the partitions on.
A record the broker refuses for what it is (too large for the topic, say:
:func:`~kestream.runtime.produce_faults.record_fault`), or that cannot be sent at all, goes to
the dead-letter topic instead and the rest is written; a failure of the broker itself raises,
and the processor stops (its partitions' next owner replays from the last commit).

Under exactly-once (:meth:`RecordWriter.write_transactions`) the order and the carrying give way
to one transaction per input partition, with its input offsets; records are sized before, and a
record the broker refuses inside a transaction aborts its partition's transaction and is handed
back (:attr:`Written.refused_in`): the processor dead-letters it and commits the partition again
without it.

A refused record's step has already been applied in memory, so the writer hands the refused
records back (:class:`Written`): the processor then fails the task run of a refused job, and
fails the execution of a refused changelog record, in the same cycle, before it commits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from kestream.executor.sizes import over_limit
from kestream.runtime import records
from kestream.runtime.executor_outbox import ChangelogRecord, CommandRecord, Outbox
from kestream.runtime.executor_transactions import Lost, PartitionTransactions, TxnWrite
from kestream.runtime.metrics import Metrics
from kestream.runtime.produce_faults import record_fault
from kestream.runtime.record_limit import RecordLimit
from kestream.runtime.topics import Topics
from kestream.runtime.write_gate import WriteGate

__all__ = ["DeadLetters", "RecordWriter", "Refusal", "Written"]

log = logging.getLogger("kestream.executor")

#: How long (seconds) at least the changelog records of a write are carried over later writes,
#: where later steps of their executions replace them (see the module docstring): the first
#: write after that takes them, and so do the next offset commit (every second), an idle cycle
#: and the write after a step whose commands act again (a worker job, say).
CARRY_S = 0.25

Refusal = tuple[CommandRecord, str]
"""A record that was not written (its dead letter was), and why."""


@dataclass(slots=True)
class Written:
    """What :meth:`RecordWriter.write` did with a batch's outbox."""

    #: Per changelog partition written, the offset after its last record.
    checkpoints: dict[int, int] = field(default_factory=dict)
    #: The records dead-lettered instead of written, in their order.
    refused: list[Refusal] = field(default_factory=list)
    #: Under exactly-once, the input partitions whose producer was fenced (nothing of theirs
    #: was committed).
    fenced: set[int] = field(default_factory=set)
    #: Under exactly-once, the input partitions whose producer died without being fenced
    #: (:class:`~kestream.runtime.executor_transactions.Lost`): whether their transaction
    #: committed is the broker's to finish, so their state is read again.
    lost: dict[int, Lost] = field(default_factory=dict)
    #: Under exactly-once, per input partition whose transaction was aborted because the
    #: broker refused records of it, those records and why (not dead-lettered yet: nothing of
    #: the partition was committed).
    refused_in: dict[int, list[Refusal]] = field(default_factory=dict)


class DeadLetters:
    """Makes the dead letters of the executor's records."""

    def __init__(self, topics: Topics, limit: RecordLimit, metrics: Metrics) -> None:
        self.topics = topics
        self.limit = limit
        self.metrics = metrics

    def add(
        self,
        out: Outbox,
        topic: str,
        partition: int,
        offset: int,
        key: bytes | None,
        value: bytes | None,
        reason: str,
    ) -> None:
        """Send the dead letter of the record at ``topic[partition]@offset`` with ``out``."""
        log.warning("dead letter from %s[%d]@%d: %s", topic, partition, offset, reason)
        self.metrics.dead_letter("executor")
        body = records.dead_letter_value(
            topic, partition, offset, key, value, reason, max_bytes=self.limit.value_bytes
        )
        out.send(self.topics.dead_letter, key.decode("utf-8", "replace") if key else "", body)


class RecordWriter:
    """Writes a batch's outbox (see the module docstring)."""

    def __init__(
        self,
        topics: Topics,
        limit: RecordLimit,
        letters: DeadLetters,
        partial_update: Callable[[str, list[str]], list[bytes]],
    ) -> None:
        self.topics = topics
        self.limit = limit
        self.letters = letters
        #: The records of an execution's partial update over a cycle, built from its state at
        #: the write (:meth:`Outbox.build_updates`): by execution id and task runs changed.
        self.partial_update = partial_update
        #: Executions whose partial update could not be made and was dead-lettered, not again
        #: until one is made or a full update is written (:meth:`coalesce`).
        self._unencodable: set[str] = set()
        self._group_jobs = topics.group_tasks("")  # the worker groups' jobs topics' prefix
        self.producer: AIOKafkaProducer | None = None
        #: Under exactly-once, the input partitions' transactional producers.
        self.transactions: PartitionTransactions | None = None
        #: Changelog and table records carried to a later write (see the module docstring).
        self.carried: list[CommandRecord] = []
        #: How long records may be carried, and when the oldest still carried was.
        self.carry_s = CARRY_S
        self.clock: Callable[[], float] = time.monotonic
        self._carried_at: float | None = None
        #: Whether the carry holds the changelog of a step whose commands act again when a
        #: replay sends them again (:meth:`_acts_again`): then the next write takes it.
        self._carry_acts = False
        #: Told of each record the broker acknowledged, with its ack (the local hand-off of
        #: jobs, :mod:`kestream.runtime.local_handoff`).
        self.on_acked: Callable[[CommandRecord, Any], None] | None = None
        #: What every write passes first (:mod:`kestream.runtime.write_gate`); the processor's
        #: offset commits pass it too.
        self.gate = WriteGate()

    async def write(self, out: Outbox, *, carry: bool = True) -> Written:
        """Write the commands, with the changelog and table records carried from earlier
        writes when they are due (carried :attr:`carry_s` or longer, the carry holds a step
        whose commands act again, or this write has no commands), in one produce; ``out``'s
        changelog and tables are carried to a later write (without ``carry``: everything
        carried is written after, waiting again). Returns, per changelog partition written, the
        offset after its last record (the checkpoint the partition's state reflects), and the
        records refused. When the gate refuses
        (:class:`~kestream.runtime.write_gate.WriteRefused`), the changelog records not written
        stay carried: the caller knows the changelog is behind the state held."""
        written = Written()
        changelog = self.topics.changelog
        self.coalesce(out)
        now = self.clock()
        due = (
            not carry
            or not out.commands
            or self._carry_acts
            or self._carried_for(now) >= self.carry_s
        )
        recs = out.commands + self.carried if due else out.commands
        acks = await self.produce(recs, written.refused) if recs else []  # (no gate to pass)
        if due:
            self._set_carried([], now)
        made = [(changelog, *r) for r in out.changelog] + out.tables
        if made:
            self._set_carried(_coalesced(changelog, self.carried + made), now)
            self._carry_acts = self._carry_acts or self._acts_again(out.commands)
        if not carry and self.carried:
            acks += await self.produce(self.carried, written.refused)
        if not carry:
            self._set_carried([], now)
        self._checkpoints(acks, written)
        return written

    def _acts_again(self, commands: list[CommandRecord]) -> bool:
        """Whether sending ``commands`` again would act again: a worker job, kill or release
        (a task run twice) or a record of the executions topic (a subflow started twice, an
        event stepped twice). A replay sends a step's commands again while its changelog is
        not written, so such a step's changelog goes with the next write (see the module
        docstring)."""
        acting, group_jobs = (self.topics.executions, self.topics.worker_tasks), self._group_jobs
        return any(topic in acting or topic.startswith(group_jobs) for topic, _, _, _ in commands)

    def _carried_for(self, now: float) -> float:
        """How long the oldest record still carried has been (0 with none)."""
        return 0.0 if self._carried_at is None else now - self._carried_at

    def _set_carried(self, recs: list[CommandRecord], now: float) -> None:
        if not recs:
            self._carried_at = None
            self._carry_acts = False
        elif self._carried_at is None:
            self._carried_at = now
        self.carried = recs

    def drop_carried(self, partitions: set[int]) -> bool:
        """Forget the carried records of ``partitions`` (let go: see the module docstring);
        whether there were any (their changelog is then behind the state held)."""
        kept = [rec for rec in self.carried if rec[3] not in partitions]
        dropped = len(kept) < len(self.carried)
        self._set_carried(kept, self.clock())
        return dropped

    def records_of(self, out: Outbox) -> list[CommandRecord]:
        """``out``'s records in their order (commands, changelog, other tables), sized
        (:meth:`sized`) by the caller; coalesced (:meth:`coalesce`)."""
        changelog = self.topics.changelog
        self.coalesce(out)
        return out.commands + [(changelog, *r) for r in out.changelog] + out.tables

    def coalesce(self, out: Outbox) -> None:
        """Make ``out`` ready to write: its partial execution updates built, one per execution
        (:meth:`Outbox.build_updates`), and its changelog records that later ones replace
        dropped (:meth:`Outbox.coalesce`)."""
        updates = self.topics.updates

        def build(execution_id: str, changed: list[str]) -> list[bytes]:
            """An update that cannot be built (a state no update can encode) is dead-lettered
            with the reason, as the event of a full update that cannot be is: its steps were
            applied and their changelog goes, so readers lag behind it until its next full
            update (a pause, its end), and the dead letter says why. Once per execution until
            an update of it is made again: every cycle that touches it would add another."""
            try:
                values = self.partial_update(execution_id, changed)
            except Exception as exc:
                if execution_id in self._unencodable:
                    log.warning("execution %s: its update of this cycle cannot be made either "
                                "(dead-lettered once): %r", execution_id, exc)  # fmt: skip
                    return []
                self._unencodable.add(execution_id)
                log.exception("execution %s: its update of this cycle cannot be made",
                              execution_id)  # fmt: skip
                reason = f"the execution update of the cycle cannot be made: {exc!r}"
                self.letters.add(out, updates, -1, -1, execution_id.encode(), None, reason)
                return []
            self._unencodable.discard(execution_id)
            return values

        self._unencodable -= out.full_updated  # their full update says all again
        out.build_updates(updates, build)
        out.coalesce()

    async def write_transactions(self, writes: Mapping[int, TxnWrite]) -> Written:
        """Exactly-once: commit each input partition's records and offsets in its transaction
        (:mod:`kestream.runtime.executor_transactions`); the acknowledged-record hook hears of
        the records only once they are committed (a local worker must never run a job an
        aborted transaction took back)."""
        assert self.transactions is not None, "the writer has no transactional producers"
        await self.gate.passing()
        committed = await self.transactions.commit(writes)
        written = Written(
            fenced=committed.fenced, lost=committed.lost, refused_in=committed.refused
        )
        for rec, meta in committed.acked:
            self._acked(rec, meta)
        self._checkpoints([meta for _, meta in committed.acked], written)
        return written

    def _acked(self, rec: CommandRecord, meta: Any) -> None:
        """Tell :attr:`on_acked` of a record acknowledged; its failure is logged, never the
        flush's (the record is durable whatever the hook does)."""
        if self.on_acked is None:
            return
        try:
            self.on_acked(rec, meta)
        except Exception:
            log.exception("the hook on the acknowledged record %s failed", meta)

    def _checkpoints(self, acks: list[Any], written: Written) -> None:
        changelog, checkpoints = self.topics.changelog, written.checkpoints
        for meta in acks:
            if meta.topic == changelog:
                checkpoints[meta.partition] = max(
                    checkpoints.get(meta.partition, 0), meta.offset + 1
                )

    async def produce(
        self, recs: list[CommandRecord], refusals: list[Refusal] | None = None
    ) -> list[Any]:
        """Produce ``recs`` and wait for every ack; a record the broker refuses for what it
        is goes to the dead-letter topic instead (and to ``refusals``), any other failure
        raises. Returns the acks (``RecordMetadata``) of the records written. Nothing is
        produced when the gate refuses (raised)."""
        await self.gate.passing()
        producer = self.producer
        assert producer is not None, "the writer has no producer"
        refused: list[tuple[CommandRecord, BaseException]] = []
        sent: list[tuple[CommandRecord, asyncio.Future[Any]]] = []
        for rec in self.sized(recs, refusals):
            topic, key, value, partition = rec
            try:
                future = await producer.send(topic, value, key=key.encode(), partition=partition)
            except Exception as exc:
                if not record_fault(exc):
                    raise
                refused.append((rec, exc))
                continue
            sent.append((rec, future))
        acks = []
        failure: Exception | None = None
        for rec, future in sent:  # one by one (no gather): acked together, most already done
            try:
                acks.append(meta := await future)
                self._acked(rec, meta)
            except Exception as exc:
                if record_fault(exc):
                    refused.append((rec, exc))
                elif failure is None:
                    failure = exc  # raised once every ack is in, as before
        if failure is not None:
            raise failure
        if refused:
            letters = Outbox()
            for rec, why in refused:
                topic, key, value, partition = rec
                reason = f"not produced: {why!r}"
                self.letters.add(
                    letters, topic, partition if partition is not None else -1, -1,
                    key.encode(), value, reason,
                )  # fmt: skip
                if refusals is not None:
                    refusals.append((rec, reason))
            letter_acks = [
                await producer.send(topic, value, key=key.encode(), partition=partition)
                for topic, key, value, partition in letters.commands
            ]
            await asyncio.gather(*letter_acks)
        return acks

    def sized(
        self, recs: list[CommandRecord], refusals: list[Refusal] | None = None
    ) -> list[CommandRecord]:
        """``recs``, with any record over the limit replaced by its (cut) dead letter (and
        added to ``refusals``).

        The step's rules keep records within the limit (outputs, jobs, updates and logs are
        sized where they are made); this is the last guard, for combinations no rule foresaw
        (a huge execution header, say): a record the broker would refuse must not stop the
        processor and block its partitions. What its step counted on is undone by the
        processor (see the module docstring).
        """
        if all(self.limit.fits(value) for _, _, value, _ in recs):
            return recs
        kept: list[CommandRecord] = []
        for topic, key, value, partition in recs:
            if self.limit.fits(value):
                kept.append((topic, key, value, partition))
                continue
            assert value is not None
            reason = "not produced: " + over_limit("the record", len(value), self.limit.value_bytes)
            log.error("record for %s key %s %s", topic, key, reason)
            if refusals is not None:
                refusals.append(((topic, key, value, partition), reason))
            letter = Outbox()
            self.letters.add(
                letter, topic, partition if partition is not None else -1, -1, key.encode(),
                value, reason,
            )  # fmt: skip
            kept.extend(letter.commands)
        return kept


def _coalesced(changelog: str, recs: list[CommandRecord]) -> list[CommandRecord]:
    """Carried records with what later ones replace dropped: the changelog's by
    :meth:`Outbox.coalesce` (the carry is written in one produce, as one outbox is), first, then
    the other tables' records in their order. Only the order within a topic means something:
    recovery reads each topic on its own."""
    logged: list[ChangelogRecord] = []
    tables: list[CommandRecord] = []
    for rec in recs:
        topic, key, value, partition = rec
        if topic == changelog and partition is not None:  # (changelog records name theirs)
            logged.append((key, value, partition))
        else:
            tables.append(rec)
    out = Outbox(changelog=logged)
    out.coalesce()
    return [(changelog, *rec) for rec in out.changelog] + tables
