"""HandOver.send_if with ``refused``: a refused record's failure is its acknowledgement and the
records after it are still handed over; any other failure raises, and leaves no failed
acknowledgement unread (asyncio would log "Future exception was never retrieved")."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from kestream.runtime.hand_over import HandOver


class _Producer:
    """Raises, for a topic named in ``errors``, its error as the record is handed over."""

    def __init__(self, errors: dict[str, Exception]) -> None:
        self.errors = errors
        self.handed: list[str] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        if (error := self.errors.get(topic)) is not None:
            raise type(error)(*error.args)  # a new one: a raise's frames are not kept here
        self.handed.append(topic)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(topic)
        return done


def _refused(exc: BaseException) -> bool:
    return isinstance(exc, ValueError)


async def test_a_refused_record_gets_its_failure_as_its_acknowledgement() -> None:
    producer = _Producer({"bad": ValueError("too large")})
    sends = [("a", b"1", None), ("bad", b"2", None), ("b", b"3", None)]
    acks = await HandOver().send_if(producer, sends, None, refused=_refused)
    assert acks is not None
    results = await asyncio.gather(*acks, return_exceptions=True)
    assert results[0] == "a" and isinstance(results[1], ValueError) and results[2] == "b"
    assert producer.handed == ["a", "b"]


async def test_another_failure_raises_and_leaves_no_refused_acknowledgement_unread() -> None:
    unread: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: unread.append(context))
    try:
        producer = _Producer({"bad": ValueError("too large"), "away": RuntimeError("closed")})
        sends = [("bad", b"1", None), ("away", b"2", None), ("b", b"3", None)]
        with pytest.raises(RuntimeError, match="closed") as raised:
            await HandOver().send_if(producer, sends, None, refused=_refused)
        del raised  # the raise's frames, and the failed futures only they hold, are freed
        gc.collect()
        assert producer.handed == []
        assert unread == []
    finally:
        loop.set_exception_handler(previous)
