"""The KV store on a broker: the compacted topic read as a global table, read-your-writes across
processes (two tables stand for two processes), expiry, deletion, a late reader, and the whole
path through ``kestream standalone``: a value set by one execution is read by ``kv()`` in the
next, and the API's KV routes.

``-s`` prints the read-after-write latency: how long a read in another table takes right after
a write returned (it waits for one sync of its own).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from api_stack import Stack, start_stack

from kestream.kv.values import KVEntry, KVType
from kestream.models.clock import utc_now
from kestream.runtime.context import connect
from kestream.runtime.kv_table import KVTable
from kestream.settings import Settings

if TYPE_CHECKING:
    from conftest import BrokerHandle

pytestmark = pytest.mark.integration


def _entry(key: str, value: Any, *, ttl: timedelta | None = None, ns: str = "kv.test") -> KVEntry:
    now = utc_now()
    return KVEntry(
        namespace=ns,
        key=key,
        type=KVType.JSON if isinstance(value, dict) else KVType.STRING,
        value=value,
        creationDate=now,
        updateDate=now,
        expirationDate=now + ttl if ttl is not None else None,
    )


async def test_read_your_writes_across_tables_expiry_and_a_late_reader(
    broker: BrokerHandle, topic_prefix: str
) -> None:
    ctx = await connect(Settings(topic_prefix=topic_prefix, broker=broker.bootstrap))
    writer, reader = KVTable(ctx), KVTable(ctx)
    await writer.start()
    await reader.start()
    try:
        # A read in another table right after the write returned sees it: no polling.
        await writer.aput(_entry("cursor", {"at": 1}))
        await reader.async_sync()  # as the executor before a batch, then kv() peeks
        got = reader.peek("kv.test", "cursor")
        assert got is not None and got.value == {"at": 1}
        await writer.aput(_entry("cursor", {"at": 2}))
        again = await reader.aget("kv.test", "cursor")
        assert again is not None and again.value == {"at": 2}

        await writer.aput(_entry("gone-soon", "x", ttl=timedelta(milliseconds=1)))
        await writer.aput(_entry("other", "y", ns="kv.other"))
        await asyncio.sleep(0.01)  # past the 1 ms TTL
        assert await reader.aget("kv.test", "gone-soon") is None  # expired: absent
        assert [e.key for e in await reader.alist("kv.test")] == ["cursor"]
        assert {e.key for e in await reader.aall()} == {"cursor", "gone-soon", "other"}

        await writer.adelete("kv.test", "cursor")
        await reader.async_sync()
        assert reader.peek("kv.test", "cursor") is None
        await writer.aput(_entry("one", "1"))
        await writer.aput(_entry("two", "2"))
        await writer.adelete_many([("kv.test", "one"), ("kv.test", "two")])  # one sync for both
        await reader.async_sync()
        assert reader.peek("kv.test", "one") is None and reader.peek("kv.test", "two") is None

        late = KVTable(ctx)
        await late.start()  # reads the whole topic before it answers
        try:
            other = late._live("kv.other", "other")
            assert other is not None and other.value == "y"
            assert late._live("kv.test", "cursor") is None
        finally:
            await late.stop()

        # The figure: a write acknowledged, then a read in the other table (which syncs).
        waits = []
        for round_ in range(20):
            await writer.aput(_entry("latency", str(round_)))
            began = time.perf_counter()
            await reader.async_sync()
            seen = reader.peek("kv.test", "latency")
            waits.append((time.perf_counter() - began) * 1000)
            assert seen is not None and seen.value == str(round_)
        print(
            f"\n[{ctx.kind}] KV read after write in another table: "
            f"p50 {statistics.median(waits):.1f} ms, max {max(waits):.1f} ms (20 rounds)"
        )
    finally:
        await reader.stop()
        await writer.stop()


SET_FLOW = """
id: remember
namespace: kv.flows
inputs:
  - id: value
    type: STRING
tasks:
  - id: set
    type: io.kestra.plugin.core.kv.Set
    key: cursor
    value: "{{ inputs.value }}"
    kvType: STRING
"""

READ_FLOW = """
id: recall
namespace: kv.flows
tasks:
  - id: read
    type: io.kestra.plugin.core.debug.Return
    format: "{{ kv('cursor') }}"
  - id: get
    type: io.kestra.plugin.core.kv.Get
    key: cursor
"""


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    prefix = f"it.kv.{time.time_ns()}."
    yield from start_stack(broker.bootstrap, prefix, Path(tmp_path_factory.mktemp("kv")))


def _run(stack: Stack, flow_id: str, fields: dict[str, str] | None = None) -> dict[str, Any]:
    reply = stack.post_form(f"/executions/kv.flows/{flow_id}", fields or {})
    assert reply.status == 200, reply.body
    return stack.wait_state(reply.json()["id"], {"SUCCESS", "FAILED", "WARNING"})


def _outputs(execution: dict[str, Any], task_id: str) -> Any:
    return next(r["outputs"] for r in execution["taskRunList"] if r["taskId"] == task_id)


def test_a_value_set_by_one_execution_is_read_by_the_next(stack: Stack) -> None:
    for source in (SET_FLOW, READ_FLOW):
        assert stack.post_yaml("/flows", source).status == 200
    for value in ("first", "second"):
        written = _run(stack, "remember", {"value": value})
        assert written["state"]["current"] == "SUCCESS", written
        # kv() renders in the executor process, Get runs in the worker process: both tables
        # read what the worker's Set wrote, with no wait in between.
        read = _run(stack, "recall")
        assert read["state"]["current"] == "SUCCESS", read
        assert _outputs(read, "read") == {"value": value}
        assert _outputs(read, "get") == {"value": value}


def test_kv_routes_in_kestra_shapes(stack: Stack) -> None:
    base = "/namespaces/kv.api/kv"
    assert stack.request("PUT", f"{base}/n", "42").status == 200
    assert stack.request("PUT", f"{base}/doc", '{"a": [1, 2]}').status == 200
    assert stack.request("PUT", f"{base}/text", "hello world").status == 200
    reply = stack.request("PUT", f"{base}/short", '"quoted"', headers={"ttl": "PT1H"})
    assert reply.status == 200
    assert stack.get(f"{base}/n").json() == {"type": "NUMBER", "value": 42}
    assert stack.get(f"{base}/doc").json() == {"type": "JSON", "value": {"a": [1, 2]}}
    assert stack.get(f"{base}/text").json() == {"type": "STRING", "value": "hello world"}
    listed = {e["key"]: e for e in stack.get(base).json()}
    assert sorted(listed) == ["doc", "n", "short", "text"]
    assert listed["short"]["expirationDate"] is not None and listed["n"]["expirationDate"] is None
    fields = {"key", "description", "creationDate", "updateDate", "expirationDate"}
    assert set(listed["n"]) == fields
    assert stack.request("DELETE", f"{base}/n").json() is True
    assert stack.request("DELETE", f"{base}/n").json() is False
    missing = stack.get(f"{base}/n")
    assert missing.status == 404 and "No value found for key 'n'" in missing.json()["message"]
    assert stack.request("PUT", f"{base}/bad%20key", "x").status == 400
    assert stack.get("/namespaces/kv.api/kv/doc", auth=None).status == 401
