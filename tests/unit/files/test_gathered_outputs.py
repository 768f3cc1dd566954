"""Values the executor gathers itself leave the records past the inline threshold too: a
child's outputs handed to its parent task run (Subflow, ForEachItem), a flow's outputs, and the
list of a ForEachItem's children's outputs. Through the broker-free driver, on the local and
the S3 storage."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
import pytest

from kestream.executor.references import LOADER, gathered
from kestream.models.state import StateType
from kestream.storage import Storage, execution_prefix, parse_uri
from kestream.storage.current import remove_execution_files
from kestream.storage.offload import REF_KEY, adopt_references, expand_gathered, is_reference
from kestream.testing import Driver

S = StateType
THRESHOLD = 1024
BIG_CHARS = 200_000  # a 200 kB output

CHILD = """id: child
namespace: acme.team
tasks:
  - id: make
    type: io.kestra.plugin.core.debug.Return
    format: "{% for i in range(1, 20000) %}abcdefghij{% endfor %}"
outputs:
  - id: big
    type: STRING
    value: "{{ outputs.make.value }}"
  - id: small
    type: STRING
    value: tiny
"""

PARENT = """id: parent
namespace: acme.team
tasks:
  - id: sub
    type: io.kestra.plugin.core.flow.Subflow
    namespace: acme.team
    flowId: child
  - id: hold
    type: io.kestra.plugin.core.flow.Pause
  - id: use
    type: io.kestra.plugin.core.debug.Return
    format: "{{ outputs.sub.outputs.big | length }} {{ outputs.sub.outputs.small }}"
"""


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    LOADER.clear()
    yield
    LOADER.clear()


def _driver(threshold: int = THRESHOLD) -> Driver:
    driver = Driver(inline_tasks=False)
    driver.executor.inline_max_bytes = threshold
    driver.runner.inline_max_bytes = threshold
    return driver


def _run(execution: Any, task_id: str) -> Any:
    (run,) = [run for run in execution.taskRunList if run.taskId == task_id]
    return run


def test_a_subflows_large_output_is_stored_under_the_parent_and_outlives_the_child(
    storage: Storage,
) -> None:
    with _driver() as driver:
        driver.deploy(CHILD)
        driver.deploy(PARENT)
        paused = driver.start("acme.team", "parent")
        assert paused.state.current is S.PAUSED
        sub = _run(paused, "sub")
        handed = sub.outputs["outputs"]
        assert is_reference(handed)  # the parent's record carries a reference, not 200 kB
        assert len(orjson.dumps(sub.outputs)) < 1000
        key = parse_uri(handed[REF_KEY])
        assert key.startswith(
            execution_prefix("acme.team", "parent", paused.id) + f"tasks/sub/{sub.id}/_outputs/1/"
        )
        (child,) = driver.children(paused.id)
        assert child.state.current is S.SUCCESS
        # the child's own flow outputs went to its own folder; purging it leaves the parent's
        assert is_reference((child.outputs or {})["big"])
        assert remove_execution_files("acme.team", "child", child.id) > 0
        LOADER.clear()  # nothing read before the purge is served from memory
        done = driver.resume(paused.id)
        assert done.state.current is S.SUCCESS, [line.message for line in driver.logs(done.id)]
        assert _run(done, "use").outputs == {"value": f"{BIG_CHARS} tiny"}
        assert orjson.loads(storage.get(key))["big"] == "abcdefghij" * 20000


def test_a_subflows_rendered_outputs_property_is_stored_under_the_parent(
    storage: Storage,
) -> None:
    """The (deprecated) ``outputs`` property of a Subflow renders in the child: its values go
    the same way."""
    parent = PARENT.replace(
        "    flowId: child\n",
        "    flowId: child\n    outputs:\n"
        '      doubled: "{{ outputs.make.value }}{{ outputs.make.value }}"\n',
    ).replace(
        "outputs.sub.outputs.big | length }} {{ outputs.sub.outputs.small",
        "outputs.sub.outputs.doubled | length }} {{ 'x'",
    )
    with _driver() as driver:
        driver.deploy(CHILD)
        driver.deploy(parent)
        paused = driver.start("acme.team", "parent")
        sub = _run(paused, "sub")
        assert is_reference(sub.outputs["outputs"])
        assert execution_prefix("acme.team", "parent", paused.id) in sub.outputs["outputs"][REF_KEY]
        done = driver.resume(paused.id)
        assert _run(done, "use").outputs == {"value": f"{2 * (BIG_CHARS)} x"}


def test_without_a_threshold_the_subflows_outputs_travel_inline(storage: Storage) -> None:
    with _driver(threshold=0) as driver:
        driver.deploy(CHILD)
        driver.deploy(PARENT)
        paused = driver.start("acme.team", "parent")
        assert _run(paused, "sub").outputs["outputs"]["big"] == "abcdefghij" * 20000
        assert storage.list(execution_prefix("acme.team", "parent", paused.id)) == []


def test_flow_outputs_are_stored_in_the_executions_folder_and_read_by_after_execution(
    storage: Storage,
) -> None:
    flow = (
        CHILD
        + """afterExecution:
  - id: after
    type: io.kestra.plugin.core.debug.Return
    format: "{{ execution.outputs.big | length }} {{ execution.outputs.small }}"
"""
    )
    with _driver() as driver:
        driver.deploy(flow)
        done = driver.start("acme.team", "child")
        assert done.state.current is S.SUCCESS
        outputs = done.outputs or {}
        assert outputs["small"] == "tiny" and is_reference(outputs["big"])
        key = parse_uri(outputs["big"][REF_KEY])
        assert key.startswith(execution_prefix("acme.team", "child", done.id) + "_outputs/flow/")
        assert _run(done, "after").outputs == {"value": f"{BIG_CHARS} tiny"}


def test_flow_outputs_no_record_could_hold_still_fail_the_execution(storage: Storage) -> None:
    flow = CHILD.replace(
        "  - id: small",
        '  - id: medium\n    type: STRING\n    value: "{{ outputs.make.value | slice(0, 400) }}"'
        "\n  - id: small",
    )  # 400 bytes: too small to be stored alone, too large for the record with the reference
    with _driver() as driver:
        driver.executor.max_output_bytes = 300  # as a broker's record limit would
        driver.deploy(flow)
        done = driver.start("acme.team", "child")
        logs = [line.message for line in driver.logs(done.id)]
    assert done.state.current is S.FAILED
    assert any("the flow's outputs are" in line for line in logs), logs


CHILD_ROWS = """id: rows
namespace: acme.team
inputs:
  - id: items
    type: STRING
tasks:
  - id: read
    type: io.kestra.plugin.core.debug.Return
    format: "{{ read(inputs.items) | trim }}"
outputs:
  - id: row
    type: STRING
    value: "{{ outputs.read.value }}"
"""


def _each_parent(lines: list[str]) -> str:
    content = "\\n".join(lines) + "\\n"
    return f"""id: many
namespace: acme.team
tasks:
  - id: write
    type: io.kestra.plugin.core.storage.Write
    content: "{content}"
  - id: each
    type: io.kestra.plugin.core.flow.ForEachItem
    items: "{{{{ outputs.write.uri }}}}"
    namespace: acme.team
    flowId: rows
    inputs:
      items: "{{{{ taskrun.items }}}}"
"""


def test_a_for_each_items_gathered_outputs_stay_within_the_threshold_and_merge_whole(
    storage: Storage,
) -> None:
    lines = [f"{n:04d}-" + "r" * 60 for n in range(60)]  # 60 children of ~80 bytes of outputs
    with _driver() as driver:
        driver.deploy(CHILD_ROWS)
        driver.deploy(_each_parent(lines))
        done = driver.start("acme.team", "many")
    assert done.state.current is S.SUCCESS
    items = _run(done, "each_items")
    kept = items.outputs["outputs"]
    assert len(orjson.dumps(kept)) <= THRESHOLD  # what every record of it carries
    assert any(is_reference(entry) for entry in kept)
    for entry in kept:
        if is_reference(entry):
            assert f"tasks/each_items/{items.id}/_outputs/1/" in entry[REF_KEY].replace(
                "each-items", "each_items"
            )
    merged = storage.get(parse_uri(_run(done, "each_merge").outputs["subflowOutputs"]))
    rows = [orjson.loads(line)["row"] for line in merged.splitlines()]
    assert sorted(rows) == sorted(lines)  # every child once, none lost in a spill


def test_a_for_each_item_childs_outputs_past_the_threshold_are_merged_from_the_parent(
    storage: Storage,
) -> None:
    """The children's outputs the parent keeps are its own copies: once the children's files
    are gone, the merge task run again (a replay from it) still finds every row."""
    lines = ["a" * 1500, "b" * 1500, "c"]  # two children whose outputs are stored alone
    with _driver() as driver:
        driver.deploy(CHILD_ROWS)
        driver.deploy(_each_parent(lines))
        done = driver.start("acme.team", "many")
        assert done.state.current is S.SUCCESS
        children = driver.children(done.id)
        reached = _stored_keys(storage, _run(done, "each_items").outputs["outputs"])
        assert len(reached) == 2
        for child in children:  # the children's folders go: the parent holds its own copies
            assert not any(
                key.startswith(execution_prefix("acme.team", "rows", child.id)) for key in reached
            )
            remove_execution_files("acme.team", "rows", child.id)
        LOADER.clear()
        again = driver.replay(done.id, task_run_id=_run(done, "each_merge").id)
        logs = [line.message for line in driver.logs(again.id)]
    assert again.state.current is S.SUCCESS, logs
    assert sorted(_merged_rows(storage, again)) == sorted(lines)


def test_a_replay_from_the_merge_reads_spills_of_its_own_and_outlives_the_original(
    storage: Storage,
) -> None:
    """The gathered list spilled several times: each spill names the one before it. A replay
    from ``{id}_merge`` gets copies whose references point at its own copies, so it reads only
    its own folder, and the original's purge breaks nothing."""
    lines = [f"{n:04d}-" + "r" * 60 for n in range(60)]
    with _driver() as driver:
        driver.deploy(CHILD_ROWS)
        driver.deploy(_each_parent(lines))
        done = driver.start("acme.team", "many")
        assert done.state.current is S.SUCCESS
        again = driver.replay(done.id, task_run_id=_run(done, "each_merge").id)
        logs = [line.message for line in driver.logs(again.id)]
        assert again.state.current is S.SUCCESS, logs
        assert sorted(_merged_rows(storage, again)) == sorted(lines)
        reached = _stored_keys(storage, _run(again, "each_items").outputs["outputs"])
        assert len(reached) > 2  # spilled more than twice: spills that name spills
        own = execution_prefix("acme.team", "many", again.id)
        assert all(key.startswith(own) for key in reached), reached

        assert remove_execution_files("acme.team", "many", done.id) > 0
        LOADER.clear()
        third = driver.replay(again.id, task_run_id=_run(again, "each_merge").id)
        logs = [line.message for line in driver.logs(third.id)]
    assert third.state.current is S.SUCCESS, logs
    assert sorted(_merged_rows(storage, third)) == sorted(lines)


@pytest.mark.parametrize("threshold", [0, 1024, 1 << 20])
def test_the_gathered_list_is_encoded_only_when_it_spills(
    storage: Storage, monkeypatch: pytest.MonkeyPatch, threshold: int
) -> None:
    """Each child's outputs are measured alone and added to the list's known size: within the
    threshold (or with offloading off) the step never encodes the list for its size checks,
    and the size it keeps is the list's exact record size."""
    from kestream.executor import references, sizes

    encodes: list[int] = []

    def counting(real: Any) -> Any:
        def encode_value(value: Any) -> Any:
            if type(value) is dict and type(value.get("outputs")) is list:
                encodes.append(len(value["outputs"]))  # the task run's outputs, list inside
            elif type(value) is list and len(value) > 1 and type(value[-1]) is dict:
                encodes.append(len(value))  # the list itself (not a list of batch URIs)
            return real(value)

        return encode_value

    monkeypatch.setattr(references, "encode_value", counting(references.encode_value))
    monkeypatch.setattr(sizes, "encode_value", counting(sizes.encode_value))
    lines = [f"{n:04d}-" + "r" * 60 for n in range(60)]  # ~5 kB of children's outputs
    with _driver(threshold) as driver:
        driver.deploy(CHILD_ROWS)
        driver.deploy(_each_parent(lines))
        done = driver.start("acme.team", "many")
        assert done.state.current is S.SUCCESS
        (items,) = [
            t for t in driver.states[done.id].task_runs.values() if t.task.id == "each_items"
        ]
    spills = sum(
        1 for key in storage.list("acme/") if "/each-items/" in key and "/_outputs/" in key
    )
    assert (spills > 0) == (threshold == 1024)
    assert len(encodes) == spills, encodes  # one encoding per spill, the spill's own write
    kept = (items.outputs or {})["outputs"]
    assert items.gathered is not None and items.gathered[0] is kept
    assert items.gathered[1] == len(references.encoded(kept))


def _stored_keys(storage: Storage, entries: list[Any]) -> list[str]:
    """The keys of every stored value a gathered list reaches, those the spills name too."""
    keys: list[str] = []

    def load(ref: dict[str, Any]) -> Any:
        keys.append(parse_uri(ref[REF_KEY]))
        return orjson.loads(storage.get(keys[-1]))

    expand_gathered(entries, load)
    return keys


def _merged_rows(storage: Storage, execution: Any) -> list[str]:
    merged = storage.get(parse_uri(_run(execution, "each_merge").outputs["subflowOutputs"]))
    return [orjson.loads(line)["row"] for line in merged.splitlines()]


def test_gathered_spills_in_order_and_expands_back(storage: Storage) -> None:
    keys = iter(f"g/spill-{n}.json" for n in range(1000))
    items: list[Any] = []
    writes = 0
    for n in range(200):
        before = len(storage.list("g"))
        items = gathered([*items, {"n": n, "pad": "p" * 40}], 300, lambda: next(keys))
        writes += len(storage.list("g")) - before
        assert len(orjson.dumps(items)) <= 300 + 60
    assert 10 < writes < 200  # a write per spill, not per entry

    def load(ref: dict[str, Any]) -> Any:
        return orjson.loads(storage.get(parse_uri(ref[REF_KEY])))

    assert [entry["n"] for entry in expand_gathered(items, load)] == list(range(200))


def test_a_long_chain_of_spills_is_adopted_without_recursion() -> None:
    """Copies for a new execution follow a chain of spills longer than Python's recursion limit,
    and each copy names the copy before it. In memory: the chain's logic, not a disk's fsyncs."""
    from obstore.store import MemoryStore

    store = Storage(MemoryStore(), "memory")
    source, target = "ns/f/executions/old/", "ns/f/executions/new/"
    keys = iter(f"{source}tasks/t/run/_outputs/1/{n}/outputs.json" for n in range(5000))
    items: list[Any] = []
    for n in range(1500):
        items = gathered([*items, {"n": n}], 40, lambda: next(keys), store)
    copied = adopt_references(items, (source,), target, store)
    reached: list[str] = []

    def load(ref: dict[str, Any]) -> Any:
        reached.append(parse_uri(ref[REF_KEY]))
        return orjson.loads(store.get(reached[-1]))

    assert [entry["n"] for entry in expand_gathered(copied, load)] == list(range(1500))
    assert len(reached) > 1000 and all(key.startswith(target) for key in reached)
    assert adopt_references(items, (source,), target, store) == copied  # copies kept, not redone


def test_a_spill_named_twice_is_refused_not_read_endlessly() -> None:
    """A child's outputs shaped as a reference to a spill of the same list make a loop: the
    merge refuses it instead of reading forever."""
    loop = {REF_KEY: "kestra:///g/spill.json", "size": 40}
    reads: list[str] = []

    def load(ref: dict[str, Any]) -> Any:
        reads.append(ref[REF_KEY])
        assert len(reads) < 10, "read endlessly"
        return [{"n": 1}, loop]  # the spill names itself

    with pytest.raises(ValueError, match="named twice"):
        expand_gathered([loop], load)


def test_gathered_is_a_no_op_within_the_threshold_or_when_off(storage: Storage) -> None:
    small = [{"n": 1}]
    assert gathered(small, 1024, lambda: "never") is small
    big = [{"pad": "x" * 5000}]
    assert gathered(big, 0, lambda: "never") is big


def test_the_executor_stores_at_most_its_step_bound_and_says_so(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the executor writes while it steps (on its event loop) is bounded: outputs of a task
    it runs inline past the bound fail that task run; the same task on a worker stores them."""
    from kestream.executor import step

    monkeypatch.setattr(step, "STEP_STORE_MAX_BYTES", 100_000)
    flow = CHILD.split("outputs:")[0]
    driver = Driver(inline_tasks=True)
    driver.executor.inline_max_bytes = THRESHOLD
    with driver:
        driver.deploy(flow)
        done = driver.start("acme.team", "child")
        logs = [line.message for line in driver.logs(done.id)]
    assert done.state.current is S.FAILED
    assert any(
        "outputs of task 'make' are 200 kB, more than the 100 kB the executor stores" in line
        for line in logs
    ), logs
    with _driver() as driver:  # on a worker: stored in a thread there, whatever the bound
        driver.deploy(flow)
        assert driver.start("acme.team", "child").state.current is S.SUCCESS


def test_a_childs_outputs_past_the_step_bound_fail_the_parent_task_run(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kestream.executor import references

    monkeypatch.setattr(references, "STEP_STORE_MAX_BYTES", 100_000)
    with _driver() as driver:
        driver.deploy(CHILD)
        driver.deploy(PARENT)
        done = driver.start("acme.team", "parent")
        logs = [line.message for line in driver.logs(done.id)]
    assert done.state.current is S.FAILED
    assert _run(done, "sub").state.current is S.FAILED
    assert any("the subflow's outputs are 200 kB, more than the 100 kB" in x for x in logs)
