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
(see its docstring). Its execution update is built once for the cycle, at the write
(:meth:`Outbox.build_updates`), rather than at each step: a step notes the task runs it changed
(:meth:`Outbox.partial_update`), and only a pause or an end is written at its step
(:meth:`Outbox.full_update`), since readers act on each of those.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kestream.executor.codec import execution_of, is_commit_mark
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
    #: The partial execution updates still to build (:meth:`build_updates`): per execution,
    #: the task runs its steps changed since its last full update here, in order.
    partial_updates: dict[str, dict[str, None]] = field(default_factory=dict)
    #: The executions with a full update here: it replaces the partial updates before it.
    full_updated: set[str] = field(default_factory=set)

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

    def partial_update(self, execution_id: str, changed: list[str]) -> None:
        """A step changed ``changed`` task runs of the execution (its own fields perhaps
        alone): its update waits for the write, merged with those of its later steps."""
        runs = self.partial_updates.get(execution_id)
        if runs is None:
            runs = self.partial_updates[execution_id] = {}
        runs.update(dict.fromkeys(changed))

    def full_update(self, topic: str, execution_id: str, values: list[bytes]) -> None:
        """A pause's or an end's update, written as it is: every reader acts on it, and it
        replaces what a reader knew, so the partial updates noted before it go."""
        self.partial_updates.pop(execution_id, None)
        self.full_updated.add(execution_id)
        for value in values:
            self.send(topic, execution_id, value)

    def build_updates(self, topic: str, build: Callable[[str, list[str]], list[bytes]]) -> int:
        """Send the partial updates noted, one per execution, built by ``build(execution id,
        changed task runs)`` from the execution's state now (no record for one that left the
        table: its end's full update says all); returns how many records that made. After
        every record of this outbox, so after the execution's full updates here: readers key
        the topic by execution, and the order within a key is kept."""
        noted, self.partial_updates = self.partial_updates, {}
        self.full_updated = set()  # what it replaced is gone: later notes stand
        made = 0
        for execution_id, runs in noted.items():
            for value in build(execution_id, list(runs)):
                self.send(topic, execution_id, value)
                made += 1
        return made

    def empty(self) -> bool:
        return not (self.commands or self.changelog or self.tables or self.partial_updates)

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

    def extend(self, other: Outbox) -> None:
        """Take ``other``'s records after this one's (an event's staged records, once whole)."""
        self.commands.extend(other.commands)
        for execution_id in other.full_updated:
            self.partial_updates.pop(execution_id, None)
        self.full_updated |= other.full_updated
        for execution_id, runs in other.partial_updates.items():
            mine = self.partial_updates.get(execution_id)
            if mine is None:
                self.partial_updates[execution_id] = dict(runs)
            else:
                mine.update(runs)
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
