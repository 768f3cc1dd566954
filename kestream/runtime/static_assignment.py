"""Partitions taken without a consumer group: the executors and the worker of ``kestream
standalone`` on its own embedded broker.

Elsewhere executors share their input partitions through the executor group, and workers their
jobs partitions through the worker group. On ``standalone``'s own embedded broker the groups
decide nothing that is not known before they are joined:

- the broker listens on loopback, on a port chosen at start, and its address is given only to
  the role processes standalone starts itself (on their stdin), as for the scheduler
  (:mod:`~kestream.runtime.lone_lease`);
- standalone starts a fixed set of them: ``KESTREAM_EXECUTOR_STREAM_THREADS`` executors (0:
  one per core), numbered from 0, and one worker; it starts a process again only after the
  previous one has exited (it reaped it), and the new one gets its predecessor's number.

So executor ``k`` of ``N`` takes the partitions ``p`` with ``p % N == k`` of every input topic
(:class:`Share`), the worker every partition of its jobs topic. Partition ``p`` of the
executions, worker-results and admissions topics and of their changelogs is one execution's
(all are keyed by execution id, with the same number of partitions), so one processor holds
all of them, as with the group's range assignor. The first join, which the embedded broker
holds for half a session (2 s), and a heartbeat a second per member are gone; a restarted
process no longer waits a session for its dead predecessor's member to be expelled, nor do the
others rebalance twice around it.

What the group gave besides an assignment, and why nothing of it is lost here:

- **Offsets** are still committed, and read at start, under the groups' names (aiokafka commits
  an assigned consumer's offsets outside any generation), so a restart reads on where its
  predecessor committed, and a later start with groups (``KESTREAM_STANDALONE_GROUPS``, or the
  same data on another broker) too.
- **Recovery** runs as at a group's assignment: the executor's
  :meth:`~kestream.runtime.executor_service.ExecutorService.assigned` (its checkpoints, its
  changelog) before its first ``getmany`` (aiokafka prefetches from ``assign()`` on: the
  records wait in its buffer); the worker's partitions are counted in the same way.
- **Fencing by generation** (the member fence, a commit refused with ``CommitFailedError``, a
  rebalance's revocation) guards against a member the group has moved on from while it still
  writes. That needs a second owner of its partitions, and there is none: the predecessor of a
  restarted process is dead (reaped) before it starts, and the other processes never take its
  share. So the fence is not armed (as for ``kestream run``, which owns every partition), and
  no commit can be refused for a generation.
- **Exactly-once** (Apache Kafka only) keeps the executor group: its transactions carry the
  group's offsets, and its fenced-partition handling asks the group what it still assigns.
  Standalone's own broker (Tansu) cannot run it, so there a share is always taken.
- **Static membership** is only a group's: nothing to keep across a restart here.
- **Moving the partitions of a hung member**: a group did it once the member's heartbeats or
  polls stopped. Here the supervisor kills a process that has published no live member record
  for a bound and starts it again (:class:`~kestream.runtime.supervision.HangWatch`, where
  the trade-off is).

Were a second process started by hand against that broker anyway (its address read off the
log), its partitions would have two owners: both would replay the same events against their
own state, and the records they write carry the ids every consumer downstream drops as repeats
(DESIGN.md section 3), as after a rebalance that overtook a batch.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kestream.runtime.process import EXECUTOR_SHARE_ENV, ONLY_WORKER_ENV

if TYPE_CHECKING:
    from aiokafka import AIOKafkaConsumer, TopicPartition

__all__ = ["Share", "executor_share", "only_worker", "partitions_of"]


@dataclass(frozen=True, slots=True)
class Share:
    """Executor ``index`` of ``count``: the partitions ``p`` with ``p % count == index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"executor {self.index} of {self.count} does not exist")

    def owns(self, partition: int) -> bool:
        return partition % self.count == self.index

    def encode(self) -> str:
        """The value of :data:`~kestream.runtime.process.EXECUTOR_SHARE_ENV`: ``index/count``."""
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Share:
        index, _, count = text.partition("/")
        return cls(int(index), int(count))


def executor_share(env: Mapping[str, str] = os.environ) -> Share | None:
    """The share standalone gave this executor process (None: it shares through the group)."""
    text = env.get(EXECUTOR_SHARE_ENV)
    return Share.parse(text) if text else None


def only_worker(env: Mapping[str, str] = os.environ) -> bool:
    """Is this worker the only one its broker will see (standalone's, on its own broker)?"""
    return env.get(ONLY_WORKER_ENV) == "1"


async def partitions_of(
    consumer: AIOKafkaConsumer, topics: Iterable[str], share: Share | None = None
) -> list[TopicPartition]:
    """The partitions of ``topics`` the broker lists (all, or ``share``'s), each topic's own:
    what the group's range assignor gives one member when the topics have the same count."""
    from kestream.runtime.compacted import topic_partitions

    found: list[TopicPartition] = []
    for topic in topics:
        found += [
            tp
            for tp in await topic_partitions(consumer, topic)
            if share is None or share.owns(tp.partition)
        ]
    return found
