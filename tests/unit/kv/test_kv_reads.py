"""kv() never waits on the broker where it renders: its caller awaits one sync of the store
first (the executor before a batch, the worker before its last-moment render), then every kv()
reads the store as it stands (``peek``), however many calls the text makes."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest

from kestream.executor.flow_registry import FlowRegistry
from kestream.kv.memory import MemoryKVStore
from kestream.kv.store import calls_kv
from kestream.kv.values import KVEntry
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.testing import Driver


class CountingStore(MemoryKVStore):
    """The driver's store, counting syncs and reads (it has no blocking read to call)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    async def async_sync(self) -> None:
        self.events.append("sync")

    def peek(self, namespace: str, key: str) -> KVEntry | None:
        self.events.append(f"peek {key}")
        return super().peek(namespace, key)


@pytest.fixture
def secret(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("SECRET_TOKEN", base64.b64encode(b"t0ken-value").decode())
    yield


def test_calls_kv_finds_the_calls_a_template_may_make() -> None:
    assert calls_kv("{{ kv('a') }}") and calls_kv('{{ kv ("a", errorOnMissing=true) }}')
    assert not calls_kv("{{ inputs.kv }}") and not calls_kv("{{ mykv('a') }}")


def test_the_registry_knows_whether_a_flow_calls_kv() -> None:
    registry = FlowRegistry()
    registry.put(parse_flow(_log_flow("a", "hi")))
    assert not registry.calls_kv
    registry.put(parse_flow(_log_flow("b", "\"{{ kv('k') }}\"")))
    assert registry.calls_kv


def _log_flow(flow_id: str, message: str) -> str:
    log = "type: io.kestra.plugin.core.log.Log"
    return f"id: {flow_id}\nnamespace: n\ntasks:\n  - id: t\n    {log}\n    message: {message}"


FLOW = """
id: reads
namespace: company.team
tasks:
  - id: log
    type: io.kestra.plugin.core.log.Log
    message: "{{ secret('token') }} {{ kv('a') }} {{ kv('b') }} {{ kv('a') }}"
"""


def test_the_worker_syncs_once_then_reads_without_waiting(secret: None) -> None:
    with Driver() as driver:
        store = CountingStore()
        driver.kv = store
        driver.deploy(FLOW)
        execution = driver.start("company.team", "reads", {})
    assert execution.state.current is StateType.SUCCESS
    assert store.events == ["sync", "peek a", "peek b", "peek a"]
