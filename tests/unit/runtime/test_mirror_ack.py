"""The durable acknowledgement of standalone's API (kestream.runtime.mirror_ack): the mirror's
wait for a record (BrokerStore.mirrored) and the socket pair between the API and the supervisor.
The integration test (tests/integration/test_standalone_durable_ack.py) kills a real standalone."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition

from kestream.runtime import mirror_ack
from kestream.runtime.broker_store import BrokerStore, MirrorDown
from kestream.runtime.mirror_ack import (
    MIRROR_ACK_FD_ENV,
    MirrorAck,
    MirrorAckServer,
    NotDurable,
    inherited_fd,
)
from kestream.settings import Settings

TP = TopicPartition("kestream.executions", 3)


def _records(*offsets: int) -> list[Any]:
    return [
        SimpleNamespace(offset=o, timestamp=1, key=b"k", value=b"v", headers=()) for o in offsets
    ]


def _store(tmp_path: Path) -> BrokerStore:
    return BrokerStore(Settings(broker="127.0.0.1:1", topic_prefix="kestream."), tmp_path)


async def _running(store: BrokerStore) -> asyncio.Future[None]:
    """A stand-in for the mirror's task: it runs until the returned future is settled."""
    ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def follow() -> None:
        await ended

    store._task = asyncio.create_task(follow())
    store._task.add_done_callback(store._mirror_ended)
    return ended


async def test_a_wait_ends_when_the_file_holds_the_record_and_not_before(tmp_path: Path) -> None:
    store = _store(tmp_path)
    ended = await _running(store)
    store._write({TP: _records(0, 1)})
    await asyncio.wait_for(store.mirrored(TP, 1), 1)  # already on file: at once
    waiting = asyncio.create_task(store.mirrored(TP, 3))
    await asyncio.sleep(0)
    store._write({TP: _records(2)})
    await asyncio.sleep(0)
    assert not waiting.done()  # offset 3 is not written yet
    store._write({TP: _records(3)})
    await asyncio.wait_for(waiting, 1)
    assert [r.offset for r in store._log(TP).records()] == [0, 1, 2, 3]
    assert not store._waiters  # nothing left behind
    ended.set_result(None)
    assert store._task is not None
    await store._task


async def test_a_wait_fails_with_the_reason_when_the_mirror_fails_or_is_not_running(
    tmp_path: Path,
) -> None:
    store = _store(tmp_path)
    with pytest.raises(MirrorDown, match="not running"):
        await store.mirrored(TP, 0)
    ended = await _running(store)
    waiting = asyncio.create_task(store.mirrored(TP, 0))
    await asyncio.sleep(0)
    ended.set_exception(OSError("disk full"))
    with pytest.raises(MirrorDown, match="disk full"):
        await asyncio.wait_for(waiting, 1)
    with pytest.raises(MirrorDown, match=r"not running .*disk full"):
        await store.mirrored(TP, 0)  # a failed mirror answers at once, with its error


class _Store:
    """What the server asks: records below ``written`` are on file; at ``broken``, the mirror
    fails."""

    def __init__(self) -> None:
        self.written = 0
        self.moved = asyncio.Event()
        self.broken: str | None = None

    async def mirrored(self, tp: TopicPartition, offset: int) -> None:
        while offset >= self.written:
            if self.broken is not None:
                raise MirrorDown(self.broken)
            self.moved.clear()
            await self.moved.wait()


async def test_the_api_hears_the_supervisor_over_its_socket_pair() -> None:
    fake = _Store()
    server = MirrorAckServer(lambda: fake)  # type: ignore[arg-type,return-value]
    ack = MirrorAck(server.pair(), timeout_s=5.0)
    try:
        waits = [asyncio.create_task(ack.wait(TP.topic, TP.partition, o)) for o in (0, 1, 2)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waits)
        fake.written = 2
        fake.moved.set()
        await asyncio.wait_for(asyncio.gather(*waits[:2]), 2)  # side by side, one connection
        assert not waits[2].done()
        fake.broken = "the broker mirror failed with OSError('disk full')"
        fake.moved.set()
        with pytest.raises(NotDurable, match="disk full"):
            await asyncio.wait_for(waits[2], 2)
    finally:
        await ack.close()
        await server.close()


async def test_a_silent_supervisor_is_a_bounded_wait_and_a_closed_one_an_immediate_no() -> None:
    fake = _Store()
    server = MirrorAckServer(lambda: fake)  # type: ignore[arg-type,return-value]
    ack = MirrorAck(server.pair(), timeout_s=0.2)
    try:
        with pytest.raises(NotDurable, match="KESTREAM_STANDALONE_ACK_TIMEOUT_S"):
            await ack.wait(TP.topic, TP.partition, 7)
        await server.close()  # the supervisor's end is gone (it stopped, or was killed)
        with pytest.raises(NotDurable, match="standalone's supervisor"):
            await asyncio.wait_for(ack.wait(TP.topic, TP.partition, 7), 2)
    finally:
        await ack.close()


async def test_no_store_while_the_broker_starts_again_is_an_answer_too() -> None:
    server = MirrorAckServer(lambda: None)
    ack = MirrorAck(server.pair(), timeout_s=5.0)
    try:
        with pytest.raises(NotDurable, match="being started again"):
            await asyncio.wait_for(ack.wait(TP.topic, TP.partition, 0), 2)
    finally:
        await ack.close()
        await server.close()


async def test_a_long_failure_fails_only_its_request_and_the_socket_keeps_answering() -> None:
    fake = _Store()
    server = MirrorAckServer(lambda: fake)  # type: ignore[arg-type,return-value]
    ack = MirrorAck(server.pair(), timeout_s=5.0)
    try:
        fake.broken = "the broker mirror failed with " + "x" * 5000
        with pytest.raises(NotDurable, match="mirror failed") as failed:
            await asyncio.wait_for(ack.wait(TP.topic, TP.partition, 0), 2)
        assert len(str(failed.value)) <= 512  # shortened by the supervisor
        fake.broken, fake.written = None, 1
        await asyncio.wait_for(ack.wait(TP.topic, TP.partition, 0), 2)  # still heard
    finally:
        await ack.close()
        await server.close()


async def test_an_overlong_answer_line_fails_its_request_alone() -> None:
    """Whatever the supervisor sends, a line past the stream's limit costs only its request."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ack = MirrorAck(theirs.detach(), timeout_s=5.0)
    reader, writer = await asyncio.open_unix_connection(sock=ours)
    try:
        first = asyncio.create_task(ack.wait(TP.topic, TP.partition, 0))
        second = asyncio.create_task(ack.wait(TP.topic, TP.partition, 1))
        asked = [await reader.readline(), await reader.readline()]
        seqs = sorted(int(line.split()[0]) for line in asked)
        writer.write(f"{seqs[0]} down {'y' * 20000}\n{seqs[1]} ok\n".encode())
        done = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 2)
        failed = [d for d in done if isinstance(d, NotDurable)]
        assert len(failed) == 1 and done.count(None) == 1
        assert str(failed[0]).startswith("yyy")
        third = asyncio.create_task(ack.wait(TP.topic, TP.partition, 2))
        seq = int((await reader.readline()).split()[0])
        writer.write(f"{seq} ok\n".encode())
        await asyncio.wait_for(third, 2)  # the socket still answers
    finally:
        await ack.close()
        writer.close()


async def test_a_mirror_cancelled_by_anything_but_its_stop_is_a_failure(tmp_path: Path) -> None:
    """So the supervisor starts it again (its watch reads mirror_error), rather than every
    later creation being answered 503 by a mirror that is done and silent."""
    store = _store(tmp_path)
    await _running(store)
    waiting = asyncio.create_task(store.mirrored(TP, 0))
    await asyncio.sleep(0)
    assert store._task is not None and store.mirror_error is None
    store._task.cancel()  # a stray cancellation (out of aiokafka), not stop_mirror
    with pytest.raises(MirrorDown, match="cancelled, not stopped"):
        await asyncio.wait_for(waiting, 1)
    assert isinstance(store.mirror_error, MirrorDown)


async def test_a_stopped_mirror_is_no_failure(tmp_path: Path) -> None:
    store = _store(tmp_path)
    await _running(store)
    waiting = asyncio.create_task(store.mirrored(TP, 0))
    await asyncio.sleep(0)
    await store.stop_mirror(catch_up=False)
    with pytest.raises(MirrorDown, match="was stopped"):
        await asyncio.wait_for(waiting, 1)
    assert store.mirror_error is None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_a_process_forked_from_the_api_keeps_no_end_of_its_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's pool forks task processes from the process that also hosts the API."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    monkeypatch.setattr(mirror_ack, "_inherited", None)
    monkeypatch.setenv(MIRROR_ACK_FD_ENV, str(theirs.detach()))
    fd = inherited_fd()
    assert fd is not None
    ack = MirrorAck(fd, timeout_s=5.0)
    try:
        await ack._connect()
        held = [fd, *(s.fileno() for s in mirror_ack._connections if s.fileno() >= 0)]
        assert len(held) == 2
        child = os.fork()
        if child == 0:  # the forked process: how many of the API's descriptors it still has
            os._exit(sum(_is_open(f) for f in held))
        _, status = os.waitpid(child, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert all(_is_open(f) for f in held)  # the API process keeps its own
    finally:
        await ack.close()
        os.close(fd)
        ours.close()
