"""Writes ``records.json``: changelog records exactly as the executor of the version before
the whole-execution record and the lanes left to recovery (commit 8ccefdf) wrote them, for
``test_old_changelog_layouts.py``. Run it with that version's code first on the path::

    git worktree add /tmp/kestream-8ccefdf 8ccefdf
    PYTHONPATH=/tmp/kestream-8ccefdf python tests/unit/runtime/old_changelog/generate.py

Each execution is stepped by that version's executor (its ``_apply``, with tasks on workers)
through the events listed, and every changelog record its cycles staged is kept, in order,
with its partition: the bytes a changelog partition of that version holds.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime.context import BrokerContext
from kestream.runtime.executor_service import ExecutorService, Outbox
from kestream.runtime.metrics import Metrics
from kestream.runtime.topics import Topics
from kestream.settings import Settings

HERE = Path(__file__).parent
FLOWS = sorted(HERE.glob("*.yaml"))
#: Per execution: its flow, and how many of its jobs succeed before the records are taken
#: (None: every one, so the execution ends).
EXECUTIONS: dict[str, tuple[str, int | None]] = {
    "seq-0": ("sequential", 0),
    "seq-1": ("sequential", 1),
    "par-1": ("parallel", 1),
    "each-2": ("each", 2),
    "seq-end": ("sequential", None),
}


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode()


def main() -> None:
    import kestream.executor.codec as codec

    if hasattr(codec, "WHOLE_MAX_BYTES"):
        raise SystemExit("run it with the previous version's code first on the path")
    settings = Settings(broker="unused:9092", executor_inline_tasks=False)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    registry = FlowRegistry()
    for path in FLOWS:
        registry.put(parse_flow(path.read_text()))
    service = ExecutorService(ctx, registry, metrics=Metrics())
    service.owned = {0}
    written: list[dict[str, Any]] = []

    def apply(event: ev.Event) -> list[tuple[str, str, int]]:
        out = Outbox()
        service._apply(0, event, out, ("executions", 0))
        out.coalesce()
        for key, value, partition in out.changelog:
            written.append({"key": key, "value": _b64(value), "partition": partition})
        jobs = []
        for _topic, _key, value, _partition in out.commands:
            body = json.loads(value) if value else None
            if isinstance(body, dict) and body.get("type") == "run":
                jobs.append((str(body["id"]), str(body["run"]), int(body["attempt"])))
        return jobs

    for execution_id, (flow_id, successes) in EXECUTIONS.items():
        pending = apply(ev.ExecutionCreated(execution_id, "test.old", flow_id))
        done = 0
        while pending and (successes is None or done < successes):
            eid, run, attempt = pending.pop(0)
            pending += apply(ev.WorkerResult(eid, run, attempt, StateType.SUCCESS, {"n": done}))
            done += 1
    (HERE / "records.json").write_text(json.dumps(written, indent=1) + "\n")
    print(f"{len(written)} records", file=sys.stderr)


if __name__ == "__main__":
    main()
