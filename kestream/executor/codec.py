"""The executor state as changelog records, and back.

The changelog carries the change, not the execution (DESIGN.md section 3). A small execution
(W1's two task runs, a few flowables) is one record, rewritten at each step: its dynamic record
``<execution id>#`` holds the rest too (header, task runs, plans: :func:`encode_whole`), so a
step costs the broker one record, not one per key it changed. Once that record would pass
:data:`WHOLE_MAX_BYTES` (or a plan is stored in the internal storage), the execution is written
apart, for good: the step that outgrows it writes every key below, and each later step only
what changed. Records written apart are keyed so that a compacted topic keeps exactly what
recovery needs:

- ``<execution id>``            what never changes (flow, inputs, labels, trigger, parent link);
- ``<execution id>#``           what changes per step (state, timers, paused runs, root lanes'
                                counters, flow outputs, error logs, and the labels once a
                                Labels task changed them);
- ``<execution id>/<run id>``   one task run (state, attempts, outputs, its group's counters);
- ``<execution id>/<run id>+``  a flowable's planned lanes, written once when planned;
- ``<execution id>!``           a tombstone marker written last, when the execution ends.

The execution's own lanes (the flow's tasks) have no record: recovery plans them again from
the flow revision the header names, as the step planned them (the registry keeps every
revision). ``<execution id>+`` held them in records written before that; such a record is
still read, and cleared when its execution ends.

When an execution ends, every one of its keys gets a tombstone (``None``) (a whole execution
has one key), so state stays bounded by the executions in flight. Task runs carry their
creation number, because compaction reorders records: recovery collects an execution's records
first, then rebuilds in creation order.

Values are plain JSON-ready dicts; dates, times and durations are tagged so typed inputs and
outputs come back with their types (:mod:`kestream.executor.value_tags`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from kestream.executor.events import SubflowLink
from kestream.executor.instants import iso_instant
from kestream.executor.sizes import record_json
from kestream.executor.state import (
    Block,
    ExecutionState,
    Group,
    StateRecord,
    TaskRunState,
    Timer,
)
from kestream.executor.value_tags import CodecError, decode_value, encode_value
from kestream.models.flow import Flow
from kestream.models.state import StateType
from kestream.storage.offload import REF_KEY, SnapshotError, fetch_plan, is_reference
from kestream.tasks.base import Task

HEADER, DYNAMIC, PLAN, ENDED = "", "#", "+", "!"
#: The name the step uses, in its set of newly planned groups, for the execution's own lanes.
ROOT = ""
#: The key of a plan record that stands for a plan stored in the internal storage.
STORED_PLAN = "stored"
#: Where a whole execution's dynamic record holds its header, task runs and plans.
WHOLE_HEADER, WHOLE_RUNS, WHOLE_PLANS = "h", "r", "p"
#: The largest whole execution record (:func:`encode_whole`). It is rewritten at every step,
#: so it stays small: a few task runs and plans (W1's is about 1.2 kB, W4's ten task runs and
#: five plans about 4.5 kB); an execution that outgrows it (a ForEach, large outputs) is written
#: apart, where a step rewrites only what changed.
WHOLE_MAX_BYTES = 8 * 1024

#: One execution's stored plans, read before it is rebuilt (off the event loop, tried again
#: while the storage does not answer), by URI: the plan, or why it is not one.
StoredPlans = Mapping[str, "dict[str, Any] | SnapshotError"]


def _record(state: StateRecord) -> list[Any]:
    return [state.current.value, [[s.value, iso_instant(d)] for s, d in state.history]]


def _state(raw: list[Any]) -> StateRecord:
    return StateRecord(
        StateType(raw[0]), [(StateType(s), datetime.fromisoformat(d)) for s, d in raw[1]]
    )


def _group(group: Group) -> dict[str, Any]:
    record: dict[str, Any] = {
        "c": group.concurrency,
        "w": group.failure_is_warning,
        "n": group.next_lane,
        "a": group.active,
        "f": group.failed,
        "s": group.worst.value,
        "e": group.errors_pos,
        "er": [t.id for t in group.errors],
    }
    if group.finally_:  # written only where there is one: older records stay readable
        record["fi"] = [t.id for t in group.finally_]
        record["fp"] = group.finally_pos
    if group.depends is not None:
        record["st"] = sorted(group.started)
        record["dn"] = sorted(group.done)
    return record


def _lanes(group: Group) -> list[list[list[Any]]]:
    return [[[task.id, value] for task, value in lane] for lane in group.lanes]


def encode_plan(group: Group) -> dict[str, Any]:
    """A group's plan record: every lane's task ids and values (and a graph's dependencies),
    written once when planned (the step measures it against the record limit before it keeps
    the group); a plan stored past the inline threshold is its reference
    (``{"stored": {"@ref": ..., "size": n}}``, read back by :func:`rebuild`)."""
    if group.stored is not None:
        return {STORED_PLAN: group.stored}
    return _plan(group)


def _plan(group: Group) -> dict[str, Any]:
    plan: dict[str, Any] = {"lanes": _lanes(group)}
    if group.depends is not None:
        plan["deps"] = [list(needs) for needs in group.depends]
    return plan


def held_plans(st: ExecutionState, refs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The plans of ``st``'s groups stored in the internal storage that ``refs`` name (the
    references of the records rebuilt, :func:`stored_plans`), by URI, as the storage gives
    them back (:func:`~kestream.storage.offload.fetch_plan`), from memory: a plan never
    changes once stored, so a roll-back (the state rebuilt from its records, :func:`rebuild`'s
    ``plans``) reads the storage only for a plan whose group memory no longer holds. Only
    those named are encoded: a stored plan can be MBs."""
    wanted = {ref[REF_KEY] for ref in refs if is_reference(ref)}
    held: dict[str, dict[str, Any]] = {}
    for tr in st.task_runs.values():
        group = tr.group
        if group is None or group.stored is None or not is_reference(group.stored):
            continue
        uri = group.stored[REF_KEY]
        if uri in wanted and uri not in held:
            held[uri] = orjson.loads(record_json(_plan(group)))
    return held


# -- encoding --------------------------------------------------------------------------------


def header_key(execution_id: str, part: str = HEADER) -> str:
    return execution_id + part


def task_run_key(execution_id: str, task_run_id: str, part: str = "") -> str:
    return f"{execution_id}/{task_run_id}{part}"


def encode_header(st: ExecutionState) -> dict[str, Any]:
    link = st.parent_link
    return {
        **({"pid": st.parent_id} if st.parent_id is not None else {}),
        "ns": st.namespace,
        "flow": st.flow_id,
        "rev": st.revision,
        "orig": st.original_id,
        "created": st.original_created.isoformat(),
        "labels": st.labels,
        "inputs": encode_value(st.inputs),
        "trigger": encode_value(st.trigger),
        "sched": st.schedule_date.isoformat() if st.schedule_date else None,
        "parent": None
        if link is None
        else [link.execution_id, link.task_run_id, link.attempt, link.outputs, link.wait],
    }


def encode_dynamic(st: ExecutionState) -> dict[str, Any]:
    record = {
        "attempt": st.attempt_number,
        "state": _record(st.state),
        "root": _group(st.root) if st.root is not None else None,
        "outputs": encode_value(st.flow_outputs),
        "errors": encode_value(st.error_logs),
        "paused": list(st.paused_runs),
        "timers": {
            tid: [t.due.isoformat(), t.kind, t.task_run_id, t.attempt]
            for tid, t in st.timers.items()
        },
        "created": st.created_runs,
    }
    if st.labels_changed:  # the header's labels are the creation's; these win on recovery
        record["labels"] = st.labels
    if st.sla_violated:
        record["sla"] = list(st.sla_violated)
    if st.replay_run is not None:
        record["replay"] = st.replay_run
    if st.after is not None:  # the afterExecution tasks run: a short list, kept inline
        record["after"] = {**_group(st.after), "lanes": _lanes(st.after)}
    return record


def encode_task_run(tr: TaskRunState) -> dict[str, Any]:
    return {
        "n": tr.number,
        "t": tr.task.id,
        "p": tr.parent.id if tr.parent is not None else None,
        "v": tr.value,
        "l": tr.lane,
        "o": tr.pos,
        "e": tr.errors_branch,
        **({"b": tr.block.value} if tr.block not in (Block.TASKS, Block.ERRORS) else {}),
        "s": _record(tr.state),
        "a": [_record(a) for a in tr.attempts],
        "out": encode_value(tr.outputs),
        "c": tr.child_execution_id,
        "g": _group(tr.group) if tr.group is not None else None,
    }


#: A changelog record of a step: key, value (None: a tombstone), and the value's JSON when it
#: was encoded to be measured (:func:`encode_step`), so that it is not encoded again.
StepRecord = tuple[str, dict[str, Any] | None, bytes | None]


def encode_step(
    st: ExecutionState,
    changed: list[str],
    *,
    created: bool,
    new_groups: set[str],
    whole_max: int,
) -> list[StepRecord]:
    """The records for one step (see the module docstring): the whole execution in one record
    while its JSON fits ``whole_max`` bytes (at most :data:`WHOLE_MAX_BYTES` and the record
    limit); else, from the step that outgrows it on (it sets ``st.records_apart``), every key
    once and then only what ``changed`` and ``new_groups`` name (:func:`encode_changes`)."""
    if not st.records_apart:
        whole = encode_whole(st) if whole_max > 0 else None
        if whole is not None:
            data = record_json(whole)
            if len(data) <= whole_max:
                return [(header_key(st.id, DYNAMIC), whole, data)]
        st.records_apart = True  # every key once: none was written apart before
        changed = list(st.task_runs)
        created = True
        new_groups = {run_id for run_id, tr in st.task_runs.items() if tr.group is not None}
    records = _encode_apart(st, changed, created=created, new_groups=new_groups)
    return [(key, value, None) for key, value in records]


def encode_whole(st: ExecutionState) -> dict[str, Any] | None:
    """The whole execution as its dynamic record: the per-step state, with its header, every
    task run by id and every flowable's plan by task run id; None when a plan is stored in the
    internal storage (such an execution is written apart: :func:`stored_plans` reads plan
    records)."""
    runs: dict[str, Any] = {}
    plans: dict[str, Any] = {}
    for run_id, tr in st.task_runs.items():
        runs[run_id] = encode_task_run(tr)
        if tr.group is not None:
            if tr.group.stored is not None:
                return None
            plans[run_id] = encode_plan(tr.group)
    record = encode_dynamic(st)
    record[WHOLE_HEADER] = encode_header(st)
    record[WHOLE_RUNS] = runs
    if plans:
        record[WHOLE_PLANS] = plans
    return record


def encode_changes(
    st: ExecutionState,
    changed: list[str],
    *,
    created: bool,
    new_groups: set[str],
    whole_max: int = 0,
) -> list[tuple[str, dict[str, Any] | None]]:
    """:func:`encode_step`'s records without their JSON; ``whole_max`` 0 (the default):
    written apart from the first step."""
    return [
        (key, value)
        for key, value, _ in encode_step(
            st, changed, created=created, new_groups=new_groups, whole_max=whole_max
        )
    ]


def _encode_apart(
    st: ExecutionState,
    changed: list[str],
    *,
    created: bool,
    new_groups: set[str],
) -> list[tuple[str, dict[str, Any] | None]]:
    """The records of a step of an execution written apart: its header when ``created``, the
    changed task runs, and plans of new groups (the execution's own, :data:`ROOT`, is planned
    again from the flow on recovery: no record).

    A task run listed in ``changed`` that no longer exists (dropped by a restart) gets a tombstone.
    """
    out: list[tuple[str, dict[str, Any] | None]] = []
    if created:
        out.append((header_key(st.id), encode_header(st)))
    for run_id in changed:
        tr = st.task_runs.get(run_id)
        if tr is None:
            out.append((task_run_key(st.id, run_id), None))
            out.append((task_run_key(st.id, run_id, PLAN), None))
            continue
        out.append((task_run_key(st.id, run_id), encode_task_run(tr)))
        if tr.group is not None and run_id in new_groups:
            out.append((task_run_key(st.id, run_id, PLAN), encode_plan(tr.group)))
    out.append((header_key(st.id, DYNAMIC), encode_dynamic(st)))
    return out


def tombstones(st: ExecutionState) -> list[tuple[str, None]]:
    """Every key the execution wrote, cleared (it leaves the state table)."""
    if not st.records_apart:
        return [(header_key(st.id, DYNAMIC), None)]
    keys = [header_key(st.id), header_key(st.id, DYNAMIC)]
    if st.root_plan_logged:
        keys.append(header_key(st.id, PLAN))
    for run_id, tr in st.task_runs.items():
        keys.append(task_run_key(st.id, run_id))
        if tr.group is not None:
            keys.append(task_run_key(st.id, run_id, PLAN))
    return [(key, None) for key in keys]


def is_commit_mark(key: str, value: object) -> bool:
    """Whether the record ``key: value`` is a step's last one: the dynamic record every step
    that leaves the execution in flight ends with (not its tombstone, one of the end's), or the
    ended marker or its tombstone (the end, a restart's unmarking, a marker pruned). Records of
    a step read without its commit mark are a torn write."""
    head = execution_of(key)
    return key == head + ENDED or (key == head + DYNAMIC and value is not None)


def execution_of(key: str) -> str:
    """The execution id a changelog key belongs to."""
    for sep in ("/", "#", "+", "!"):
        head, found, _ = key.partition(sep)
        if found:
            return head
    return key


# -- decoding --------------------------------------------------------------------------------


def header_of(execution_id: str, records: Mapping[str, Any]) -> dict[str, Any] | None:
    """The header an execution's latest records hold (its flow, revision, inputs...): its own
    record's when written apart, else the whole record's; None when neither is there."""
    head = records.get(header_key(execution_id))
    if head is None:
        dyn = records.get(header_key(execution_id, DYNAMIC))
        head = dyn.get(WHOLE_HEADER) if type(dyn) is dict else None
    return head


def stored_plans(execution_id: str, records: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The references of the plans stored in the internal storage that an execution's latest
    records name (each plan record written as ``{"stored": ref}``): what :func:`rebuild` reads."""
    refs: list[dict[str, Any]] = []
    for key, value in records.items():
        if key.endswith(PLAN) and key.startswith(execution_id) and type(value) is dict:
            ref = value.get(STORED_PLAN)
            if ref is not None:
                refs.append(ref)
    return refs


def _stored_plan(
    execution_id: str, plan: dict[str, Any], plans: StoredPlans | None
) -> dict[str, Any]:
    """A plan record as :func:`encode_plan` wrote it before it was stored: from ``plans`` when
    the record is a reference read beforehand, else read now from the internal storage
    (blocking; a storage that cannot answer raises
    :class:`~kestream.storage.offload.StorageUnavailable`); ``plan`` itself when not stored."""
    ref = plan.get(STORED_PLAN)
    if ref is None:
        return plan
    read = plans.get(ref[REF_KEY]) if plans is not None and is_reference(ref) else None
    try:
        if isinstance(read, SnapshotError):
            raise read
        stored = read if read is not None else fetch_plan(ref, execution_id)
    except SnapshotError as exc:
        raise CodecError(f"execution {execution_id}: {exc}") from None
    return {**stored, STORED_PLAN: ref}


def _group_from(
    raw: dict[str, Any],
    lanes: list[list[Any]],
    tasks: dict[str, Task],
    deps: list[list[int]] | None = None,
) -> Group:
    group = Group(
        [[(tasks[t], v) for t, v in lane] for lane in lanes],
        raw["c"],
        [tasks[t] for t in raw["er"]],
        raw["w"],
        [tasks[t] for t in raw.get("fi", ())],
        None if deps is None else [tuple(needs) for needs in deps],
    )
    group.next_lane, group.active, group.failed = raw["n"], raw["a"], raw["f"]
    group.worst, group.errors_pos = StateType(raw["s"]), raw["e"]
    group.finally_pos = raw.get("fp", -1)
    group.started, group.done = set(raw.get("st", ())), set(raw.get("dn", ()))
    return group


def rebuild(
    execution_id: str,
    records: dict[str, dict[str, Any]],
    flow: Flow,
    plans: StoredPlans | None = None,
) -> ExecutionState:
    """Build one execution's state from its latest records (``key -> value``, no tombstones).

    ``flow`` is the revision the execution runs (its header's); ``plans``: its stored plans
    (:func:`stored_plans`) read beforehand, so the rebuild itself does no I/O (a stored plan
    not in it is read here, blocking).
    """
    tasks = flow.task_index()
    dyn = records.get(header_key(execution_id, DYNAMIC))
    head = header_of(execution_id, records)
    if dyn is None or head is None:
        missing = header_key(execution_id, DYNAMIC if dyn is None else HEADER)
        raise CodecError(f"execution {execution_id}: missing header record {missing!r}")
    apart = header_key(execution_id) in records
    parent = head["parent"]
    st = ExecutionState(
        id=execution_id,
        namespace=head["ns"],
        flow_id=head["flow"],
        revision=head["rev"],
        original_id=head["orig"],
        attempt_number=dyn["attempt"],
        original_created=datetime.fromisoformat(head["created"]),
        labels=dyn.get("labels", head["labels"]),
        inputs=decode_value(head["inputs"]),
        trigger=decode_value(head["trigger"]),
        schedule_date=datetime.fromisoformat(head["sched"]) if head["sched"] else None,
        parent_link=SubflowLink(*parent) if parent else None,
        state=_state(dyn["state"]),
        parent_id=head.get("pid"),
    )
    st.records_apart = apart
    root_plan = records.get(header_key(execution_id, PLAN))
    st.root_plan_logged = root_plan is not None
    if dyn["root"] is not None:
        lanes = root_plan["lanes"] if root_plan is not None else _root_lanes(flow)
        st.root = _group_from(dyn["root"], lanes, tasks)
    if dyn.get("after") is not None:
        st.after = _group_from(dyn["after"], dyn["after"]["lanes"], tasks)
    st.flow_outputs = decode_value(dyn["outputs"])
    st.error_logs = decode_value(dyn["errors"])
    st.paused_runs = dict.fromkeys(dyn["paused"])
    st.timers = {
        tid: Timer(datetime.fromisoformat(due), kind, run, attempt)
        for tid, (due, kind, run, attempt) in dyn["timers"].items()
    }
    if apart:
        _rebuild_task_runs(st, execution_id, *_apart_runs(execution_id, records), tasks, plans)
    else:
        _rebuild_task_runs(
            st, execution_id, dyn[WHOLE_RUNS].items(), dyn.get(WHOLE_PLANS, {}), tasks, plans
        )
    # Never number a new task run like one that has a record (its id is derived from the
    # number): a guard against records ahead of the dynamic one, which no step writes.
    numbers = (tr.number for tr in st.task_runs.values())
    st.created_runs = max(dyn["created"], max(numbers, default=-1) + 1)
    st.labels_changed = "labels" in dyn
    st.sla_violated = dict.fromkeys(dyn.get("sla", ()))
    st.replay_run = dyn.get("replay")
    if st.root is not None and root_plan is None:
        _check_root_lanes(st)
    return st


def _root_lanes(flow: Flow) -> list[list[list[Any]]]:
    """The execution's own lanes as a plan record holds them: the flow's tasks, as the step
    plans them (``restore.flow_group``)."""
    from kestream.tasks.flow import one_lane  # expressions: only the executor rebuilds

    return [[[task.id, value] for task, value in lane] for lane in one_lane(flow.tasks)]


def _check_root_lanes(st: ExecutionState) -> None:
    """Each task run of the execution's own lanes sits where the lanes planned again from the
    flow put its task: a flow revision whose tasks changed under the same number (two
    publishers racing) would otherwise resume the execution on other tasks."""
    assert st.root is not None
    lanes = st.root.lanes
    for tr in st.task_runs.values():
        if tr.parent is not None or tr.block is not Block.TASKS:
            continue
        lane = lanes[tr.lane] if 0 <= tr.lane < len(lanes) else ()
        if not (0 <= tr.pos < len(lane) and lane[tr.pos][0] is tr.task):
            raise CodecError(
                f"execution {st.id}: task run {tr.id} ({tr.task.id}) is not where revision "
                f"{st.revision} of {st.namespace}.{st.flow_id} puts its tasks"
            )


def _apart_runs(
    execution_id: str, records: dict[str, dict[str, Any]]
) -> tuple[list[tuple[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """The task run records and plan records of an execution written apart, by run id."""
    prefix = execution_id + "/"
    runs: list[tuple[str, dict[str, Any]]] = []
    group_plans: dict[str, dict[str, Any]] = {}
    for key, value in records.items():
        if key.startswith(prefix):
            if key.endswith(PLAN):
                group_plans[key[len(prefix) : -len(PLAN)]] = value
            else:
                runs.append((key[len(prefix) :], value))
    return runs, group_plans


def _rebuild_task_runs(
    st: ExecutionState,
    execution_id: str,
    runs: Iterable[tuple[str, dict[str, Any]]],
    group_plans: Mapping[str, dict[str, Any]],
    tasks: dict[str, Task],
    plans: StoredPlans | None,
) -> None:
    """The task runs from their records (``runs``: by run id, in any order: compaction
    reorders them) and their groups' plans (``group_plans``), in creation order."""
    raw_runs = sorted(((value["n"], run_id, value) for run_id, value in runs), key=lambda r: r[0])
    for number, run_id, raw in raw_runs:
        parent = st.task_runs.get(raw["p"]) if raw["p"] else None
        if raw["p"] and parent is None:
            raise CodecError(f"execution {execution_id}: task run {run_id} has no parent record")
        base = parent.path if parent is not None else ()
        tr = TaskRunState(
            id=run_id,
            task=tasks[raw["t"]],
            parent=parent,
            value=raw["v"],
            path=(*base, raw["v"]) if raw["v"] is not None else base,
            lane=raw["l"],
            pos=raw["o"],
            block=Block(raw["b"]) if "b" in raw else Block.ERRORS if raw["e"] else Block.TASKS,
            state=_state(raw["s"]),
            attempts=[_state(a) for a in raw["a"]],
            outputs=decode_value(raw["out"]),
            child_execution_id=raw["c"],
            number=number,
        )
        if raw["g"] is not None:
            plan = group_plans.get(run_id)
            if plan is None:
                raise CodecError(f"execution {execution_id}: task run {run_id} lost its plan")
            plan = _stored_plan(execution_id, plan, plans)
            tr.group = _group_from(raw["g"], plan["lanes"], tasks, plan.get("deps"))
            tr.group.stored = plan.get(STORED_PLAN)
        st.task_runs[run_id] = tr
        if tr.outputs is not None:
            st.merge_outputs(tr)
