"""The worker's stream of running tasks' log lines: batches, hand-over at the end, retries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from kestream.executor.commands import LogLine
from kestream.runtime.log_stream import LogStream


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

    async def send(self, namespace: str, flow_id: str, lines: list[LogLine]) -> None:
        self.entered.set()
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
