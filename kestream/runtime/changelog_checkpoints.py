"""Local checkpoints of the executor's changelog partitions: a restart reads only their tail.

Without them, a processor that starts (after a kill -9 or a clean stop) reads every changelog
partition it is assigned from offset 0. Kafka Streams keeps a local state store and a
``.checkpoint`` file for the same reason; this is kestream's equivalent.

**What a checkpoint is.** Recovery folds a partition's records, in order, into the last
committed record of each key (:class:`~kestream.runtime.changelog_fold.PartitionRead`: what it
keeps, ``latest``, and the records it holds back until their step's commit mark, ``held``). A
checkpoint is that fold's state after some record ``n``, with the values as the broker stored
them (bytes), plus ``n``'s offset and a fingerprint of ``n`` (its topic, partition, timestamp,
key and value hashed: :func:`fingerprint`). A fold
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

**Why the follower reads its last record again.** A fold is a prefix of one log. The topic can
change under a live follower: deleted and created again (a memory-only broker restarted while
the executor reconnects, an admin's reset), truncated below what was read (an unclean leader
election), with its log start moved past the fold (its consumer then resets to the earliest
offset and would fold the log's start onto the old state). Going on from the old position
would fold another log's records onto the fold, and the file then written would carry a valid
fingerprint of the new log: the next recovery would bring back executions the log lost and
lose those it holds. So each turn starts one record early, at the fold's last offset, and
folds on only if that record is the one folded last (offset and fingerprint, as recovery
checks a file); when it is not, or the log now ends before it, the fold and the partition's
file are dropped, and the partition has no checkpoint until its next full recovery. A file a
recovery refused is removed too, once the partition is followed from a full read: left in
place, a log grown past it again by the same records could pass it later.

**Whose files.** ``KESTREAM_DATA_DIR`` and the topic prefix are often the same for processes
on different brokers (``kestream run``, tests and a standalone use the same defaults). The
files live under a folder named for the broker (:func:`checkpoint_scope`: a Kafka cluster's
id; an embedded broker's address, or ``standalone`` for the durable one whose records the
data dir holds), so one installation never reads or writes over another's. The fingerprint
would refuse a foreign file anyway; the folders keep each one's files usable.

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
- it is older than the changelog topic's ``delete.retention.ms`` (as the broker reports it at
  start) or ``KESTREAM_EXECUTOR_CHECKPOINT_MAX_AGE_H``, whichever is lower: compaction drops
  a tombstone ``delete.retention.ms`` after writing it, and a read from an older point would
  miss the deletion; or it was written more than a minute in the future (the clock was set
  back, so its age cannot be told);
- the record at its last offset is not the one it folded last: the topic was recreated (a
  memory-only embedded broker, a reset), truncated, or compacted that record away; the log
  ends before it; or its log now starts after it. Offsets alone cannot tell a recreated topic
  that has grown past the old end; the fingerprint can, and its timestamp tells a record from
  the same bytes written again at the same offset (the same executions replayed after a
  truncation, a tombstone of the same key).

When the follower starts it removes what no recovery can use, under every broker's folder:
temporary files that a kill left behind (a write before its rename), files past the max age
(each ``kestream run`` on the embedded broker leaves a folder), and the folders left empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.protocol.metadata import MetadataRequest
from aiokafka.structs import ConsumerRecord

from kestream.runtime.changelog_fold import PartitionRead, decode_record
from kestream.runtime.compacted import read_partitions
from kestream.runtime.context import BrokerContext
from kestream.runtime.embedded_broker import EMBEDDED_CLUSTER_ID
from kestream.runtime.kafka import make_consumer
from kestream.runtime.kafka_connection import client_options
from kestream.runtime.parked_partitions import PARK_MAX_S
from kestream.runtime.process import broker_wait_s
from kestream.runtime.tansu_compat import TANSU_DEFAULT_CLUSTER_ID
from kestream.storage.durable import durable_file

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointFollower",
    "CheckpointStore",
    "RawFold",
    "checkpoint_follower",
    "checkpoint_scope",
    "delete_retention_s",
    "fingerprint",
]

log = logging.getLogger("kestream.executor")

#: The first bytes of a checkpoint file, and the version of what follows.
MAGIC = b"KESTREAM-CHANGELOG-CHECKPOINT\n"
FORMAT_VERSION = 2  # 2: the fingerprint covers the record's topic, partition and timestamp
#: The folder under ``KESTREAM_DATA_DIR``; one folder per changelog topic inside.
FOLDER = "executor-checkpoints"
_DIGEST_BYTES = 32
_LEN = struct.Struct(">I")
_PART_LEN = struct.Struct(">i")  # -1: no key, or a tombstone
#: How long a stop waits for the last read and writes.
STOP_GRACE_S = 3.0
#: A checkpoint written further in the future than this is refused (the clock was set back).
CLOCK_SLACK_S = 60.0
#: A temporary file older than this is a killed write's (:meth:`CheckpointStore.sweep`).
STRAY_AFTER_S = 600.0
#: How long the follower's start waits for each thing it asks the broker.
BROKER_ASK_S = 10.0
DELETE_RETENTION_MS = "delete.retention.ms"


class CheckpointInvalid(ValueError):
    """A checkpoint file that must not be used (the reason is the message)."""


def fingerprint(rec: ConsumerRecord[Any, Any]) -> str:
    """A record's identity as a checkpoint remembers it: where it is (topic, partition), when
    it was written (its timestamp and the timestamp's type) and what it holds (key, value),
    hashed. Its timestamp is what tells a record apart from one of the same bytes written
    again at the same offset (a recreated topic, a replay of the same executions after a
    truncation: a tombstone of one key is the same bytes every time); the embedded broker's
    write-back keeps it, as it keeps the offsets (:mod:`~kestream.runtime.broker_store`)."""
    h = hashlib.blake2b(digest_size=16)
    where = orjson.dumps([rec.topic, rec.partition, rec.timestamp, rec.timestamp_type])
    for part in (where, rec.key, rec.value):
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
    #: Whether the fold started from a checkpoint file (:meth:`Checkpoint.raw`): its file is
    #: then a true prefix of it, and any other file of its partition is not.
    from_file: bool = False

    @property
    def position(self) -> int:
        """The next offset to read."""
        return self.last_offset + 1

    def is_last(self, rec: ConsumerRecord[Any, Any]) -> bool:
        """Whether ``rec`` is the record this fold folded last (its offset and fingerprint):
        what a read that goes on from the fold must find first, else the log it reads is no
        longer the one folded (recreated, truncated, compacted at that point)."""
        return rec.offset == self.last_offset and fingerprint(rec) == self.last_print

    def add(self, rec: ConsumerRecord[Any, Any], decoded: tuple[str, Any] | None) -> None:
        """Fold one record in, given its decoding (:func:`decode_record`): one no processor
        could have written (None: the recovery read skips it) moves the position only, as it
        moves the recovery read's; one whose JSON is ``null`` is a tombstone, as there."""
        self.last_offset = rec.offset
        self.last_print = fingerprint(rec)
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
        return RawFold(read, self.last_offset, self.last_print, from_file=True)


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
    """The checkpoint files of one changelog topic: ``<data dir>/executor-checkpoints/<scope>/
    <topic>/<partition>.ckpt``, shared by every processor of one installation that uses the
    data dir (whoever owns a partition writes it). ``scope`` names the broker the files are
    of (:func:`checkpoint_scope`; the follower sets it when it starts), so that processors on
    another broker with the same data dir and topic prefix (``kestream run``, tests, a
    standalone beside a cluster) never read or write over them."""

    def __init__(
        self,
        data_dir: Path,
        topic: str,
        max_age_s: float,
        *,
        scope: str | None = None,
        fsync: bool = True,
    ) -> None:
        self.root = data_dir / FOLDER
        self.topic = topic
        self.max_age_s = max_age_s
        self.scope = scope
        self.fsync = fsync

    @property
    def directory(self) -> Path:
        base = self.root if self.scope is None else self.root / self.scope
        return base / self.topic

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
            log.warning("ignoring the checkpoint %s: written %.0f s ago, more than the changelog's "
                        "delete.retention.ms or KESTREAM_EXECUTOR_CHECKPOINT_MAX_AGE_H allows",
                        path, age)  # fmt: skip
            return None
        if age < -CLOCK_SLACK_S:
            log.warning("ignoring the checkpoint %s: written %.0f s in the future (the clock "
                        "was set back; its age cannot be told)", path, -age)  # fmt: skip
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

    def delete(self, partition: int) -> None:
        """Remove the partition's file (one that no longer matches its log). Blocking."""
        try:
            self.path(partition).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot remove the checkpoint %s: %r", self.path(partition), exc)

    def sweep(self, now: float | None = None) -> int:
        """Remove, under the checkpoint folder of every broker (not only this store's): the
        temporary files that writes killed before their rename left (each as large as its
        partition's state; a crash loop would fill the disk), once older than
        :data:`STRAY_AFTER_S` (a younger one may be another process's write under way); the
        files older than the max age, which no recovery uses (those of brokers gone for
        good: each ``kestream run`` on the embedded broker leaves a folder); then the folders
        left empty. How many files. Blocking."""
        now = time.time() if now is None else now
        swept = 0
        emptied: set[Path] = set()
        for path in sorted(self.root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):  # gone meanwhile, or a folder written to
                age = now - path.stat().st_mtime
                if path.is_dir():
                    if (path in emptied or age > STRAY_AFTER_S) and not any(path.iterdir()):
                        path.rmdir()
                        emptied.add(path.parent)
                elif (path.suffix == ".ckpt" and age > self.max_age_s + CLOCK_SLACK_S) or (
                    ".ckpt#" in path.name and age > STRAY_AFTER_S
                ):
                    path.unlink()
                    emptied.add(path.parent)
                    swept += 1
        if swept:
            log.info("removed %d checkpoint files no recovery can use (killed writes' "
                     "temporary files, files past their max age) in %s",
                     swept, self.root)  # fmt: skip
        return swept


async def checkpoint_scope(ctx: BrokerContext, consumer: AIOKafkaConsumer) -> str:
    """The name of the broker a processor's checkpoints are of (:class:`CheckpointStore`).

    - A broker with a cluster id of its own (Kafka gives each cluster a random one): that id.
    - A broker whose cluster id many share (Tansu's default, none): that id and its address.
    - kestream's embedded broker: ``standalone`` under a durable ``kestream standalone``
      (this process got its broker from it, :func:`~kestream.runtime.process.broker_wait_s`),
      whose broker is written back from the data dir at each start on a new port: one
      installation per data dir. Any other (``kestream run``, tests, a memory-only
      standalone) holds nothing past its life: its address, which no other broker has while
      it lives.
    """
    if ctx.embedded:
        if broker_wait_s() is not None and ctx.settings.standalone_durable:
            return "standalone"
        return _safe_name(f"embedded-{ctx.bootstrap}")
    try:
        cluster_id = await _cluster_id(consumer)
    except Exception as exc:  # the broker's address names the files instead: a longer read
        log.warning("cannot read the broker's cluster id (%r); checkpoints are kept under "
                    "its address", exc)  # fmt: skip
        cluster_id = None
    if cluster_id in (None, "", TANSU_DEFAULT_CLUSTER_ID, EMBEDDED_CLUSTER_ID):
        return _safe_name(f"{cluster_id or 'cluster'}-{ctx.bootstrap}")
    return _safe_name(str(cluster_id))


async def _cluster_id(consumer: AIOKafkaConsumer) -> str | None:
    """The cluster id the broker's Metadata gives (None from a broker that gives none)."""
    client = consumer._client
    await client.force_metadata_update()
    node = client.get_random_node()
    if node is None:
        return None
    metadata = await asyncio.wait_for(client.send(node, MetadataRequest([])), BROKER_ASK_S)
    cluster_id = getattr(metadata, "cluster_id", None)
    return None if cluster_id is None else str(cluster_id)


def _safe_name(name: str) -> str:
    """``name`` as one folder name: characters outside ``[A-Za-z0-9._-]`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:200] or "_"


async def delete_retention_s(ctx: BrokerContext, topic: str) -> float | None:
    """The changelog ``topic``'s ``delete.retention.ms`` in seconds, as the broker reports it;
    None when it does not say (an error, a broker without DescribeConfigs: logged)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=ctx.bootstrap, **client_options(ctx.settings))
    resource = ConfigResource(ConfigResourceType.TOPIC, topic, {DELETE_RETENTION_MS: None})
    try:
        await asyncio.wait_for(admin.start(), BROKER_ASK_S)
        responses = await asyncio.wait_for(admin.describe_configs([resource]), BROKER_ASK_S)
    except Exception as exc:  # the setting stays in charge; say so
        log.info("cannot read %s of %s (%r): checkpoints are kept for "
                 "KESTREAM_EXECUTOR_CHECKPOINT_MAX_AGE_H",
                 DELETE_RETENTION_MS, topic, exc)  # fmt: skip
        return None
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
    for response in responses:
        for resource in response.resources:
            error_code, entries = resource[0], resource[4]
            if error_code:
                continue
            for entry in entries:
                if entry[0] == DELETE_RETENTION_MS and entry[1] is not None:
                    return int(entry[1]) / 1000
    return None


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
        #: Partitions whose file no fold followed came from: removed at the next turn.
        self._stale: set[int] = set()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._wake = asyncio.Event()
        #: Checkpoint files written, and folds dropped as their log changed under them
        #: (for tests and the logs).
        self.written = 0
        self.dropped = 0

    # -- what is followed ----------------------------------------------------------------

    def follow(self, partition: int, fold: RawFold) -> None:
        """Follow ``partition`` from ``fold`` (its recovery read's). A fold that did not start
        from the partition's file means that file was refused (of another log, ahead of the
        log's end, too old) or absent: it is removed at the next turn, not left to be taken
        for a true prefix once the log has grown past it again."""
        self._parked.pop(partition, None)
        self._following[partition] = fold
        if not fold.from_file:
            self._stale.add(partition)

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
        """Start reading; first name the broker the files are of (unless the store was given
        one: :func:`checkpoint_scope`), take the changelog's ``delete.retention.ms`` as the
        files' max age where it is lower than the setting, and remove what killed writes left."""
        ctx = self.ctx
        self._consumer = make_consumer(ctx.settings, ctx.bootstrap, ctx.kind, group_id=None)
        await self._consumer.start()
        if self.store.scope is None:
            self.store.scope = await checkpoint_scope(ctx, self._consumer)
        # Tansu neither compacts nor answers DescribeConfigs: only the setting applies there.
        retention = None if ctx.kind == "tansu" else await delete_retention_s(ctx, self.store.topic)
        if retention is not None and retention < self.store.max_age_s:
            self.store.max_age_s = retention
        await asyncio.to_thread(self.store.sweep)
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
        stale, self._stale = self._stale, set()
        for partition in sorted(stale):
            await asyncio.to_thread(self.store.delete, partition)
        folds = dict(self._following)
        if not folds:
            return
        topic = self.store.topic
        tps = [TopicPartition(topic, p) for p in sorted(folds)]
        # Each fold's last record again: the log must still hold it where it was folded.
        unchecked = {p for p, fold in folds.items() if fold.last_offset >= 0}
        start = {tp: folds[tp.partition].last_offset for tp in tps if tp.partition in unchecked}
        start.update({tp: 0 for tp in tps if tp.partition not in unchecked})
        broken: set[int] = set()

        def keep(rec: ConsumerRecord[Any, Any]) -> None:
            fold = folds[rec.partition]
            if rec.partition in unchecked:
                unchecked.discard(rec.partition)
                if not fold.is_last(rec):  # another record there, or a reset to the log start
                    broken.add(rec.partition)
            elif rec.partition not in broken:
                fold.add(rec, decode_record(rec))

        await read_partitions(self._consumer, tps, keep, start=start, max_records=10_000)
        # Nothing fetched until the next turn (whose assignment starts them afresh): the
        # consumer must not follow the changelog in the background between turns.
        self._consumer.pause(*tps)
        broken |= unchecked  # the log now ends before the fold's last record
        for partition in sorted(broken):
            await self._drop(partition, folds.pop(partition))
        for partition, fold in folds.items():
            due = fold.since >= self.min_records or (final and fold.since > 0)
            if due and fold.last_offset >= 0:
                await asyncio.to_thread(self.store.write, partition, fold)
                fold.since = 0
                self.written += 1

    async def _drop(self, partition: int, fold: RawFold) -> None:
        """Stop following a partition whose log no longer holds the fold's last record where
        it was folded, and remove its file: both describe a log that is gone. The partition
        gets a fold again at its next full recovery (a restart, or a rebalance that gives it
        back after the park time)."""
        log.warning("the changelog %s[%d] no longer holds the record at offset %d that its "
                    "checkpoint folded last (recreated, truncated or compacted there); its "
                    "checkpoint is dropped until the partition is next recovered",
                    self.store.topic, partition, fold.last_offset)  # fmt: skip
        if self._following.get(partition) is fold:
            del self._following[partition]
        await asyncio.to_thread(self.store.delete, partition)
        self.dropped += 1


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
