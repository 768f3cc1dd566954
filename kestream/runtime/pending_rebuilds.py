"""Executions whose roll-back could not rebuild them, waiting for their rebuild.

A step that raises is rolled back: its execution is rebuilt from the records the changelog holds
for it (:class:`~kestream.runtime.changelog_restorer.ChangelogMirror`), the stored plans those
records name taken from the state in memory. When that fails (a stored plan neither memory nor
the internal storage gives, a record the rebuild cannot read), the execution must not leave the
table for good: its changelog still holds it, and its later events, stepped against no state,
would be no-ops whose offsets are committed. So it waits here, out of the table with its
changelog records kept, and its later events are held behind it
(:class:`~kestream.runtime.held_events.HeldEvents`: in order, the committed offset of their
partition below the first of them). The processor's next cycle rebuilds it as a recovery
does, before it steps any record (:meth:`ExecutorService._rebuild_rolled_back`); a rebuild that
fails again stops the processor loudly (:class:`RebuildFailed`), and the partition's next owner
recovers the execution from the changelog and replays the events held.

Entries leave with their partition (the processor lets go of the partition's executions), as
held events do: another member then owns the execution.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["PendingRebuilds", "RebuildFailed"]


class RebuildFailed(RuntimeError):
    """An execution rolled back could not be rebuilt from its changelog records: the processor
    stops, so that a recovery from the changelog takes it back."""


class PendingRebuilds:
    """The executions waiting for their rebuild, each with why its roll-back could not rebuild
    it (see the module docstring)."""

    def __init__(self) -> None:
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

    def add(self, execution_id: str, reason: str) -> None:
        self._reasons[execution_id] = reason

    def reason(self, execution_id: str) -> str:
        return self._reasons[execution_id]

    def defer_update(self, execution_id: str, changed: Iterable[str]) -> None:
        """Keep the task runs of a partial update the writer could not build (the execution
        was out of the table): it is built once the execution is rebuilt."""
        self._changed.setdefault(execution_id, {}).update(dict.fromkeys(changed))

    def rebuilt(self, execution_id: str) -> list[str]:
        """The execution is back in the table: it waits no more. Returns the task runs of the
        partial update deferred (:meth:`defer_update`)."""
        self._reasons.pop(execution_id, None)
        return list(self._changed.pop(execution_id, {}))

    def forget(self, execution_ids: Iterable[str]) -> None:
        """The executions left the table for good (their partition went: their rebuild is its
        next owner's recovery)."""
        for execution_id in execution_ids:
            self._reasons.pop(execution_id, None)
            self._changed.pop(execution_id, None)
