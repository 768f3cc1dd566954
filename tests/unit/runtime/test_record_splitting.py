"""Records sized by bytes: the splitters, the cut of oversized lines and dead letters, the
output budget of the step and the runner, and the limit itself. Sizes are measured with the
encoder the processors use (``records.dumps``), never estimated."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from kestream.executor import commands as cmd
from kestream.executor import events as ev
from kestream.executor.flow_registry import FlowRegistry
from kestream.executor.sizes import encoded_size, human_size, outputs_budget, outputs_too_large
from kestream.executor.step import Executor
from kestream.models.flow import parse_flow
from kestream.models.state import StateType
from kestream.runtime import execution_updates, records
from kestream.runtime.execution_updates import merge_update
from kestream.runtime.record_limit import RECORD_MARGIN, RecordLimit, RecordTooLarge
from kestream.settings import Settings
from kestream.testing import Driver

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _lines(messages: list[str]) -> list[cmd.LogLine]:
    return [cmd.LogLine("ex1", "run1", "t", 1, "INFO", m, NOW) for m in messages]


def _messages(values: list[bytes]) -> list[str]:
    return [line["message"] for value in values for line in orjson.loads(value)]


# -- pack -------------------------------------------------------------------------------------


def test_pack_fills_each_record_and_keeps_the_order() -> None:
    # Three items of 5 bytes: "a,b" is 11 bytes, so 11 holds two of them and 10 only one.
    assert records.pack([5, 5, 5], 11) == [(0, 2), (2, 3)]
    assert records.pack([5, 5, 5], 10) == [(0, 1), (1, 2), (2, 3)]
    assert records.pack([5, 5, 5], 17) == [(0, 3)]  # exactly at the limit: one record
    assert records.pack([], 10) == []


def test_pack_gives_an_oversized_item_a_record_of_its_own() -> None:
    assert records.pack([3, 50, 3, 3], 10) == [(0, 1), (1, 2), (2, 4)]
    assert records.pack([50], 10) == [(0, 1)]


# -- logs ---------------------------------------------------------------------------------------


def test_many_small_log_lines_are_split_by_bytes_and_all_kept_in_order() -> None:
    messages = [f"line {i} " + "x" * (i % 300) for i in range(2000)]
    limit = 32 * 1024
    values = records.log_records("ns", "flow", _lines(messages), max_bytes=limit)
    sizes = [len(value) for value in values]
    print(f"2000 lines: {len(values)} records, largest {max(sizes)} bytes (limit {limit})")
    assert len(values) > 1 and max(sizes) <= limit
    assert _messages(values) == messages
    assert sum(sizes) > (len(values) - 1) * limit * 0.95  # records are full, not item-counted


def test_log_lines_that_fit_exactly_make_one_record() -> None:
    lines = _lines(["a" * 100, "b" * 100])
    whole = records.dumps(records.log_values("ns", "flow", lines))
    assert records.log_records("ns", "flow", lines, max_bytes=len(whole)) == [whole]
    split = records.log_records("ns", "flow", lines, max_bytes=len(whole) - 1)
    assert len(split) == 2 and _messages(split) == ["a" * 100, "b" * 100]


@pytest.mark.parametrize("unit", ["x", "é", '"', "\n", "\x01", "😀"])
def test_a_log_line_over_the_limit_is_cut_with_a_marker(unit: str) -> None:
    limit = 32 * 1024
    huge = unit * 100_000
    values = records.log_records("ns", "flow", _lines(["before", huge, "after"]), max_bytes=limit)
    assert all(len(value) <= limit for value in values)
    before, cut, after = _messages(values)
    assert (before, after) == ("before", "after")
    assert cut.startswith(unit * 100) and cut.endswith("over the record limit]")
    assert "[... cut: the line was" in cut
    assert len(records.dumps(cut)) > limit // 2  # cut to what fits, not to nothing


# -- execution updates --------------------------------------------------------------------------


def _state(flow_yaml: str, **inputs: Any) -> Any:
    flows = FlowRegistry()
    flow = flows.put(parse_flow(flow_yaml))
    created = ev.ExecutionCreated("x", flow.namespace, flow.id, flow.revision, inputs=inputs)
    st = Executor(flows).step(None, created).state
    assert st is not None
    return st


_OUTPUTS_FLOW = """
id: outs
namespace: t
inputs:
  - id: pad
    type: STRING
tasks:
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: "{{ range(1, 40) }}"  # inclusive: 40 iterations
    concurrencyLimit: 0
    tasks:
      - id: out
        type: io.kestra.plugin.core.output.OutputValues
        values:
          text: "{{ taskrun.value }} %s"
""" % ("y" * 3000)


def test_an_update_is_split_by_bytes_and_merges_back_whole() -> None:
    st = _state(_OUTPUTS_FLOW, pad="p")
    limit = 32 * 1024
    values = execution_updates.update_records(
        st, list(st.task_runs), terminal=True, full=True, max_bytes=limit
    )
    assert len(values) > 2 and all(len(value) <= limit for value in values)
    merged = None
    for value in values:
        merged = merge_update(merged, orjson.loads(value))
    assert merged is not None and merged.stopped
    assert [run["id"] for run in merged.runs.values()] == list(st.task_runs)
    outs = [run["outputs"] for run in merged.runs.values() if run["taskId"] == "out"]
    texts = [out["values"]["text"] for out in outs]
    assert len(texts) == 40 and all(text.endswith("y" * 3000) for text in texts)


def test_a_task_run_that_cannot_share_a_record_with_a_large_header_loses_only_its_outputs() -> None:
    st = _state(_OUTPUTS_FLOW, pad="p" * 30_000)  # the execution's own fields: ~30 kB
    limit = 32 * 1024
    values = execution_updates.update_records(
        st, list(st.task_runs), terminal=True, full=True, max_bytes=limit
    )
    bodies = [orjson.loads(value) for value in values]
    assert all(len(value) <= limit for value in values)
    left_out = [run_id for body in bodies for run_id in body.get("outputsLeftOut", [])]
    assert left_out  # the header takes most of each record
    merged = None
    for body in bodies:
        merged = merge_update(merged, body)
    assert merged is not None and merged.stopped and list(merged.runs) == list(st.task_runs)
    assert all(merged.runs[run_id]["outputs"] is None for run_id in left_out)


def test_a_small_update_is_one_record_as_before() -> None:
    st = _state(_OUTPUTS_FLOW, pad="p")
    values = execution_updates.update_records(st, [], terminal=True, full=True, max_bytes=1 << 20)
    assert len(values) == 1 and orjson.loads(values[0])["terminal"] is True


# -- dead letters -------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", [b"x", b'"', b"\n", "é".encode(), b"\xff"])
def test_a_dead_letter_keeps_a_cut_copy_of_a_large_value(unit: bytes) -> None:
    limit = 32 * 1024
    value = unit * 200_000
    letter = records.dead_letter_value(
        "t", 3, 7, b"key", value, "too large " * 2000, max_bytes=limit
    )
    assert len(letter) <= limit
    body = orjson.loads(letter)
    assert body["valueBytes"] == len(value) and body["valueCut"] is True
    assert body["value"] and value.decode("utf-8", "replace").startswith(body["value"][:100])
    assert body["reason"].startswith("too large") and len(body["reason"]) <= 4096
    small = orjson.loads(records.dead_letter_value("t", 0, 1, None, b"{}", "bad"))
    assert (small["value"], small["valueCut"], small["key"]) == ("{}", False, None)


# -- the output budget --------------------------------------------------------------------------


def test_outputs_too_large_names_the_task_and_the_size() -> None:
    outputs = {"value": "z" * 3_200_000}
    message = outputs_too_large("big", outputs, 1_000_000)
    assert message == ("outputs of task 'big' are 3.2 MB, over the 1.0 MB record limit for outputs")
    assert outputs_too_large("big", outputs, encoded_size(outputs)) is None  # exactly fits
    assert outputs_too_large("big", outputs, encoded_size(outputs) - 1) is not None
    assert outputs_too_large("big", outputs, None) is None
    assert [human_size(n) for n in (999, 1000, 52_400, 3_200_000)] == [
        "999 bytes", "1.0 kB", "52.4 kB", "3.2 MB",
    ]  # fmt: skip


_BIG_OUTPUT_FLOW = """
id: big
namespace: t
tasks:
  - id: small
    type: io.kestra.plugin.core.debug.Return
    format: fine
  - id: huge
    type: io.kestra.plugin.core.debug.Return
    format: "%s"
errors:
  - id: handler
    type: io.kestra.plugin.core.debug.Return
    format: "handled"
""" % ("h" * 60_000)


@pytest.mark.parametrize("inline", [True, False])
def test_outputs_over_the_budget_fail_the_task_run_and_the_errors_branch_runs(
    inline: bool,
) -> None:
    with Driver(inline_tasks=inline) as driver:
        if inline:  # the step's rule (inline tasks, and results from anywhere)
            driver.executor.max_output_bytes = 50_000
        else:  # the worker's own rule, alone: its result never carries the outputs
            driver.runner.max_output_bytes = 50_000
        flow = driver.deploy(_BIG_OUTPUT_FLOW)
        done = driver.start(flow.namespace, flow.id)
        logs = driver.logs(done.id)
    states = {run.taskId: run.state.current for run in done.taskRunList}
    assert done.state.current is StateType.FAILED
    assert states == {
        "small": StateType.SUCCESS,
        "huge": StateType.FAILED,
        "handler": StateType.SUCCESS,
    }
    huge = next(run for run in done.taskRunList if run.taskId == "huge")
    assert not huge.outputs
    errors = [entry.message for entry in logs if entry.level == "ERROR"]
    assert "outputs of task 'huge' are 60.0 kB, over the 50.0 kB record limit for outputs" in (
        errors
    )


# -- the limit ----------------------------------------------------------------------------------


def test_the_record_limit_is_the_smaller_of_the_setting_and_the_topics() -> None:
    settings = Settings.model_construct(max_record_bytes=1 << 20)
    assert RecordLimit.of(settings).max_bytes == 1 << 20
    assert RecordLimit.of(settings, 65_536) == RecordLimit(65_536, "the topics' max.message.bytes")
    assert RecordLimit.of(settings, 4 << 20).max_bytes == 1 << 20
    limit = RecordLimit.of(settings, 65_536)
    assert limit.value_bytes == 65_536 - RECORD_MARGIN
    assert limit.output_bytes == outputs_budget(limit.value_bytes) < limit.value_bytes
    assert limit.fits(b"x" * limit.value_bytes) and not limit.fits(b"x" * (limit.value_bytes + 1))
    with pytest.raises(RecordTooLarge, match=r"the request's record is 70\.0 kB, over the"):
        limit.check(b"x" * 70_000, "the request's record")


async def test_the_api_answers_413_for_a_record_over_the_limit() -> None:
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from kestream.api.app import json_errors

    limit = RecordLimit(65_536, "KESTREAM_MAX_RECORD_BYTES")

    async def submit(_: web.Request) -> web.Response:
        limit.check(b"x" * 70_000, "the request's record")
        return web.Response()

    app = web.Application(middlewares=[json_errors])
    app.router.add_post("/submit", submit)
    async with TestClient(TestServer(app)) as client:
        reply = await client.post("/submit")
        assert reply.status == 413
        message = (await reply.json())["message"]
    assert message == (
        "Request Entity Too Large: the request's record is 70.0 kB, over the 64.5 kB record limit"
    )


def test_the_executor_turns_a_record_no_rule_foresaw_into_its_dead_letter() -> None:
    """The last guard before the producer: a record over the limit never reaches it (it would
    stop the processor); its cut copy goes to the dead-letter topic instead."""
    from kestream.runtime.context import BrokerContext
    from kestream.runtime.executor_service import ExecutorService
    from kestream.runtime.metrics import Metrics
    from kestream.runtime.topics import Topics

    settings = Settings(broker="unused:9092", max_record_bytes=32 * 1024)
    ctx = BrokerContext(settings, "unused:9092", "tansu", Topics.of(settings))
    service = ExecutorService(ctx, FlowRegistry(), metrics=Metrics())
    fine = (ctx.topics.updates, "ex1", b"{}", 3)
    huge = (ctx.topics.changelog, "ex1/run", b'{"x":"' + b"y" * 100_000 + b'"}', 3)
    assert service.writer.sized([fine]) == [fine]
    kept = service.writer.sized([fine, huge])
    assert kept[0] == fine and len(kept) == 2
    topic, key, letter, partition = kept[1]
    assert (topic, key, partition) == (ctx.topics.dead_letter, "ex1/run", None)
    assert letter is not None and len(letter) <= ctx.record_limit.value_bytes
    body = orjson.loads(letter)
    assert body["topic"] == ctx.topics.changelog and body["partition"] == 3
    assert body["valueBytes"] == len(huge[2]) and body["valueCut"] is True
    assert body["reason"] == "not produced: the record is 100 kB, over the 31.7 kB record limit"
