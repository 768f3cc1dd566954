"""A doorbell between the processes of one host that share a loopback broker.

Tansu does not wake a waiting Fetch when data arrives (``docs/brokers.md``), so a consumer
only learns of new records by fetching again. :mod:`kestream.runtime.fetch_pacing` lets idle
consumers stop fetching; this module is how they learn, at once, that records are coming:
every producer rings a bell naming the topic it sends to, and every consuming process listens.

The embedded broker listens on loopback only, so every client of it runs on this host. The
bell is a directory of unix datagram sockets, one per listening process, named after the
broker's address (:func:`doorbell_dir`); a ring is one datagram holding the topic's name, sent
to every socket there whose process listens to that topic. Each listening process says which
topics it listens to in a small file beside its socket (``<socket name>.topics``, one topic a
line, replaced atomically when its topics change); a socket without one hears every ring. So a
record costs a datagram and a wake-up only in the processes that read its topic: in W1 at
6 000/min the executors, the worker and the load generator had rung each other about 12 times
per execution, most of it to processes that dropped the ring. It is best-effort by design: a
lost or late datagram costs a paused consumer up to one probe (``probe_max`` of
:mod:`kestream.runtime.fetch_pacing`, 5 s), never a record, since pacing only decides *when*
to fetch.

The directory is private to the user (mode 0700, checked): another local user can neither ring
nor listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer

log = logging.getLogger("kestream.doorbell")

#: One ring per topic per this many seconds and producer (:class:`Bell`): under load a topic's
#: consumers are awake anyway, and each datagram costs its sender and receiver about 10 us.
RING_EVERY_S = 0.05
#: How long a producer trusts its list of listening sockets (and their topics) before listing
#: the directory again even though the directory's modification time did not change (a change
#: within the clock's tick leaves it as it was): the list is read again as soon as that time
#: moves, so a process that starts listening, or listens to one more topic, is rung at once.
PEERS_TTL_S = 1.0
_SUFFIX = ".sock"
#: Beside a socket, the topics its process listens to (:meth:`Doorbell.listen`).
_TOPICS_SUFFIX = ".topics"
_MAX_TOPIC_BYTES = 1024
# A ring that finds a socket's queue full is sent again after this long, the gap doubling up
# to _RESEND_MAX_S, for _RESEND_WINDOW_S; a socket still full then is stalled (a blocked loop):
# it gets one try per ring, no resends, until a ring gets through again.
_RESEND_S = 0.002
_RESEND_MAX_S = 0.05
_RESEND_WINDOW_S = 0.2
# A unix socket's address holds 107 bytes; a socket's name here takes at most 24 of them.
_MAX_DIR_BYTES = 80
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})

Waker = Callable[[str], None]


def doorbell_dir(bootstrap: str, base: str | os.PathLike[str] | None = None) -> Path | None:
    """The doorbell directory of the broker at ``bootstrap``, created private to this user;
    None when some bootstrap host is not loopback (clients elsewhere could not ring) or the
    directory cannot be made safely (it exists and is not ours alone)."""
    hosts = [addr.rsplit(":", 1) for addr in bootstrap.split(",") if addr.strip()]
    if not hosts or any(len(h) != 2 or h[0].strip() not in _LOOPBACK for h in hosts):
        return None
    root = Path(base or os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    top = root / f"kestream-doorbell-{os.getuid()}"
    name = "_".join(f"{h.strip().strip('[]').replace(':', '.')}-{p.strip()}" for h, p in hosts)
    path = top / name
    try:
        for directory in (top, path):
            directory.mkdir(mode=0o700, exist_ok=True)
            info = directory.lstat()
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise PermissionError(f"{directory} is not a directory of this user")
            if stat.S_IMODE(info.st_mode) & 0o077:
                raise PermissionError(f"{directory} is open to other users")
        if len(os.fsencode(path)) > _MAX_DIR_BYTES:
            raise OSError(f"{path} is too long for a unix socket's address")
    except OSError as exc:
        log.warning("no doorbell for %s (%s): idle consumers wake by probing only", bootstrap, exc)
        return None
    return path


class Doorbell:
    """This process's listening socket in one doorbell directory, shared by every paced
    consumer of the process (:meth:`shared`); bound while someone listens, removed after.

    Listeners register the topics they read with a waker; a datagram naming one of those
    topics calls its wakers (in the event loop, from the socket's reader callback).
    """

    _shared: dict[tuple[Path, int], Doorbell] = {}
    _made = 0

    def __init__(self, directory: Path, loop: asyncio.AbstractEventLoop) -> None:
        self.directory = directory
        self.loop = loop
        Doorbell._made += 1
        self.path = directory / f"{os.getpid()}-{Doorbell._made}{_SUFFIX}"
        self.topics_path = _topics_path(self.path)
        self._wakers: dict[str, set[Waker]] = {}
        #: The topics :attr:`topics_path` names (None: not written).
        self._advertised: frozenset[str] | None = None
        self._sock: socket.socket | None = None
        self.heard = 0

    @classmethod
    def shared(cls, directory: Path) -> Doorbell:
        """The doorbell of ``directory`` for the running event loop."""
        loop = asyncio.get_running_loop()
        key = (directory, id(loop))
        bell = cls._shared.get(key)
        if bell is None or bell.loop is not loop:
            bell = cls._shared[key] = cls(directory, loop)
        return bell

    def listen(self, topics: Iterable[str], waker: Waker) -> None:
        """Call ``waker(topic)`` when a ring names one of ``topics`` (added to what it had)."""
        for topic in topics:
            self._wakers.setdefault(topic, set()).add(waker)
        if self._sock is None and self._wakers:
            self._bind()
        if self._sock is not None:
            self._advertise()

    @property
    def listening(self) -> bool:
        """Whether the socket is bound (rings reach this process)."""
        return self._sock is not None

    def forget(self, waker: Waker) -> None:
        """Stop calling ``waker``; the socket closes with the last listener."""
        for topic in list(self._wakers):
            wakers = self._wakers[topic]
            wakers.discard(waker)
            if not wakers:
                del self._wakers[topic]
        if not self._wakers:
            self.close()
        elif self._sock is not None:
            self._advertise()

    def _advertise(self) -> None:
        """Write the topics listened to beside the socket (replaced whole, so a producer reads
        the old list or the new one); a file that cannot be written is removed, and producers
        then ring this socket for every topic, as they do one without a list."""
        topics = frozenset(self._wakers)
        if topics == self._advertised:
            return
        staging = _staging_path(self.path)
        try:
            staging.write_text("".join(f"{topic}\n" for topic in sorted(topics)), "utf-8")
            os.replace(staging, self.topics_path)
        except OSError as exc:
            log.warning("cannot write %s (%s): this process is rung for every topic",
                        self.topics_path, exc)  # fmt: skip
            for path in (staging, self.topics_path):
                with contextlib.suppress(OSError):
                    path.unlink()
            self._advertised = None
            return
        self._advertised = topics

    def _bind(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for path in _files(self.path):  # left by a process of the same pid
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            try:
                sock.bind(str(self.path))
            except FileNotFoundError:  # the last listener removed the directory meanwhile
                self.directory.mkdir(mode=0o700, exist_ok=True)
                sock.bind(str(self.path))
        except OSError as exc:
            sock.close()
            log.warning("cannot listen at %s (%s): waking by probing only", self.path, exc)
            return
        self._sock = sock
        self.loop.add_reader(sock.fileno(), self._read)

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(_MAX_TOPIC_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            self.heard += 1
            topic = data.decode("utf-8", "replace")
            for waker in tuple(self._wakers.get(topic, ())):
                waker(topic)

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is None:
            return
        with contextlib.suppress(Exception):
            self.loop.remove_reader(sock.fileno())
        sock.close()
        self._advertised = None
        for path in _files(self.path):
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):  # the last one out removes the broker's directory
            self.directory.rmdir()
        key = (self.directory, id(self.loop))
        if self._shared.get(key) is self:
            del self._shared[key]


class Bell:
    """Rings a doorbell directory: one datagram per listening socket. Never blocks and never
    raises: a full socket is tried again for a while, a vanished one is a ring lost, and a
    socket whose process is gone is removed.

    At most one ring per topic per ``every`` seconds; a ring asked for sooner is not dropped
    but deferred to the end of that gap, so every record acknowledged is followed by a ring
    within ``every`` seconds. A listener can therefore stop fetching as soon as a fetch after
    the last ring it heard comes back empty."""

    def __init__(
        self,
        directory: Path,
        *,
        every: float = RING_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.directory = directory
        self.every = every
        self.clock = clock
        self._last: dict[str, float] = {}
        self._deferred: dict[str, asyncio.TimerHandle] = {}
        #: Per listener whose queue was full: the topics to send it again, and its timer.
        self._owed: dict[str, set[str]] = {}
        self._resends: dict[str, asyncio.TimerHandle] = {}
        self._stalled: set[str] = set()
        #: The listening sockets, each with the topics it listens to (None: every topic).
        self._peers: list[tuple[str, frozenset[str] | None]] = []
        self._peers_at = float("-inf")
        self._peers_mtime = -1
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.setblocking(False)
        #: Rings (one per topic and gap) and the datagrams they took (one per listener).
        self.rung = 0
        self.sent = 0

    def ring(self, topic: str) -> None:
        """Ring for ``topic`` now, or at the end of its gap (needs a running loop then)."""
        now = self.clock()
        due = self._last.get(topic, float("-inf")) + self.every
        if now >= due:
            self._send(topic, now)
        elif topic not in self._deferred:
            loop = asyncio.get_running_loop()
            self._deferred[topic] = loop.call_later(due - now, self._ring_deferred, topic)

    def acked(self, topic: str, future: asyncio.Future[Any]) -> None:
        """A send's done-callback: ring once the broker holds the record (not on a failure)."""
        if not future.cancelled() and future.exception() is None:
            self.ring(topic)

    def _ring_deferred(self, topic: str) -> None:
        self._deferred.pop(topic, None)
        self._send(topic, self.clock())

    def _send(self, topic: str, now: float) -> None:
        self._last[topic] = now
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            mtime = -1
        if mtime != self._peers_mtime or now - self._peers_at >= PEERS_TTL_S:
            self._peers = self._list_peers()
            self._peers_at, self._peers_mtime = now, mtime
        self.rung += 1
        for peer, topics in tuple(self._peers):
            if topics is None or topic in topics:
                self._deliver(peer, topic)

    def _deliver(self, peer: str, topic: str) -> None:
        if peer in self._resends:  # already waiting for room: this topic goes with the rest
            self._owed[peer].add(topic)
            return
        if self._sendto(peer, topic) or peer in self._stalled:
            return
        # Its queue is full (a unix datagram socket holds few, net.unix.max_dgram_qlen): a
        # burst of rings outran its reader. Try again with a growing gap, then stop resending.
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # rung outside a loop: nothing to try again with
            return
        self._owed[peer] = {topic}
        self._resends[peer] = loop.call_later(
            _RESEND_S, self._resend, peer, _RESEND_S, self.clock() + _RESEND_WINDOW_S
        )

    def _sendto(self, peer: str, topic: str) -> bool:
        """One datagram; False when the listener's queue is full."""
        try:
            self._sock.sendto(topic.encode(), peer)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                self._gone(peer, exc.errno == errno.ECONNREFUSED)
            return True  # nobody to resend to
        self.sent += 1
        self._stalled.discard(peer)  # it reads again
        return True

    def _resend(self, peer: str, gap: float, give_up: float) -> None:
        del self._resends[peer]
        left = self._owed.pop(peer, set())
        while left:  # stop at the first that finds the queue still full: one try per resend
            topic = next(iter(left))
            if not self._sendto(peer, topic):
                break
            left.discard(topic)
        if not left:
            return
        if self.clock() >= give_up:
            self._stalled.add(peer)  # rings to it are lost now: its probes cover them
            return
        gap = min(gap * 2, _RESEND_MAX_S)
        self._owed[peer] = left
        loop = asyncio.get_running_loop()
        self._resends[peer] = loop.call_later(gap, self._resend, peer, gap, give_up)

    def _list_peers(self) -> list[tuple[str, frozenset[str] | None]]:
        try:
            names = os.listdir(self.directory)
        except OSError:
            return []
        return [
            (str(self.directory / name), _listened(self.directory / name))
            for name in names
            if name.endswith(_SUFFIX)
        ]

    def _gone(self, peer: str, stale: bool) -> None:
        self._peers = [listener for listener in self._peers if listener[0] != peer]
        if stale:  # bound by a process that exited without removing it
            for path in _files(Path(peer)):
                with contextlib.suppress(OSError):
                    path.unlink()

    def close(self) -> None:
        """Send the deferred rings now (the records they follow were acknowledged), then
        stop: the producer is going, and nothing would send them after."""
        deferred, self._deferred = self._deferred, {}
        for topic, timer in deferred.items():
            timer.cancel()
            self._send(topic, self.clock())
        for timer in self._resends.values():
            timer.cancel()
        self._resends.clear()
        self._owed.clear()
        self._sock.close()


def _topics_path(socket_path: Path) -> Path:
    """Where the topics the process of ``socket_path`` listens to are listed."""
    return socket_path.with_name(socket_path.name[: -len(_SUFFIX)] + _TOPICS_SUFFIX)


def _staging_path(socket_path: Path) -> Path:
    """Where the process of ``socket_path`` writes its topics before renaming them into
    place (left behind by a kill between the two)."""
    topics = _topics_path(socket_path)
    return topics.with_name(topics.name + ".new")


def _files(socket_path: Path) -> tuple[Path, Path, Path]:
    """The files of a listening socket, in the order they are removed: the list's staging
    copy, the list, the socket (never a list without its socket)."""
    return _staging_path(socket_path), _topics_path(socket_path), socket_path


def _listened(socket_path: Path) -> frozenset[str] | None:
    """The topics the process of ``socket_path`` listens to; None (every topic) when it lists
    none (a process of a version before the lists, or one that could not write it)."""
    try:
        text = _topics_path(socket_path).read_text("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return frozenset(line for line in text.splitlines() if line)


class RingingProducer(AIOKafkaProducer):
    """An aiokafka producer that rings :attr:`bell` for each topic it sends to, once the broker
    has acknowledged the record: a consumer woken by the ring finds it with its first fetch."""

    def __init__(self, bell: Bell, **options: Any) -> None:
        super().__init__(**options)
        self.bell = bell

    async def send(self, topic: str, *args: Any, **kwargs: Any) -> Any:
        future = await super().send(topic, *args, **kwargs)
        future.add_done_callback(functools.partial(self.bell.acked, topic))
        return future

    async def stop(self) -> None:
        try:
            await super().stop()
        finally:
            self.bell.close()
