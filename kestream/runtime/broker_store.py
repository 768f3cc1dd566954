"""The embedded broker's durability: kestream's topics mirrored into ``KESTREAM_DATA_DIR``.

The packaged Tansu keeps everything in memory (its only other engine, ``s3://``, needs an S3
endpoint with correct conditional writes, which nothing installable from PyPI provides). So
``kestream standalone`` keeps the state itself, below the roles, at the level of the broker:

* **Mirror.** While the broker runs, a consumer in the supervisor's process reads every
  partition of kestream's topics and the worker groups' jobs topics (not the members topic,
  whose records describe processes that will not exist after a restart) and appends each
  record, with its offset, timestamp, key, value and headers, to that partition's file
  (:mod:`.broker_log`).
* **Offsets.** About once a second it also records the consumer groups' committed offsets, but
  only as a *consistent* snapshot: offsets read at time T are kept once the mirror holds every
  record the broker had at a fetch made after T. The roles write their output before they commit
  the input that caused it, so no snapshot points past an effect the files lack.
* **Restore.** When standalone starts a fresh (empty) broker on a data dir that has files, it
  creates the topics with their partition counts, produces every record again, in order, and
  checks that each lands at its recorded offset (a fresh Tansu partition numbers records from 0,
  one by one); then it commits the snapshot's offsets for each group. Only then do roles start:
  they, the changelog restore and the index see the same world, at the same offsets, as before.

What is lost on a kill: records the mirror had not written yet (it trails the broker by one
fetch, milliseconds), and offsets committed after the last snapshot. Both mean work done again:
delivery is at-least-once and effects are idempotent, as after any role crash. The one record a
kill must not lose, because a caller was told it exists, is an execution the API created: the
API answers only once :meth:`BrokerStore.mirrored` says the file holds it
(:mod:`.mirror_ack`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaClient, AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.structs import OffsetAndMetadata

from kestream.runtime.aio import cancel_and_wait
from kestream.runtime.broker_log import PartitionLog, StoredRecord
from kestream.runtime.fetch_pacing import look, wake
from kestream.runtime.kafka import make_consumer, make_producer
from kestream.runtime.kafka_connection import client_options, make_client
from kestream.runtime.topics import Topics
from kestream.settings import Settings

log = logging.getLogger("kestream.broker_store")

#: The consumer groups of kestream's roles (under ``KESTREAM_TOPIC_PREFIX``) besides the worker
#: groups (``worker``, ``worker-KEY``), whose offsets are kept. Tansu cannot list groups, so a new
#: group must be named here; a unit test checks the roles' sources for ``group_id`` names.
CONSUMER_GROUPS = ("executor", "scheduler", "scheduler-commands")
#: How often the committed offsets are snapshot, and the topic list refreshed.
SNAPSHOT_EVERY_S = 1.0
#: While the mirror fetches nothing and the offsets stay as they were, the gap between snapshots
#: doubles up to this: an idle standalone's broker otherwise answers every group's OffsetFetch
#: every second (about a tenth of a core). Any record fetched brings back SNAPSHOT_EVERY_S.
SNAPSHOT_IDLE_MAX_S = 30.0
#: How long the mirror's Fetch waits on Tansu, which answers it only then (no wake-up on new
#: data): the mirror's lag behind the broker, so what a kill -9 of everything can lose. Tansu's
#: 10 ms (the roles' value) cost the mirror 5.8 % of a core when idle, 50 ms 2.0 %.
MIRROR_FETCH_WAIT_MS = 50
#: How often the topic list is read again (a worker group's jobs topic is made when first
#: used)...
TOPICS_EVERY_S = 2.0
#: ...and how far that gap doubles while the mirror fetches nothing: a new topic is made for
#: records to come, which follow records of kestream's other topics (the execution that sends
#: a job to it), and those bring the gap back to :data:`TOPICS_EVERY_S`. Idle, the list was
#: read every 2 s, a Metadata request of every topic each time.
TOPICS_IDLE_MAX_S = 30.0
#: How long one read of the mirror waits when nothing is due: records end it at once (a ring
#: wakes the paced consumer), a stop wakes it too, and each empty return is a turn of the loop
#: for nothing (the 250 ms it waited were four wake-ups a second of an idle supervisor).
FOLLOW_WAIT_IDLE_MS = 5_000
#: ...and while a snapshot waits for the files or a stop for its last snapshot.
FOLLOW_WAIT_BUSY_MS = 50
_OFFSETS_TIMEOUT_S = 5.0
_SNAPSHOT_LATE_S = 30.0  # a snapshot pending this long is said in the log (once)
_SEND_WINDOW = 2000  # records produced before their acks are checked, during a restore


class _SnapshotPace:
    """The gap between offset snapshots: doubled (up to :data:`SNAPSHOT_IDLE_MAX_S`) after each
    one written while nothing was fetched since the last and the offsets did not move, back to
    :data:`SNAPSHOT_EVERY_S` as soon as a record is fetched or an offset moves."""

    def __init__(self) -> None:
        self.gap = SNAPSHOT_EVERY_S
        self._fetched = False
        self._previous: dict[str, dict[TopicPartition, int]] | None = None

    def after_fetch(self, records: bool, next_snapshot: float) -> float:
        """When the next snapshot is due after a fetch: sooner if it brought records while the
        gap had grown (traffic again: snapshot as often as ever)."""
        if not records:
            return next_snapshot
        self._fetched = True
        if self.gap > SNAPSHOT_EVERY_S:
            self.gap = SNAPSHOT_EVERY_S
            return min(next_snapshot, time.monotonic() + SNAPSHOT_EVERY_S)
        return next_snapshot

    def settled(self, offsets: dict[str, dict[TopicPartition, int]]) -> float:
        """A snapshot of ``offsets`` was written: the wait before the next one."""
        if self._fetched or offsets != self._previous:
            self.gap = SNAPSHOT_EVERY_S
        else:
            self.gap = min(self.gap * 2, SNAPSHOT_IDLE_MAX_S)
        self._previous, self._fetched = offsets, False
        return self.gap


class _TopicsPace:
    """The gap between reads of the topic list: doubled (up to :data:`TOPICS_IDLE_MAX_S`)
    after each read while nothing was fetched since the last, back to :data:`TOPICS_EVERY_S`
    as soon as a record is fetched."""

    def __init__(self) -> None:
        self.gap = TOPICS_EVERY_S
        self._fetched = False

    def after_fetch(self, records: bool, next_read: float) -> float:
        """When the next read is due after a fetch: sooner if it brought records while the
        gap had grown."""
        if not records:
            return next_read
        self._fetched = True
        if self.gap > TOPICS_EVERY_S:
            self.gap = TOPICS_EVERY_S
            return min(next_read, time.monotonic() + TOPICS_EVERY_S)
        return next_read

    def read(self) -> float:
        """The topic list was read: the wait before the next read."""
        self.gap = TOPICS_EVERY_S if self._fetched else min(self.gap * 2, TOPICS_IDLE_MAX_S)
        self._fetched = False
        return self.gap


class MirrorDown(RuntimeError):
    """The mirror is not running, or stopped before it wrote a record someone waits for (the
    message says why)."""


class RestoreError(RuntimeError):
    """The data dir's records could not be written back as they were (the message says why)."""


@dataclass
class RestoreReport:
    topics: int = 0
    records: int = 0
    groups: int = 0
    seconds: float = 0.0


@dataclass
class _Snapshot:
    """Offsets read at ``taken_ms``, waiting for the mirror to hold what the broker had then."""

    taken_ms: int
    offsets: dict[str, dict[TopicPartition, int]]
    targets: dict[TopicPartition, int] = field(default_factory=dict)
    warned: bool = False


class BrokerStore:
    """The files of one data dir's broker state, and the mirror that fills them."""

    def __init__(self, settings: Settings, directory: Path) -> None:
        self.settings = settings
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._logs: dict[TopicPartition, PartitionLog] = {}
        self._task: asyncio.Task[None] | None = None
        #: The mirror's consumer while it runs (:meth:`stop_mirror` wakes it).
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self.snapshots = 0  # consistent offset snapshots written since start
        self._readers: dict[str, AIOKafkaConsumer] = {}
        topics = Topics.of(settings)
        self._kept = {name for name, _, _ in topics.specs(1)} - {topics.members}
        self._group_jobs = topics.group_tasks("")
        self._bootstrap = ""
        self._metadata: AIOKafkaClient
        #: :meth:`mirrored`'s waits: per partition, the offset each waits for.
        self._waiters: dict[TopicPartition, list[tuple[int, asyncio.Future[None]]]] = {}

    # -- files ---------------------------------------------------------------------------

    @property
    def _topics_file(self) -> Path:
        return self.directory / "topics.json"

    @property
    def _groups_file(self) -> Path:
        return self.directory / "groups.json"

    def topics(self) -> dict[str, int]:
        """Recorded topics and their partition counts."""
        with contextlib.suppress(FileNotFoundError):
            return dict(json.loads(self._topics_file.read_text()))
        return {}

    def group_offsets(self) -> dict[str, dict[TopicPartition, int]]:
        """The last consistent snapshot of committed offsets, per group."""
        try:
            raw = json.loads(self._groups_file.read_text())
        except FileNotFoundError:
            return {}
        return {
            group: {
                TopicPartition(topic, int(p)): offset
                for topic, parts in topics.items()
                for p, offset in parts.items()
            }
            for group, topics in raw.items()
        }

    def is_empty(self) -> bool:
        return not self.topics()

    def _log(self, tp: TopicPartition) -> PartitionLog:
        part = self._logs.get(tp)
        if part is None:
            part = PartitionLog(self.directory / "log" / tp.topic / f"{tp.partition}.log")
            self._logs[tp] = part
        return part

    def _write_json(self, path: Path, data: Any) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
        with os.fdopen(fd, "w") as out:
            json.dump(data, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)

    def _mirrored_topic(self, name: str) -> bool:
        """kestream's topics and the worker groups' jobs topics; not the members topic, nor the
        topics faust keeps for its own group assignment."""
        return name in self._kept or name.startswith(self._group_jobs)

    # -- restore -------------------------------------------------------------------------

    async def restore(self, bootstrap: str) -> RestoreReport:
        """Write the recorded topics, records and group offsets into the empty broker."""
        started = time.monotonic()
        report = RestoreReport()
        topics = self.topics()
        if not topics:
            return report
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, **client_options(self.settings))
        await admin.start()
        try:
            new = [NewTopic(n, num_partitions=c, replication_factor=1) for n, c in topics.items()]
            with contextlib.suppress(TopicAlreadyExistsError):
                await admin.create_topics(new)
        finally:
            await admin.close()
        report.topics = len(topics)
        producer = make_producer(self.settings, bootstrap, "tansu")
        await producer.start()
        try:
            for topic, count in sorted(topics.items()):
                for partition in range(count):
                    report.records += await self._restore_partition(
                        producer, TopicPartition(topic, partition)
                    )
        finally:
            await producer.stop()
        report.groups = await self._restore_offsets(bootstrap)
        report.seconds = time.monotonic() - started
        return report

    async def _restore_partition(self, producer: Any, tp: TopicPartition) -> int:
        part = self._log(tp)
        pending: list[tuple[int, asyncio.Future[Any]]] = []
        total = 0

        async def check() -> None:
            for recorded, ack in pending:
                landed = (await ack).offset
                if landed != recorded:
                    raise RestoreError(
                        f"{tp.topic}[{tp.partition}]: record {recorded} landed at offset "
                        f"{landed}; the data dir's records do not line up with a fresh broker. "
                        f"Move {self.directory} aside to start with an empty broker."
                    )
            pending.clear()

        for record in part.records():
            ack = await producer.send(
                tp.topic,
                value=record.value,
                key=record.key,
                partition=tp.partition,
                timestamp_ms=record.timestamp,
                headers=list(record.headers),
            )
            pending.append((record.offset, ack))
            total += 1
            if len(pending) >= _SEND_WINDOW:
                await check()
        await check()
        return total

    async def _restore_offsets(self, bootstrap: str) -> int:
        snapshot = {group: offsets for group, offsets in self.group_offsets().items() if offsets}
        for group, offsets in snapshot.items():
            # Never past what the files hold (they are what the broker now has).
            safe = {
                tp: OffsetAndMetadata(min(offset, self._log(tp).next_offset), "")
                for tp, offset in offsets.items()
            }
            consumer = AIOKafkaConsumer(
                bootstrap_servers=bootstrap,
                group_id=group,
                enable_auto_commit=False,
                **client_options(self.settings),
            )
            await consumer.start()
            try:
                consumer.assign(list(safe))
                await consumer.commit(safe)
            finally:
                await consumer.stop()
        return len(snapshot)

    # -- mirror --------------------------------------------------------------------------

    async def start_mirror(self, bootstrap: str) -> None:
        """Start following the broker from where the files end."""
        self._stopping.clear()
        self._bootstrap = bootstrap
        consumer = make_consumer(
            self.settings, bootstrap, "tansu", group_id=None, fetch_max_wait_ms=MIRROR_FETCH_WAIT_MS
        )
        await consumer.start()
        self._metadata = make_client(self.settings, bootstrap, timeout=10.0)
        await self._metadata.bootstrap()
        self._consumer = consumer
        self._task = asyncio.create_task(self._follow(consumer), name="broker-mirror")
        self._task.add_done_callback(self._mirror_ended)

    async def mirrored(self, tp: TopicPartition, offset: int) -> None:
        """Return once the file of ``tp`` holds the record at ``offset`` (written and flushed
        to the OS: a kill of any process, the broker's included, no longer loses it). Raises
        :class:`MirrorDown` at once when the mirror is not running, or as soon as it stops
        before writing the record. Unbounded: the caller bounds the wait."""
        task = self._task
        if task is None or task.done():
            error = self.mirror_error
            raise MirrorDown(
                "the broker mirror is not running"
                + (f" (it failed with {error!r})" if error is not None else "")
            )
        if self._log(tp).next_offset > offset:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(tp, []).append((offset, waiter))
        if self._consumer is not None:
            wake(self._consumer)  # fetch now, not at the consumer's next probe
        try:
            await waiter
        finally:
            waiting = self._waiters.get(tp)
            if waiting is not None:
                waiting[:] = [(o, w) for o, w in waiting if w is not waiter]
                if not waiting:
                    del self._waiters[tp]

    def _mirror_ended(self, task: asyncio.Task[None]) -> None:
        """Fail every :meth:`mirrored` wait: nothing writes their records any more."""
        error = self._ended_on_its_own(task)
        reason = (
            "the broker mirror was stopped"
            if error is None
            else f"the broker mirror failed with {error!r}"
        )
        for waiting in self._waiters.values():
            for _, waiter in waiting:
                if not waiter.done():
                    waiter.set_exception(MirrorDown(reason))

    @property
    def mirror_error(self) -> BaseException | None:
        """Why the mirror stopped on its own (None while it runs, or after :meth:`stop_mirror`)."""
        task = self._task
        if task is None or not task.done():
            return None
        return self._ended_on_its_own(task)

    def _ended_on_its_own(self, task: asyncio.Task[None]) -> BaseException | None:
        """Why the ended mirror ``task`` ended, if nobody stopped it; None if it was stopped.

        :meth:`stop_mirror` and :meth:`restart_mirror` forget the task before they end it, so a
        task that ended while still the mirror's was not stopped: a failure however it ended,
        cancelled too (a stray CancelledError out of aiokafka), or the mirror would stay down
        for good, every creation answered 503, with nothing to start it again."""
        if task is not self._task:
            return None
        if task.cancelled():
            return MirrorDown("the broker mirror's task was cancelled, not stopped")
        return task.exception() or MirrorDown("the broker mirror's task ended, not stopped")

    async def restart_mirror(self, bootstrap: str) -> None:
        """Start a mirror that failed again, from where the files end (the broker still has
        what it missed: Tansu deletes nothing)."""
        self._task = None
        self.close()
        await self.start_mirror(bootstrap)

    async def stop_mirror(self, *, catch_up: bool = True) -> None:
        """Stop following the broker: after catching up with it one last time (a final offset
        snapshot), or at once (``catch_up=False``: the broker is gone)."""
        if self._task is None:
            return
        self._stopping.set()
        if self._consumer is not None:
            wake(self._consumer)  # out of a long idle read, for the last snapshot
        task, self._task = self._task, None
        if not catch_up:
            task.cancel()
        try:
            await asyncio.wait_for(asyncio.shield(task), 10.0)
        except asyncio.CancelledError:
            if catch_up:
                raise
        except TimeoutError:
            log.warning("the broker mirror did not catch up within 10 s; stopping it")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        except (KafkaError, OSError) as exc:
            log.warning("the broker mirror stopped with %r", exc)
        self.close()

    def close(self) -> None:
        for part in self._logs.values():
            part.close()
        self._logs.clear()

    async def _follow(self, consumer: AIOKafkaConsumer) -> None:
        snapshot: _Snapshot | None = None
        #: The committed offsets being read, beside the fetches: an OffsetFetch that hangs (a
        #: group's coordinator being found again, up to 5 s a group) must not hold back the
        #: writes that the API's creations wait for (mirror_ack).
        reading: asyncio.Task[_Snapshot | None] | None = None
        next_topics = next_snapshot = 0.0
        assigned: set[TopicPartition] = set()
        final: _Snapshot | None = None
        pace = _SnapshotPace()
        topics_pace = _TopicsPace()
        try:
            while True:
                now = time.monotonic()
                if now >= next_topics:
                    assigned = await self._assign(consumer, assigned)
                    next_topics = now + topics_pace.read()
                stopping = self._stopping.is_set()
                if snapshot is None and reading is None and (now >= next_snapshot or stopping):
                    reading = asyncio.create_task(self._begin_snapshot(consumer, assigned))
                if reading is not None and reading.done():
                    snapshot, reading = reading.result(), None
                    if snapshot is None:
                        next_snapshot = now + SNAPSHOT_EVERY_S
                    elif stopping:
                        final = snapshot
                if not assigned:  # getmany waits for an assignment that ``assign`` never wakes
                    await asyncio.sleep(0.05)
                    next_topics = 0.0
                    continue
                due = min(next_topics, next_snapshot)
                busy = snapshot is not None or reading is not None or stopping
                batch = await consumer.getmany(timeout_ms=follow_wait_ms(due - now, busy))
                self._write(batch)
                next_snapshot = pace.after_fetch(bool(batch), next_snapshot)
                next_topics = topics_pace.after_fetch(bool(batch), next_topics)
                if snapshot is not None and self._settle(consumer, snapshot, assigned):
                    next_snapshot = time.monotonic() + pace.settled(snapshot.offsets)
                    snapshot = None
                    if final is not None:
                        return
                elif snapshot is not None:
                    self._warn_if_late(snapshot, assigned)
        finally:
            await cancel_and_wait(reading)
            await self._stop_clients(consumer)

    async def _stop_clients(self, consumer: AIOKafkaConsumer) -> None:
        """Stop the mirror's clients, each whatever the others do: an offsets reader left
        running would be found by the next mirror (after a broker restart) still asking the
        dead broker, holding every snapshot for its 5 s timeout.

        The stop of a consumer without a group can re-raise the CancelledError of its own
        fetch task (aiokafka, once its broker is gone): that one is not ours, and the other
        clients are stopped after it. A cancellation of the mirror itself still ends it."""
        if self._consumer is consumer:
            self._consumer = None
        readers, self._readers = list(self._readers.values()), {}
        cancelled: asyncio.CancelledError | None = None
        for client in (consumer, self._metadata, *readers):
            try:
                await (client.close() if client is self._metadata else client.stop())
            except asyncio.CancelledError as exc:
                cancelled = exc
            except Exception as exc:  # one client's failure must not leave the others running
                log.warning("the broker mirror's client %r stopped with %r", client, exc)
        task = asyncio.current_task()
        if cancelled is not None and task is not None and task.cancelling():
            raise cancelled

    async def _begin_snapshot(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> _Snapshot | None:
        """Read the committed offsets (None when they cannot be read now); the snapshot then
        waits for a fetch sent after it, of every partition: the consumer makes one at once,
        rather than at its next probe (seconds of short reads while idle), and rests again
        (a fetch of every partition is the dearest request the broker answers)."""
        try:
            snapshot = await self._take_snapshot(assigned)
        except (TimeoutError, KafkaError) as exc:
            log.warning("cannot read the committed offsets (%r); trying again", exc)
            return None
        look(consumer)
        return snapshot

    def _write(self, batch: dict[TopicPartition, list[Any]]) -> None:
        for tp, records in batch.items():
            part = self._log(tp)
            part.append(
                [
                    StoredRecord(r.offset, r.timestamp, r.key, r.value, tuple(r.headers or ()))
                    for r in records
                ]
            )
            for offset, waiter in self._waiters.get(tp, ()):
                if offset < part.next_offset and not waiter.done():
                    waiter.set_result(None)

    def _warn_if_late(self, snapshot: _Snapshot, assigned: set[TopicPartition]) -> None:
        """Say once when a snapshot has waited long for the files (a partition that is never
        fetched, or a mirror that cannot keep up): the kept offsets grow old meanwhile."""
        age_s = time.time() - snapshot.taken_ms / 1000
        if snapshot.warned or age_s <= _SNAPSHOT_LATE_S:
            return
        snapshot.warned = True
        behind = sorted(assigned - set(snapshot.targets)) or sorted(
            tp for tp, target in snapshot.targets.items() if self._log(tp).next_offset < target
        )
        log.warning(
            "the broker mirror has not caught up for %.0f s (%s): the offsets kept in %s are "
            "getting old",
            age_s,
            ", ".join(f"{tp.topic}[{tp.partition}]" for tp in behind[:3]),
            self._groups_file,
        )

    async def _assign(
        self, consumer: AIOKafkaConsumer, assigned: set[TopicPartition]
    ) -> set[TopicPartition]:
        # The whole cluster's metadata: the consumer's own covers only what it reads already.
        cluster = await self._metadata.fetch_all_metadata()
        names = sorted(t for t in cluster.topics() if self._mirrored_topic(t))
        counts = {t: len(cluster.partitions_for_topic(t) or ()) for t in names}
        wanted = {TopicPartition(t, p) for t, count in counts.items() for p in range(count)}
        if wanted == assigned:
            return assigned
        self._write_json(self._topics_file, counts)
        consumer.assign(sorted(wanted))
        for tp in wanted:
            consumer.seek(tp, self._log(tp).next_offset)
        return wanted

    async def _take_snapshot(self, assigned: set[TopicPartition]) -> _Snapshot:
        offsets: dict[str, dict[TopicPartition, int]] = {}
        for group in self._groups({tp.topic for tp in assigned}):
            committed = await self._committed(group, assigned)
            offsets[group] = {
                tp: meta.offset
                for tp, meta in committed.items()
                if meta.offset >= 0 and self._mirrored_topic(tp.topic)
            }
        # Once every group's offsets are in: a commit read late in the loop may point past
        # records produced after the loop began, which only a fetch made after it surely holds.
        return _Snapshot(int(time.time() * 1000), offsets)

    async def _committed(
        self, group: str, partitions: set[TopicPartition]
    ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The group's committed offsets, in one OffsetFetch through a consumer of that group
        that never joins it (Tansu cannot answer the admin client's request)."""
        consumer = self._readers.get(group)
        if consumer is None:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                group_id=group,
                enable_auto_commit=False,
                **client_options(self.settings),
            )
            await consumer.start()
            self._readers[group] = consumer
        fetched: dict[TopicPartition, OffsetAndMetadata] = await asyncio.wait_for(
            consumer._coordinator.fetch_committed_offsets(partitions), _OFFSETS_TIMEOUT_S
        )
        return fetched

    def _groups(self, topics: set[str]) -> list[str]:
        """kestream's consumer groups, by their names (Tansu cannot list groups):
        :data:`CONSUMER_GROUPS`, and a worker group per jobs topic."""
        jobs = self.settings.topic("worker-tasks")
        workers = [
            self.settings.topic("worker" + t.removeprefix(jobs))
            for t in topics
            if t == jobs or t.startswith(jobs + "-")
        ]
        return sorted({*(self.settings.topic(g) for g in CONSUMER_GROUPS), *workers})

    def _settle(
        self, consumer: AIOKafkaConsumer, snapshot: _Snapshot, assigned: set[TopicPartition]
    ) -> bool:
        """Write the snapshot once the files hold all the broker had when it was taken."""
        for tp in assigned:
            if tp not in snapshot.targets:
                polled = consumer.last_poll_timestamp(tp)
                high = consumer.highwater(tp)
                if polled is None or polled <= snapshot.taken_ms or high is None:
                    return False
                snapshot.targets[tp] = high
            if self._log(tp).next_offset < snapshot.targets[tp]:
                return False
        for part in self._logs.values():
            part.sync()
        data = {
            group: _by_topic({tp: min(o, self._log(tp).next_offset) for tp, o in offsets.items()})
            for group, offsets in snapshot.offsets.items()
        }
        self._write_json(self._groups_file, data)
        self.snapshots += 1
        log.debug("offset snapshot %d of %d groups written", self.snapshots, len(data))
        return True


def follow_wait_ms(due_in_s: float, busy: bool) -> int:
    """How long the mirror's next read may wait (ms): until the next metadata or snapshot
    check is due, within :data:`FOLLOW_WAIT_BUSY_MS` and :data:`FOLLOW_WAIT_IDLE_MS`."""
    if busy:
        return FOLLOW_WAIT_BUSY_MS
    return min(FOLLOW_WAIT_IDLE_MS, max(FOLLOW_WAIT_BUSY_MS, int(due_in_s * 1000)))


def _by_topic(offsets: dict[TopicPartition, int]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for tp, offset in sorted(offsets.items()):
        out.setdefault(tp.topic, {})[str(tp.partition)] = offset
    return out
