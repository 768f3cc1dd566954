"""The variables a task run's expressions see, built from the execution state in O(depth).

The execution-wide part is built once per execution and shared (the ``outputs`` map inside it is
the state's own dict, merged in place), so rendering a task never copies the execution.
"""

from __future__ import annotations

from typing import Any

from kestream.executor.instance_variables import instance_variables
from kestream.executor.references import inputs_view, outputs_view, parent_outputs
from kestream.executor.state import ExecutionState, TaskRunState
from kestream.expressions import RenderError
from kestream.kv.store import KVUnavailable, current_store
from kestream.kv.values import KVValueError, check_namespace
from kestream.models.clock import Clock
from kestream.storage.access import ExecutionFiles
from kestream.storage.offload import unwrap
from kestream.tasks.for_each_item import ITERATION_VARIABLE, ForEachItem
from kestream.tasks.loops import ForEach
from kestream.tasks.working_directory import WorkingDirectory


def nested_labels(labels: dict[str, str]) -> dict[str, Any]:
    """Dotted label keys nested, as Kestra exposes them: ``labels.system.correlationId``."""
    out: dict[str, Any] = {}
    for key, value in labels.items():
        node = out
        *heads, last = key.split(".")
        for head in heads:
            child = node.get(head)
            if not isinstance(child, dict):
                child = node[head] = {}
            node = child
        node[last] = value
    return out


def kv_lookup(namespace: str, key: str) -> tuple[bool, Any]:
    """What ``kv()`` reads: ``(found, value)`` from the process's KV store as it stands, never
    waiting (the caller awaited one ``async_sync`` before rendering: :mod:`kestream.kv.store`)."""
    try:
        entry = current_store().peek(check_namespace(namespace), key)
    except (KVUnavailable, KVValueError) as exc:
        raise RenderError(str(exc)) from None
    return (False, None) if entry is None else (True, entry.value)


def input_variables(flow: Any) -> dict[str, Any]:
    """What a flow's input templates (conditions, templated defaults, a SELECT's
    ``expression``) see besides the inputs resolved before them, as in Kestra: ``flow``,
    ``envs``, ``globals`` and ``kv()`` (whose caller synced the store first)."""
    instance = instance_variables()
    return {
        "flow": {"id": flow.id, "namespace": flow.namespace, "revision": flow.revision},
        "envs": instance.envs,
        "globals": instance.globals,
        "@kv": kv_lookup,
    }


def execution_context(
    st: ExecutionState, flow: Any, clock: Clock, cache: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Variables shared by every task run of the execution (cached per execution id)."""
    base = cache.get(st.id)
    if base is not None and _current(base["outputs"], st):
        return base
    files = ExecutionFiles.of(flow.namespace, flow.id, st.id, (st.trigger or {}).get("variables"))
    base = {
        "flow": {"id": flow.id, "namespace": flow.namespace, "revision": st.revision},
        "execution": {
            "id": st.id,
            "startDate": st.state.start,
            "originalId": st.original_id,
        },
        "outputs": outputs_view(st.outputs, files) if st.references else st.outputs,
        "labels": nested_labels(st.labels),
        "@error_logs": st.error_logs,
        "@now": clock,
        "@files": files,
        "@kv": kv_lookup,
    }
    instance = instance_variables()  # ``envs`` and ``globals``, set for the whole process
    base["envs"] = instance.envs
    base["globals"] = instance.globals
    if flow.variables:
        base["vars"] = flow.variables
    if st.inputs or flow.inputs:
        base["inputs"] = inputs_view(st.inputs or {}, files)
    if st.trigger is not None:
        base["trigger"] = st.trigger.get("variables", {})
    cache[st.id] = base
    return base


def _current(outputs: Any, st: ExecutionState) -> bool:
    """Whether a cached context's ``outputs`` is still the state's: the same map, read through
    references exactly when the execution holds some."""
    if outputs is st.outputs:
        return not st.references
    return st.references and unwrap(outputs) is st.outputs


def task_run_context(base: dict[str, Any], tr: TaskRunState) -> dict[str, Any]:
    """Add ``task``, ``taskrun``, ``parent``/``parents`` and the loop path for one task run."""
    ctx = dict(base)
    ctx["task"] = {"id": tr.task.id, "type": tr.task.type}
    taskrun = _taskrun(tr)
    if tr.parent is not None:
        parents = _parents(tr, base["@files"])
        if parents:
            ctx["parents"] = parents
            ctx["parent"] = parents[0]
    owner = working_directory_of(tr)
    if owner is not None:  # Kestra's ``workerTaskrun``: the enclosing WorkingDirectory's run
        ctx["workerTaskrun"] = _taskrun(owner)
        if owner.value is not None:
            taskrun.setdefault("value", owner.value)
    parent = tr.parent
    if parent is not None and isinstance(parent.task, ForEachItem) and parent.value is not None:
        # its internal tasks render the ForEachItem's own properties, as the ForEachItem would
        taskrun.setdefault("value", parent.value)
    ctx["taskrun"] = taskrun
    ctx["@each_path"] = list(tr.path)
    return ctx


def _taskrun(tr: TaskRunState) -> dict[str, Any]:
    taskrun: dict[str, Any] = {
        "id": tr.id,
        "startDate": tr.state.start,
        # attempts that ended: 0 in the first one, 1 in a retry, and 1 when a restart runs the
        # task again (its ``runIf`` sees it before the new attempt begins)
        "attemptsCount": sum(1 for attempt in tr.attempts if attempt.current.is_terminal),
    }
    if tr.value is not None:
        taskrun["value"] = tr.value
    if tr.parent is not None:
        taskrun["parentId"] = tr.parent.id
        if isinstance(tr.parent.task, ForEach) and tr.lane >= 0:
            # Kestra numbers a ForEach's iterations from 0 for its direct children; each value
            # is one lane, in the order of the values (EachSequential/EachParallel have none)
            taskrun[ITERATION_VARIABLE] = tr.lane
    return taskrun


def working_directory_of(tr: TaskRunState) -> TaskRunState | None:
    """The nearest WorkingDirectory task run above ``tr``, if any."""
    node = tr.parent
    while node is not None and not isinstance(node.task, WorkingDirectory):
        node = node.parent
    return node


def _parents(tr: TaskRunState, files: ExecutionFiles) -> list[dict[str, Any]]:
    """Ancestors that carry a loop value or outputs, nearest first (Kestra's ``parents``)."""
    parents: list[dict[str, Any]] = []
    node = tr.parent
    while node is not None:
        entry: dict[str, Any] = {}
        if node.value is not None:
            entry["taskrun"] = {"value": node.value}
        if node.outputs:
            entry["outputs"] = parent_outputs(node.outputs, files)
        if entry:
            parents.append(entry)
        node = node.parent
    return parents
