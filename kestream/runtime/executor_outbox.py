"""What one batch of the executor writes, in the order it must be written.

Commands (worker jobs, new executions, events, updates, logs, dead letters) go first, then the
changelog records of the states the batch changed (DESIGN.md section 3): a crash between the two
replays the batch from a state without its changes, and its commands carry derived ids that
every consumer downstream ignores when repeated. Under exactly-once the order no longer matters
(each input partition's records and offsets commit together), but the records are kept apart
per input partition (:class:`PartitionOutboxes`).

An execution that takes several steps in one cycle (a ForEach's results fetched together, say)
rewrites some keys in each (its dynamic record always): :meth:`Outbox.coalesce` keeps the last
record of each key only, where that cannot change what a kill at any point of the write leaves
(see its docstring). Its execution updates are coalesced as well
(:meth:`Outbox.coalesce_updates`): readers merge them into the same execution.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kestream.executor.codec import execution_of, is_commit_mark
from kestream.runtime.execution_updates import KeptUpdate, coalesce_updates
from kestream.runtime.records import dumps

__all__ = ["ChangelogRecord", "CommandRecord", "Outbox", "Outboxes", "PartitionOutboxes"]

CommandRecord = tuple[str, str, bytes | None, int | None]
"""``(topic, key, value, partition or None for the key's partition)``."""

ChangelogRecord = tuple[str, bytes | None, int]
"""``(key, value or None for a tombstone, changelog partition)``."""


@dataclass(slots=True)
class Outbox:
    """Records produced by one batch (or staged by one event): commands, then the changelog."""

    commands: list[CommandRecord] = field(default_factory=list)
    changelog: list[ChangelogRecord] = field(default_factory=list)
    #: The changelog records as values (before encoding), for the processor's mirror of the
    #: changelog (:class:`~kestream.runtime.changelog_restorer.ChangelogMirror`).
    logged: list[tuple[str, Any]] = field(default_factory=list)
    #: Records of the other changelogs the processor keeps (the admission slot table's,
    #: :mod:`kestream.runtime.admission_slots`): written with the changelog, after the commands.
    tables: list[CommandRecord] = field(default_factory=list)
    #: What :meth:`coalesce_updates` needs of this outbox's update records, by the record's
    #: ``id`` (kept by :func:`~kestream.runtime.execution_updates.update_records`), so that it
    #: need not decode them. An entry counts only for the record it was made for (compared
    #: by identity), so a record dropped before the coalescing is never taken for another
    #: that got its id; cleared once the updates are coalesced.
    update_bodies: dict[int, KeptUpdate] = field(default_factory=dict)

    def send(self, topic: str, key: str, value: bytes | None, partition: int | None = None) -> None:
        self.commands.append((topic, key, value, partition))

    def log(
        self,
        key: str,
        value: Any,
        partition: int,
        *,
        data: bytes | None = None,
    ) -> None:
        """A changelog record: ``value`` is JSON-ready (encoded here unless ``data`` is its
        JSON already), None a tombstone."""
        if value is not None and data is None:
            data = dumps(value)
        self.changelog.append((key, data if value is not None else None, partition))
        self.logged.append((key, value))

    def of(self, partition: int) -> Outbox:
        """Where the steps of an input partition's events stage their records: this outbox (at
        least once, a cycle writes its records together; :class:`PartitionOutboxes` keeps
        them apart)."""
        return self

    def empty(self) -> bool:
        return not (self.commands or self.changelog or self.tables)

    def coalesce(self) -> int:
        """Drop the changelog records a later record of the same key in this outbox replaces,
        where no kill in between can tell; returns how many were dropped.

        Recovery folds an execution's records up to its last commit mark
        (:func:`~kestream.executor.codec.is_commit_mark`) and leaves the rest out, so what a
        kill leaves of an execution is its records up to one of its commit marks. A record may
        go when its key is written again before the next commit mark kept: no kept mark lies
        between the two, so a kill leaves both or neither. The dynamic record, each step's
        mark, is the usual case: its earlier copies go, and the cycle's steps of the execution
        commit together (a kill before the last replays them all, their offsets were not
        committed). A mark that is kept (the ended marker's tombstone of a restart, say)
        bounds what may go before it.
        """
        changelog = self.changelog
        if len(changelog) < 2:
            return 0
        keys = [key for key, _, _ in changelog]
        if len(set(keys)) == len(keys):
            return 0
        later: dict[str, set[str]] = {}  # per execution, keys written after, up to a kept mark
        keep = [False] * len(changelog)
        for i in range(len(changelog) - 1, -1, -1):
            key, value, _ = changelog[i]
            execution_id = execution_of(key)
            after = later.get(execution_id)
            if after is None:
                after = later[execution_id] = set()
            elif key in after:
                continue
            keep[i] = True
            if is_commit_mark(key, value):
                after.clear()
            after.add(key)
        kept = [rec for rec, k in zip(changelog, keep, strict=True) if k]
        dropped = len(changelog) - len(kept)
        self.changelog = kept
        return dropped

    def coalesce_updates(self, topic: str, max_bytes: int) -> int:
        """Coalesce each execution's records of the updates ``topic``
        (:func:`~kestream.runtime.execution_updates.coalesce_updates`), put where its last one
        was; returns how many records fewer. Only an execution with several is decoded.

        The coalesced records of an execution take its last record's place, after records of
        other keys made later in the cycle (jobs, logs, other executions' updates): the order
        within a key is kept, and every reader of the updates keys by execution (the index,
        the scheduler, the client; a parent learns of its subflow's end through the executions
        topic)."""
        bodies, self.update_bodies = self.update_bodies, {}  # some of their records will go
        seen: dict[str, int] = {}  # per execution, the index of its last update record
        several = False
        for i, (record_topic, key, value, _) in enumerate(self.commands):
            if record_topic == topic and value is not None:
                several = several or key in seen
                seen[key] = i
        if not several:
            return 0
        values: dict[str, list[bytes]] = {}
        for record_topic, key, value, _ in self.commands:
            if record_topic == topic and value is not None:
                values.setdefault(key, []).append(value)
        kept: list[CommandRecord] = []
        for i, record in enumerate(self.commands):
            record_topic, key, value, partition = record
            if record_topic != topic or value is None or len(values.get(key, ())) < 2:
                kept.append(record)
            elif seen[key] == i:
                kept.extend(
                    (topic, key, merged, partition)
                    for merged in coalesce_updates(values[key], max_bytes, bodies)
                )
        dropped = len(self.commands) - len(kept)
        self.commands = kept
        return dropped

    def extend(self, other: Outbox) -> None:
        """Take ``other``'s records after this one's (an event's staged records, once whole)."""
        self.commands.extend(other.commands)
        self.update_bodies.update(other.update_bodies)
        self.changelog.extend(other.changelog)
        self.logged.extend(other.logged)
        self.tables.extend(other.tables)


@dataclass(slots=True)
class PartitionOutboxes:
    """One cycle's records, an outbox per input partition: under exactly-once each partition's
    records commit in its own transaction, with its input offsets
    (:mod:`kestream.runtime.executor_transactions`)."""

    parts: dict[int, Outbox] = field(default_factory=dict)

    def of(self, partition: int) -> Outbox:
        found = self.parts.get(partition)
        if found is None:
            found = self.parts[partition] = Outbox()
        return found


Outboxes = Outbox | PartitionOutboxes
"""A cycle's records: all in one outbox (at least once), or one per input partition."""
