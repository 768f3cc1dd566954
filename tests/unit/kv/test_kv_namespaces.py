"""A KV namespace follows the flow namespace rule everywhere it enters (an entry, the tasks,
``kv()``): a ``/`` in it would make the record key ``namespace/key`` ambiguous, and a tombstone
of ``a/b/c`` delete another entry than the one written."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from kestream.kv.values import KVEntry, KVType, KVValueError, check_namespace
from kestream.models.state import StateType
from kestream.runtime.kv_table import KVTable, kv_key
from kestream.testing import Driver

NOW = datetime(2026, 1, 2, tzinfo=UTC)


def _entry(namespace: str, key: str = "k") -> KVEntry:
    return KVEntry(
        namespace=namespace, key=key, type=KVType.STRING, value="v",
        creationDate=NOW, updateDate=NOW,
    )  # fmt: skip


@pytest.mark.parametrize("namespace", ["a/b", "A.b", "", ".a", "a b"])
def test_a_namespace_kestra_refuses_is_refused(namespace: str) -> None:
    with pytest.raises(KVValueError, match="invalid"):
        check_namespace(namespace)
    with pytest.raises(ValidationError):
        _entry(namespace)
    with pytest.raises(ValidationError):
        _entry("company.team", "b/c")  # nor a key with a slash


def test_the_tasks_and_kv_refuse_one() -> None:
    flow = """
id: ns
namespace: company.team
tasks:
  - id: set
    type: io.kestra.plugin.core.kv.Set
    namespace: "company/team"
    key: k
    value: v
"""
    reading = """
id: reads
namespace: company.team
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ kv('k', 'company/team') }}"
"""
    with Driver() as driver:
        driver.deploy(flow)
        driver.deploy(reading)
        for flow_id in ("ns", "reads"):
            execution = driver.start("company.team", flow_id, {})
            assert execution.state.current is StateType.FAILED
            messages = [line.message for line in driver.logs(execution.id)]
            assert any("'company/team' is invalid" in message for message in messages)


def test_a_tombstone_splits_at_the_last_slash() -> None:
    """An entry of a namespace with a slash, written before namespaces were checked, is still
    deleted by its own tombstone (keys never hold a slash)."""
    ctx: Any = SimpleNamespace(settings=SimpleNamespace(kv_sync_timeout_s=1.0))
    table = KVTable(ctx)
    table._entries[("a/b", "c")] = _entry("a.b", "c")
    table._entries[("a", "b/c")] = _entry("a", "x")
    record: Any = SimpleNamespace(key=kv_key("a/b", "c"), value=None, offset=0)
    table._apply(record)
    assert list(table._entries) == [("a", "b/c")]
