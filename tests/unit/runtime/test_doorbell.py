"""The doorbell (kestream.runtime.doorbell) on real unix datagram sockets."""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from kestream.runtime.doorbell import PEERS_TTL_S, Bell, Doorbell, doorbell_dir
from kestream.runtime.fetch_pacing import pacing_for
from kestream.settings import Settings


@pytest.fixture
def tmp_path() -> Iterator[Path]:
    """A short base directory: a unix socket's address holds 107 bytes, and pytest's own
    temporary paths are longer than that."""
    with tempfile.TemporaryDirectory(prefix="db", dir="/tmp") as base:
        yield Path(base)


def test_a_loopback_broker_gets_a_private_directory(tmp_path: Path) -> None:
    path = doorbell_dir("127.0.0.1:9092", base=tmp_path)
    assert path is not None and path.is_dir()
    assert path == doorbell_dir("127.0.0.1:9092", base=tmp_path)
    assert path != doorbell_dir("127.0.0.1:9093", base=tmp_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_no_doorbell_for_a_broker_elsewhere_or_a_directory_open_to_others(tmp_path: Path) -> None:
    assert doorbell_dir("kafka.example:9092", base=tmp_path) is None
    assert doorbell_dir("127.0.0.1:9092", base=tmp_path / ("d" * 90)) is None, "path too long"
    assert doorbell_dir("127.0.0.1:9092,10.0.0.5:9092", base=tmp_path) is None
    top = tmp_path / f"kestream-doorbell-{os.getuid()}"
    top.mkdir(mode=0o777)
    top.chmod(0o777)
    assert doorbell_dir("127.0.0.1:9092", base=tmp_path) is None


async def test_a_ring_wakes_the_listeners_of_that_topic_only(tmp_path: Path) -> None:
    directory = doorbell_dir("127.0.0.1:1", base=tmp_path)
    assert directory is not None
    heard: list[tuple[str, str]] = []
    got = asyncio.Event()

    def waker(name: str):  # type: ignore[no-untyped-def]
        def wake(topic: str) -> None:
            heard.append((name, topic))
            got.set()

        return wake

    door = Doorbell.shared(directory)
    assert Doorbell.shared(directory) is door, "one socket per process and loop"
    a, b = waker("a"), waker("b")
    door.listen(["t1"], a)
    door.listen(["t2"], b)
    assert door.path.exists()
    bell = Bell(directory, every=0.0)
    bell.ring("t2")
    await asyncio.wait_for(got.wait(), 10)
    assert heard == [("b", "t2")]
    door.forget(a)
    assert door.path.exists()
    door.forget(b)
    assert not door.path.exists(), "the socket goes with its last listener"
    assert not directory.exists(), "and the broker's directory with the last socket"
    again = Doorbell.shared(directory)
    again.listen(["t1"], a)
    assert again.listening, "a new listener makes the directory again"
    again.close()
    bell.close()


async def test_rings_closer_than_the_gap_are_deferred_to_its_end_not_dropped(
    tmp_path: Path,
) -> None:
    """Every ring asked for is followed by one within the gap: a consumer that paused between
    two records still hears of the second."""
    directory = doorbell_dir("127.0.0.1:2", base=tmp_path)
    assert directory is not None
    heard: list[str] = []
    door = Doorbell.shared(directory)
    door.listen(["t", "u"], heard.append)
    bell = Bell(directory, every=0.2)
    bell.ring("t")
    bell.ring("t")
    bell.ring("t")
    bell.ring("u")
    assert bell.rung == 2, "one ring per topic now, the rest of t's deferred"
    while len(heard) < 3:
        await asyncio.sleep(0.01)
    assert sorted(heard) == ["t", "t", "u"]
    assert bell.rung == 3, "the deferred rings of t came as one"
    bell.close()
    door.close()


async def test_a_producer_rings_once_the_broker_acknowledged_the_record(tmp_path: Path) -> None:
    directory = doorbell_dir("127.0.0.1:5", base=tmp_path)
    assert directory is not None
    bell = Bell(directory, every=0.0)
    sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    sent.add_done_callback(functools.partial(bell.acked, "t"))
    failed.add_done_callback(functools.partial(bell.acked, "t"))
    await asyncio.sleep(0)
    assert bell.rung == 0, "not before the acknowledgement"
    failed.set_exception(RuntimeError("refused"))
    sent.set_result(None)
    await asyncio.sleep(0)
    assert bell.rung == 1, "a failed send rings nothing"
    bell.close()


async def test_a_socket_left_by_a_dead_process_is_removed(tmp_path: Path) -> None:
    directory = doorbell_dir("127.0.0.1:3", base=tmp_path)
    assert directory is not None
    stale = directory / "999999-dead.sock"
    orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    orphan.bind(str(stale))
    orphan.close()  # bound, then its process "exited": the file stays, nobody reads it
    assert stale.exists()
    bell = Bell(directory, every=0.0)
    bell.ring("t")
    assert not stale.exists()
    bell.close()


@pytest.mark.parametrize("payload", [b"", b"\xff\xfe", b"x" * 5000])
async def test_odd_datagrams_wake_nobody_and_break_nothing(tmp_path: Path, payload: bytes) -> None:
    directory = doorbell_dir("127.0.0.1:4", base=tmp_path)
    assert directory is not None
    heard: list[str] = []
    got = asyncio.Event()
    door = Doorbell.shared(directory)
    door.listen(["t"], lambda topic: (heard.append(topic), got.set()))
    sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sender.sendto(payload, str(door.path))
    sender.sendto(b"t", str(door.path))
    await asyncio.wait_for(got.wait(), 10)
    assert heard == ["t"]
    assert door.heard == 2
    sender.close()
    door.close()


async def test_rings_that_find_a_full_queue_are_sent_again(tmp_path: Path) -> None:
    """A unix datagram socket queues only a few datagrams (net.unix.max_dgram_qlen): a burst of
    rings for many topics must not lose the ones that found it full."""
    directory = doorbell_dir("127.0.0.1:6", base=tmp_path)
    assert directory is not None
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(str(directory / "1-1.sock"))
    reader.setblocking(False)
    bell = Bell(directory, every=0.0)
    topics = [f"t{i}" for i in range(40)]
    for topic in topics:
        bell.ring(topic)  # nobody reads yet: the queue fills long before 40
    heard: set[str] = set()
    for _ in range(500):
        while True:
            try:
                heard.add(reader.recv(1024).decode())
            except BlockingIOError:
                break
        if heard == set(topics):
            break
        await asyncio.sleep(0.005)
    assert heard == set(topics)
    bell.close()
    reader.close()


async def test_a_deferred_ring_is_sent_when_its_producer_stops(tmp_path: Path) -> None:
    """A worker stopping with its last results acknowledged: their ring must still go out."""
    directory = doorbell_dir("127.0.0.1:7", base=tmp_path)
    assert directory is not None
    heard: list[str] = []
    door = Doorbell.shared(directory)
    door.listen(["t"], heard.append)
    bell = Bell(directory, every=60.0)
    bell.ring("t")
    bell.ring("t")  # within the gap: deferred
    assert bell.rung == 1
    bell.close()
    assert bell.rung == 2, "sent on close, not dropped"
    while len(heard) < 2:
        await asyncio.sleep(0.01)
    assert heard == ["t", "t"]
    door.close()


class _CountingSocket:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0

    def sendto(self, data: bytes, address: str) -> int:
        self.sent += 1
        return self.sock.sendto(data, address)

    def close(self) -> None:
        self.sock.close()


async def test_a_stalled_listener_gets_a_backed_off_resend_then_one_try_per_ring(
    tmp_path: Path,
) -> None:
    """A listener whose loop is blocked must not make a producer resend each topic every
    2 ms: one timer per listener, a growing gap, then no resends until it reads again."""
    directory = doorbell_dir("127.0.0.1:8", base=tmp_path)
    assert directory is not None
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer = str(directory / "1-1.sock")
    reader.bind(peer)
    reader.setblocking(False)
    bell = Bell(directory, every=0.0)
    counting = _CountingSocket(bell._sock)
    bell._sock = counting  # type: ignore[assignment]
    topics = [f"t{i}" for i in range(40)]
    for topic in topics:
        bell.ring(topic)  # nobody reads: the queue fills long before 40
    rung_sends = counting.sent
    assert rung_sends < len(topics), "once full, the rest wait with the listener's one timer"
    assert list(bell._resends) == [peer]
    for _ in range(1000):
        if peer in bell._stalled:
            break
        await asyncio.sleep(0.005)
    assert peer in bell._stalled, "given up on after the retry window"
    resends = counting.sent - rung_sends
    assert 0 < resends <= 12, f"{resends} resends: one per backed-off try, not per topic"
    before = counting.sent
    bell.ring("t0")
    assert counting.sent == before + 1 and not bell._resends, "stalled: one try, no resends"
    while True:  # it reads again
        try:
            reader.recv(1024)
        except BlockingIOError:
            break
    bell.ring("t1")
    assert peer not in bell._stalled, "a ring that gets through: it is listened to again"
    bell.close()
    reader.close()


async def test_a_ring_goes_only_to_the_processes_that_listen_to_its_topic(tmp_path: Path) -> None:
    """Each listener lists its topics beside its socket: a ring costs a datagram and a wake-up
    only where its topic is read (two "processes" here: two sockets of one directory)."""
    directory = doorbell_dir("127.0.0.1:9", base=tmp_path)
    assert directory is not None
    loop = asyncio.get_running_loop()
    executor, worker = Doorbell(directory, loop), Doorbell(directory, loop)
    heard: list[tuple[str, str]] = []
    executor.listen(["results", "executions"], lambda t: heard.append(("executor", t)))
    worker.listen(["jobs"], lambda t: heard.append(("worker", t)))
    assert executor.topics_path.read_text().split() == ["executions", "results"]
    bell = Bell(directory, every=0.0)
    for topic in ("jobs", "results", "changelog"):
        bell.ring(topic)
    while len(heard) < 2:
        await asyncio.sleep(0.01)
    assert sorted(heard) == [("executor", "results"), ("worker", "jobs")]
    assert (bell.rung, bell.sent) == (3, 2), "no datagram for a topic nobody reads"
    assert (executor.heard, worker.heard) == (1, 1)
    worker.forget(next(iter(worker._wakers["jobs"])))
    assert not worker.topics_path.exists(), "the list goes with its socket"
    executor.close()
    assert not executor.topics_path.exists()
    bell.close()


async def test_a_socket_without_a_topic_list_hears_every_ring(tmp_path: Path) -> None:
    """A listener of a version before the lists (or one that could not write it) is rung for
    every topic, as before."""
    directory = doorbell_dir("127.0.0.1:10", base=tmp_path)
    assert directory is not None
    reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.bind(str(directory / "1-1.sock"))
    bell = Bell(directory, every=0.0)
    bell.ring("a")
    bell.ring("b")
    assert [reader.recv(1024), reader.recv(1024)] == [b"a", b"b"]
    assert bell.sent == 2
    bell.close()
    reader.close()


async def test_a_listener_that_adds_a_topic_is_rung_for_it_once_the_directory_changed(
    tmp_path: Path,
) -> None:
    """The bell reads the lists again when the directory's modification time moves (a list is
    replaced by a rename there), and at least every PEERS_TTL_S (a change within one tick of
    the file system's clock leaves that time as it was)."""
    directory = doorbell_dir("127.0.0.1:11", base=tmp_path)
    assert directory is not None
    now = [0.0]
    bell = Bell(directory, every=0.0, clock=lambda: now[0])
    door = Doorbell(directory, asyncio.get_running_loop())
    heard: list[str] = []
    door.listen(["a"], heard.append)
    bell.ring("b")
    assert bell.sent == 0, "not listened to (yet)"
    listed = directory.stat().st_mtime_ns
    door.listen(["b"], heard.append)
    os.utime(directory, ns=(listed, listed))  # the change fell within the clock's tick
    now[0] = PEERS_TTL_S / 2
    bell.ring("b")
    assert bell.sent == 0, "the bell trusts its lists while the directory's time stays"
    now[0] = PEERS_TTL_S
    bell.ring("b")
    assert bell.sent == 1, "read again after PEERS_TTL_S"
    door.listen(["c"], heard.append)
    os.utime(directory, ns=(listed + 1, listed + 1))  # the rename moved the directory's time
    bell.ring("c")
    assert bell.sent == 2, "read again at once"
    while len(heard) < 2:
        await asyncio.sleep(0.01)
    assert heard == ["b", "c"]
    door.close()
    bell.close()


async def test_the_topic_list_of_a_dead_process_goes_with_its_socket(tmp_path: Path) -> None:
    directory = doorbell_dir("127.0.0.1:12", base=tmp_path)
    assert directory is not None
    stale = directory / "999999-dead.sock"
    orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    orphan.bind(str(stale))
    orphan.close()
    listed = directory / "999999-dead.topics"
    listed.write_text("t\n")
    bell = Bell(directory, every=0.0)
    bell.ring("t")
    assert not stale.exists() and not listed.exists()
    bell.close()


async def test_a_list_half_written_by_a_dead_process_goes_with_its_socket(tmp_path: Path) -> None:
    """A kill between writing a list and renaming it into place leaves its staging copy: it
    goes with the socket, so the last listener out removes the directory."""
    directory = doorbell_dir("127.0.0.1:13", base=tmp_path)
    assert directory is not None
    stale = directory / "999999-dead.sock"
    orphan = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    orphan.bind(str(stale))
    orphan.close()
    staging = directory / "999999-dead.topics.new"
    staging.write_text("t\n")
    door = Doorbell(directory, asyncio.get_running_loop())
    door.listen(["u"], lambda topic: None)
    bell = Bell(directory, every=0.0)
    bell.ring("t")  # no list: the dead process is rung for every topic, and found gone
    assert not stale.exists() and not staging.exists()
    door.close()
    bell.close()
    assert not directory.exists()


def test_a_consumer_whose_topics_changed_stays_awake_while_a_bell_trusts_its_old_lists() -> None:
    """A ring lost to a list read just before a topic was added (within one tick of the
    directory's clock, see above) costs nothing: a consumer that adds a topic (an assignment,
    a subscription) fetches for ``settle`` after it, longer than a bell trusts the lists it
    read (PEERS_TTL_S), so its next ring, or a fetch, finds the records; else only a probe
    would, up to ``probe_max`` later."""
    pacing = pacing_for(Settings(), "tansu")
    assert pacing is not None and pacing.settle >= PEERS_TTL_S
