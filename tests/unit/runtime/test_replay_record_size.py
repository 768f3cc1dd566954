"""A replay's record carries the replayed execution's JSON: the client holds the whole record to
the record limit (the API's 413 names it) and only its creation part to the smaller budget of a
new execution's header, which its updates repeat and the snapshot does not."""

from __future__ import annotations

import asyncio

import pytest

from kestream.client import Client
from kestream.executor import events as ev
from kestream.runtime.context import BrokerContext
from kestream.runtime.record_limit import RecordLimit, RecordTooLarge
from kestream.runtime.topics import Topics
from kestream.settings import Settings

LIMIT = RecordLimit(64 * 1024, "KESTREAM_MAX_RECORD_BYTES")


def _client() -> Client:
    settings = Settings(broker="unused:9092")
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings), learnt_limit=LIMIT)
    return Client(ctx)


def _replay(snapshot_bytes: int) -> ev.ExecutionCreated:
    snapshot = {"id": "old", "namespace": "n", "flowId": "f", "blob": "x" * snapshot_bytes}
    return ev.ExecutionCreated("new", "n", "f", replay=ev.ReplayFrom(snapshot, "run"))


def test_a_replay_larger_than_a_header_but_within_the_record_limit_is_sent() -> None:
    event = _replay(LIMIT.header_bytes + 1_000)
    assert LIMIT.header_bytes + 1_000 < LIMIT.value_bytes
    # Past both checks, it reaches the producer (none here).
    with pytest.raises(RuntimeError, match="not connected"):
        asyncio.run(_client().send(event))


def test_a_replay_over_the_record_limit_is_refused_naming_it() -> None:
    with pytest.raises(RecordTooLarge) as refused:
        asyncio.run(_client().send(_replay(LIMIT.value_bytes)))
    assert str(refused.value).startswith("the replay's record (the replayed execution's JSON) is ")
    assert refused.value.limit == LIMIT.value_bytes
