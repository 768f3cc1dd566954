"""Log lines that tasks write while they run, produced to ``logs`` in small batches.

A script's output must be readable while it runs, not only when it ends. The worker hands each
line to :meth:`LogStream.add` as it comes; every :data:`FLUSH_INTERVAL_S` the lines gathered so
far go out, one batch per job (records sized by :func:`records.log_records`, keyed by execution
id like the job's other records, so they stay in order on one partition). When the job ends,
:meth:`LogStream.take` waits for the batch in flight and hands back the lines not sent yet: they
go out with the result, and nothing already sent goes again.

A batch the broker refuses is put back in front of the job's next lines and sent again (with the
next batch, or with the result): lines are produced at least once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field

from kestream.executor.commands import LogLine

log = logging.getLogger("kestream.worker")

#: How long lines gather before they are produced (a batch per job per interval).
FLUSH_INTERVAL_S = 0.2

#: Produces one job's lines and waits for the broker's acknowledgement.
Send = Callable[[str, str, list[LogLine]], Awaitable[None]]


@dataclass(slots=True)
class _Pending:
    namespace: str
    flow_id: str
    lines: list[LogLine] = field(default_factory=list)


class LogStream:
    """Lines of running jobs, flushed every ``interval`` seconds through ``send``."""

    def __init__(self, send: Send, interval: float = FLUSH_INTERVAL_S) -> None:
        self._send = send
        self.interval = interval
        self._pending: dict[Hashable, _Pending] = {}
        self._flushing = asyncio.Lock()
        self._timer: asyncio.Task[None] | None = None
        #: Lines produced while their job ran.
        self.streamed = 0

    def add(self, job: Hashable, namespace: str, flow_id: str, line: LogLine) -> None:
        """Queue one line of a running job (called on the event loop)."""
        pending = self._pending.get(job)
        if pending is None:
            pending = self._pending[job] = _Pending(namespace, flow_id)
        pending.lines.append(line)
        if self._timer is None:
            self._timer = asyncio.create_task(self._flush_later(), name="log-stream")

    async def take(self, job: Hashable) -> list[LogLine]:
        """The job's lines not produced yet, once the batch in flight is acknowledged."""
        async with self._flushing:
            pending = self._pending.pop(job, None)
        return [] if pending is None else pending.lines

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
        """Produce every queued line now (one batch per job)."""
        async with self._flushing:
            batches, self._pending = self._pending, {}
            for job, batch in batches.items():
                try:
                    await self._send(batch.namespace, batch.flow_id, batch.lines)
                except Exception as exc:  # put back: sent again with the next batch or result
                    log.warning(
                        "producing %d log lines failed (%s); retrying", len(batch.lines), exc
                    )
                    later = self._pending.setdefault(job, _Pending(batch.namespace, batch.flow_id))
                    later.lines[:0] = batch.lines
                else:
                    self.streamed += len(batch.lines)
