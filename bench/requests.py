"""Broker requests and doorbell rings per execution, counted by the kernel (``--count-requests``).

A request costs its sender a ``sendto`` and the broker a read, a decode and an answer, and on
loopback the sender's ``sendto`` also carries the delivery's work: fewer, larger produce and
fetch requests are what cut Tansu's CPU and the roles'. The kernel counts them without touching
the processes: ``perf stat`` on the ``sys_enter_sendto`` tracepoint of each process over the
steady window (:mod:`bench.steady`). A Kafka request is one ``sendto`` on a connected socket (no
address: aiokafka writes a request whole); a doorbell ring (:mod:`kestream.runtime.doorbell`)
is one ``sendto`` to a named unix socket (an address), so one filter tells them apart. The
broker's answers are counted the same way.

Needs ``perf`` and the right to trace (``perf_event_paranoid`` at most 2 for one's own
processes, or root); without them the row simply has no counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The two counts of a process: ``sendto`` without an address (Kafka requests, or the broker's
#: answers), then with one (doorbell rings).
_EVENTS = (
    ("-e", "syscalls:sys_enter_sendto", "--filter", "addr == 0"),
    ("-e", "syscalls:sys_enter_sendto", "--filter", "addr != 0"),
)


@dataclass(frozen=True, slots=True)
class Sends:
    """What one process sent over a window."""

    requests: int
    rings: int


def perf_command(pid: int, seconds: float) -> list[str] | None:
    """The ``perf stat`` command counting ``pid``'s sends for ``seconds``; None without perf."""
    perf = shutil.which("perf")
    if perf is None:
        return None
    events = [part for event in _EVENTS for part in event]
    return [perf, "stat", "-x", ",", *events, "-p", str(pid), "--", "sleep", f"{seconds:.3f}"]


def parse_perf(text: str) -> Sends | None:
    """The counts in ``perf stat -x ,``'s output (its stderr), in :data:`_EVENTS`' order; None
    when perf could not count (not permitted, no such tracepoint, the process gone)."""
    counts: list[int] = []
    for line in text.splitlines():
        fields = line.split(",")
        if len(fields) > 2 and fields[2].startswith("syscalls:sys_enter_sendto"):
            if not fields[0].isdigit():  # "<not supported>", "<not counted>"
                return None
            counts.append(int(fields[0]))
    if len(counts) != len(_EVENTS):
        return None
    return Sends(counts[0], counts[1])


async def count_sends(pids: Mapping[str, Sequence[int]], seconds: float) -> dict[str, Sends]:
    """Count the sends of every process for ``seconds``, summed per name (a role's processes);
    names whose processes could not all be counted are left out."""
    counted: dict[str, list[Sends | None]] = {}

    async def one(name: str, pid: int) -> None:
        command = perf_command(pid, seconds)
        if command is None:
            counted.setdefault(name, []).append(None)
            return
        proc = await asyncio.create_subprocess_exec(
            *command, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        try:
            _, err = await asyncio.wait_for(proc.communicate(), seconds + 10.0)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            counted.setdefault(name, []).append(None)
            return
        counted.setdefault(name, []).append(parse_perf(err.decode(errors="replace")))

    await asyncio.gather(*(one(name, pid) for name, group in pids.items() for pid in group))
    totals: dict[str, Sends] = {}
    for name, found in counted.items():
        if found and all(sends is not None for sends in found):
            totals[name] = Sends(
                sum(s.requests for s in found if s is not None),
                sum(s.rings for s in found if s is not None),
            )
    return totals


def per_execution(totals: Mapping[str, Sends], ended: int) -> dict[str, dict[str, float]]:
    """Requests and rings per execution ended in the window, per process name and in all."""
    if not ended or not totals:
        return {}
    requests = {name: round(s.requests / ended, 2) for name, s in totals.items()}
    rings = {name: round(s.rings / ended, 2) for name, s in totals.items()}
    return {"requests": requests, "rings": rings}
