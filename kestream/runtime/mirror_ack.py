"""An execution the API creates is acknowledged only once it is on disk, in ``standalone``.

``kestream standalone`` runs its embedded broker memory-only and keeps it durable through a
mirror in the supervisor's process (:mod:`.broker_store`), which trails the broker by a fetch.
The broker's acknowledgement of a produce is therefore no promise that a kill -9 keeps the
record. For most records that is fine: the roles redo work a kill loses. An execution the API
answered "created", though, exists for the caller: losing it is losing the execution. So the API
answers only once the mirror's file holds the creation's record (flushed to the OS: a process
kill, the broker's or the supervisor's, no longer loses it).

How the API process learns it: a unix socket pair between the supervisor and each role process
that hosts the API, made by the supervisor at the child's start and inherited by the child
(:data:`MIRROR_ACK_FD_ENV` names its end). The API asks ``<seq> <topic> <partition> <offset>``;
the supervisor answers ``<seq> ok`` once :meth:`BrokerStore.mirrored` returns, or
``<seq> down <reason>``. Why this and not the alternatives:

* it is push, not poll: the answer leaves as the mirror's batch is written, and the request
  itself wakes the mirror's paced consumer, so the added latency is one fetch, not a polling
  period (a progress file read in a loop would add its period to every creation, or cost CPU
  while idle);
* it cannot go stale or be reached by anyone else: the pair has no name on disk or on the
  network, no port, no path that a second standalone on the same data dir would share, and
  it dies with either end. A supervisor that is gone (killed: its children die with it) or
  stopped reads as a closed or silent socket, never as a stale "mirrored" answer;
* it needs no dependency and no thread: one small line protocol on the event loop of each side.

The wait is bounded (``KESTREAM_STANDALONE_ACK_TIMEOUT_S``): past it, or when the mirror is
down, the API answers 503 with the reason (:class:`NotDurable`). The execution was sent and may
still run; what the caller learns is that it is not known to be safe. With ``KESTREAM_BROKER``
set there is no mirror: the broker's own acknowledgement (``acks=all``) is the guarantee, and
no socket is passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kestream.runtime.broker_store import BrokerStore

log = logging.getLogger("kestream.mirror_ack")

#: Set by ``kestream standalone`` in the environment of a role process hosting the API when the
#: embedded broker is mirrored: the descriptor of the process's end of its socket pair.
MIRROR_ACK_FD_ENV = "KESTREAM_STANDALONE_MIRROR_ACK_FD"
#: The longest the supervisor keeps one request open (the API gives up sooner, at its own
#: bound): a request whose asker is gone must not wait for ever.
_SERVE_MAX_S = 300.0
#: The stream's buffer limit; a line is at most this long on the wire.
_LINE_MAX = 4096
#: The longest reason the supervisor sends (a mirror failure's repr can be of any length): well
#: under :data:`_LINE_MAX`, so an answer always fits a line.
_REASON_MAX = 512

_inherited: int | None = None
#: The sockets this process reads answers on (one per :class:`MirrorAck`), closed in a fork.
_connections: weakref.WeakSet[socket.socket] = weakref.WeakSet()


def _forget_in_fork() -> None:
    """In a process forked from this one (the worker's pool of task processes, in the process
    that also hosts the API), close its copies of the socket pair's end: task code must not read
    the API's answers, nor keep the socket open once the API process is gone. Detached before
    closing, so a socket object's finaliser never closes a number reused meanwhile."""
    global _inherited
    for sock in list(_connections):
        if sock.fileno() >= 0:
            with contextlib.suppress(OSError):
                os.close(sock.detach())
    _connections.clear()
    if _inherited is not None:
        with contextlib.suppress(OSError):
            os.close(_inherited)
        _inherited = None


os.register_at_fork(after_in_child=_forget_in_fork)


class NotDurable(Exception):
    """The record was acknowledged by the broker, but is not known to be on disk (why: the
    message, which the API answers with a 503).

    ``execution_id`` names the execution the record created or restarted, set by the API once
    it knows which record was waited for: the record was sent and usually runs, so the caller
    is told what to look up instead of sending it again (a second creation)."""

    def __init__(self, reason: str, execution_id: str | None = None) -> None:
        super().__init__(reason)
        self.execution_id = execution_id


async def _read_line(reader: asyncio.StreamReader) -> tuple[bytes, bool]:
    """The next line (b"" at the end of the stream) and whether it was longer than
    :data:`_LINE_MAX`, in which case only its start is returned and the rest is dropped.

    ``readline`` raises on an overlong line after dropping it, seq and all: the one request it
    answered could then never be told, and a reader that stops there stops every later answer.
    Keeping the start keeps the seq, so only that request fails."""
    try:
        return await reader.readuntil(b"\n"), False
    except asyncio.IncompleteReadError as exc:  # the stream ended mid-line (or between lines)
        return exc.partial, False
    except asyncio.LimitOverrunError as exc:
        head = (await reader.readexactly(exc.consumed))[:_LINE_MAX]
    while True:  # drop the rest of the line, a buffer's worth at a time
        try:
            await reader.readuntil(b"\n")
            return head, True
        except asyncio.IncompleteReadError:
            return head, True
        except asyncio.LimitOverrunError as exc:
            await reader.readexactly(exc.consumed)


def inherited_fd() -> int | None:
    """This process's end of the socket pair (:data:`MIRROR_ACK_FD_ENV`), taken once: the
    variable is dropped so that the processes this one starts do not take a number that means
    nothing to them, and the descriptor is not inherited by them."""
    global _inherited
    raw = os.environ.pop(MIRROR_ACK_FD_ENV, None)
    if raw is not None:
        with contextlib.suppress(ValueError, OSError):
            fd = int(raw)
            os.set_inheritable(fd, False)
            _inherited = fd
    return _inherited


class MirrorAck:
    """The API process's side: :meth:`wait` for a record to be on disk."""

    def __init__(self, fd: int, timeout_s: float) -> None:
        self._fd = fd
        self.timeout_s = timeout_s
        self._seq = itertools.count(1)
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._connecting = asyncio.Lock()  # creations arrive side by side: one connection
        #: Why no answer can come any more (the supervisor closed its end).
        self._gone: str | None = None

    @classmethod
    def from_environment(cls, timeout_s: float) -> MirrorAck | None:
        """The waiter of a role process standalone gave a socket to; None in any other."""
        fd = inherited_fd()
        return None if fd is None else cls(fd, timeout_s)

    async def wait(self, topic: str, partition: int, offset: int) -> None:
        """Return once the supervisor's mirror has the record on disk; raise
        :class:`NotDurable` if it says it cannot, is gone, or does not answer in time."""
        if self._gone is not None:
            raise NotDurable(self._gone)
        writer = await self._connect()
        seq = next(self._seq)
        answer = asyncio.get_running_loop().create_future()
        self._pending[seq] = answer
        try:
            writer.write(f"{seq} {topic} {partition} {offset}\n".encode())
            await asyncio.wait_for(asyncio.shield(answer), self.timeout_s)
        except TimeoutError:
            raise NotDurable(
                f"the embedded broker's mirror has not written the record to "
                f"KESTREAM_DATA_DIR within {self.timeout_s:g} s "
                "(KESTREAM_STANDALONE_ACK_TIMEOUT_S): standalone's supervisor is busy or "
                "stopped, and a crash now could lose it"
            ) from None
        except (ConnectionError, OSError) as exc:
            raise NotDurable(f"standalone's supervisor cannot be asked ({exc!r})") from None
        finally:
            self._pending.pop(seq, None)

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None:
                sock = socket.socket(fileno=os.dup(self._fd))
                _connections.add(sock)
                reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LINE_MAX)
                self._reader_task = asyncio.create_task(self._read(reader), name="mirror-ack")
                self._writer = writer
            return self._writer

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                line, overlong = await _read_line(reader)
                if not line:
                    break
                seq, _, rest = line.decode(errors="replace").rstrip("\n").partition(" ")
                answer = self._pending.get(int(seq)) if seq.isdigit() else None
                if answer is None or answer.done():
                    continue  # its asker gave up (or the line is not an answer)
                status, _, reason = rest.partition(" ")
                if status == "ok" and not overlong:
                    answer.set_result(None)
                else:
                    answer.set_exception(NotDurable(reason or "the broker mirror refused"))
            self._gone = "standalone's supervisor closed the mirror's socket (it is stopping)"
        except (ConnectionError, OSError, ValueError) as exc:
            self._gone = f"standalone's supervisor's socket failed ({exc!r})"
        for answer in self._pending.values():
            if not answer.done():
                answer.set_exception(NotDurable(self._gone))

    async def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.wait_closed()
        self._writer = self._reader_task = None


class MirrorAckServer:
    """The supervisor's side: one socket pair per role process hosting the API, each served
    on the supervisor's loop for as long as that process lives."""

    def __init__(self, store: Callable[[], BrokerStore | None]) -> None:
        #: The store whose mirror answers (None while the broker is being started again).
        self._store = store
        self._served: set[asyncio.Task[None]] = set()

    def pair(self) -> int:
        """A new socket pair: serves one end, returns the other (inheritable) for the child,
        which the caller closes once the child is started."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        theirs.set_inheritable(True)
        served = asyncio.get_running_loop().create_task(self._serve(ours), name="mirror-ack")
        self._served.add(served)
        served.add_done_callback(self._served.discard)
        return theirs.detach()

    async def close(self) -> None:
        for served in list(self._served):
            served.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await served

    async def _serve(self, sock: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=_LINE_MAX)
        asks: set[asyncio.Task[None]] = set()
        try:
            while True:
                line, overlong = await _read_line(reader)
                if not line:
                    break
                text = line.decode(errors="replace")
                if overlong:  # not a request this side sends: answered "down" by its seq
                    text = text.partition(" ")[0] + " ?"
                ask = asyncio.create_task(self._answer(writer, text))
                asks.add(ask)
                ask.add_done_callback(asks.discard)
        except (ConnectionError, OSError, ValueError) as exc:
            log.debug("a mirror-ack socket failed: %r", exc)
        finally:
            for ask in list(asks):
                ask.cancel()
            writer.close()

    async def _answer(self, writer: asyncio.StreamWriter, line: str) -> None:
        from aiokafka import TopicPartition  # the supervisor imports aiokafka after its spawns

        seq, _, rest = line.strip().partition(" ")
        try:
            topic, partition, offset = rest.split(" ")
            store = self._store()
            if store is None:
                raise RuntimeError("the embedded broker is being started again")
            await asyncio.wait_for(
                store.mirrored(TopicPartition(topic, int(partition)), int(offset)), _SERVE_MAX_S
            )
            answer = f"{seq} ok\n"
        except Exception as exc:  # every failure is the asker's answer
            reason = (str(exc).replace("\n", " ") or type(exc).__name__)[:_REASON_MAX]
            answer = f"{seq} down {reason}\n"
        with contextlib.suppress(ConnectionError, OSError):
            writer.write(answer.encode())
