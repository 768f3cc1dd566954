"""Events held back until the flow revision they name is known, or their execution is rebuilt.

An execution can be created for a flow revision this executor has not read yet (deployed a
moment ago, the flows table a fetch behind). Its events wait here, in order: later events of the
same execution queue behind the first, so they are never stepped ahead of it. A queue is
released once its flow is known, or, past ``KESTREAM_EXECUTOR_FLOW_WAIT_S``, its events that
still name an unknown flow go to the dead-letter topic.

The events of an execution waiting for its rebuild (its roll-back could not rebuild it:
:mod:`~kestream.runtime.pending_rebuilds`) are held here too, in order: their queue stays,
whatever its deadline, until the execution is back in the table (``keep`` of
:meth:`HeldEvents.release`).

Held events belong to the input partition they came from: the committed offset of that
partition stays below the first of them (a crash replays them), and when the partition is
revoked they leave with it, so nothing here acts on an execution another member now owns.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from kestream.executor import events as ev

__all__ = ["Held", "HeldEvents"]


@dataclass(slots=True)
class Held:
    """An event waiting for its flow revision to appear in the flows table."""

    partition: int
    #: Where the event was read: ``(topic, offset)``, None for one that did not come from a
    #: topic (a timer that fell due).
    source: tuple[str, int] | None
    event: ev.Event
    deadline: datetime
    reason: str


class HeldEvents:
    """Queues of held events, one per execution (see the module docstring)."""

    def __init__(self, wait: timedelta) -> None:
        self.wait = wait
        self._queues: dict[str, list[Held]] = {}

    def __contains__(self, execution_id: object) -> bool:
        return execution_id in self._queues

    def __len__(self) -> int:
        return len(self._queues)

    def __iter__(self) -> Iterator[str]:
        return iter(self._queues)

    def hold(
        self,
        partition: int,
        source: tuple[str, int] | None,
        event: ev.Event,
        reason: str,
        now: datetime,
    ) -> None:
        """Hold ``event``: the first of a new queue, or behind its execution's held events."""
        held = Held(partition, source, event, now + self.wait, reason)
        self._queues.setdefault(event.execution_id, []).append(held)

    def release(
        self,
        now: datetime,
        known: Callable[[ev.Event], bool],
        keep: Container[str] = frozenset(),
    ) -> list[list[Held]]:
        """Take out the queues whose first event's flow is ``known`` now, or whose wait is over
        (the caller steps what is known and dead-letters the rest), oldest hold first; the
        queues of the executions in ``keep`` (waiting for their rebuild) stay."""
        out: list[list[Held]] = []
        for execution_id, queue in list(self._queues.items()):
            if execution_id in keep:
                continue
            first = queue[0]
            if known(first.event) or now >= first.deadline:
                del self._queues[execution_id]
                out.append(queue)
        return out

    def leave(self, partitions: Iterable[int]) -> int:
        """Drop the queues of revoked ``partitions``; returns how many executions left."""
        gone = set(partitions)
        leaving = [e for e, queue in self._queues.items() if queue[0].partition in gone]
        for execution_id in leaving:
            del self._queues[execution_id]
        return len(leaving)

    def commit_bounds(self) -> dict[tuple[str, int], int]:
        """Per input ``(topic, partition)``, the lowest offset still held: its commit must stay
        at or below it, so a crash replays what was held."""
        bounds: dict[tuple[str, int], int] = {}
        for queue in self._queues.values():
            for item in queue:
                if item.source is not None:
                    topic, offset = item.source
                    where = (topic, item.partition)
                    bounds[where] = min(bounds.get(where, offset), offset)
        return bounds
