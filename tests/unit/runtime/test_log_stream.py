"""The worker's stream of running tasks' log lines: batches, hand-over at the end, retries."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiokafka.errors import PolicyViolationError, TopicAuthorizationFailedError

from kestream.executor.commands import LogLine
from kestream.runtime.log_stream import LogStream
from kestream.tasks.scripts.process import run_process


def _line(job: str, text: str) -> LogLine:
    return LogLine(job, "run", "task", 1, "INFO", text, datetime(2026, 1, 1, tzinfo=UTC))


class Sink:
    """A ``send`` that records batches; it can be held (a slow broker) or made to fail once."""

    def __init__(self) -> None:
        self.batches: list[tuple[str, str, list[str]]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.failures = 0
        self.entered = asyncio.Event()
        #: The flow ids of the batches handed over, acknowledged or not.
        self.started: list[str] = []

    async def send(self, namespace: str, flow_id: str, lines: list[LogLine]) -> None:
        self.entered.set()
        self.started.append(flow_id)
        await self.gate.wait()
        if self.failures:
            self.failures -= 1
            raise ConnectionError("broker away")
        self.batches.append((namespace, flow_id, [line.message for line in lines]))


async def test_lines_go_out_in_one_batch_per_job_without_waiting_for_the_end() -> None:
    sink = Sink()
    stream = LogStream(sink.send, interval=0.01)
    stream.add("a", "ns", "flow-a", _line("a", "1"))
    stream.add("b", "ns", "flow-b", _line("b", "x"))
    stream.add("a", "ns", "flow-a", _line("a", "2"))
    while len(sink.batches) < 2:
        await asyncio.sleep(0.01)
    assert sorted(sink.batches) == [("ns", "flow-a", ["1", "2"]), ("ns", "flow-b", ["x"])]
    assert await stream.take("a") == []  # nothing sent twice
    assert stream.streamed == 3
    await stream.close()


async def test_take_waits_for_the_batch_in_flight_and_returns_the_rest() -> None:
    sink = Sink()
    sink.gate.clear()
    stream = LogStream(sink.send, interval=0.01)
    stream.add("a", "ns", "f", _line("a", "sent"))
    await sink.entered.wait()  # the batch is being produced, not acknowledged yet
    stream.add("a", "ns", "f", _line("a", "late"))
    taking = asyncio.ensure_future(stream.take("a"))
    await asyncio.sleep(0.05)
    assert not taking.done()
    sink.gate.set()
    rest = await taking
    assert [line.message for line in rest] == ["late"]
    assert sink.batches == [("ns", "f", ["sent"])]
    await stream.close()


async def _turns(count: int = 20) -> None:
    """Let the loop run ``count`` times (no clock involved)."""
    for _ in range(count):
        await asyncio.sleep(0)


async def test_one_flush_hands_every_jobs_batch_over_before_any_is_acknowledged() -> None:
    sink = Sink()
    sink.gate.clear()  # no acknowledgement comes until the gate opens
    stream = LogStream(sink.send, interval=3600)
    stream.add("a", "ns", "flow-a", _line("a", "1"))
    stream.add("b", "ns", "flow-b", _line("b", "2"))
    flushing = asyncio.ensure_future(stream.flush())
    await _turns()
    assert sorted(sink.started) == ["flow-a", "flow-b"]  # one round trip, not one per job
    sink.gate.set()
    await flushing
    assert stream.streamed == 2
    await stream.close()


async def test_take_does_not_wait_for_a_flush_without_the_jobs_lines() -> None:
    sink = Sink()
    sink.gate.clear()
    stream = LogStream(sink.send, interval=3600)
    stream.add("a", "ns", "f", _line("a", "in flight"))
    flushing = asyncio.ensure_future(stream.flush())
    await sink.entered.wait()
    stream.add("b", "ns", "f", _line("b", "queued"))
    taking = asyncio.ensure_future(stream.take("b"))
    await _turns()
    assert taking.done()  # a's unacknowledged batch does not hold b's result back
    assert [line.message for line in taking.result()] == ["queued"]
    sink.gate.set()
    await flushing
    await stream.close()


async def test_take_waiting_for_a_refused_batch_gets_those_lines_first() -> None:
    sink = Sink()
    sink.gate.clear()
    sink.failures = 1
    stream = LogStream(sink.send, interval=3600)
    stream.add("a", "ns", "f", _line("a", "one"))
    flushing = asyncio.ensure_future(stream.flush())
    await sink.entered.wait()
    stream.add("a", "ns", "f", _line("a", "two"))
    taking = asyncio.ensure_future(stream.take("a"))
    await _turns()
    assert not taking.done()
    sink.gate.set()
    assert [line.message for line in await taking] == ["one", "two"]
    assert sink.batches == []
    await flushing
    await stream.close()


async def test_a_refused_batch_is_sent_again_before_later_lines() -> None:
    sink = Sink()
    sink.failures = 1
    stream = LogStream(sink.send, interval=0.01)
    stream.add("a", "ns", "f", _line("a", "one"))
    while sink.failures:
        await asyncio.sleep(0.01)
    stream.add("a", "ns", "f", _line("a", "two"))

    def sent() -> list[str]:
        return [text for _, _, lines in sink.batches for text in lines]

    while len(sent()) < 2:
        await asyncio.sleep(0.01)
    assert sent() == ["one", "two"]  # in order, once each
    await stream.close()


@pytest.mark.parametrize(
    "refusal",
    [TopicAuthorizationFailedError("logs"), PolicyViolationError("no records on logs")],
    ids=["authorization", "record"],
)
async def test_a_batch_refused_for_good_is_left_out_at_once(refusal: BaseException) -> None:
    """Refused for what it is, or because the worker may not write the topic, a batch would
    be refused again: it is handed to ``refused`` at once and not sent again, rather than
    every interval until the job ends."""
    sends: list[list[str]] = []
    told: list[tuple[object, list[BaseException]]] = []

    async def send(namespace: str, flow_id: str, lines: list[LogLine]) -> None:
        sends.append([line.message for line in lines])
        if len(sends) == 1:
            raise refusal

    stream = LogStream(send, interval=0.01, refused=lambda job, errors: told.append((job, errors)))
    stream.add("a", "ns", "f", _line("a", "one"))
    async with asyncio.timeout(5):  # told in the flush that was refused
        while not told:
            await asyncio.sleep(0.01)
    assert told == [("a", [refusal])]
    stream.add("a", "ns", "f", _line("a", "two"))
    async with asyncio.timeout(5):
        while len(sends) < 2:
            await asyncio.sleep(0.01)
    assert sends == [["one"], ["two"]]  # "one" never again
    assert await stream.take("a") == []
    await stream.close()


async def test_a_script_printing_fast_keeps_the_queue_bounded(tmp_path: Path) -> None:
    """``yes`` prints far faster than any broker acks: past the cap, lines are counted, not kept."""
    stream = LogStream(Sink().send, interval=3600, max_lines=1000)  # nothing flushed meanwhile
    most = 0

    def on_line(text: str, is_stderr: bool) -> None:
        nonlocal most
        stream.add("a", "ns", "f", _line("a", text))
        most = max(most, stream.queued("a")[0])

    total = 200_000
    argv = ["/bin/sh", "-c", f"yes | head -n {total}"]
    code = await run_process(argv, cwd=tmp_path, env={"PATH": os.defpath}, on_line=on_line)
    assert code == 0
    assert most == 1000
    lines = await stream.take("a")
    assert [line.message for line in lines[:-1]] == ["y"] * 1000
    assert lines[-1].level == "WARN"
    assert lines[-1].message.startswith(f"{total - 1000} log lines dropped")
    assert stream.queued("a") == (0, 0)
    await stream.close()


async def test_the_queue_is_capped_in_characters_and_long_lines_are_cut() -> None:
    stream = LogStream(Sink().send, interval=3600, max_chars=150, max_line_chars=40)
    stream.add("a", "ns", "f", _line("a", "x" * 1000))
    stream.add("a", "ns", "f", _line("a", "y" * 50))
    stream.add("a", "ns", "f", _line("a", "z" * 30))  # past 150 characters queued: dropped
    lines = await stream.take("a")
    cut = "x" * 40 + " [... cut: 960 more characters]"
    assert [line.message for line in lines[:2]] == [
        cut,
        "y" * 40 + " [... cut: 10 more characters]",
    ]
    assert len(lines) == 3 and lines[2].level == "WARN"
    assert lines[2].message.startswith("1 log lines dropped")
    await stream.close()


async def test_the_dropped_count_goes_out_with_the_next_batch() -> None:
    sink = Sink()
    stream = LogStream(sink.send, interval=0.01, max_lines=2)
    for text in "abcde":
        stream.add("a", "ns", "f", _line("a", text))
    while not sink.batches:
        await asyncio.sleep(0.01)
    ((_, _, messages),) = sink.batches
    assert messages[:2] == ["a", "b"] and messages[2].startswith("3 log lines dropped")
    assert await stream.take("a") == []
    await stream.close()
