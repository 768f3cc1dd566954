"""Executions whose roll-back could not rebuild them, waiting for their rebuild.

A step that raises is rolled back: its execution is rebuilt from the records the changelog holds
for it (:class:`~kestream.runtime.changelog_restorer.ChangelogMirror`), the stored plans those
records name taken from the state in memory. When that fails (a stored plan neither memory nor
the internal storage gives, a record the rebuild cannot read), the execution must not leave the
table for good: its changelog still holds it, and its later events, stepped against no state,
would be no-ops whose offsets are committed. So it waits here (:meth:`PendingRebuilds.wait`),
out of the table with its changelog records kept, and the processor holds its later events
behind it (:class:`~kestream.runtime.held_events.HeldEvents`: in order, the committed offset of
their partition below the first of them). The processor's next cycle rebuilds it as a recovery
does, before it steps any record (:meth:`PendingRebuilds.rebuild`); a rebuild that fails again
stops the processor loudly (:class:`RebuildFailed`), and the partition's next owner recovers
the execution from the changelog and replays the events held. One whose records the rebuild
reads but cannot rebuild from is left out, as a recovery leaves it out.

Entries leave with their partition (:meth:`PendingRebuilds.forget`, as the processor lets go
of the partition's executions), as held events do: another member then owns the execution. A
partition with one is not parked (:meth:`PartitionRecovery.release`): its parked state would
lack the execution.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from kestream.runtime.changelog_restorer import RecoveryFailed, RecoveryStopped
from kestream.runtime.executor_outbox import Outboxes
from kestream.runtime.partition_recovery import PartitionRecovery
from kestream.storage.offload import StorageUnavailable

__all__ = ["PendingRebuilds", "RebuildFailed"]

log = logging.getLogger("kestream.executor")


class RebuildFailed(RuntimeError):
    """An execution rolled back could not be rebuilt from its changelog records: the processor
    stops, so that a recovery from the changelog takes it back."""


class PendingRebuilds:
    """The executions waiting for their rebuild, each with why its roll-back could not rebuild
    it (see the module docstring). ``recovery`` holds the processor's table, its changelog
    records and the restorer that rebuilds from them."""

    def __init__(self, recovery: PartitionRecovery) -> None:
        self.recovery = recovery
        self._reasons: dict[str, str] = {}
        #: Per execution, the task runs whose partial update (of its steps in the cycle before
        #: the failed one) could not be built while it was out of the table.
        self._changed: dict[str, dict[str, None]] = {}

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._reasons

    def __len__(self) -> int:
        return len(self._reasons)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._reasons))

    def wait(self, execution_id: str, why: str) -> None:
        """The execution's roll-back could not rebuild it (``why``): out of the table, its
        changelog records and its partition kept, until :meth:`rebuild`. Never dropped: its
        changelog holds it."""
        log.error("execution %s cannot be rolled back now (%s); its events wait for its rebuild",
                  execution_id, why)  # fmt: skip
        self.recovery.states.pop(execution_id, None)
        self._reasons[execution_id] = why

    def defer_update(self, execution_id: str, changed: Iterable[str]) -> None:
        """Keep the task runs of a partial update the writer could not build (the execution
        was out of the table): :meth:`rebuild` notes it again."""
        self._changed.setdefault(execution_id, {}).update(dict.fromkeys(changed))

    async def rebuild(self, out: Outboxes) -> list[str]:
        """Rebuild the executions waiting, as a recovery does: from their changelog records in
        memory, the stored plans they name read in threads and tried again on the recovery's
        backoff (:meth:`ChangelogRestorer.restore`). Back in the table, an execution gets the
        partial update it missed noted in ``out``; the processor then releases its events
        held. One that cannot be rebuilt raises :class:`RebuildFailed`, which stops the
        processor: its partition's next owner recovers it from the changelog and replays its
        events held, never committed. One whose records the rebuild cannot read (a bad
        record, its flow revision unknown) is left out, as a recovery leaves it out: stopping
        would end the same way, after recovering every partition. Returns those left out,
        for the processor to take out of the table (their events held are then stepped
        against no state, as after such a recovery)."""
        recovery = self.recovery
        left_out: list[str] = []
        for execution_id in self:
            recs = recovery.mirror.records_of(execution_id)
            why = self._reasons[execution_id]
            unreadable = False
            try:
                st = await recovery.restorer.restore(execution_id, recs) if recs else None
                unreadable = st is None and bool(recs)  # (logged by the restorer)
            except RecoveryStopped:
                return left_out  # the processor stops: the next owner replays the events held
            except (RecoveryFailed, StorageUnavailable) as exc:
                st, why = None, str(exc)
            if unreadable:
                log.error("execution %s cannot be rebuilt from its changelog records (%s); "
                          "left out, as a recovery leaves it out", execution_id, why)  # fmt: skip
                self.forget([execution_id])
                left_out.append(execution_id)
                continue
            if st is None or recs is None:
                log.error("execution %s cannot be rebuilt from its changelog records (%s); the "
                          "processor stops, and its partition's next owner recovers it",
                          execution_id, why)  # fmt: skip
                raise RebuildFailed(f"execution {execution_id} cannot be rebuilt from its "
                                    f"changelog records: {why}")  # fmt: skip
            partition = recovery.partition_of[execution_id]
            recovery.install(partition, st, recs)
            del self._reasons[execution_id]
            changed = self._changed.pop(execution_id, None)
            if changed:
                out.of(partition).partial_update(execution_id, list(changed))
            log.warning("execution %s rebuilt from its changelog records; its events held "
                        "follow", execution_id)  # fmt: skip
        return left_out

    def forget(self, execution_ids: Iterable[str]) -> None:
        """The executions left the table for good (their partition went: their rebuild is its
        next owner's recovery)."""
        for execution_id in execution_ids:
            self._reasons.pop(execution_id, None)
            self._changed.pop(execution_id, None)
