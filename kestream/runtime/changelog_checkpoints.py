"""Local checkpoints of the executor's changelog partitions: a restart reads only their tail.

Without them, a processor that starts (after a kill -9 or a clean stop) reads every changelog
partition it is assigned from offset 0. Kafka Streams keeps a local state store and a
``.checkpoint`` file for the same reason; this is kestream's equivalent.

**What a checkpoint is.** Recovery folds a partition's records, in order, into the last
committed record of each key (:class:`~kestream.runtime.changelog_fold.PartitionRead`: what it
keeps, ``latest``, and the records it holds back until their step's commit mark, ``held``). A
checkpoint is that fold's state after some record ``n``, with the values as the broker stored
them (bytes), plus ``n``'s offset and a fingerprint of ``n`` (its key and value hashed). A fold
is a function of the records read and nothing else, so a fold started from the checkpoint and
fed the records after ``n`` ends exactly where a fold of the whole partition ends: recovery from
a checkpoint gives the state a read from offset 0 gives, torn steps included (their held-back
records are in the checkpoint, and a commit mark after it applies them as a full read would).

**Where it comes from.** Not from the processor's memory, whose tables are ahead of or beside
the changelog at many points (records of the batch under way, rolled-back events, executions
left out at recovery): :class:`CheckpointFollower` reads the changelog back, as any consumer
of it, every ``KESTREAM_EXECUTOR_CHECKPOINT_EVERY_S``, and folds what it reads (started from
the fold the recovery read built, so nothing is read twice). What it folds is what the broker
holds, in the broker's order, whoever wrote it; under exactly-once it reads committed records
only, as recovery does. A partition's file is written again (in a thread, off the event loop)
once ``KESTREAM_EXECUTOR_CHECKPOINT_MIN_RECORDS`` more records were folded, and at a clean stop.

**Why a kill -9 is safe at any point.** Kafka Streams under exactly-once deletes the checkpoint
while it owns a partition because its store takes writes before their transaction commits: a
crash would leave a store ahead of the changelog. Here the checkpoint only ever holds records
the broker already returned to a reader, so it is never ahead of the log, and it is written
whole or not at all (a temporary file, fsync, rename, fsync of the directory,
:func:`~kestream.storage.durable.durable_file`). A kill leaves the previous checkpoint, an
older but equally true prefix: the tail read is longer, the state the same. What the processor
wrote after the checkpoint (at-least-once: even records of steps whose input was not
committed) is read back from the log, as a full read would; the replayed events are then
no-ops against it, as after any crash.

**When one is refused** (logged; the partition is read from its beginning instead):

- the file is not one (wrong magic, version, digest: a torn or foreign file), or it names
  another topic or partition;
- it is older than ``KESTREAM_EXECUTOR_CHECKPOINT_MAX_AGE_H``: compaction drops a tombstone
  ``delete.retention.ms`` after writing it, and a read from an older point would miss the
  deletion;
- the record at its last offset is not the one it folded last: the topic was recreated (a
  memory-only embedded broker, a reset), truncated, or compacted that record away; the log
  ends before it; or its log now starts after it. Offsets alone cannot tell a recreated topic
  that has grown past the old end; the fingerprint can.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.runtime.changelog_fold import PartitionRead, decode_record
from kestream.runtime.compacted import read_partitions
from kestream.runtime.context import BrokerContext
from kestream.runtime.kafka import make_consumer
from kestream.runtime.parked_partitions import PARK_MAX_S
from kestream.storage.durable import durable_file

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointFollower",
    "CheckpointStore",
    "RawFold",
    "checkpoint_follower",
    "fingerprint",
]

log = logging.getLogger("kestream.executor")

#: The first bytes of a checkpoint file, and the version of what follows.
MAGIC = b"KESTREAM-CHANGELOG-CHECKPOINT\n"
FORMAT_VERSION = 1
#: The folder under ``KESTREAM_DATA_DIR``; one folder per changelog topic inside.
FOLDER = "executor-checkpoints"
_DIGEST_BYTES = 32
_LEN = struct.Struct(">I")
_PART_LEN = struct.Struct(">i")  # -1: no key, or a tombstone
#: How long a stop waits for the last read and writes.
STOP_GRACE_S = 3.0


class CheckpointInvalid(ValueError):
    """A checkpoint file that must not be used (the reason is the message)."""


def fingerprint(key: bytes | None, value: bytes | None) -> str:
    """A record's identity as a checkpoint remembers it: its key and value, hashed."""
    h = hashlib.blake2b(digest_size=16)
    for part in (key, value):
        h.update(_PART_LEN.pack(-1 if part is None else len(part)))
        h.update(part or b"")
    return h.hexdigest()


@dataclass(slots=True)
class RawFold:
    """The follower's fold of one partition, and the last record folded. Its values are the
    records' bytes as the broker keeps them (or, for what a checkpoint file gave, their JSON
    as parsed from it: nothing but this fold ever holds those objects), so a checkpoint is
    written without encoding anything again."""

    read: PartitionRead = field(default_factory=PartitionRead)
    last_offset: int = -1
    last_print: str = ""
    #: Records folded since the last checkpoint written from this fold.
    since: int = 0

    @property
    def position(self) -> int:
        """The next offset to read."""
        return self.last_offset + 1

    def add(self, rec: ConsumerRecord[Any, Any], decoded: tuple[str, Any] | None) -> None:
        """Fold one record in, given its decoding (:func:`decode_record`): one no processor
        could have written (None: the recovery read skips it) moves the position only, as it
        moves the recovery read's; one whose JSON is ``null`` is a tombstone, as there."""
        self.last_offset = rec.offset
        self.last_print = fingerprint(rec.key, rec.value)
        self.since += 1
        if decoded is not None:
            key, value = decoded
            self.read.put(key, None if value is None else rec.value)

    def records(self) -> int:
        """Records the fold keeps (latest and held back)."""
        latest = sum(len(recs) for recs in self.read.latest.values())
        return latest + sum(len(tail) for tail in self.read.held.values())


@dataclass(slots=True)
class Checkpoint:
    """One partition's checkpoint as read from its file (:func:`decode`)."""

    partition: int
    last_offset: int
    last_print: str
    written_at: float
    #: The file's entries (JSON), parsed again for each fold made from them.
    entries: bytes
    #: The entries as :func:`decode` parsed them (validating them), for :meth:`decoded`.
    parsed: dict[str, Any]

    def records(self) -> int:
        latest, held = self.parsed["latest"], self.parsed["held"]
        return sum(len(r) for r in latest.values()) + sum(len(t) for t in held.values())

    def decoded(self) -> PartitionRead:
        """A fold of the decoded values, to go on from (the recovery read's). Its dicts are
        fresh at each call (a read retried folds into new ones); the values go to the one
        recovery that rebuilds from them."""
        latest = {e: dict(recs) for e, recs in self.parsed["latest"].items()}
        held = {e: [(k, v) for k, v in tail] for e, tail in self.parsed["held"].items()}
        return PartitionRead(latest, held=held)

    def raw(self) -> RawFold:
        """A fold for the follower, of values parsed again from the file: no object in it is
        shared with the recovery's fold, whose values the rebuilt states may hold."""
        parsed = orjson.loads(self.entries)
        held = {e: [(k, v) for k, v in tail] for e, tail in parsed["held"].items()}
        read = PartitionRead(parsed["latest"], held=held)
        return RawFold(read, self.last_offset, self.last_print)


def _embedded(value: Any) -> Any:
    """A fold's value as a checkpoint file holds it: bytes embedded as they are."""
    return orjson.Fragment(value) if isinstance(value, bytes) else value


def encode(topic: str, partition: int, fold: RawFold, written_at: float) -> bytes:
    """A checkpoint file's bytes: magic, header (JSON), the entries (JSON: ``latest``, by
    execution and key, and ``held``, by execution, in the fold's order, each value embedded
    as the broker stored it), digest of all before."""
    header = orjson.dumps(
        {
            "version": FORMAT_VERSION,
            "topic": topic,
            "partition": partition,
            "lastOffset": fold.last_offset,
            "lastPrint": fold.last_print,
            "writtenAt": written_at,
        }
    )
    latest = {
        execution_id: {key: _embedded(value) for key, value in recs.items()}
        for execution_id, recs in fold.read.latest.items()
    }
    held = {
        execution_id: [(key, _embedded(value)) for key, value in tail]
        for execution_id, tail in fold.read.held.items()
    }
    entries = orjson.dumps({"latest": latest, "held": held})
    body = b"".join((MAGIC, _LEN.pack(len(header)), header, entries))
    return body + hashlib.blake2b(body, digest_size=_DIGEST_BYTES).digest()


def decode(data: bytes, topic: str, partition: int) -> Checkpoint:
    """A checkpoint from its file's bytes; :class:`CheckpointInvalid` when they are not one of
    ``topic[partition]`` in this version. The entries are parsed in one call each time a
    fold is made from them (:meth:`Checkpoint.decoded`, :meth:`Checkpoint.raw`): in C, where
    going through them value by value in Python cost several times as much."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _LEN.size + _DIGEST_BYTES:
        raise CheckpointInvalid("not a checkpoint file")
    body, digest = data[:-_DIGEST_BYTES], data[-_DIGEST_BYTES:]
    if hashlib.blake2b(body, digest_size=_DIGEST_BYTES).digest() != digest:
        raise CheckpointInvalid("its digest does not match (a torn or altered file)")
    at = len(MAGIC)
    (size,) = _LEN.unpack_from(body, at)
    at += _LEN.size
    entries = body[at + size :]
    try:
        header = orjson.loads(body[at : at + size])
        parsed = orjson.loads(entries)
    except orjson.JSONDecodeError as exc:
        raise CheckpointInvalid(f"unreadable: {exc}") from None
    if not isinstance(header, dict) or header.get("version") != FORMAT_VERSION:
        version = header.get("version") if isinstance(header, dict) else None
        raise CheckpointInvalid(f"version {version!r}, this one reads {FORMAT_VERSION}")
    if header.get("topic") != topic or header.get("partition") != partition:
        raise CheckpointInvalid(
            f"it is of {header.get('topic')}[{header.get('partition')}], not {topic}[{partition}]"
        )
    if not _well_formed(parsed):
        raise CheckpointInvalid("malformed entries")
    return Checkpoint(
        partition, int(header["lastOffset"]), str(header["lastPrint"]),
        float(header["writtenAt"]), entries, parsed,
    )  # fmt: skip


def _well_formed(parsed: Any) -> bool:
    """Whether parsed entries have the shape :func:`encode` gives them (a latest value is
    never null: a tombstone deletes its key)."""
    if not isinstance(parsed, dict) or set(parsed) != {"latest", "held"}:
        return False
    latest, held = parsed["latest"], parsed["held"]
    if not isinstance(latest, dict) or not isinstance(held, dict):
        return False
    for recs in latest.values():
        if not isinstance(recs, dict) or None in recs.values():
            return False
    return all(
        isinstance(tail, list) and all(isinstance(e, list) and len(e) == 2 for e in tail)
        for tail in held.values()
    )


class CheckpointStore:
    """The checkpoint files of one changelog topic: ``<data dir>/executor-checkpoints/<topic>/
    <partition>.ckpt``, shared by every processor that uses the data dir (whoever owns a
    partition writes it)."""

    def __init__(self, data_dir: Path, topic: str, max_age_s: float, *, fsync: bool = True) -> None:
        self.directory = data_dir / FOLDER / topic
        self.topic = topic
        self.max_age_s = max_age_s
        self.fsync = fsync

    def path(self, partition: int) -> Path:
        return self.directory / f"{partition}.ckpt"

    def load(self, partition: int, now: float | None = None) -> Checkpoint | None:
        """The partition's checkpoint if there is one that may be used (see the module
        docstring); one that may not is logged and left, to be written over. Blocking."""
        path = self.path(partition)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ignoring the checkpoint %s: %r", path, exc)
            return None
        try:
            cp = decode(data, self.topic, partition)
        except (CheckpointInvalid, struct.error, UnicodeDecodeError, KeyError, ValueError) as exc:
            log.warning("ignoring the checkpoint %s: %s", path, exc)
            return None
        age = (time.time() if now is None else now) - cp.written_at
        if age > self.max_age_s:
            log.warning("ignoring the checkpoint %s: written %.0f s ago, more than "
                        "KESTREAM_EXECUTOR_CHECKPOINT_MAX_AGE_H allows", path, age)  # fmt: skip
            return None
        return cp

    def write(self, partition: int, fold: RawFold) -> int:
        """Write the partition's checkpoint from ``fold``, atomically; its size. Blocking: run
        it in a thread, while nothing folds into ``fold``. The rename alone is what a kill -9
        needs; the fsyncs keep the file across a power loss (without them a file cut short
        there fails its digest: a full read, never a wrong state)."""
        data = encode(self.topic, partition, fold, time.time())
        with durable_file(self.path(partition), fsync=self.fsync) as out:
            out.write(data)
        return len(data)


@dataclass(slots=True)
class _Parked:
    fold: RawFold
    at: float


class CheckpointFollower:
    """Follows the changelog partitions a processor owns and keeps their checkpoints (see the
    module docstring). A failure here is logged and tried again at the next turn: it only
    makes a later recovery read more, never stops the processor."""

    def __init__(
        self,
        ctx: BrokerContext,
        store: CheckpointStore,
        *,
        every_s: float,
        min_records: int,
        park_max_s: float = PARK_MAX_S,
    ) -> None:
        self.ctx = ctx
        self.store = store
        self.every_s = every_s
        self.min_records = min_records
        self.park_max_s = park_max_s
        self._following: dict[int, RawFold] = {}
        self._parked: dict[int, _Parked] = {}
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        #: Checkpoint files written (for tests and the logs).
        self.written = 0

    # -- what is followed ----------------------------------------------------------------

    def follow(self, partition: int, fold: RawFold) -> None:
        """Follow ``partition`` from ``fold`` (its recovery read's)."""
        self._parked.pop(partition, None)
        self._following[partition] = fold

    def resume(self, partition: int, now: float) -> bool:
        """Follow a partition taken back from its parked state again, from where its fold was
        left; false when it was not parked here or too long ago (it is not followed until
        its next full recovery)."""
        parked = self._parked.pop(partition, None)
        if parked is None or now - parked.at > self.park_max_s:
            return False
        self._following[partition] = parked.fold
        return True

    def leave(self, partitions: Iterable[int], now: float, *, park: bool) -> None:
        """Stop following ``partitions``; with ``park``, keep their folds for :meth:`resume`."""
        for partition in partitions:
            fold = self._following.pop(partition, None)
            if park and fold is not None:
                self._parked[partition] = _Parked(fold, now)
        for partition in [p for p, k in self._parked.items() if now - k.at > self.park_max_s]:
            del self._parked[partition]

    def following(self) -> set[int]:
        return set(self._following)

    async def load(self, partitions: Iterable[int]) -> dict[int, Checkpoint]:
        """The usable checkpoints of ``partitions``, read in a thread."""
        wanted = sorted(partitions)

        def read() -> dict[int, Checkpoint]:
            return {p: cp for p in wanted if (cp := self.store.load(p)) is not None}

        return await asyncio.to_thread(read)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        ctx = self.ctx
        self._consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run(), name="changelog-checkpoints")

    async def stop(self) -> None:
        """Read the partitions followed to their ends and write their checkpoints (a clean
        close), within :data:`STOP_GRACE_S`; then stop."""
        self._closing = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            await asyncio.wait({task}, timeout=STOP_GRACE_S)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._consumer is not None:
            await self._consumer.stop()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.every_s)
            final = self._closing
            try:
                await self.turn(final=final)
            except Exception as exc:  # the next turn tries again; recovery only reads more
                log.warning("changelog checkpoints: %r", exc)
            if final:
                return

    async def turn(self, *, final: bool = False) -> None:
        """Fold what the changelog got since the last turn; write the checkpoints due (all
        those with anything new when ``final``)."""
        assert self._consumer is not None, "the follower is not started"
        folds = dict(self._following)
        if not folds:
            return
        topic = self.store.topic
        tps = [TopicPartition(topic, p) for p in sorted(folds)]
        start = {tp: folds[tp.partition].position for tp in tps}

        def keep(rec: ConsumerRecord[Any, Any]) -> None:
            folds[rec.partition].add(rec, decode_record(rec))

        await read_partitions(self._consumer, tps, keep, start=start, max_records=10_000)
        # Nothing fetched until the next turn (whose assignment starts them afresh): the
        # consumer must not follow the changelog in the background between turns.
        self._consumer.pause(*tps)
        for partition, fold in folds.items():
            due = fold.since >= self.min_records or (final and fold.since > 0)
            if due and fold.last_offset >= 0:
                await asyncio.to_thread(self.store.write, partition, fold)
                fold.since = 0
                self.written += 1


def checkpoint_follower(ctx: BrokerContext) -> CheckpointFollower | None:
    """The follower the settings ask for (None: ``KESTREAM_EXECUTOR_CHECKPOINT_EVERY_S=0``)."""
    settings = ctx.settings
    if settings.executor_checkpoint_every_s <= 0:
        return None
    store = CheckpointStore(
        settings.data_path, ctx.topics.changelog, settings.executor_checkpoint_max_age_h * 3600
    )
    return CheckpointFollower(
        ctx,
        store,
        every_s=settings.executor_checkpoint_every_s,
        min_records=settings.executor_checkpoint_min_records,
    )
