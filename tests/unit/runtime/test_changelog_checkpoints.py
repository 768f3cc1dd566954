"""Local changelog checkpoints: a recovery from a checkpoint and the changelog's tail gives what
a read of the whole changelog gives, and a checkpoint that cannot be trusted is never used.

No broker: the changelog is a list of records, the recovery's broker read answers from it
(:meth:`ChangelogRestorer._read_with`, the one seam), and the follower's read too."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from kestream.executor import codec
from kestream.executor.snapshot import execution_model
from kestream.runtime import changelog_checkpoints as checkpoints
from kestream.runtime.changelog_checkpoints import (
    Checkpoint,
    CheckpointFollower,
    CheckpointStore,
    RawFold,
    checkpoint_follower,
    checkpoint_scope,
    decode,
    encode,
    fingerprint,
)
from kestream.runtime.changelog_fold import PartitionRead, decode_record
from kestream.runtime.changelog_restorer import ChangelogRestorer, RecordSink, Recovered
from kestream.runtime.context import BrokerContext
from kestream.runtime.topics import Topics
from kestream.settings import Settings
from tests.unit.runtime.test_torn_changelog import _processor, _run

TOPIC = "kestream-executor-state-changelog"
#: A record as the changelog list holds it: key, value bytes (None: a tombstone).
Log = list[tuple[bytes | None, bytes | None]]


@pytest.fixture(autouse=True)
def _no_admission_slots(monkeypatch: pytest.MonkeyPatch) -> None:
    """The killed runs' next owners read no flow-concurrency slots (no broker)."""

    async def empty(self: ChangelogRestorer, topic: str, partitions: set[int]) -> Any:
        return {p: {} for p in partitions}

    monkeypatch.setattr(ChangelogRestorer, "_read_table", empty)


def _rec(
    offset: int, key: bytes | None, value: bytes | None, partition: int = 0, timestamp: int = 0
) -> Any:
    return ConsumerRecord(TOPIC, partition, offset, timestamp, 0, key, value, None, 0, 0, [])


def _raw_fold(log: Log, upto: int, partition: int = 0) -> RawFold:
    """The follower's fold of the first ``upto`` records of ``partition``."""
    fold = RawFold()
    for offset, (key, value) in enumerate(log[:upto]):
        rec = _rec(offset, key, value, partition)
        fold.add(rec, decode_record(rec))
    return fold


def _json(value: bytes) -> bool:
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def _values(read: PartitionRead) -> Any:
    """A fold of bytes, decoded: what it holds, however its JSON was spelled."""

    def value(raw: Any) -> Any:  # bytes read, or JSON a checkpoint file gave
        return orjson.loads(raw) if isinstance(raw, bytes) else raw

    latest = {e: {k: value(v) for k, v in recs.items()} for e, recs in read.latest.items()}
    held = {e: [(k, value(v)) for k, v in tail] for e, tail in read.held.items()}
    return latest, held


def _checkpoint(log: Log, upto: int, written_at: float = 1e9) -> Checkpoint:
    """A checkpoint of the first ``upto`` records, through its file's bytes."""
    return decode(encode(TOPIC, 0, _raw_fold(log, upto), written_at), TOPIC, 0)


def _restorer(
    logs: Mapping[int, Log], log_start: int = 0, timestamp: int = 0
) -> tuple[ChangelogRestorer, list[int]]:
    """A restorer whose changelog partitions are ``logs``, their records before ``log_start``
    deleted (a read from before it starts there, as a consumer reset to the earliest offset
    does), each written at ``timestamp``; the second value lists the records each read gave."""
    registry = _processor().registry
    settings = Settings(broker="unused:9092")
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    restorer = ChangelogRestorer(ctx, registry, attempts=1)
    given: list[int] = []

    async def read_with(
        partitions: set[int], start: Mapping[int, int], keep: RecordSink
    ) -> dict[int, int]:
        for p in sorted(partitions):
            log = logs[p]
            for offset in range(max(start.get(p, 0), log_start), len(log)):
                key, value = log[offset]
                keep(_rec(offset, key, value, p, timestamp))
                given.append(p)
        return {p: len(logs[p]) for p in partitions}

    restorer._read_with = read_with  # type: ignore[method-assign]
    return restorer, given


def _recover_from(
    restorer: ChangelogRestorer, partitions: set[int], checkpoints: Mapping[int, Checkpoint]
) -> tuple[dict[int, Recovered], dict[int, int]]:
    """``restorer.recover_from`` run to its end, in a loop of its own (the restorer's stop
    event is made anew in it: the tests run one restorer in several loops)."""

    async def recover() -> tuple[dict[int, Recovered], dict[int, int]]:
        restorer.stopping = asyncio.Event()
        return await restorer.recover_from(partitions, checkpoints)

    return asyncio.run(recover())


def _state(found: Recovered) -> Any:
    """What a recovery gave back, comparable (states as their execution JSON)."""

    def strip(node: Any) -> Any:  # a running state's duration grows with the wall clock
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items() if k != "duration"}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    states = sorted(
        (st.id, strip(execution_model(st).model_dump(mode="json")), recs)
        for st, recs in found.states
    )
    return states, sorted(found.ended), found.left_out, found.repairs


# -- the fold ----------------------------------------------------------------------------


def _synthetic(rng: random.Random, length: int) -> Log:
    """Records of a few executions: steps of several records ending with their commit mark,
    steps cut short, tombstones, ended markers and their tombstones, unreadable records."""
    log: Log = []
    ids = [f"e{i}" for i in range(4)]
    while len(log) < length:
        e = rng.choice(ids)
        roll = rng.random()
        keys = [f"{e}/t{rng.randrange(3)}", f"{e}+p", e]
        step: Log = []
        for key in rng.sample(keys, rng.randrange(1, 4)):
            value = None if rng.random() < 0.25 else orjson.dumps({"k": key, "n": len(log)})
            step.append((key.encode(), value))
        if roll < 0.15:  # a torn step: no commit mark
            pass
        elif roll < 0.25:  # the end: the marker
            step.append((f"{e}!".encode(), orjson.dumps({"attempt": 1, "n": len(log)})))
        elif roll < 0.3:  # the marker pruned, or a restart's unmarking
            step = [(f"{e}!".encode(), None)]
        elif roll < 0.33:  # no processor wrote these
            step = [(None, b"{}"), (f"{e}#".encode(), b"not json"), (f"{e}#".encode(), b"null")]
        else:
            step.append((f"{e}#".encode(), orjson.dumps({"n": len(log)})))
        log.extend(step)
    return log


def _decoded_fold(log: Log) -> PartitionRead:
    read = PartitionRead()
    for offset, (key, value) in enumerate(log):
        read.add(_rec(offset, key, value))
    return read


@pytest.mark.parametrize("seed", range(12))
def test_a_fold_from_a_checkpoint_ends_where_the_whole_fold_ends(seed: int) -> None:
    rng = random.Random(seed)
    log = _synthetic(rng, 60)
    whole = _decoded_fold(log)
    for upto in range(1, len(log) + 1):
        read = _checkpoint(log, upto).decoded()
        for offset in range(upto, len(log)):
            read.add(_rec(offset, *log[offset]))
        assert read.latest == whole.latest, f"cut after {upto} records"
        assert list(read.latest) == list(whole.latest)  # the same order: the same rebuild
        assert read.torn == whole.torn
        assert read.repairs(read.latest) == whole.repairs(whole.latest)


def test_the_corpus_has_every_kind_of_record() -> None:
    logs = [_synthetic(random.Random(seed), 60) for seed in range(12)]
    folds = [_decoded_fold(log) for log in logs]
    assert any(f.torn for f in folds)
    # checkpoints holding records back that a later commit mark makes count
    held = [set(_raw_fold(log, n).read.held) for log in logs for n in range(len(log))]
    assert sum(1 for h in held if h) > 100
    assert any(k.endswith(b"!") and v is None for log in logs for k, v in log if k)
    assert any(
        codec.header_key(e, codec.ENDED) in recs for f in folds for e, recs in f.latest.items()
    )
    assert any(v is not None and not _json(v) for log in logs for _, v in log)
    assert any(v == b"null" for log in logs for _, v in log)  # JSON null: a tombstone


# -- recovery ----------------------------------------------------------------------------


def _real_changelogs() -> list[Log]:
    """Changelogs an executor wrote for a flow (Sleeps, a ForEach, a Log): a whole run, and
    runs killed in the middle of a step's records (a torn step, then its repairs)."""
    out: list[Log] = []
    for kill in (None, (1, 1), (3, 2), (5, 1)):
        _, _, changelog = _run(kill)
        out.append([(k.encode(), v) for k, v in changelog])
    return out


def test_recovery_from_any_checkpoint_gives_what_a_full_read_gives() -> None:
    for log in _real_changelogs():
        restorer, given = _restorer({0: log})
        full, ends = _recover_from(restorer, {0}, {})
        assert ends == {0: len(log)} and full[0].read_records == len(log)
        # ... and what the plain recovery gives
        plain, _ = asyncio.run(_plain(restorer, log))
        assert _state(plain[0]) == _state(full[0])
        for upto in range(1, len(log) + 1):
            given.clear()
            found, _ = _recover_from(restorer, {0}, {0: _checkpoint(log, upto)})
            assert _state(found[0]) == _state(full[0]), f"checkpoint after {upto} records"
            assert len(given) == len(log) - upto + 1  # its last record again, then the tail
            assert found[0].read_records == len(log) - upto
            assert found[0].fold is not None and found[0].fold.position == len(log)


async def _plain(restorer: ChangelogRestorer, log: Log) -> tuple[dict[int, Recovered], Any]:
    async def read(partitions: set[int], start: dict[int, int]) -> Any:
        return {0: _decoded_fold(log)}, {0: len(log)}

    restorer._read = read  # type: ignore[method-assign]
    return await restorer.recover({0})


def test_the_fold_recovery_hands_over_checkpoints_the_same_state() -> None:
    (log, *_) = _real_changelogs()
    restorer, _ = _restorer({0: log})
    full, _ = _recover_from(restorer, {0}, {})
    fold = full[0].fold
    assert fold is not None
    again = decode(encode(TOPIC, 0, fold, 1e9), TOPIC, 0)
    found, _ = _recover_from(restorer, {0}, {0: again})
    assert _state(found[0]) == _state(full[0]) and found[0].read_records == 0
    assert found[0].checkpoint_records == again.records() > 0


def test_a_checkpoint_of_another_log_is_refused_and_the_partition_read_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second, *_ = _real_changelogs()
    restorer, given = _restorer({0: second})
    full, _ = _recover_from(restorer, {0}, {})
    for upto in (1, len(first) // 2, len(first)):
        if upto > len(second):
            continue
        given.clear()
        cp = _checkpoint(first, upto)
        if first[upto - 1] == second[upto - 1]:
            continue  # the same record at that offset: not a different log there
        with caplog.at_level(logging.WARNING, "kestream.executor"):
            found, _ = _recover_from(restorer, {0}, {0: cp})
        assert _state(found[0]) == _state(full[0])
        assert found[0].read_records == len(second) and found[0].checkpoint_records == 0
        assert "do not match their changelog" in caplog.text


def test_a_checkpoint_past_the_end_of_the_log_is_refused() -> None:
    (log, *_) = _real_changelogs()
    short = log[: len(log) // 2]
    restorer, _ = _restorer({0: short})
    full, _ = _recover_from(restorer, {0}, {})
    found, _ = _recover_from(restorer, {0}, {0: _checkpoint(log, len(log))})
    assert _state(found[0]) == _state(full[0]) and found[0].read_records == len(short)


def test_a_checkpoint_from_before_the_log_start_is_refused() -> None:
    """Records deleted before the checkpoint's last one (a retention, a truncation): what lay
    between the checkpoint and the new start is gone, so the checkpoint cannot be gone on
    from; the partition is read from where it now starts, as a read from 0 would be."""
    (log, *_) = _real_changelogs()
    restorer, given = _restorer({0: log}, log_start=len(log) // 2)
    full, _ = _recover_from(restorer, {0}, {})
    given.clear()
    found, _ = _recover_from(restorer, {0}, {0: _checkpoint(log, len(log) // 3)})
    assert _state(found[0]) == _state(full[0]) and found[0].checkpoint_records == 0
    assert found[0].read_records == len(log) - len(log) // 2


def test_the_fingerprint_tells_where_and_when_a_record_was_written() -> None:
    """The same key and value are the same bytes each time a tombstone or a step is written
    again; where and when it was written tell the records apart."""
    rec = _rec(5, b"e1!", None)
    assert fingerprint(rec) == fingerprint(_rec(5, b"e1!", None))
    others = [
        _rec(5, b"e1!", None, timestamp=1),
        _rec(5, b"e1!", None, partition=1),
        dataclasses.replace(rec, topic="other-changelog"),
        dataclasses.replace(rec, timestamp_type=1),
        _rec(5, b"e1!", b"null"),
        _rec(5, b"e2!", None),
    ]
    assert len({fingerprint(r) for r in [rec, *others]}) == 1 + len(others)


def test_a_checkpoint_whose_last_record_was_written_again_the_same_is_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The log truncated below a checkpoint and written again with the same bytes (a replay
    of the same executions): only the records' times differ, and the checkpoint, which holds
    records the new log lost, is refused."""
    (log, *_) = _real_changelogs()
    restorer, _ = _restorer({0: log}, timestamp=1)
    full, _ = _recover_from(restorer, {0}, {})
    with caplog.at_level(logging.WARNING, "kestream.executor"):
        found, _ = _recover_from(restorer, {0}, {0: _checkpoint(log, len(log) - 2)})
    assert "do not match their changelog" in caplog.text
    assert found[0].checkpoint_records == 0 and found[0].read_records == len(log)
    assert _state(found[0]) == _state(full[0])
    assert found[0].fold is not None and not found[0].fold.from_file


def test_recovery_makes_its_folds_from_a_checkpoint_off_the_event_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A checkpoint's entries are parsed again and copied for each fold made from them: in a
    thread, not on the loop that carries every role's heartbeats."""
    (log, *_) = _real_changelogs()
    cp = _checkpoint(log, len(log) - 2)
    on: list[str] = []
    decoded, raw = Checkpoint.decoded, Checkpoint.raw

    def noting_decoded(self: Checkpoint) -> PartitionRead:
        on.append(threading.current_thread().name)
        return decoded(self)

    def noting_raw(self: Checkpoint) -> RawFold:
        on.append(threading.current_thread().name)
        return raw(self)

    monkeypatch.setattr(Checkpoint, "decoded", noting_decoded)
    monkeypatch.setattr(Checkpoint, "raw", noting_raw)
    restorer, _ = _restorer({0: log})
    found, _ = _recover_from(restorer, {0}, {0: cp})
    assert found[0].read_records == 2 and found[0].fold is not None and found[0].fold.from_file
    assert len(on) == 2 and threading.main_thread().name not in on, on


def test_partitions_with_and_without_checkpoints_recover_together() -> None:
    one, two, *_ = _real_changelogs()
    restorer, _ = _restorer({0: one, 1: two})
    full, _ = _recover_from(restorer, {0, 1}, {})
    cp = _checkpoint(one, len(one) - 3)
    found, ends = _recover_from(restorer, {0, 1}, {0: cp})
    assert ends == {0: len(one), 1: len(two)}
    assert _state(found[0]) == _state(full[0]) and _state(found[1]) == _state(full[1])
    assert (found[0].read_records, found[1].read_records) == (3, len(two))


# -- the files ---------------------------------------------------------------------------


def _store(tmp_path: Path, max_age_s: float = 3600) -> CheckpointStore:
    return CheckpointStore(tmp_path, TOPIC, max_age_s)


def test_a_checkpoint_is_written_atomically_and_read_back(tmp_path: Path) -> None:
    log = _real_changelogs()[1]
    store = _store(tmp_path)
    fold = _raw_fold(log, len(log))
    store.write(0, fold)
    store.write(0, fold)  # over the first
    assert [p.name for p in store.directory.iterdir()] == ["0.ckpt"]  # no temporary left
    cp = store.load(0)
    assert cp is not None and cp.last_offset == len(log) - 1
    assert _values(cp.raw().read) == _values(fold.read)
    assert cp.decoded().latest == _decoded_fold(log).latest
    assert store.load(1) is None  # none: nothing said


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "digest"),
        (lambda data: data[: len(data) // 2], "digest"),
        (lambda data: data[:10], "not a checkpoint"),
        (lambda data: b"PK\x03\x04" + data[4:], "not a checkpoint"),
        (lambda data: random.Random(1).randbytes(len(data)), "not a checkpoint"),
    ],
)
def test_a_corrupt_or_foreign_file_is_ignored_with_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, spoil: Any, reason: str
) -> None:
    store = _store(tmp_path)
    store.write(0, _raw_fold(_real_changelogs()[0], 10))
    store.path(0).write_bytes(spoil(store.path(0).read_bytes()))
    with caplog.at_level(logging.WARNING, "kestream.executor"):
        assert store.load(0) is None
    assert "ignoring the checkpoint" in caplog.text and reason in caplog.text


def test_a_checkpoint_of_another_topic_partition_or_version_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    fold = _raw_fold(_real_changelogs()[0], 10)
    store = _store(tmp_path)
    store.path(1).parent.mkdir(parents=True)
    store.path(1).write_bytes(encode(TOPIC, 0, fold, 1e12))  # partition 0's, under 1's name
    store.path(2).write_bytes(encode("other-changelog", 2, fold, 1e12))
    monkeypatch.setattr(checkpoints, "FORMAT_VERSION", 99)
    store.path(3).write_bytes(encode(TOPIC, 3, fold, 1e12))
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING, "kestream.executor"):
        assert [store.load(p, now=1e12) for p in (1, 2, 3)] == [None, None, None]
    assert f"not {TOPIC}[1]" in caplog.text and f"not {TOPIC}[2]" in caplog.text
    assert "version 99" in caplog.text


def test_a_checkpoint_older_than_the_max_age_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(tmp_path, max_age_s=3600)
    store.write(0, _raw_fold(_real_changelogs()[0], 10))
    written_at = decode(store.path(0).read_bytes(), TOPIC, 0).written_at
    assert store.load(0, now=written_at + 3599) is not None
    with caplog.at_level(logging.WARNING, "kestream.executor"):
        assert store.load(0, now=written_at + 3601) is None
    assert "MAX_AGE_H" in caplog.text


def test_a_checkpoint_written_in_the_future_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A clock set back makes an old file look young: one from the future is refused."""
    store = _store(tmp_path, max_age_s=3600)
    store.write(0, _raw_fold(_real_changelogs()[0], 10))
    written_at = decode(store.path(0).read_bytes(), TOPIC, 0).written_at
    assert store.load(0, now=written_at - 1) is not None  # within the slack
    with caplog.at_level(logging.WARNING, "kestream.executor"):
        assert store.load(0, now=written_at - checkpoints.CLOCK_SLACK_S - 1) is None
    assert "in the future" in caplog.text


def test_the_files_no_recovery_can_use_are_swept(tmp_path: Path) -> None:
    """Killed writes' temporary files, and files past the max age under any broker's folder
    (a ``kestream run`` leaves one per embedded broker), go at the follower's start; a young
    temporary file (another process's write under way) and usable files stay."""
    store = _store(tmp_path, max_age_s=3600)
    store.scope = "standalone"
    fold = _raw_fold(_real_changelogs()[0], 10)
    store.write(0, fold)
    stray, fresh = store.directory / "0.ckpt#123456", store.directory / "1.ckpt#654321"
    for path in (stray, fresh):
        path.write_bytes(b"half a checkpoint")
    now = stray.stat().st_mtime + checkpoints.STRAY_AFTER_S + 1
    os.utime(fresh, (now, now))  # a write under way in another process
    gone = CheckpointStore(tmp_path, TOPIC, 3600, scope="embedded-127.0.0.1_40001")
    kept = CheckpointStore(tmp_path, TOPIC, 3600, scope="embedded-127.0.0.1_40002")
    gone.write(0, fold)
    kept.write(0, fold)
    old = now - 3600 - checkpoints.CLOCK_SLACK_S - 1
    os.utime(gone.path(0), (old, old))
    assert store.sweep(now=now) == 2
    assert sorted(p.name for p in store.directory.iterdir()) == ["0.ckpt", fresh.name]
    assert store.load(0) is not None and kept.load(0) is not None
    assert sorted(p.name for p in store.root.iterdir()) == [kept.scope, "standalone"]


class _Metadata:
    """A consumer whose broker's Metadata names ``cluster_id``."""

    def __init__(self, cluster_id: str | None) -> None:
        self._client = self
        self.cluster_id = cluster_id

    async def force_metadata_update(self) -> bool:
        return True

    def get_random_node(self) -> int:
        return 1

    async def send(self, node: int, request: Any) -> Any:
        return self


@pytest.mark.parametrize(
    ("embedded", "cluster_id", "from_standalone", "durable", "scope"),
    [
        (False, "Xq3vN0kLTpaxVb4R0cpfRw", False, True, "Xq3vN0kLTpaxVb4R0cpfRw"),
        (False, "tansu_cluster", False, True, "tansu_cluster-broker.example_9092"),
        (False, None, False, True, "cluster-broker.example_9092"),
        (True, "kestream_embedded", False, True, "embedded-broker.example_9092"),
        (True, "kestream_embedded", True, True, "standalone"),
        (True, "kestream_embedded", True, False, "embedded-broker.example_9092"),
    ],
)
def test_checkpoints_are_kept_apart_by_the_broker_they_are_of(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    embedded: bool,
    cluster_id: str | None,
    from_standalone: bool,
    durable: bool,
    scope: str,
) -> None:
    """Two installations on one data dir and topic prefix (``kestream run`` or tests beside a
    standalone, two clusters) never read or write over each other's files; a durable
    standalone's broker, on a new port at each start, keeps its files."""
    settings = Settings(
        broker="broker.example:9092", data_dir=str(tmp_path), standalone_durable=durable
    )
    ctx = BrokerContext(
        settings, "broker.example:9092", "tansu", Topics.of(settings), embedded=embedded
    )
    monkeypatch.setattr(checkpoints, "broker_wait_s", lambda: 0.5 if from_standalone else None)
    assert asyncio.run(checkpoint_scope(ctx, _Metadata(cluster_id))) == scope
    follower = checkpoint_follower(ctx)
    assert follower is not None
    follower.store.scope = scope
    topic = ctx.topics.changelog
    assert follower.store.path(3) == tmp_path / "executor-checkpoints" / scope / topic / "3.ckpt"


def test_a_broker_whose_metadata_fails_names_the_files_by_its_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The executor starts all the same (a longer read at worst, never a failed start)."""

    class Failing(_Metadata):
        async def send(self, node: int, request: Any) -> Any:
            raise TimeoutError("no answer")

    settings = Settings(broker="broker.example:9092")
    ctx = BrokerContext(settings, "broker.example:9092", "kafka", Topics.of(settings))
    with caplog.at_level(logging.WARNING, "kestream.executor"):
        scope = asyncio.run(checkpoint_scope(ctx, Failing("ignored")))
    assert scope == "cluster-broker.example_9092" and "cluster id" in caplog.text


def test_checkpoints_are_off_at_zero_and_live_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(broker="unused:9092", data_dir=str(tmp_path))
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    follower = checkpoint_follower(ctx)
    assert follower is not None
    topic = ctx.topics.changelog
    assert follower.store.path(3) == tmp_path / "executor-checkpoints" / topic / "3.ckpt"
    off = settings.model_copy(update={"executor_checkpoint_every_s": 0})
    assert checkpoint_follower(BrokerContext(off, "unused:9092", "tansu", ctx.topics)) is None


# -- the follower ------------------------------------------------------------------------


class _Consumer:
    """What the follower asks of its consumer besides its reads: a pause after each."""

    def __init__(self) -> None:
        self.paused: list[TopicPartition] = []

    def pause(self, *tps: TopicPartition) -> None:
        self.paused = list(tps)


@dataclass
class _Broker:
    """The changelog a fake follower reads: each partition's records, the offset its log
    starts at (a read from before it starts there, as a consumer reset to the earliest offset
    does) and the time its records were written."""

    logs: dict[int, Log]
    starts: dict[int, int] = field(default_factory=dict)
    stamps: dict[int, int] = field(default_factory=dict)


def _follower(
    tmp_path: Path,
    logs: dict[int, Log] | _Broker,
    monkeypatch: pytest.MonkeyPatch,
    min_records: int,
) -> CheckpointFollower:
    """A follower whose changelog reads answer from ``logs`` (which the test may change)."""
    settings = Settings(broker="unused:9092", data_dir=str(tmp_path))
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    follower = CheckpointFollower(ctx, _store(tmp_path), every_s=1, min_records=min_records)
    broker = logs if isinstance(logs, _Broker) else _Broker(logs)

    async def read_partitions(
        consumer: Any, tps: list[TopicPartition], keep: RecordSink, *, start: Any, **_: Any
    ) -> dict[TopicPartition, int]:
        for tp in tps:
            p = tp.partition
            log, stamp = broker.logs[p], broker.stamps.get(p, 0)
            first = start[tp] if start[tp] < len(log) else len(log)  # at or past the end: none
            for offset in range(max(first, broker.starts.get(p, 0)), len(log)):
                keep(_rec(offset, *log[offset], p, stamp))
        return {tp: len(broker.logs[tp.partition]) for tp in tps}

    monkeypatch.setattr(checkpoints, "read_partitions", read_partitions)
    follower._consumer = _Consumer()  # read_partitions is the fake
    return follower


def test_the_follower_writes_a_checkpoint_once_enough_records_came_and_at_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _real_changelogs()[2]
    half = len(log) // 2
    logs = {0: log[:half]}
    follower = _follower(tmp_path, logs, monkeypatch, min_records=half)
    restorer, _ = _restorer({0: logs[0]})
    found, _ = _recover_from(restorer, {0}, {})
    assert found[0].fold is not None
    follower.follow(0, found[0].fold)
    found[0].fold.since = 0  # what recovery read is in no checkpoint yet, counted from here
    logs[0] = log[: half + 2]
    asyncio.run(follower.turn())
    assert follower.written == 0 and follower.store.load(0) is None  # 2 records: not yet
    assert follower._consumer.paused == [TopicPartition(follower.store.topic, 0)]  # type: ignore[union-attr]
    logs[0] = log
    asyncio.run(follower.turn())
    if len(log) - half >= half:
        assert follower.written == 1
    asyncio.run(follower.turn(final=True))
    cp = follower.store.load(0)
    assert cp is not None and cp.last_offset == len(log) - 1
    restorer, _ = _restorer({0: log})
    full, _ = _recover_from(restorer, {0}, {})
    from_cp, _ = _recover_from(restorer, {0}, {0: cp})
    assert _state(from_cp[0]) == _state(full[0]) and from_cp[0].read_records == 0
    written = follower.written
    asyncio.run(follower.turn(final=True))
    assert follower.written == written  # nothing new: nothing written


def test_a_parked_partition_is_followed_again_from_where_it_was_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = _real_changelogs()[0]
    logs = {0: log[:5], 1: log[:3]}
    follower = _follower(tmp_path, logs, monkeypatch, min_records=1)
    follower.follow(0, _raw_fold(logs[0], 5))
    follower.follow(1, _raw_fold(logs[1], 3))
    follower.leave({0}, now=100.0, park=True)
    follower.leave({1}, now=100.0, park=False)  # not parked: gone
    assert follower.following() == set()
    logs[0] = log  # another owner wrote meanwhile
    assert not follower.resume(0, now=100.0 + follower.park_max_s + 1)  # too late
    follower.follow(0, _raw_fold(logs[0], 5))
    follower.leave({0}, now=200.0, park=True)
    assert follower.resume(0, now=201.0) and not follower.resume(1, now=201.0)
    asyncio.run(follower.turn())
    cp = follower.store.load(0)
    assert cp is not None and cp.last_offset == len(log) - 1
    assert _values(cp.raw().read) == _values(_raw_fold(log, len(log)).read)


def _long_log(seed: int = 3) -> Log:
    return _synthetic(random.Random(seed), 60)


def _recreated(broker: _Broker) -> None:
    broker.logs[0] = _long_log(seed=4)[:40]  # another log, grown past the fold's end
    broker.stamps[0] = 1


def _written_again(broker: _Broker) -> None:
    broker.stamps[0] = 1  # the same bytes, written again at the same offsets


def _cut_short(broker: _Broker) -> None:
    broker.logs[0] = broker.logs[0][:5]  # truncated below the fold's last record


def _emptied(broker: _Broker) -> None:
    broker.logs[0] = []  # recreated, nothing written yet


def _started_past(broker: _Broker) -> None:
    broker.logs[0] = _long_log()[:30]
    broker.starts[0] = 25  # its records before 25 deleted: a read from 19 starts at 25


@pytest.mark.parametrize(
    "change", [_recreated, _written_again, _cut_short, _emptied, _started_past]
)
def test_the_follower_drops_its_fold_and_file_when_the_log_changes_under_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any
) -> None:
    """The record the fold took last is read again at each turn: where the log no longer
    holds it there, what follows is another log's, and folding it onto the fold (or a file
    written from that) would give the next recovery executions the log lost and lose those
    it holds. The fold and its file are dropped; the partition is read whole next time."""
    log = _long_log()
    broker = _Broker({0: log[:20]})
    follower = _follower(tmp_path, broker, monkeypatch, min_records=1)
    follower.follow(0, _raw_fold(broker.logs[0], 20))
    asyncio.run(follower.turn(final=True))
    assert follower.written == 1 and follower.store.path(0).exists()
    change(broker)
    broker.logs[0] = broker.logs[0] + [(b"late#", b"{}")] * 3  # and it grows on
    asyncio.run(follower.turn(final=True))
    assert follower.dropped == 1 and follower.following() == set()
    assert follower.written == 1 and not follower.store.path(0).exists()


def test_the_follower_goes_on_over_the_log_it_folded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same checks let a log that only grew through: its records are folded on."""
    log = _long_log()
    broker = _Broker({0: log[:20]}, stamps={0: 7})
    follower = _follower(tmp_path, broker, monkeypatch, min_records=1)
    follower.follow(0, RawFold())
    asyncio.run(follower.turn())  # an empty fold: from the start
    broker.logs[0] = log
    asyncio.run(follower.turn())
    cp = follower.store.load(0)
    assert follower.dropped == 0 and follower.following() == {0}
    assert cp is not None and cp.last_offset == len(log) - 1 and follower.written == 2
    assert _values(cp.raw().read) == _values(_raw_fold(log, len(log)).read)


def test_a_refused_checkpoint_file_is_removed_once_its_partition_is_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file the recovery refused (here: ahead of the log's end, as after a write-back of
    the embedded broker that trails it) goes, not left until enough records come to write
    it over: a log grown past it again by the same bytes would otherwise pass it. A file the
    recovery went on from stays."""
    (log, *_) = _real_changelogs()
    short = log[: len(log) // 2]
    follower = _follower(tmp_path, {0: short, 1: log}, monkeypatch, min_records=10**6)
    follower.store.write(0, _raw_fold(log, len(log)))
    follower.store.write(1, _raw_fold(log, len(log) - 3, partition=1))
    loaded = {p: cp for p in (0, 1) if (cp := follower.store.load(p)) is not None}
    restorer, _ = _restorer({0: short, 1: log})
    found, _ = _recover_from(restorer, {0, 1}, loaded)
    assert found[0].checkpoint_records == 0 and found[1].read_records == 3
    for partition in (0, 1):
        fold = found[partition].fold
        assert fold is not None
        follower.follow(partition, fold)
    asyncio.run(follower.turn())
    assert follower.written == 0 and follower.following() == {0, 1}
    assert not follower.store.path(0).exists() and follower.store.load(1) is not None


# -- the executor ------------------------------------------------------------------------


def test_an_executor_recovers_from_its_checkpoint_and_follows_what_it_owns(
    tmp_path: Path,
) -> None:
    """The processor's side: its recovery loads the checkpoint files and reads the tail only,
    counts both, hands each partition's fold to the follower, which parks it at a revocation
    and takes it back with the partition."""
    log = _real_changelogs()[1]
    service = _processor()
    settings = Settings(broker="unused:9092", data_dir=str(tmp_path))
    follower = checkpoint_follower(BrokerContext(settings, "unused:9092", "tansu", service.topics))
    assert follower is not None
    service.recovery.checkpoints = follower  # what start() sets up (its reads are not started here)
    follower.store.write(0, _raw_fold(log, len(log) - 2))
    service.recovery.restorer, given = _restorer({0: log})
    reference, _ = asyncio.run(_restorer({0: log})[0].recover_from({0}, {}))
    asyncio.run(service.assigned({0}))
    assert service.failure is None and service.owned == {0}
    assert len(given) == 3  # the checkpoint's last record again, then the 2 after it
    assert sorted(service.states) == sorted(st.id for st, _ in reference[0].states)
    registry = service.metrics.registry
    sample = "kestream_changelog_restored_records_total"
    assert registry.get_sample_value(sample, {"source": "changelog"}) == 2
    loaded = follower.store.load(0)
    assert loaded is not None
    assert registry.get_sample_value(sample, {"source": "checkpoint"}) == loaded.records()
    assert follower.following() == {0}
    asyncio.run(service.revoked({0}))
    assert follower.following() == set()
    asyncio.run(service.assigned({0}))  # back within the park time: the warm path
    assert follower.following() == {0} and len(given) == 3  # nothing read again
