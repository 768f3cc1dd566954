"""The KV tasks and ``kv()`` through ``kestream.testing``: the driver's store, TTLs, overwrite,
typed values, errors, PurgeKV's filters, and a value carried from one execution to the next."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta

from kestream.kv.values import KVEntry, KVType
from kestream.models.clock import utc_now
from kestream.models.state import StateType
from kestream.testing import Driver

WRITE = """
id: write
namespace: company.team
tasks:
  - id: set
    type: io.kestra.plugin.core.kv.Set
    key: "{{ inputs.key }}"
    value: "{{ inputs.value }}"
    kvType: "{{ inputs.kind }}"
inputs:
  - id: key
    type: STRING
  - id: value
    type: STRING
  - id: kind
    type: STRING
"""


def _outputs(execution, task_id):  # type: ignore[no-untyped-def]
    return next(run.outputs for run in execution.taskRunList if run.taskId == task_id)


def _seed(driver: Driver, namespace: str, key: str, value: object, ttl: timedelta | None) -> None:
    now = utc_now()
    entry = KVEntry(
        namespace=namespace,
        key=key,
        type=KVType.STRING,
        value=value,
        creationDate=now,
        updateDate=now,
        expirationDate=now + ttl if ttl is not None else None,
    )
    asyncio.run(driver.kv.aput(entry))


def test_a_value_set_by_one_execution_is_read_by_kv_in_the_next() -> None:
    reader = """
id: read
namespace: company.team
tasks:
  - id: same_namespace
    type: io.kestra.plugin.core.debug.Return
    format: "{{ kv('counter') + 1 }}"
  - id: other_namespace
    type: io.kestra.plugin.core.debug.Return
    format: "{{ kv('counter', 'elsewhere') ?? 'none' }}"
"""
    with Driver() as driver:
        driver.deploy(WRITE)
        driver.deploy(reader)
        written = driver.start(
            "company.team", "write", {"key": "counter", "value": "41", "kind": "NUMBER"}
        )
        assert written.state.current is StateType.SUCCESS
        entry = driver.kv.peek("company.team", "counter")
        assert entry is not None and entry.type is KVType.NUMBER and entry.value == 41
        read = driver.start("company.team", "read")
        assert _outputs(read, "same_namespace") == {"value": "42"}
        assert _outputs(read, "other_namespace") == {"value": "none"}


def test_a_value_not_of_its_kv_type_fails_the_task_naming_the_type() -> None:
    with Driver() as driver:
        driver.deploy(WRITE)
        failed = driver.start("company.team", "write", {"key": "k", "value": "x", "kind": "NUMBER"})
        assert failed.state.current is StateType.FAILED
        assert any("is not a NUMBER" in line.message for line in driver.logs(failed.id))
        assert driver.kv.peek("company.team", "k") is None


def test_ttl_description_and_get_keys_with_prefix() -> None:
    flow = """
id: ttl
namespace: company.team
tasks:
  - id: short
    type: io.kestra.plugin.core.kv.Set
    key: job_short
    value: a
    ttl: PT0.001S
  - id: past_the_ttl
    type: io.kestra.plugin.core.flow.Sleep
    duration: PT0.01S
  - id: long
    type: io.kestra.plugin.core.kv.Set
    key: job_long
    value: {"nested": [1, 2]}
    ttl: PT1H
    kvDescription: kept an hour
  - id: other
    type: io.kestra.plugin.core.kv.Set
    key: unrelated
    value: 3
  - id: keys
    type: io.kestra.plugin.core.kv.GetKeys
    prefix: job_
  - id: get
    type: io.kestra.plugin.core.kv.Get
    key: job_short
"""
    with Driver() as driver:
        driver.deploy(flow)
        execution = driver.start("company.team", "ttl")
        assert execution.state.current is StateType.SUCCESS
        assert _outputs(execution, "keys") == {"keys": ["job_long"]}  # job_short expired
        assert _outputs(execution, "get") == {"value": None}
        long = driver.kv.peek("company.team", "job_long")
        assert long is not None and long.type is KVType.JSON and long.value == {"nested": [1, 2]}
        assert long.description == "kept an hour" and long.expirationDate is not None


def test_errors_on_missing_keys_and_missing_stores() -> None:
    flow = """
id: missing
namespace: company.team
tasks:
  - id: get
    type: io.kestra.plugin.core.kv.Get
    key: nothing
    errorOnMissing: true
"""
    with Driver() as driver:
        driver.deploy(flow)
        failed = driver.start("company.team", "missing")
        assert failed.state.current is StateType.FAILED
        messages = [line.message for line in driver.logs(failed.id)]
        assert any(
            "The key 'nothing' does not exist in the namespace 'company.team'." in m
            for m in messages
        )


def test_purge_kv_takes_expired_keys_of_the_namespaces_and_their_children() -> None:
    flow = """
id: purge
namespace: system
tasks:
  - id: purge_kv
    type: io.kestra.plugin.core.kv.PurgeKV
    expiredOnly: true
    namespaces:
      - company
    includeChildNamespaces: true
"""
    pattern = """
id: purge_pattern
namespace: system
tasks:
  - id: purge_kv
    type: io.kestra.plugin.core.kv.PurgeKV
    behavior:
      type: key
      expiredOnly: false
    namespacePattern: "comp*"
    keyPattern: "AI_*"
"""
    with Driver() as driver:
        expired = timedelta(microseconds=-1)
        _seed(driver, "company", "old", "x", expired)
        _seed(driver, "company.team", "old", "x", expired)
        _seed(driver, "company.team", "AI_live", "x", None)
        _seed(driver, "company.team", "live", "x", None)
        _seed(driver, "elsewhere", "old", "x", expired)
        driver.deploy(flow)
        driver.deploy(pattern)
        execution = driver.start("system", "purge")
        assert _outputs(execution, "purge_kv") == {"size": 2}
        remaining = sorted(k for (k, _) in [(e.namespace + "/" + e.key, 0) for e in _all(driver)])
        assert remaining == ["company.team/AI_live", "company.team/live", "elsewhere/old"]
        execution = driver.start("system", "purge_pattern")
        assert _outputs(execution, "purge_kv") == {"size": 1}
        assert driver.kv.peek("company.team", "AI_live") is None
        assert driver.kv.peek("company.team", "live") is not None


def test_purge_kv_deletes_every_key_at_once_and_may_leave_children_alone() -> None:
    """One ``adelete_many`` (one sync on a broker), never a deletion and a sync per key."""
    flow = """
id: purge
namespace: system
tasks:
  - id: purge_kv
    type: io.kestra.plugin.core.kv.PurgeKV
    namespaces: [company]
    includeChildNamespaces: false
"""
    with Driver() as driver:
        expired = timedelta(microseconds=-1)
        for key in ("a", "b", "c"):
            _seed(driver, "company", key, "x", expired)
        _seed(driver, "company.team", "child", "x", expired)
        calls: list[object] = []
        many, one = driver.kv.adelete_many, driver.kv.adelete

        async def deleting_many(keys: Sequence[tuple[str, str]]) -> None:
            calls.append(sorted(keys))
            await many(keys)

        async def deleting_one(namespace: str, key: str) -> None:
            calls.append((namespace, key))
            await one(namespace, key)

        driver.kv.adelete_many = deleting_many  # type: ignore[method-assign]
        driver.kv.adelete = deleting_one  # type: ignore[method-assign]
        driver.deploy(flow)
        execution = driver.start("system", "purge")
        assert _outputs(execution, "purge_kv") == {"size": 3}
        assert calls == [[("company", "a"), ("company", "b"), ("company", "c")]]
        assert [e.key for e in _all(driver)] == ["child"]


def _all(driver: Driver) -> list[KVEntry]:
    return asyncio.run(driver.kv.aall())
