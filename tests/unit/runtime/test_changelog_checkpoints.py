"""Local changelog checkpoints: a recovery from a checkpoint and the changelog's tail gives what
a read of the whole changelog gives, and a checkpoint that cannot be trusted is never used.

No broker: the changelog is a list of records, the recovery's broker read answers from it
(:meth:`ChangelogRestorer._read_with`, the one seam), and the follower's read too."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
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
    decode,
    encode,
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


def _rec(offset: int, key: bytes | None, value: bytes | None, partition: int = 0) -> Any:
    return ConsumerRecord(TOPIC, partition, offset, 0, 0, key, value, None, 0, 0, [])


def _raw_fold(log: Log, upto: int) -> RawFold:
    """The follower's fold of the first ``upto`` records."""
    fold = RawFold()
    for offset, (key, value) in enumerate(log[:upto]):
        rec = _rec(offset, key, value)
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


def _restorer(logs: Mapping[int, Log], log_start: int = 0) -> tuple[ChangelogRestorer, list[int]]:
    """A restorer whose changelog partitions are ``logs``, their records before ``log_start``
    deleted (a read from before it starts there, as a consumer reset to the earliest offset
    does); the second value lists the records each read gave."""
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
                keep(_rec(offset, key, value, p))
                given.append(p)
        return {p: len(logs[p]) for p in partitions}

    restorer._read_with = read_with  # type: ignore[method-assign]
    return restorer, given


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
        full, ends = asyncio.run(restorer.recover_from({0}, {}))
        assert ends == {0: len(log)} and full[0].read_records == len(log)
        # ... and what the plain recovery gives
        plain, _ = asyncio.run(_plain(restorer, log))
        assert _state(plain[0]) == _state(full[0])
        for upto in range(1, len(log) + 1):
            given.clear()
            found, _ = asyncio.run(restorer.recover_from({0}, {0: _checkpoint(log, upto)}))
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
    full, _ = asyncio.run(restorer.recover_from({0}, {}))
    fold = full[0].fold
    assert fold is not None
    again = decode(encode(TOPIC, 0, fold, 1e9), TOPIC, 0)
    found, _ = asyncio.run(restorer.recover_from({0}, {0: again}))
    assert _state(found[0]) == _state(full[0]) and found[0].read_records == 0
    assert found[0].checkpoint_records == again.records() > 0


def test_a_checkpoint_of_another_log_is_refused_and_the_partition_read_whole(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second, *_ = _real_changelogs()
    restorer, given = _restorer({0: second})
    full, _ = asyncio.run(restorer.recover_from({0}, {}))
    for upto in (1, len(first) // 2, len(first)):
        if upto > len(second):
            continue
        given.clear()
        cp = _checkpoint(first, upto)
        if first[upto - 1] == second[upto - 1]:
            continue  # the same record at that offset: not a different log there
        with caplog.at_level(logging.WARNING, "kestream.executor"):
            found, _ = asyncio.run(restorer.recover_from({0}, {0: cp}))
        assert _state(found[0]) == _state(full[0])
        assert found[0].read_records == len(second) and found[0].checkpoint_records == 0
        assert "do not match their changelog" in caplog.text


def test_a_checkpoint_past_the_end_of_the_log_is_refused() -> None:
    (log, *_) = _real_changelogs()
    short = log[: len(log) // 2]
    restorer, _ = _restorer({0: short})
    full, _ = asyncio.run(restorer.recover_from({0}, {}))
    found, _ = asyncio.run(restorer.recover_from({0}, {0: _checkpoint(log, len(log))}))
    assert _state(found[0]) == _state(full[0]) and found[0].read_records == len(short)


def test_a_checkpoint_from_before_the_log_start_is_refused() -> None:
    """Records deleted before the checkpoint's last one (a retention, a truncation): what lay
    between the checkpoint and the new start is gone, so the checkpoint cannot be gone on
    from; the partition is read from where it now starts, as a read from 0 would be."""
    (log, *_) = _real_changelogs()
    restorer, given = _restorer({0: log}, log_start=len(log) // 2)
    full, _ = asyncio.run(restorer.recover_from({0}, {}))
    given.clear()
    found, _ = asyncio.run(restorer.recover_from({0}, {0: _checkpoint(log, len(log) // 3)}))
    assert _state(found[0]) == _state(full[0]) and found[0].checkpoint_records == 0
    assert found[0].read_records == len(log) - len(log) // 2


def test_partitions_with_and_without_checkpoints_recover_together() -> None:
    one, two, *_ = _real_changelogs()
    restorer, _ = _restorer({0: one, 1: two})
    full, _ = asyncio.run(restorer.recover_from({0, 1}, {}))
    cp = _checkpoint(one, len(one) - 3)
    found, ends = asyncio.run(restorer.recover_from({0, 1}, {0: cp}))
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


def _follower(
    tmp_path: Path, logs: dict[int, Log], monkeypatch: pytest.MonkeyPatch, min_records: int
) -> CheckpointFollower:
    """A follower whose changelog reads answer from ``logs`` (which the test may extend)."""
    settings = Settings(broker="unused:9092", data_dir=str(tmp_path))
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    follower = CheckpointFollower(ctx, _store(tmp_path), every_s=1, min_records=min_records)

    async def read_partitions(
        consumer: Any, tps: list[TopicPartition], keep: RecordSink, *, start: Any, **_: Any
    ) -> dict[TopicPartition, int]:
        for tp in tps:
            for offset in range(start[tp], len(logs[tp.partition])):
                keep(_rec(offset, *logs[tp.partition][offset], tp.partition))
        return {tp: len(logs[tp.partition]) for tp in tps}

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
    found, _ = asyncio.run(restorer.recover_from({0}, {}))
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
    full, _ = asyncio.run(restorer.recover_from({0}, {}))
    from_cp, _ = asyncio.run(restorer.recover_from({0}, {0: cp}))
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
    service.checkpoints = follower  # what start() sets up (its reads are not started here)
    follower.store.write(0, _raw_fold(log, len(log) - 2))
    service.restorer, given = _restorer({0: log})
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
