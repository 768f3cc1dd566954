"""The flows shipped in ``config/``: each one validates and runs to SUCCESS on the driver."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bench import workloads
from kestream.models.flow import WebhookTrigger, parse_flow
from kestream.models.state import StateType
from kestream.plugins import loading
from kestream.tasks import registry
from kestream.testing import Driver, run

CONFIG = Path(__file__).resolve().parents[2] / "config"
FLOWS = CONFIG / "flows"
BENCH = CONFIG / "bench"


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


#: The plugin modules a bench flow's task types come from (W8's), as the bench loads them.
BENCH_PLUGINS = {w.flow_file: w.plugins for w in workloads.every()}


@contextmanager
def _plugins_of(path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Import the flow's plugin modules into a registry of this test's own: W8's task type is
    known while its flow is read and no other test sees it."""
    modules = BENCH_PLUGINS.get(path.name, ()) if path.parent == BENCH else ()
    monkeypatch.setattr(registry, "_plugins", {})
    monkeypatch.setattr(registry, "_plugin_modules", [])
    monkeypatch.setattr(loading, "_loaded", {})
    saved = {name: sys.modules.pop(name) for name in modules if name in sys.modules}
    try:
        for name in modules:
            importlib.import_module(name)
        yield
    finally:
        for name in modules:
            sys.modules.pop(name, None)
        sys.modules.update(saved)


@pytest.mark.parametrize(
    "path", sorted([*FLOWS.glob("*.yaml"), *BENCH.glob("*.yaml")]), ids=lambda p: p.name
)
def test_every_config_flow_validates(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with _plugins_of(path, monkeypatch):
        parse_flow(_text(path))


def test_config_flow_ids_are_unique(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = []
    for path in [*FLOWS.glob("*.yaml"), *BENCH.glob("*.yaml")]:
        with _plugins_of(path, monkeypatch):
            flow = parse_flow(_text(path))
        ids.append((flow.namespace, flow.id))
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize(
    ("inputs", "last_log"),
    [({}, "Try it with your name: --input name=you"), ({"name": "kestream"}, "Welcome, kestream!")],
)
def test_hello(inputs: dict[str, str], last_log: str) -> None:
    with Driver() as driver:
        flow = driver.deploy(_text(FLOWS / "hello.yaml"))
        assert (flow.namespace, flow.id) == ("company.team", "hello")
        execution = driver.start(flow.namespace, flow.id, inputs)
        messages = [line.message for line in driver.logs(execution.id)]
    assert execution.state.current is StateType.SUCCESS
    name = inputs.get("name", "World")
    assert messages[0] == f"Hello {name}"
    assert messages[1:4] == [f"Hello {name} from {who}" for who in ("Ada", "Grace", "Linus")]
    assert messages[-1] == last_log


def test_subflow_example() -> None:
    with Driver() as driver:
        driver.deploy(_text(FLOWS / "subflow-child.yaml"))
        flow = driver.deploy(_text(FLOWS / "subflow-parent.yaml"))
        execution = driver.start(flow.namespace, flow.id, {"name": "Ada"})
        (child,) = driver.children(execution.id)
        child_logs = [line.message for line in driver.logs(child.id)]
        parent_logs = [line.message for line in driver.logs(execution.id)]
    assert execution.state.current is StateType.SUCCESS
    assert child.state.current is StateType.SUCCESS
    assert child.outputs == {"greeting": "ADA", "times": 3}
    assert child_logs == ["1: ADA", "2: ADA", "3: ADA"]
    assert parent_logs == [f"The child said ADA 3 times (execution {child.id})"]


def test_subflow_parent_through_run() -> None:
    execution = run(
        _text(FLOWS / "subflow-parent.yaml"), flows=[_text(FLOWS / "subflow-child.yaml")]
    )
    assert execution.state.current is StateType.SUCCESS


@pytest.mark.parametrize(
    ("name", "task_runs"),
    [
        ("w1.yaml", 2),
        pytest.param("w2.yaml", 1, marks=pytest.mark.slow),
        ("w3.yaml", 161),
        ("w3_10000.yaml", 10_001),
        ("w4.yaml", 10),
    ],
)
def test_benchmark_flow_succeeds(name: str, task_runs: int) -> None:
    execution = run(_text(BENCH / name))
    assert execution.state.current is StateType.SUCCESS
    assert len(execution.taskRunList) == task_runs


def test_w1_is_benchmark01_with_a_webhook() -> None:
    flow = parse_flow(_text(BENCH / "w1.yaml"))
    assert (flow.namespace, flow.id) == ("company.team", "benchmark01")
    assert [type(t) for t in flow.triggers] == [WebhookTrigger]
    execution = run(_text(BENCH / "w1.yaml"), {"name": "Ada"})
    assert execution.taskRunList[0].outputs == {"values": {"message": "Hello Ada"}}


def test_w4_takes_the_else_branches_when_false() -> None:
    flow = parse_flow(_text(BENCH / "w4.yaml"))
    assert [type(t) for t in flow.triggers] == [WebhookTrigger]
    execution = run(_text(BENCH / "w4.yaml"), {"condition": "false"})
    assert execution.state.current is StateType.SUCCESS
    ran = [task_run.taskId for task_run in execution.taskRunList]
    assert ran == [f"{kind}{i}" for i in range(1, 6) for kind in ("if", "else")]
