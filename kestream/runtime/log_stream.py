"""Log lines that tasks write while they run, produced to ``logs`` in small batches.

A script's output must be readable while it runs, not only when it ends. The worker hands each
line to :meth:`LogStream.add` as it comes; every :data:`FLUSH_INTERVAL_S` the lines gathered so
far go out, one batch per job (records sized by :func:`records.log_records`, keyed by execution
id like the job's other records, so they stay in order on one partition). When the job ends,
:meth:`LogStream.take` waits for the batch in flight if it holds lines of that job (a job whose
lines are not in it does not wait) and hands back the lines not sent yet: they go out with the
result after the ones sent, and nothing already sent goes again. One flush produces every job's
batch at once and waits for their acknowledgements together: one broker round trip, however
many jobs log.

A batch the broker does not take while it is away is put back in front of the job's next lines
and sent again (with the next batch, or with the result): lines are produced at least once. A
batch refused for good (:func:`~kestream.runtime.produce_faults.permanent_fault`: for what its
records are, or because the worker may not write the logs topic) would be refused again each
interval until the job ends: it is left out at once and handed to ``refused``, which deals with
it as with the lines refused with a job's result (the worker logs it, and fails on an
authorization).

**Bounded.** A script can print far faster than the broker acknowledges (``yes``, ``cat`` of a
big file), so what waits for one job is capped: at most ``max_lines`` lines and ``max_chars``
characters (a line longer than ``max_line_chars`` is cut, with a marker saying so). Lines past
the cap are dropped, not queued, and counted: the job's next batch ends with one ``WARN`` line
saying how many were dropped. Dropping rather than blocking the script keeps a chatty script's
cost on its own log, and the worker's memory bounded whatever the broker does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field, replace

from kestream.executor.commands import LogLine
from kestream.runtime.produce_faults import permanent_fault

log = logging.getLogger("kestream.worker")

#: How long lines gather before they are produced (a batch per job per interval).
FLUSH_INTERVAL_S = 0.2
#: At most this many lines wait for one job.
MAX_QUEUED_LINES = 20_000
#: At most this many characters of messages wait for one job.
MAX_QUEUED_CHARS = 16 << 20
#: A longer message is cut to this many characters.
MAX_LINE_CHARS = 64 << 10

#: Produces one job's lines and waits for the broker's acknowledgement.
Send = Callable[[str, str, list[LogLine]], Awaitable[None]]
#: Told of a job's lines refused for good (the job, the refusals): they are not sent again.
Refused = Callable[[Hashable, list[BaseException]], None]


@dataclass(slots=True)
class _Pending:
    namespace: str
    flow_id: str
    lines: list[LogLine] = field(default_factory=list)
    chars: int = 0
    #: Lines dropped over the cap since the last batch, and the last of them (for its fields).
    dropped: int = 0
    last_dropped: LogLine | None = None

    def batch(self) -> list[LogLine]:
        """The lines to produce, ended by one ``WARN`` line if some were dropped."""
        if self.last_dropped is None:
            return self.lines
        note = (
            f"{self.dropped} log lines dropped: the task logged faster than they could be produced"
        )
        return [*self.lines, replace(self.last_dropped, level="WARN", message=note)]


class LogStream:
    """Lines of running jobs, flushed every ``interval`` seconds through ``send``; those
    refused for good go to ``refused`` (by default only logged)."""

    def __init__(
        self,
        send: Send,
        interval: float = FLUSH_INTERVAL_S,
        *,
        refused: Refused | None = None,
        max_lines: int = MAX_QUEUED_LINES,
        max_chars: int = MAX_QUEUED_CHARS,
        max_line_chars: int = MAX_LINE_CHARS,
    ) -> None:
        self._send = send
        self._refused = refused or _log_refused
        self.interval = interval
        self.max_lines = max_lines
        self.max_chars = max_chars
        self.max_line_chars = max_line_chars
        self._pending: dict[Hashable, _Pending] = {}
        self._flushing = asyncio.Lock()
        #: The jobs whose lines the flush under way produces, and that flush's end.
        self._sending: dict[Hashable, asyncio.Future[None]] = {}
        self._timer: asyncio.Task[None] | None = None
        #: Lines produced while their job ran.
        self.streamed = 0

    def add(self, job: Hashable, namespace: str, flow_id: str, line: LogLine) -> None:
        """Queue one line of a running job (called on the event loop)."""
        pending = self._pending.get(job)
        if pending is None:
            pending = self._pending[job] = _Pending(namespace, flow_id)
        line = self._cut(line)
        size = len(line.message)
        if len(pending.lines) >= self.max_lines or pending.chars + size > self.max_chars:
            pending.dropped += 1
            pending.last_dropped = line
        else:
            pending.lines.append(line)
            pending.chars += size
        if self._timer is None:
            self._timer = asyncio.create_task(self._flush_later(), name="log-stream")

    def queued(self, job: Hashable) -> tuple[int, int]:
        """How many lines and characters wait for ``job``."""
        pending = self._pending.get(job)
        return (0, 0) if pending is None else (len(pending.lines), pending.chars)

    async def take(self, job: Hashable) -> list[LogLine]:
        """The job's lines not produced yet, once its batch in flight (if any) is acknowledged
        or put back: the job's result, sent after them, never overtakes its own lines."""
        while (sending := self._sending.get(job)) is not None:
            await asyncio.shield(sending)
        pending = self._pending.pop(job, None)
        return [] if pending is None else pending.batch()

    def _cut(self, line: LogLine) -> LogLine:
        over = len(line.message) - self.max_line_chars
        if over <= 0:
            return line
        marker = f" [... cut: {over} more characters]"
        return replace(line, message=line.message[: self.max_line_chars] + marker)

    async def close(self) -> None:
        """Stop the timer; lines still queued are dropped (their jobs run again elsewhere)."""
        if self._timer is not None:
            self._timer.cancel()
            await asyncio.gather(self._timer, return_exceptions=True)
            self._timer = None
        self._pending.clear()

    async def _flush_later(self) -> None:
        try:
            while self._pending:
                await asyncio.sleep(self.interval)
                await self.flush()
        finally:
            self._timer = None

    async def flush(self) -> None:
        """Produce every queued line now: one batch per job, all sent at once, acknowledged
        together (one round trip however many jobs logged)."""
        async with self._flushing:
            batches, self._pending = self._pending, {}
            if not batches:
                return
            done = asyncio.get_running_loop().create_future()
            sending = {job: pending.batch() for job, pending in batches.items()}
            self._sending.update(dict.fromkeys(sending, done))
            try:
                outcomes = await asyncio.gather(
                    *(
                        self._send(batches[job].namespace, batches[job].flow_id, lines)
                        for job, lines in sending.items()
                    ),
                    return_exceptions=True,
                )
                for (job, lines), outcome in zip(sending.items(), outcomes, strict=True):
                    if isinstance(outcome, BaseException) and permanent_fault(outcome):
                        self._refused(job, [outcome])  # left out: refused again if sent again
                    elif isinstance(outcome, BaseException):
                        self._put_back(job, batches[job], lines, outcome)
                    else:
                        self.streamed += len(lines)
            finally:
                for job in sending:
                    self._sending.pop(job, None)
                done.set_result(None)

    def _put_back(
        self, job: Hashable, sent: _Pending, lines: list[LogLine], exc: BaseException
    ) -> None:
        """A batch the broker did not take goes in front of the job's later lines (sent again
        with the next batch, or with the result)."""
        log.warning("producing %d log lines failed (%s); retrying", len(lines), exc)
        later = self._pending.setdefault(job, _Pending(sent.namespace, sent.flow_id))
        later.lines[:0] = lines
        later.chars += sum(len(line.message) for line in lines)


def _log_refused(job: Hashable, failures: list[BaseException]) -> None:
    log.error("log lines of %s refused (%s): left out", job, failures[0])
